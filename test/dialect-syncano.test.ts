// The Syncano dialect, driven with the requests of
// reference/syncano-backup-and-restore.md as written (host, keys, ids
// substituted), against a real server holding a SQLite database and a
// directory; the responses are checked field by field.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { startTestServer, tempDir, type TestServer } from './helpers.ts';
import { startServer } from '../src/main.ts';
import { syncanoId, parseSyncanoId } from '../src/http/dialects/syncano/ids.ts';
import { syncanoTime } from '../src/http/dialects/syncano/views.ts';

const INSTANCE = 'syncano';
const MICROS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

function makeDb(path: string): void {
  const db = new Database(path);
  db.exec(`CREATE TABLE user_profile (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
           CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT);`);
  const u = db.prepare('INSERT INTO user_profile (name) VALUES (?)');
  const p = db.prepare('INSERT INTO posts (body) VALUES (?)');
  db.transaction(() => {
    for (let i = 1; i <= 100; i++) {
      u.run(`user ${i}`);
      p.run(`post ${i}`);
    }
  })();
  db.close();
}

function dumpDb(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  const out = {
    user_profile: db.prepare('SELECT * FROM user_profile ORDER BY id').all(),
    posts: db.prepare('SELECT * FROM posts ORDER BY id').all(),
  };
  db.close();
  return out;
}

async function filesOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir, { recursive: true })).sort()) {
    try {
      out[name] = await readFile(join(dir, name), 'utf8');
    } catch {
      out[name] = '<dir>';
    }
  }
  return out;
}

