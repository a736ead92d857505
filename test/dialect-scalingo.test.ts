// The Scalingo dialect, driven with the requests of
// reference/scalingo-database-backups.md as written (host, token and ids
// substituted). Scalingo's API has no create, so backups are made through
// the native API, then listed and downloaded through Scalingo's. A second
// database holds PostgreSQL (with sqlite and a directory): backed up natively,
// listed and downloaded through Scalingo, changed, and its downloaded archive
// imported and restored natively (Scalingo's API has no restore), rows back.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';
import { changePg, createPgDatabase, pgSnapshot, type PgDatabase, type PgSnapshot } from './pg-helper.ts';
import { scalingoBackup, scalingoName, scalingoStatus, scalingoTime } from '../src/http/dialects/scalingo/index.ts';

const DB = 'my-db-123';
const DOC_KEYS = ['id', 'created_at', 'name', 'size', 'status', 'database_id'];

interface Res {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

/** The document's curl: Accept and Content-Type JSON, a Bearer token, GET. */
async function curl(url: string, token: string | null): Promise<Res> {
  const headers: Record<string, string> = { Accept: 'application/json', 'Content-Type': 'application/json' };
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(url, { method: 'GET', headers });
  const text = await res.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  return { status: res.status, headers: res.headers, body, text };
}

describe('Scalingo dialect', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let api: string;
  let readKey: string;
  let done: any;
  let failed: any;

  before(async () => {
    t = await startTestServer();
    api = `${t.url}/scalingo/api`;
    work = await tempDir();
    const dbPath = join(work.path, 'app.db');
    const db = new Database(dbPath);
    db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES (\'a\'), (\'b\');');
    db.close();
    const files = join(work.path, 'files');
    await mkdir(files, { recursive: true });
    await writeFile(join(files, 'note.txt'), 'hello');
    assert.equal((await t.api('POST', '/api/v1/instances', { name: DB })).status, 201);
    assert.equal((await t.api('POST', '/api/v1/instances', { name: 'other-db' })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${DB}/resources`, { name: 'db', type: 'sqlite', connection: dbPath })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${DB}/resources`, { name: 'files', type: 'files', connection: files })).status, 201);
    readKey = (await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' })).body.key;

    // One backup that fails (a table that does not exist), then one that succeeds.
    const bad = await t.api('POST', `/api/v1/instances/${DB}/backups`, { type: 'partial', selection: { db: ['no_such_table'] } });
    assert.equal(bad.status, 202, JSON.stringify(bad.body));
    failed = await waitFor(t.api, `/api/v1/backups/${bad.body.id}`);
    assert.equal(failed.status, 'error');
    const good = await t.api('POST', `/api/v1/instances/${DB}/backups`, { label: 'nightly' });
    assert.equal(good.status, 202);
    done = await waitFor(t.api, `/api/v1/backups/${good.body.id}`);
    assert.equal(done.status, 'success', done.status_info);
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('status, time and name words', () => {
    assert.equal(scalingoStatus('scheduled'), 'pending');
    assert.equal(scalingoStatus('running'), 'pending');
    assert.equal(scalingoStatus('uploading'), 'pending');
    assert.equal(scalingoStatus('success'), 'done');
    assert.equal(scalingoStatus('error'), 'error');
    assert.equal(scalingoTime('2018-11-04T01:00:00.154Z'), '2018-11-04T01:00:00.154+00:00');
    assert.equal(scalingoName('2018-11-04T01:00:00.154Z', 'kibana-3938'), '20181104010000_kibana-3938');
    const pending = scalingoBackup({ ...done, status: 'running', size: 123 });
    assert.equal(pending.status, 'pending');
    assert.equal(pending.size, 0);
  });

  test('list database backups: {"database_backups": [...]} with the documented fields', async () => {
    const r = await curl(`${api}/databases/${DB}/backups`, t.adminKey);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.body), ['database_backups']);
    const list = r.body.database_backups;
    assert.equal(list.length, 2);
    for (const b of list) {
      assert.deepEqual(Object.keys(b), DOC_KEYS);
      assert.match(b.id, /^[0-9a-f]{24}$/);
      assert.match(b.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$/);
      assert.equal(b.name, `${b.created_at.slice(0, 19).replace(/[-T:]/g, '')}_${DB}`);
      assert.equal(typeof b.size, 'number');
      assert.ok(['pending', 'done', 'error'].includes(b.status));
      assert.equal(b.database_id, DB);
    }
    // Newest first, as the document lists them.
    assert.deepEqual(list.map((b: any) => b.id), [done.id, failed.id]);
    const [d, e] = list;
    assert.equal(d.status, 'done');
    assert.equal(d.size, done.size);
    assert.ok(d.size > 0);
    assert.equal(Date.parse(d.created_at), Date.parse(done.created_at));
    assert.equal(e.status, 'error');
    assert.equal(e.size, 0);

    const empty = await curl(`${api}/databases/other-db/backups`, readKey);
    assert.equal(empty.status, 200);
    assert.deepEqual(empty.body, { database_backups: [] });
  });

  test('backup download link: a pre-signed URL that downloads the exchange archive with no other credentials', async () => {
    const r = await curl(`${api}/databases/${DB}/backups/${done.id}/archive`, readKey);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.body), ['download_url']);
    const url: string = r.body.download_url;
    assert.match(url, new RegExp(`^${api}/databases/${DB}/backups/${done.id}/download\\?token=[^&]+$`));

    const dl = await fetch(url);
    assert.equal(dl.status, 200);
    assert.equal(dl.headers.get('content-type'), 'application/x-tar');
    const bytes = Buffer.from(await dl.arrayBuffer());
    assert.equal(Number(dl.headers.get('content-length')), bytes.length);
    const names = execFileSync('tar', ['-tf', '-'], { input: bytes }).toString().trim().split('\n');
    assert.equal(names[0], 'manifest.json');
    assert.ok(names.some((n) => /^resources\/db\//.test(n)), names.join(','));
    assert.ok(names.some((n) => /^resources\/files\//.test(n)), names.join(','));
    const manifest = JSON.parse(execFileSync('tar', ['-xOf', '-', 'manifest.json'], { input: bytes }).toString());
    assert.equal(manifest.backup_id, done.id);
    assert.equal(manifest.instance, DB);

    // Resumable: a Range gets 206 with the slice.
    const part = await fetch(url, { headers: { range: 'bytes=10-19' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 10-19/${bytes.length}`);
    assert.deepEqual(Buffer.from(await part.arrayBuffer()), bytes.subarray(10, 20));

    // The downloaded archive imports back as a backup (it is a real exchange archive).
    const fd = new FormData();
    fd.append('file', new Blob([new Uint8Array(bytes)]), 'archive.tar');
    const imp = await fetch(`${t.url}/api/v1/instances/${DB}/backups/import`, { method: 'POST', headers: { authorization: `Bearer ${t.adminKey}` }, body: fd });
    assert.equal(imp.status, 202);
    const imported = await waitFor(t.api, `/api/v1/backups/${((await imp.json()) as any).id}`);
    assert.equal(imported.status, 'success', imported.status_info);
  });

  test('download links: bound to their backup and database, and they expire', async () => {
    const url: string = (await curl(`${api}/databases/${DB}/backups/${done.id}/archive`, readKey)).body.download_url;
    const token = new URL(url).searchParams.get('token')!;
    const noToken = await curl(`${api}/databases/${DB}/backups/${done.id}/download`, null);
    assert.equal(noToken.status, 401);
    assert.equal(typeof noToken.body.error, 'string');
    const otherBackup = await curl(`${api}/databases/${DB}/backups/${failed.id}/download?token=${encodeURIComponent(token)}`, null);
    assert.equal(otherBackup.status, 401);
    const otherDb = await curl(`${api}/databases/other-db/backups/${done.id}/download?token=${encodeURIComponent(token)}`, null);
    assert.equal(otherDb.status, 404);
    assert.deepEqual(otherDb.body, { error: 'backup not found' });
    t.clock.advance((t.server.ctx.config.download_link_ttl_seconds + 5) * 1000);
    try {
      const expired = await curl(url, null);
      assert.equal(expired.status, 401);
      assert.equal(typeof expired.body.error, 'string');
    } finally {
      t.clock.advance(-(t.server.ctx.config.download_link_ttl_seconds + 5) * 1000);
    }
  });

  test('errors in Scalingo shape: {"error": "..."}', async () => {
    const none = await curl(`${api}/databases/${DB}/backups`, null);
    assert.equal(none.status, 401);
    assert.equal(typeof none.body.error, 'string');
    assert.ok(none.headers.get('x-ratelimit-limit'));
    const bad = await curl(`${api}/databases/${DB}/backups`, 'bvk_wrong');
    assert.equal(bad.status, 401);
    assert.equal(typeof bad.body.error, 'string');
    const noDb = await curl(`${api}/databases/nope/backups`, readKey);
    assert.equal(noDb.status, 404);
    assert.deepEqual(noDb.body, { error: 'database not found' });
    // The document's placeholder id is not a backup id.
    const noBackup = await curl(`${api}/databases/${DB}/backups/abcdefabcdefabcdef/archive`, readKey);
    assert.equal(noBackup.status, 404);
    assert.deepEqual(noBackup.body, { error: 'backup not found' });
    const unknown = await curl(`${api}/databases/${DB}/backups/0123456789abcdef01234567/archive`, readKey);
    assert.equal(unknown.status, 404);
    assert.deepEqual(unknown.body, { error: 'backup not found' });
    const notDone = await curl(`${api}/databases/${DB}/backups/${failed.id}/archive`, readKey);
    assert.equal(notDone.status, 409);
    assert.match(notDone.body.error, /only a done backup can be downloaded/);
    const noRoute = await curl(`${api}/apps`, readKey);
    assert.equal(noRoute.status, 404);
    assert.deepEqual(noRoute.body, { error: 'not found' });
  });
});

describe('Scalingo dialect: a PostgreSQL database round trip', () => {
  const PG_DB = 'pg-db-456';
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let api: string;
  let pgDb: PgDatabase;
  let original: PgSnapshot;
  let sqlitePath: string;
  let filesDir: string;

  const items = () => new Database(sqlitePath, { readonly: true }).prepare('SELECT name FROM items ORDER BY id').all();

  before(async () => {
    pgDb = await createPgDatabase('bv_scalingo');
    original = await pgSnapshot(pgDb.name);
    t = await startTestServer();
    api = `${t.url}/scalingo/api`;
    work = await tempDir();
    sqlitePath = join(work.path, 'app.db');
    const db = new Database(sqlitePath);
    db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a'), ('b');");
    db.close();
    filesDir = join(work.path, 'files');
    await mkdir(filesDir, { recursive: true });
    await writeFile(join(filesDir, 'note.txt'), 'hello');
    assert.equal((await t.api('POST', '/api/v1/instances', { name: PG_DB })).status, 201);
    for (const r of [
      { name: 'pg', type: 'postgres', connection: pgDb.connection },
      { name: 'db', type: 'sqlite', connection: sqlitePath },
      { name: 'files', type: 'files', connection: filesDir },
    ]) {
      const res = await t.api('POST', `/api/v1/instances/${PG_DB}/resources`, r);
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
  });
  after(async () => {
    await t?.close();
    await work?.cleanup();
    await pgDb?.drop();
  });

  test('back up natively, list and download through Scalingo, change the rows, import and restore: the rows are back', async () => {
    const created = await t.api('POST', `/api/v1/instances/${PG_DB}/backups`, {});
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const done = await waitFor(t.api, `/api/v1/backups/${created.body.id}`, 'status', 120_000);
    assert.equal(done.status, 'success', done.status_info);

    // Scalingo lists it as a done backup of this database.
    const list = await curl(`${api}/databases/${PG_DB}/backups`, t.adminKey);
    assert.equal(list.status, 200, list.text);
    assert.equal(list.body.database_backups.length, 1);
    const b = list.body.database_backups[0];
    assert.deepEqual(Object.keys(b), DOC_KEYS);
    assert.equal(b.id, done.id);
    assert.equal(b.status, 'done');
    assert.equal(b.database_id, PG_DB);
    assert.equal(b.name, `${b.created_at.slice(0, 19).replace(/[-T:]/g, '')}_${PG_DB}`);
    assert.equal(b.size, done.size);
    assert.ok(b.size > 0);

    // The pre-signed link downloads the archive with the postgres dump in it, no other credentials.
    const link = await curl(`${api}/databases/${PG_DB}/backups/${b.id}/archive`, t.adminKey);
    assert.equal(link.status, 200, link.text);
    const dl = await fetch(link.body.download_url);
    assert.equal(dl.status, 200);
    const bytes = Buffer.from(await dl.arrayBuffer());
    const names = execFileSync('tar', ['-tf', '-'], { input: bytes }).toString().trim().split('\n');
    assert.ok(names.some((n) => /^resources\/pg\//.test(n)), names.join(','));
    const manifest = JSON.parse(execFileSync('tar', ['-xOf', '-', 'manifest.json'], { input: bytes }).toString());
    const pgEntry = manifest.resources.find((r: any) => r.name === 'pg');
    assert.equal(pgEntry.type, 'postgres');
    assert.equal(pgEntry.counts.tables['public.accounts'], 100);
    assert.match(pgEntry.server_version, /^15/);

    // Change everything.
    await changePg(pgDb.name);
    const db = new Database(sqlitePath);
    db.exec("DELETE FROM items; INSERT INTO items (name) VALUES ('changed');");
    db.close();
    await writeFile(join(filesDir, 'note.txt'), 'changed');
    assert.notDeepEqual(await pgSnapshot(pgDb.name), original);

    // The downloaded archive imports back (natively) and restores (natively: Scalingo has no restore).
    const fd = new FormData();
    fd.append('file', new Blob([new Uint8Array(bytes)]), 'archive.tar');
    const imp = await fetch(`${t.url}/api/v1/instances/${PG_DB}/backups/import`, { method: 'POST', headers: { authorization: `Bearer ${t.adminKey}` }, body: fd });
    assert.equal(imp.status, 202);
    const imported = await waitFor(t.api, `/api/v1/backups/${((await imp.json()) as any).id}`, 'status', 120_000);
    assert.equal(imported.status, 'success', imported.status_info);
    const restore = await t.api('POST', `/api/v1/instances/${PG_DB}/restores`, { backup: imported.id });
    assert.equal(restore.status, 202, JSON.stringify(restore.body));
    const restored = await waitFor(t.api, `/api/v1/restores/${restore.body.id}`, 'status', 120_000);
    assert.equal(restored.status, 'success', restored.status_info);

    assert.deepEqual(await pgSnapshot(pgDb.name), original, 'the postgres rows are back, the later table gone');
    assert.deepEqual(items(), [{ name: 'a' }, { name: 'b' }]);
    assert.equal(await readFile(join(filesDir, 'note.txt'), 'utf8'), 'hello');

    // Scalingo lists the imported backup too, newest first.
    const after = await curl(`${api}/databases/${PG_DB}/backups`, t.adminKey);
    assert.deepEqual(
      after.body.database_backups.map((x: any) => [x.id, x.status]),
      [
        [imported.id, 'done'],
        [done.id, 'done'],
      ],
    );
  });
});
