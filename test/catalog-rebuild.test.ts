// `backvault catalog rebuild` against real storage: a deleted catalog loses no
// backup (they come back from the manifests and restore into new targets
// without any resource), a damaged one is repaired, incomplete or invalid
// backup directories are reported and left out, and a running server's
// directory is refused. Also on a real S3 server: recovery on a new machine
// with nothing but the bucket.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { loadConfig, type Config } from '../src/config/index.ts';
import { startServer } from '../src/main.ts';
import { tempDir, waitFor, type Api, runCli } from './helpers.ts';
import { s3Connection, s3AdminClient } from './s3-env.ts';


function apiFor(url: string, key: string): Api {
  return async (method, path, body, k = key) => {
    const headers: Record<string, string> = {};
    if (k) headers.authorization = `Bearer ${k}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: (text ? JSON.parse(text) : null) as any };
  };
}

function config(dir: string, extra: Partial<Config> = {}): Config {
  return loadConfig({ flags: { dir, port: 0, log_level: 'silent', rate_limit_per_minute: 100_000, ...extra }, env: {} });
}

function makeDb(path: string, rows: number): void {
  const db = new Database(path);
  db.exec('CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL); CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, total REAL);');
  const u = db.prepare('INSERT INTO users (name) VALUES (?)');
  const o = db.prepare('INSERT INTO orders (user_id, total) VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= rows; i++) {
      u.run(`user ${i}`);
      o.run(i, i * 2.5);
    }
  })();
  db.close();
}

function dumpDb(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  const out: Record<string, unknown[]> = {};
  for (const t of ['users', 'orders']) out[t] = db.prepare(`SELECT * FROM ${t} ORDER BY id`).all();
  db.close();
  return out;
}

async function treeOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    out[p.slice(dir.length + 1)] = createHash('sha256').update(await readFile(p)).digest('hex');
  }
  return out;
}

/** What a rebuilt backup must have kept of the original. */
function essence(b: any) {
  return {
    id: b.id,
    instance: b.instance,
    type: b.type,
    status: b.status,
    label: b.label,
    description: b.description,
    compression: b.compression,
    size: b.size,
    selection: b.selection,
    exclude: b.exclude,
    created_at: b.created_at,
    finished_at: b.finished_at,
    resources: b.resources,
  };
}

async function removeCatalog(dir: string): Promise<void> {
  for (const f of ['catalog.db', 'catalog.db-wal', 'catalog.db-shm']) await rm(join(dir, f), { force: true });
}

describe('catalog rebuild from local storage', () => {
  let work: { path: string; cleanup(): Promise<void> };
  let dataDir: string;
  let src: { db: string; www: string; blog: string };
  const originals = new Map<string, any>();

  before(async () => {
    work = await tempDir('bv-rebuild-');
    dataDir = join(work.path, 'data');
    src = { db: join(work.path, 'app.db'), www: join(work.path, 'www'), blog: join(work.path, 'blog.db') };
    makeDb(src.db, 300);
    makeDb(src.blog, 20);
    await mkdir(join(src.www, 'img'), { recursive: true });
    await writeFile(join(src.www, 'index.html'), '<h1>hello</h1>');
    await writeFile(join(src.www, 'img', 'logo.bin'), randomBytes(50_000));
    await writeFile(join(src.www, 'debug.log'), 'noise');

    const server = await startServer(config(dataDir));
    const api = apiFor(server.url, server.initialKey!.key);
    try {
      assert.equal((await api('POST', '/api/v1/instances', { name: 'app', description: 'the app', max_backups: 10 })).status, 201);
      assert.equal((await api('POST', '/api/v1/instances/app/resources', { name: 'db', type: 'sqlite', connection: src.db })).status, 201);
      assert.equal((await api('POST', '/api/v1/instances/app/resources', { name: 'www', type: 'files', connection: src.www })).status, 201);
      assert.equal((await api('POST', '/api/v1/instances', { name: 'blog' })).status, 201);
      assert.equal((await api('POST', '/api/v1/instances/blog/resources', { name: 'db', type: 'sqlite', connection: src.blog })).status, 201);
      const requests = [
        ['app', { type: 'full' }],
        ['app', { type: 'partial', selection: { db: ['users'] }, compression: 'gzip', label: 'users only', description: 'before the migration' }],
        ['app', { type: 'full', exclude: { www: ['*.log'] }, compression: 'none' }],
        ['blog', { type: 'full' }],
      ] as const;
      for (const [instance, body] of requests) {
        const created = await api('POST', `/api/v1/instances/${instance}/backups`, body);
        assert.equal(created.status, 202, JSON.stringify(created.body));
        const done = await waitFor(api, `/api/v1/backups/${created.body.id}`);
        assert.equal(done.status, 'success', done.status_info);
        originals.set(done.id, done);
      }

      // While the server holds the directory, a rebuild must refuse and change nothing.
      const refused = await runCli(['catalog', 'rebuild', '--dir', dataDir]);
      assert.equal(refused.status, 1, refused.stderr);
      assert.match(refused.stderr, /another Backvault server \(pid \d+\) is using/);
      assert.match(refused.stderr, /needs the catalog to itself/);
      assert.equal((await api('GET', '/api/v1/backups')).body.items.length, 4);
    } finally {
      await server.close();
    }
  });

  after(async () => {
    await work?.cleanup();
  });

  test('a deleted catalog loses no backup: all come back and restore into new targets without resources', async () => {
    await removeCatalog(dataDir);
    const storage = join(dataDir, 'storage', 'backups');
    const [appFull] = [...originals.values()];
    // Three directories that are not complete backups: never added.
    const incomplete = '0'.repeat(23) + '1';
    await mkdir(join(storage, incomplete, 'resources', 'db'), { recursive: true });
    await writeFile(join(storage, incomplete, 'resources', 'db', 'database.sqlite.zst'), 'half a dump');
    const noArtifact = '0'.repeat(23) + '2';
    const manifest = JSON.parse(await readFile(join(storage, appFull.id, 'manifest.json'), 'utf8'));
    await mkdir(join(storage, noArtifact), { recursive: true });
    await writeFile(join(storage, noArtifact, 'manifest.json'), JSON.stringify({ ...manifest, backup_id: noArtifact }));
    const invalid = '0'.repeat(23) + '3';
    await mkdir(join(storage, invalid), { recursive: true });
    await writeFile(join(storage, invalid, 'manifest.json'), JSON.stringify({ format: 'backvault/1', backup_id: invalid }));

    const dry = await runCli(['--json', 'catalog', 'rebuild', '--dir', dataDir, '--dry-run']);
    assert.equal(dry.status, 0, dry.stderr);
    const planned = JSON.parse(dry.stdout);
    assert.equal(planned.dry_run, true);
    assert.equal(planned.scanned, 7);
    assert.deepEqual(planned.instances.created, ['app', 'blog']);
    assert.deepEqual(planned.backups.inserted.map((b: any) => b.id).sort(), [...originals.keys()].sort());
    assert.equal(existsSync(join(dataDir, 'catalog.db')), false, 'a dry run writes no catalog');

    const human = await runCli(['catalog', 'rebuild', '--dir', dataDir, '--dry-run']);
    assert.equal(human.status, 0, human.stderr);
    assert.match(human.stdout, /Backups: 4 would be added/);
    assert.match(human.stdout, /without resources/);
    assert.match(human.stdout, /Dry run: nothing was written/);

    const run = await runCli(['--json', 'catalog', 'rebuild', '--dir', dataDir]);
    assert.equal(run.status, 0, run.stderr);
    const report = JSON.parse(run.stdout);
    assert.equal(report.dry_run, false);
    assert.equal(report.backups.inserted.length, 4);
    assert.deepEqual(report.conflicts, []);
    const skipped = Object.fromEntries(report.skipped.map((s: any) => [s.backup_id, s.reason]));
    assert.deepEqual(Object.keys(skipped).sort(), [incomplete, noArtifact, invalid]);
    assert.match(skipped[incomplete], /no manifest\.json/);
    assert.match(skipped[noArtifact], /resources\/db\/database\.sqlite\.zst is missing/);
    assert.match(skipped[invalid], /not a valid backvault\/1 manifest/);
    assert.ok(report.notes.some((n: string) => /re-add/i.test(n)));

    // The server starts on the rebuilt catalog; with no key left it makes a new one.
    const server = await startServer(config(dataDir));
    try {
      assert.ok(server.initialKey, 'a new catalog gets a new admin key');
      const api = apiFor(server.url, server.initialKey.key);
      const listed = (await api('GET', '/api/v1/backups?per_page=50')).body.items as any[];
      assert.equal(listed.length, 4);
      for (const b of listed) {
        assert.deepEqual(essence(b), essence(originals.get(b.id)), `backup ${b.id} comes back as it was`);
        assert.equal(b.origin, 'import');
        assert.match(b.status_info, /catalog rebuild/);
      }
      const app = (await api('GET', '/api/v1/instances/app')).body;
      assert.deepEqual(app.resources, [], 'resources hold secrets and are not in storage');

      // In place needs the resource back; a new target needs nothing.
      const inPlace = await api('POST', '/api/v1/instances/app/restores', { backup: appFull.id });
      assert.equal(inPlace.status, 404);
      assert.equal(inPlace.body.error.code, 'resource_not_found');
      const targets = { db: { connection: join(work.path, 'restored.db') }, www: { connection: join(work.path, 'restored-www') } };
      const r = await api('POST', '/api/v1/instances/app/restores', { backup: appFull.id, targets });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const restored = await waitFor(api, `/api/v1/restores/${r.body.id}`);
      assert.equal(restored.status, 'success', restored.status_info);
      assert.deepEqual(dumpDb(targets.db.connection), dumpDb(src.db));
      assert.deepEqual(await treeOf(targets.www.connection), await treeOf(src.www));

      // The partial backup restores its one table.
      const partial = [...originals.values()].find((b) => b.type === 'partial');
      const pr = await api('POST', '/api/v1/instances/app/restores', { backup: partial.id, targets: { db: { connection: join(work.path, 'partial.db') } } });
      assert.equal((await waitFor(api, `/api/v1/restores/${pr.body.id}`)).status, 'success');
      const pdb = new Database(join(work.path, 'partial.db'), { readonly: true });
      assert.equal((pdb.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n, 300);
      pdb.close();

      // Once the resource is re-added, the instance backs up again.
      assert.equal((await api('POST', '/api/v1/instances/blog/resources', { name: 'db', type: 'sqlite', connection: src.blog })).status, 201);
      const next = await api('POST', '/api/v1/instances/blog/backups', { type: 'full' });
      const nextDone = await waitFor(api, `/api/v1/backups/${next.body.id}`);
      assert.equal(nextDone.status, 'success', nextDone.status_info);
      originals.set(nextDone.id, nextDone);
    } finally {
      await server.close();
    }
  });

  test('a second rebuild changes nothing; a damaged catalog is repaired; a failed backup is not overruled', async () => {
    const path = join(dataDir, 'catalog.db');
    const before = new Database(path, { readonly: true });
    const stamps = Object.fromEntries((before.prepare('SELECT id, updated_at FROM backups').all() as { id: string; updated_at: string }[]).map((r) => [r.id, r.updated_at]));
    before.close();

    const again = await runCli(['--json', 'catalog', 'rebuild', '--dir', dataDir]);
    assert.equal(again.status, 0, again.stderr);
    const same = JSON.parse(again.stdout);
    assert.equal(same.backups.inserted.length, 0);
    assert.equal(same.backups.updated.length, 0);
    assert.equal(same.backups.unchanged, 5);
    assert.deepEqual(same.instances.created, []);

    const [dropped, damaged, failed] = [...originals.keys()] as [string, string, string];
    const db = new Database(path);
    db.prepare('DELETE FROM backups WHERE id = ?').run(dropped);
    db.prepare(`UPDATE backups SET size = 1, resources = '[]' WHERE id = ?`).run(damaged);
    db.prepare(`UPDATE backups SET status = 'error', status_info = 'cancelled by request' WHERE id = ?`).run(failed);
    db.prepare(`DELETE FROM instances WHERE name = 'blog'`).run();
    db.close();

    const repaired = JSON.parse((await runCli(['--json', 'catalog', 'rebuild', '--dir', dataDir])).stdout);
    assert.deepEqual(repaired.backups.inserted.map((b: any) => b.id), [dropped]);
    assert.deepEqual(repaired.backups.updated.map((b: any) => [b.id, b.fields]), [[damaged, ['size', 'resources']]]);
    assert.deepEqual(repaired.conflicts.map((c: any) => c.backup_id), [failed]);
    assert.match(repaired.conflicts[0].reason, /catalog says error/);
    assert.equal(repaired.backups.unchanged, 2);
    assert.deepEqual(repaired.instances.created, ['blog'], 'an instance lost from the catalog comes back for its backups');

    const after = new Database(path, { readonly: true });
    const rows = after.prepare('SELECT id, status, size, resources, updated_at FROM backups').all() as { id: string; status: string; size: number; resources: string; updated_at: string }[];
    after.close();
    const byId = new Map(rows.map((r) => [r.id, r]));
    assert.equal(byId.get(damaged)!.size, originals.get(damaged).size);
    assert.deepEqual(JSON.parse(byId.get(damaged)!.resources), originals.get(damaged).resources);
    assert.equal(byId.get(failed)!.status, 'error', 'a failure recorded in the catalog stands');
    for (const id of Object.keys(stamps)) {
      if (id === dropped || id === damaged || id === failed) continue;
      assert.equal(byId.get(id)!.updated_at, stamps[id], `row ${id} that agreed is not touched`);
    }
  });

  test('a catalog file that cannot be opened is named, with what to do', async () => {
    const path = join(dataDir, 'catalog.db');
    await removeCatalog(dataDir);
    await writeFile(path, randomBytes(8192));
    const run = await runCli(['catalog', 'rebuild', '--dir', dataDir]);
    assert.equal(run.status, 1);
    assert.match(run.stderr, /cannot be opened/);
    assert.match(run.stderr, /move it aside/);
    assert.equal((await stat(path)).size, 8192, 'the damaged file is left as it was');
    assert.equal(existsSync(join(dataDir, 'backvault.lock')), false, 'the lock is released');
  });
});

test('catalog rebuild on a new machine with only the S3 bucket', async (t) => {
  const conn = s3Connection();
  const bucket = `bv-rebuild-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const admin = s3AdminClient(conn);
  await admin.send(new CreateBucketCommand({ Bucket: bucket }));
  const work = await tempDir('bv-rebuild-s3-');
  t.after(async () => {
    await work.cleanup();
    const objects = await admin.send(new ListObjectsV2Command({ Bucket: bucket }));
    for (const o of objects.Contents ?? []) await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key! }));
    await admin.send(new DeleteBucketCommand({ Bucket: bucket }));
    admin.destroy();
  });
  const s3 = { storage: `s3://${bucket}/bv`, s3_endpoint: conn.endpoint, s3_region: conn.region, s3_access_key: conn.accessKeyId, s3_secret_key: conn.secretAccessKey };
  const dbPath = join(work.path, 'app.db');
  makeDb(dbPath, 100);

  const first = await startServer(config(join(work.path, 'old-machine'), s3));
  let backup: any;
  try {
    const api = apiFor(first.url, first.initialKey!.key);
    await api('POST', '/api/v1/instances', { name: 's3app' });
    await api('POST', '/api/v1/instances/s3app/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    backup = await waitFor(api, `/api/v1/backups/${(await api('POST', '/api/v1/instances/s3app/backups', { type: 'full' })).body.id}`);
    assert.equal(backup.status, 'success', backup.status_info);
  } finally {
    await first.close();
  }

  // A new data directory: no catalog at all, only the bucket and its keys (from the environment).
  const fresh = join(work.path, 'new-machine');
  const env = { BACKVAULT_S3_ENDPOINT: conn.endpoint, BACKVAULT_S3_REGION: conn.region, BACKVAULT_S3_ACCESS_KEY: conn.accessKeyId, BACKVAULT_S3_SECRET_KEY: conn.secretAccessKey };
  const run = await runCli(['--json', 'catalog', 'rebuild', '--dir', fresh, '--storage', s3.storage], env);
  assert.equal(run.status, 0, run.stderr);
  const report = JSON.parse(run.stdout);
  assert.deepEqual(report.backups.inserted.map((b: any) => b.id), [backup.id]);
  assert.ok(!run.stdout.includes(conn.secretAccessKey), 'no secret in the report');

  const second = await startServer(config(fresh, s3));
  try {
    const api = apiFor(second.url, second.initialKey!.key);
    const b = (await api('GET', `/api/v1/backups/${backup.id}`)).body;
    assert.deepEqual(essence(b), essence(backup));
    const target = join(work.path, 'restored.db');
    const r = await api('POST', '/api/v1/instances/s3app/restores', { backup: backup.id, targets: { db: { connection: target } } });
    assert.equal((await waitFor(api, `/api/v1/restores/${r.body.id}`)).status, 'success');
    assert.deepEqual(dumpDb(target), dumpDb(dbPath));
  } finally {
    await second.close();
  }
});