interface Res {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

/** A request the way the document's curl sends it. */
async function call(base: string, method: string, path: string, key: string | null, body?: string, contentType = 'application/json'): Promise<Res> {
  const headers: Record<string, string> = {};
  if (key !== null) headers['X-API-KEY'] = key;
  if (body !== undefined) headers['Content-type'] = contentType;
  const res = await fetch(base + path, { method, headers, body });
  const text = await res.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

async function poll(base: string, path: string, key: string, timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await call(base, 'GET', path, key);
    assert.equal(r.status, 200, r.text);
    if (r.body.status === 'success' || r.body.status === 'error') return r.body;
    assert.ok(['scheduled', 'running', 'uploading'].includes(r.body.status), r.body.status);
    if (Date.now() > deadline) throw new Error(`${path} still ${r.body.status}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

const DOC_BACKUP_KEYS = ['id', 'instance', 'created_at', 'updated_at', 'size', 'status', 'status_info', 'description', 'label', 'links'];

function assertBackupShape(b: any): void {
  for (const k of DOC_BACKUP_KEYS) assert.ok(k in b, `field ${k} missing in ${JSON.stringify(b)}`);
  assert.ok('archive' in b);
  assert.ok(Number.isSafeInteger(b.id) && b.id > 0);
  assert.equal(typeof b.instance, 'string');
  assert.match(b.created_at, MICROS);
  assert.match(b.updated_at, MICROS);
  assert.ok(['scheduled', 'running', 'uploading', 'success', 'error'].includes(b.status));
  assert.equal(typeof b.status_info, 'string');
  assert.equal(typeof b.label, 'string');
  assert.equal(typeof b.description, 'string');
  assert.deepEqual(Object.keys(b.links), ['self']);
}

describe('Syncano dialect', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let base: string;
  let readKey: string;
  let dbPath: string;
  let filesDir: string;
  let fullId: number;

  before(async () => {
    t = await startTestServer();
    base = `${t.url}/syncano`;
    work = await tempDir();
    dbPath = join(work.path, 'app.db');
    filesDir = join(work.path, 'files');
    makeDb(dbPath);
    await mkdir(join(filesDir, 'sub'), { recursive: true });
    await writeFile(join(filesDir, 'a.txt'), 'alpha');
    await writeFile(join(filesDir, 'sub', 'b.txt'), 'beta');
    // A few MB so that a restore takes long enough to be seen running.
    await writeFile(join(filesDir, 'big.bin'), Buffer.alloc(8 * 1024 * 1024, 7));
    assert.equal((await t.api('POST', '/api/v1/instances', { name: INSTANCE })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${INSTANCE}/resources`, { name: 'db', type: 'sqlite', connection: dbPath })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${INSTANCE}/resources`, { name: 'files', type: 'files', connection: filesDir })).status, 201);
    const k = await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' });
    assert.equal(k.status, 201);
    readKey = k.body.key;
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('integer ids: derived from the core id, stable, ordered, safe', () => {
    const a = syncanoId('019a1b2c3d4e0000deadbeef');
    const b = syncanoId('019a1b2c3d4e0001deadbeef');
    const c = syncanoId('019a1b2c3d4f0000cafebabe');
    assert.equal(b, a + 1);
    assert.ok(c > b);
    assert.equal(syncanoId('019a1b2c3d4e0000deadbeef'), a);
    assert.ok(Number.isSafeInteger(syncanoId('03ffffffffff07ffffffffff')));
    assert.equal(parseSyncanoId('12'), 12);
    assert.equal(parseSyncanoId(12), 12);
    assert.equal(parseSyncanoId('x'), null);
    assert.equal(parseSyncanoId(0), null);
    assert.equal(syncanoTime('2016-04-25T09:23:58.154Z'), '2016-04-25T09:23:58.154000Z');
  });

  test('auth: X-API-KEY required; read keys read, admin keys write; errors are {"detail"}', async () => {
    const none = await call(base, 'GET', `/v1/instances/${INSTANCE}/backups/full/`, null);
    assert.equal(none.status, 401);
    assert.deepEqual(none.body, { detail: 'Authentication credentials were not provided.' });
    assert.ok(none.headers.get('x-ratelimit-limit'));
    const bad = await call(base, 'GET', `/v1/instances/${INSTANCE}/backups/full/`, 'bvk_nope');
    assert.equal(bad.status, 401);
    assert.deepEqual(bad.body, { detail: 'No such API Key.' });
    const read = await call(base, 'GET', `/v1/instances/${INSTANCE}/backups/full/`, readKey);
    assert.equal(read.status, 200);
    assert.deepEqual(read.body, { objects: [], next: null, prev: null });
    const write = await call(base, 'POST', `/v1/instances/${INSTANCE}/backups/full/`, readKey, '{}');
    assert.equal(write.status, 403);
    assert.deepEqual(write.body, { detail: 'You do not have permission to perform this action.' });
    const noInstance = await call(base, 'GET', '/v1/instances/nope/backups/full/', readKey);
    assert.equal(noInstance.status, 404);
    assert.deepEqual(noInstance.body, { detail: 'Instance was not found.' });
    const noRoute = await call(base, 'GET', '/v1/whatever/', readKey);
    assert.equal(noRoute.status, 404);
    assert.deepEqual(noRoute.body, { detail: 'Not found.' });
    const links = await call(base, 'GET', '/v1/backups/', readKey);
    assert.deepEqual(links.body, { links: { full: '/syncano/v1/backups/full/', partial: '/syncano/v1/backups/partial/' } });
  });

  test('full backup: create as the document shows, poll links.self, archive and size once successful', async () => {
    const created = await call(
      base,
      'POST',
      `/v1/instances/${INSTANCE}/backups/full/`,
      t.adminKey,
      '{"label": "backup label",\n         "description":"backup description"}',
    );
    assert.equal(created.status, 201, created.text);
    const b = created.body;
    assertBackupShape(b);
    assert.equal(b.instance, INSTANCE);
    assert.equal(b.size, null);
    assert.equal(b.status, 'scheduled');
    assert.equal(b.status_info, '');
    assert.equal(b.description, 'backup description');
    assert.equal(b.label, 'backup label');
    assert.equal(b.archive, null);
    assert.equal(b.links.self, `/syncano/v1/backups/full/${b.id}/`);
    fullId = b.id;

    const done = await poll(t.url, b.links.self, readKey);
    assertBackupShape(done);
    assert.equal(done.status, 'success', done.status_info);
    assert.equal(done.id, b.id);
    assert.equal(done.created_at, b.created_at);
    assert.ok(Number.isInteger(done.size) && done.size > 0);
    assert.match(done.archive, new RegExp(`^${t.url}/syncano/v1/backups/full/${b.id}/archive/\\?token=`));

    // The archive URL downloads the exchange archive with no other credentials.
    const dl = await fetch(done.archive);
    assert.equal(dl.status, 200);
    const tarBytes = Buffer.from(await dl.arrayBuffer());
    assert.equal(Number(dl.headers.get('content-length')), tarBytes.length);
    const names = execFileSync('tar', ['-tf', '-'], { input: tarBytes }).toString().trim().split('\n');
    assert.equal(names[0], 'manifest.json');
    assert.ok(names.some((n) => n.startsWith('resources/db/')));
    assert.ok(names.some((n) => n.startsWith('resources/files/')));
    const ranged = await fetch(done.archive, { headers: { range: 'bytes=0-99' } });
    assert.equal(ranged.status, 206);
    assert.equal((await ranged.arrayBuffer()).byteLength, 100);
    const forged = await fetch(done.archive.replace(/token=.*/, 'token=abc'));
    assert.equal(forged.status, 401);
    assert.ok('detail' in ((await forged.json()) as object));

    // The same backup through the instance path and in both lists (with and without the trailing slash).
    const one = await call(base, 'GET', `/v1/instances/${INSTANCE}/backups/full/${b.id}/`, readKey);
    assert.equal(one.status, 200);
    assert.equal(one.body.id, b.id);
    const list = await call(base, 'GET', `/v1/instances/${INSTANCE}/backups/full/`, readKey);
    assert.deepEqual(Object.keys(list.body), ['objects', 'next', 'prev']);
    assert.deepEqual(list.body.objects.map((o: any) => o.id), [b.id]);
    const top = await call(base, 'GET', '/v1/backups/full', readKey);
    assert.equal(top.status, 200);
    assert.deepEqual(top.body.objects.map((o: any) => o.id), [b.id]);
    const partialOnly = await call(base, 'GET', '/v1/backups/partial/', readKey);
    assert.deepEqual(partialOnly.body.objects, []);
    const wrongKind = await call(base, 'GET', `/v1/backups/partial/${b.id}/`, readKey);
    assert.equal(wrongKind.status, 404);
    assert.deepEqual(wrongKind.body, { detail: 'Not found.' });
  });

  test('restore: POST /restores/ {"backup": id} brings the data back; one restore per instance', async () => {
    const dbBefore = dumpDb(dbPath);
    const filesBefore = await filesOf(filesDir);
    // Change the data.
    const db = new Database(dbPath);
    db.exec(`DELETE FROM user_profile WHERE id > 10; UPDATE posts SET body = 'changed'; INSERT INTO posts (body) VALUES ('new');`);
    db.close();
    await writeFile(join(filesDir, 'a.txt'), 'changed');
    await rm(join(filesDir, 'sub'), { recursive: true });
    await writeFile(join(filesDir, 'extra.txt'), 'x');
    assert.notDeepEqual(dumpDb(dbPath), dbBefore);

    // Two at once: the instance takes one restore at a time.
    const [r1, r2] = await Promise.all([
      call(base, 'POST', `/v1/instances/${INSTANCE}/restores/`, t.adminKey, `{"backup": ${fullId}}`),
      call(base, 'POST', `/v1/instances/${INSTANCE}/restores/`, t.adminKey, `{"backup": ${fullId}}`),
    ]);
    const ok = r1.status === 201 ? r1 : r2;
    const refused = r1.status === 201 ? r2 : r1;
    assert.equal(ok.status, 201, ok.text);
    assert.equal(refused.status, 400, refused.text);
    assert.match(refused.body.detail, /only one restore running per instance/);

    const r = ok.body;
    assert.ok(Number.isSafeInteger(r.id));
    assert.equal(r.backup, fullId);
    assert.match(r.created_at, MICROS);
    assert.equal(r.status, 'scheduled');
    assert.equal(r.links.self, `/syncano/v1/instances/${INSTANCE}/restores/${r.id}/`);
    const done = await poll(t.url, r.links.self, readKey);
    assert.equal(done.status, 'success', done.status_info);
    assert.deepEqual(dumpDb(dbPath), dbBefore);
    assert.deepEqual(await filesOf(filesDir), filesBefore);

    const list = await call(base, 'GET', `/v1/instances/${INSTANCE}/restores/`, readKey);
    assert.deepEqual(list.body.objects.map((x: any) => x.id), [r.id]);

    // Wrong or missing backup ids, in Django REST framework's words.
    const missing = await call(base, 'POST', `/v1/instances/${INSTANCE}/restores/`, t.adminKey, '{"backup": 1}');
    assert.equal(missing.status, 400);
    assert.deepEqual(missing.body, { backup: ['Invalid pk "1" - object does not exist.'] });
    const none = await call(base, 'POST', `/v1/instances/${INSTANCE}/restores/`, t.adminKey, '{}');
    assert.deepEqual(none.body, { backup: ['This field is required.'] });
    const text = await call(base, 'POST', `/v1/instances/${INSTANCE}/restores/`, t.adminKey, '{"backup": "abc"}');
    assert.deepEqual(text.body, { backup: ['Incorrect type. Expected pk value, received str.'] });
  });

  test('partial backup: OPTIONS gives the query_args schema of the instance; the document body backs up one class', async () => {
    const opt = await call(base, 'OPTIONS', `/v1/instances/${INSTANCE}/backups/partial/`, t.adminKey);
    assert.equal(opt.status, 200, opt.text);
    assert.equal(opt.body.name, 'Partial Backup List');
    assert.equal(opt.body.description, '');
    assert.ok(opt.body.renders.includes('application/json'));
    assert.deepEqual(opt.body.parses, ['application/json', 'application/x-www-form-urlencoded', 'multipart/form-data']);
    const post = opt.body.actions.POST;
    assert.deepEqual(Object.keys(post), ['id', 'instance', 'created_at', 'updated_at', 'archive', 'size', 'status', 'status_info', 'description', 'label', 'query_args', 'links']);
    assert.deepEqual(post.id, { type: 'integer', required: false, read_only: true, label: 'ID' });
    assert.deepEqual(post.label, { type: 'string', required: false, read_only: false, label: 'Label', max_length: 64 });
    assert.deepEqual(post.description, { type: 'string', required: false, read_only: false, label: 'Description', max_length: 256 });
    assert.deepEqual(post.links, { links: [{ type: 'detail', name: 'self' }] });
    assert.equal(post.query_args.type, 'field');
    assert.equal(post.query_args.required, true);
    assert.equal(post.query_args.read_only, false);
    assert.equal(post.query_args.label, 'Query args');
    const schema = post.query_args.schema;
    assert.equal(schema.additionalProperties, false);
    assert.equal(schema.type, 'object');
    assert.deepEqual(Object.keys(schema.properties), ['db', 'files', 'class']);
    const value = { anyOf: [{ type: 'null' }, { items: { anyOf: [{ type: 'integer' }, { type: 'string' }] }, type: 'array' }] };
    for (const k of ['db', 'files', 'class']) assert.deepEqual(schema.properties[k], value);

    // The document's request as written, including its stray "room" field.
    const created = await call(
      base,
      'POST',
      `/v1/instances/${INSTANCE}/backups/partial/`,
      t.adminKey,
      '{"label": "backup label",\n         "room":"backup descriptio",\n         "query_args": {"class": ["user_profile"]}}',
    );
    assert.equal(created.status, 201, created.text);
    const b = created.body;
    assertBackupShape(b);
    assert.deepEqual(Object.keys(b), ['id', 'instance', 'created_at', 'updated_at', 'archive', 'size', 'status', 'status_info', 'description', 'label', 'links']);
    assert.equal(b.instance, INSTANCE);
    assert.equal(b.archive, null);
    assert.equal(b.size, null);
    assert.equal(b.status, 'scheduled');
    assert.equal(b.status_info, '');
    assert.equal(b.description, '');
    assert.equal(b.label, 'backup label');
    assert.equal(b.links.self, `/syncano/v1/backups/partial/${b.id}/`);
    const done = await poll(t.url, b.links.self, readKey);
    assert.equal(done.status, 'success', done.status_info);
    assert.ok(done.size > 0);
    const tarBytes = Buffer.from(await (await fetch(done.archive)).arrayBuffer());
    const manifest = JSON.parse(execFileSync('tar', ['-xOf', '-', 'manifest.json'], { input: tarBytes }).toString());
    assert.equal(manifest.type, 'partial');
    assert.deepEqual(
      manifest.resources.map((r: any) => [r.name, r.selection]),
      [['db', ['user_profile']]],
    );
    assert.deepEqual(Object.keys(manifest.resources[0].counts.tables), ['user_profile']);

    // A resource by name, null for all of it, as a form.
    const form = await call(
      base,
      'POST',
      `/v1/instances/${INSTANCE}/backups/partial/`,
      t.adminKey,
      new URLSearchParams({ label: 'files only', query_args: '{"files": null}' }).toString(),
      'application/x-www-form-urlencoded',
    );
    assert.equal(form.status, 201, form.text);
    const formDone = await poll(t.url, form.body.links.self, readKey);
    assert.equal(formDone.status, 'success', formDone.status_info);
    assert.equal(formDone.label, 'files only');

    // Multipart is read too (a file part is not).
    const fd = new FormData();
    fd.append('label', 'multipart');
    fd.append('query_args', '{"db": ["posts"]}');
    const mp = await fetch(`${base}/v1/instances/${INSTANCE}/backups/partial/`, { method: 'POST', headers: { 'X-API-KEY': t.adminKey }, body: fd });
    const mpBody = (await mp.json()) as any;
    assert.equal(mp.status, 201, JSON.stringify(mpBody));
    assert.equal(mpBody.label, 'multipart');
    assert.equal((await poll(t.url, mpBody.links.self, readKey)).status, 'success');
    assert.equal((await call(base, 'DELETE', `/v1/instances/${INSTANCE}/backups/partial/${mpBody.id}/`, t.adminKey)).status, 204);

    // Lists of partial backups, across instances and per instance.
    const top = await call(base, 'GET', '/v1/backups/partial/', readKey);
    assert.deepEqual(top.body.objects.map((o: any) => o.id), [b.id, form.body.id]);
  });

  test('validation: label at most 64, description at most 256, query_args required and checked', async () => {
    const path = `/v1/instances/${INSTANCE}/backups/full/`;
    const long = await call(base, 'POST', path, t.adminKey, JSON.stringify({ label: 'x'.repeat(65), description: 'y'.repeat(257) }));
    assert.equal(long.status, 400);
    assert.deepEqual(long.body, {
      label: ['Ensure this field has no more than 64 characters.'],
      description: ['Ensure this field has no more than 256 characters.'],
    });
    const wrongType = await call(base, 'POST', path, t.adminKey, JSON.stringify({ label: ['a'] }));
    assert.deepEqual(wrongType.body, { label: ['Not a valid string.'] });
    const badJson = await call(base, 'POST', path, t.adminKey, '{"label": ');
    assert.equal(badJson.status, 400);
    assert.ok(typeof badJson.body.detail === 'string');

    const ppath = `/v1/instances/${INSTANCE}/backups/partial/`;
    const noArgs = await call(base, 'POST', ppath, t.adminKey, '{"label": "x"}');
    assert.equal(noArgs.status, 400);
    assert.deepEqual(noArgs.body, { query_args: ['This field is required.'] });
    const unknown = await call(base, 'POST', ppath, t.adminKey, '{"query_args": {"data_object": [1, 2]}}');
    assert.equal(unknown.status, 400);
    assert.match(unknown.body.query_args[0], /Additional properties are not allowed \('data_object' was unexpected\)/);
    const badValue = await call(base, 'POST', ppath, t.adminKey, '{"query_args": {"db": "users"}}');
    assert.equal(badValue.status, 400);
    assert.ok(Array.isArray(badValue.body.query_args));
    const noClass = await call(base, 'POST', ppath, t.adminKey, '{"query_args": {"class": ["nope"]}}');
    assert.equal(noClass.status, 400);
    assert.match(noClass.body.query_args[0], /no database of instance syncano has a table named nope/);
    const empty = await call(base, 'POST', ppath, t.adminKey, '{"query_args": {}}');
    assert.equal(empty.status, 400);
  });

  test('lists page with Syncano cursors: page_size, direction, last_pk, ordering', async () => {
    const all = (await call(base, 'GET', '/v1/backups/partial/', readKey)).body.objects.map((o: any) => o.id);
    assert.equal(all.length, 2);
    assert.ok(all[0] < all[1], 'ascending by id by default');
    const p1 = await call(base, 'GET', '/v1/backups/partial/?page_size=1', readKey);
    assert.deepEqual(p1.body.objects.map((o: any) => o.id), [all[0]]);
    assert.equal(p1.body.prev, null);
    assert.equal(p1.body.next, `/syncano/v1/backups/partial/?page_size=1&direction=1&last_pk=${all[0]}`);
    const p2 = await call(t.url, 'GET', p1.body.next, readKey);
    assert.deepEqual(p2.body.objects.map((o: any) => o.id), [all[1]]);
    assert.equal(p2.body.next, null);
    assert.equal(p2.body.prev, `/syncano/v1/backups/partial/?page_size=1&direction=0&last_pk=${all[1]}`);
    const back = await call(t.url, 'GET', p2.body.prev, readKey);
    assert.deepEqual(back.body.objects.map((o: any) => o.id), [all[0]]);
    const desc = await call(base, 'GET', '/v1/backups/partial/?ordering=desc', readKey);
    assert.deepEqual(desc.body.objects.map((o: any) => o.id), [all[1], all[0]]);
    const bad = await call(base, 'GET', '/v1/backups/partial/?direction=7', readKey);
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body, { detail: 'Incorrect page parameter provided.' });
  });

  test('DELETE removes a backup; the per-account limit (25 by default, configurable) answers in Syncano words', async () => {
    const before = await call(base, 'GET', '/v1/backups/partial/', readKey);
    const last = before.body.objects.at(-1);
    // Some clients send a JSON Content-Type with an empty body on DELETE.
    const del = await call(base, 'DELETE', `/v1/backups/partial/${last.id}/`, t.adminKey, '');
    assert.equal(del.status, 204);
    assert.equal((await call(base, 'GET', `/v1/backups/partial/${last.id}/`, readKey)).status, 404);
    const forbidden = await call(base, 'DELETE', `/v1/backups/full/${fullId}/`, readKey);
    assert.equal(forbidden.status, 403);

    // A server whose limit is 2 (config syncano_max_backups).
    const small = await startTestServer({ syncano_max_backups: 2 });
    try {
      await small.api('POST', '/api/v1/instances', { name: 'a' });
      await small.api('POST', '/api/v1/instances', { name: 'b' });
      await small.api('POST', '/api/v1/instances/a/resources', { name: 'files', type: 'files', connection: filesDir });
      await small.api('POST', '/api/v1/instances/b/resources', { name: 'files', type: 'files', connection: filesDir });
      const sbase = `${small.url}/syncano`;
      const one = await call(sbase, 'POST', '/v1/instances/a/backups/full/', small.adminKey, '{}');
      assert.equal(one.status, 201, one.text);
      const two = await call(sbase, 'POST', '/v1/instances/b/backups/full/', small.adminKey, '{}');
      assert.equal(two.status, 201, two.text);
      const three = await call(sbase, 'POST', '/v1/instances/a/backups/full/', small.adminKey, '{}');
      assert.equal(three.status, 400);
      assert.deepEqual(three.body, { detail: 'Maximum number of backups per account reached (2).' });
      // Deleting an old one makes room again.
      await poll(small.url, one.body.links.self, small.adminKey);
      assert.equal((await call(sbase, 'DELETE', `/v1/instances/a/backups/full/${one.body.id}/`, small.adminKey)).status, 204);
      const again = await call(sbase, 'POST', '/v1/instances/a/backups/full/', small.adminKey, '{}');
      assert.equal(again.status, 201, again.text);
      await poll(small.url, again.body.links.self, small.adminKey);
      await poll(small.url, two.body.links.self, small.adminKey);
    } finally {
      await small.close();
    }
  });

  test('integer ids survive a restart', async () => {
    await t.server.close();
    const second = await startServer(t.server.ctx.config, { clock: t.clock });
    try {
      const r = await call(`${second.url}/syncano`, 'GET', `/v1/backups/full/${fullId}/`, readKey);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.id, fullId);
      assert.equal(r.body.status, 'success');
    } finally {
      await second.close();
    }
  });
});
