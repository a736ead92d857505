// End-to-end through the HTTP API against a real server, real SQLite files,
// a real directory tree and local storage.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, mkdir, readFile, readdir, stat, rm, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import tar from 'tar-stream';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';
import { createBackup } from '../src/services/backups.ts';

function makeDb(path: string, rows = 200): void {
  const db = new Database(path);
  db.exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB);
           CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), total REAL);
           CREATE TABLE audit (id INTEGER PRIMARY KEY, at TEXT);
           CREATE INDEX orders_user ON orders(user_id);
           CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 50;`);
  const u = db.prepare('INSERT INTO users (name, avatar) VALUES (?, ?)');
  const o = db.prepare('INSERT INTO orders (user_id, total) VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= rows; i++) {
      u.run(`user ${i} ✓ ünïcode`, Buffer.from([i % 256, 0, 255, 1]));
      o.run(i, i * 1.5);
    }
    db.prepare('INSERT INTO audit (at) VALUES (?)').run('2026-01-01');
  })();
  db.close();
}

function dumpDb(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name`).all() as { name: string }[];
  const out: Record<string, unknown[]> = {};
  for (const { name } of tables) out[name] = db.prepare(`SELECT * FROM "${name}" ORDER BY rowid`).all();
  db.close();
  return out;
}

async function treeOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(rel: string) {
    for (const name of (await readdir(join(dir, rel))).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = await stat(join(dir, p));
      if (st.isDirectory()) {
        out[p + '/'] = (st.mode & 0o777).toString(8);
        await walk(p);
      } else out[p] = createHash('sha256').update(await readFile(join(dir, p))).digest('hex') + ' ' + (st.mode & 0o777).toString(8);
    }
  }
  await walk('');
  return out;
}

async function upload(t: TestServer, instance: string, data: Buffer, key = t.adminKey) {
  const fd = new FormData();
  fd.append('file', new Blob([new Uint8Array(data)]), 'archive.tar');
  const res = await fetch(`${t.url}/api/v1/instances/${instance}/backups/import`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: fd });
  return { status: res.status, body: (await res.json()) as any };
}

async function download(t: TestServer, id: string): Promise<Buffer> {
  const link = await t.api('POST', `/api/v1/backups/${id}/download-link`, {});
  assert.equal(link.status, 200, JSON.stringify(link.body));
  const res = await fetch(link.body.url);
  assert.equal(res.status, 200);
  return Buffer.from(await res.arrayBuffer());
}

async function buildTar(entries: { name: string; data?: Buffer; type?: 'file' | 'symlink' | 'link' | 'directory'; linkname?: string }[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => {
    chunks.push(c as Buffer);
  });
  const done = new Promise<void>((r) => pack.on('end', () => r()));
  for (const e of entries) {
    await new Promise<void>((resolve, reject) =>
      pack.entry({ name: e.name, type: e.type ?? 'file', linkname: e.linkname, size: e.data?.length ?? 0 }, e.data ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())),
    );
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function untarList(buf: Buffer, dir: string): string[] {
  execFileSync('tar', ['-xf', '-', '-C', dir], { input: buf });
  return execFileSync('tar', ['-tf', '-'], { input: buf }).toString().trim().split('\n');
}

describe('API end to end', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };

  before(async () => {
    t = await startTestServer();
    work = await tempDir();
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('health and openapi need no auth; everything else does; rate-limit headers everywhere', async () => {
    const h = await t.api('GET', '/api/v1/health', undefined, null);
    assert.equal(h.status, 200);
    assert.ok(h.headers.get('x-ratelimit-limit'));
    assert.ok(h.headers.get('x-ratelimit-remaining'));
    const o = await t.api('GET', '/api/v1/openapi.json', undefined, null);
    assert.equal(o.status, 200);
    assert.ok(o.body.paths['/api/v1/instances/{instance}/backups']);
    assert.deepEqual(Object.keys(o.body.paths).filter((p) => !p.startsWith('/api/v1/')), [], 'dialect routes stay out of the native document');
    const none = await t.api('GET', '/api/v1/backups', undefined, null);
    assert.equal(none.status, 401);
    assert.equal(none.body.error.code, 'unauthorized');
    assert.ok(none.headers.get('x-ratelimit-remaining'));
    const bad = await t.api('GET', '/api/v1/backups', undefined, 'bvk_not-a-real-key');
    assert.equal(bad.status, 401);
    const missing = await t.api('GET', '/api/v1/nope');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'not_found');
    assert.ok(missing.headers.get('x-ratelimit-limit'));
  });

  test('auth matrix: read keys read, admin keys write, login tokens expire', async () => {
    const readKey = (await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' })).body.key as string;
    assert.match(readKey, /^bvk_/);
    const keys = await t.api('GET', '/api/v1/keys');
    assert.ok(!JSON.stringify(keys.body).includes(readKey), 'a key list never shows secrets');
    assert.equal((await t.api('GET', '/api/v1/instances', undefined, readKey)).status, 200);
    for (const [method, path, body] of [
      ['POST', '/api/v1/instances', { name: 'nope' }],
      ['POST', '/api/v1/keys', { name: 'x', scope: 'admin' }],
      ['GET', '/api/v1/keys', undefined],
      ['POST', '/api/v1/instances/x/restores', { backup: '0'.repeat(24) }],
      ['POST', '/api/v1/instances/x/backups/import', { url: 'https://example.com/a.tar' }],
      ['DELETE', '/api/v1/backups/' + '0'.repeat(24), undefined],
    ] as const) {
      const res = await t.api(method, path, body, readKey);
      assert.equal(res.status, 403, `${method} ${path} with a read key`);
      assert.equal(res.body.error.code, 'forbidden');
    }
    // superuser login
    const { upsertSuperuser } = await import('../src/services/auth.ts');
    await upsertSuperuser(t.server.ctx.db, 'admin@example.com', 'correct horse battery', new Date());
    const wrong = await t.api('POST', '/api/v1/auth/login', { email: 'admin@example.com', password: 'wrong password!' }, null);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, 'invalid_credentials');
    const login = await t.api('POST', '/api/v1/auth/login', { email: 'admin@example.com', password: 'correct horse battery' }, null);
    assert.equal(login.status, 200);
    assert.equal((await t.api('GET', '/api/v1/keys', undefined, login.body.token)).status, 200);
    const tampered = login.body.token.slice(0, -3) + (login.body.token.endsWith('AAA') ? 'BBB' : 'AAA');
    assert.equal((await t.api('GET', '/api/v1/keys', undefined, tampered)).status, 401);
    t.clock.advance(25 * 3600 * 1000);
    try {
      const expired = await t.api('GET', '/api/v1/keys', undefined, login.body.token);
      assert.equal(expired.status, 401);
      assert.equal(expired.body.error.code, 'token_expired');
    } finally {
      t.clock.advance(-25 * 3600 * 1000);
    }
  });

  test('invalid input gets a stable code', async () => {
    const badName = await t.api('POST', '/api/v1/instances', { name: '../Etc' });
    assert.equal(badName.status, 400);
    assert.equal(badName.body.error.code, 'invalid_request');
    const wrongType = await t.api('POST', '/api/v1/instances', { name: 123 });
    assert.equal(wrongType.status, 400);
    const notJson = await fetch(`${t.url}/api/v1/instances`, { method: 'POST', headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'application/json' }, body: '{nope' });
    assert.equal(notJson.status, 400);
    assert.equal(((await notJson.json()) as any).error.code, 'invalid_request');
    const huge = await fetch(`${t.url}/api/v1/instances`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'big', description: 'x'.repeat(2 * 1024 * 1024) }),
    });
    assert.equal(huge.status, 413);
    assert.equal(((await huge.json()) as any).error.code, 'payload_too_large');
    await t.api('POST', '/api/v1/instances', { name: 'dup' });
    const dup = await t.api('POST', '/api/v1/instances', { name: 'dup' });
    assert.equal(dup.status, 409);
    assert.equal(dup.body.error.code, 'already_exists');
    const relPath = await t.api('POST', '/api/v1/instances/dup/resources', { name: 'db', type: 'sqlite', connection: 'relative/path.db' });
    assert.equal(relPath.status, 400);
    assert.equal(relPath.body.error.code, 'invalid_connection');
    const longLabel = await t.api('POST', '/api/v1/instances/dup/backups', { type: 'full', label: 'x'.repeat(65) });
    assert.equal(longLabel.status, 400);
  });

  test('sqlite: backup, download, delete, import, restore in place and into a new file', async () => {
    const dbPath = join(work.path, 'app.db');
    makeDb(dbPath);
    const original = dumpDb(dbPath);
    assert.equal((await t.api('POST', '/api/v1/instances', { name: 'shop' })).status, 201);
    const res = await t.api('POST', '/api/v1/instances/shop/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const objects = await t.api('GET', '/api/v1/instances/shop/resources/db/objects');
    assert.deepEqual(objects.body.items.filter((o: any) => o.kind === 'table').map((o: any) => o.name).sort(), ['audit', 'orders', 'users']);

    const created = await t.api('POST', '/api/v1/instances/shop/backups', { type: 'full', label: 'first', description: 'before the migration' });
    assert.equal(created.status, 202);
    assert.equal(created.body.status, 'scheduled');
    const backup = await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    assert.equal(backup.status, 'success', backup.status_info);
    assert.equal(backup.label, 'first');
    assert.equal(backup.compression, 'zstd');
    assert.ok(backup.started_at && backup.finished_at);
    assert.equal(backup.resources.length, 1);
    assert.equal(backup.resources[0].artifact, 'database.sqlite.zst');
    assert.deepEqual(backup.resources[0].counts.tables, { audit: 1, orders: 200, users: 200 });
    assert.match(backup.resources[0].sha256, /^[0-9a-f]{64}$/);
    assert.equal(backup.links.download, `/api/v1/backups/${backup.id}/download`);

    const files = await t.api('GET', `/api/v1/backups/${backup.id}/files`);
    assert.deepEqual(files.body.items.map((f: any) => f.path), ['manifest.json', 'resources/db/database.sqlite.zst']);

    // The archive restores with standard tools alone.
    const archive = await download(t, backup.id);
    const x = join(work.path, 'extract');
    await mkdir(x);
    assert.deepEqual(untarList(archive, x), ['manifest.json', 'resources/db/database.sqlite.zst']);
    const manifest = JSON.parse(await readFile(join(x, 'manifest.json'), 'utf8'));
    assert.equal(manifest.format, 'backvault/1');
    execFileSync('zstd', ['-d', '-q', join(x, 'resources/db/database.sqlite.zst'), '-o', join(x, 'restored.db')]);
    assert.deepEqual(dumpDb(join(x, 'restored.db')), original);
    assert.equal(execFileSync('sqlite3', [join(x, 'restored.db'), 'PRAGMA integrity_check']).toString().trim(), 'ok');

    // Range: a resumed download gets exactly the rest.
    const link = await t.api('POST', `/api/v1/backups/${backup.id}/download-link`, { expires_in: 60 });
    const ranged = await fetch(link.body.url, { headers: { range: 'bytes=700-' } });
    assert.equal(ranged.status, 206);
    assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), archive.subarray(700));

    // Download tokens: tampered, for another backup, or expired are refused.
    const token = new URL(link.body.url).searchParams.get('token')!;
    const tampered = await fetch(`${t.url}/api/v1/backups/${backup.id}/download?token=${token.slice(0, -2)}xx`);
    assert.equal(tampered.status, 401);
    assert.equal(((await tampered.json()) as any).error.code, 'invalid_download_token');
    const other = await fetch(`${t.url}/api/v1/backups/${'0'.repeat(24)}/download?token=${token}`);
    assert.equal(other.status, 401);
    t.clock.advance(120_000);
    try {
      const expired = await fetch(link.body.url);
      assert.equal(expired.status, 401);
    } finally {
      t.clock.advance(-120_000);
    }

    // Delete, then import the downloaded archive: it comes back as a new backup.
    assert.equal((await t.api('DELETE', `/api/v1/backups/${backup.id}`)).status, 204);
    assert.equal((await t.api('GET', `/api/v1/backups/${backup.id}`)).status, 404);
    const imported = await upload(t, 'shop', archive);
    assert.equal(imported.status, 202, JSON.stringify(imported.body));
    const ib = await waitFor(t.api, `/api/v1/backups/${imported.body.id}`);
    assert.equal(ib.status, 'success', ib.status_info);
    assert.equal(ib.origin, 'import');
    assert.deepEqual(ib.resources[0].counts, backup.resources[0].counts);

    // Change the database, then restore in place: it is equal to the backup again.
    const live = new Database(dbPath);
    live.exec(`DELETE FROM orders WHERE id > 10; UPDATE users SET name = 'changed'; CREATE TABLE extra (x); INSERT INTO extra VALUES (1);`);
    live.close();
    const restore = await t.api('POST', '/api/v1/instances/shop/restores', { backup: ib.id });
    assert.equal(restore.status, 202, JSON.stringify(restore.body));
    const done = await waitFor(t.api, `/api/v1/restores/${restore.body.id}`);
    assert.equal(done.status, 'success', done.status_info);
    assert.deepEqual(dumpDb(dbPath), original);
    assert.equal(done.result.resources[0].ok, true);

    // Into a new file, created with its directory.
    const target = join(work.path, 'copies', 'new.db');
    const r2 = await t.api('POST', '/api/v1/instances/shop/restores', { backup: ib.id, targets: { db: { connection: target } } });
    assert.equal(r2.status, 202, JSON.stringify(r2.body));
    assert.equal((await waitFor(t.api, `/api/v1/restores/${r2.body.id}`)).status, 'success');
    assert.deepEqual(dumpDb(target), original);

    const list = await t.api('GET', '/api/v1/instances/shop/backups?status=success&per_page=1');
    assert.equal(list.body.pagination.total, 1);
    assert.equal(list.body.items.length, 1);
    const all = await t.api('GET', '/api/v1/backups?type=full');
    assert.ok(all.body.items.some((b: any) => b.id === ib.id));
  });

  test('sqlite partial backup takes only the selected tables', async () => {
    const dbPath = join(work.path, 'partial.db');
    makeDb(dbPath, 20);
    await t.api('POST', '/api/v1/instances', { name: 'part' });
    await t.api('POST', '/api/v1/instances/part/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const bad = await t.api('POST', '/api/v1/instances/part/backups', { type: 'partial', selection: { db: ['users', 'nonexistent'] } });
    if (bad.status === 202) {
      const b = await waitFor(t.api, `/api/v1/backups/${bad.body.id}`);
      assert.equal(b.status, 'error');
      assert.match(b.status_info, /nonexistent/);
    } else assert.equal(bad.body.error.code, 'invalid_selection');
    const unknownRes = await t.api('POST', '/api/v1/instances/part/backups', { type: 'partial', selection: { nope: null } });
    assert.equal(unknownRes.status, 400);
    assert.equal(unknownRes.body.error.code, 'invalid_selection');
    const created = await t.api('POST', '/api/v1/instances/part/backups', { type: 'partial', selection: { db: ['users', 'audit'] }, compression: 'gzip' });
    const b = await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    assert.equal(b.status, 'success', b.status_info);
    assert.equal(b.type, 'partial');
    assert.deepEqual(Object.keys(b.resources[0].counts.tables).sort(), ['audit', 'users']);
    assert.equal(b.resources[0].artifact, 'database.sqlite.gz');
    const excl = await t.api('POST', '/api/v1/instances/part/backups', { type: 'full', exclude: { db: ['orders'] }, compression: 'none' });
    const e = await waitFor(t.api, `/api/v1/backups/${excl.body.id}`);
    assert.equal(e.status, 'success', e.status_info);
    assert.deepEqual(Object.keys(e.resources[0].counts.tables).sort(), ['audit', 'users']);
  });

  test('files: round trip, in place and into a new directory', async () => {
    const src = join(work.path, 'site');
    await mkdir(join(src, 'uploads/2026'), { recursive: true });
    await mkdir(join(src, 'empty'));
    await writeFile(join(src, 'index.html'), '<h1>hi</h1>');
    await writeFile(join(src, 'uploads/2026/photo.bin'), Buffer.alloc(300_000, 7));
    await writeFile(join(src, 'secret.env'), 'TOKEN=1');
    await chmod(join(src, 'secret.env'), 0o600);
    const before = await treeOf(src);
    await t.api('POST', '/api/v1/instances', { name: 'site' });
    await t.api('POST', '/api/v1/instances/site/resources', { name: 'www', type: 'files', connection: src });
    const created = await t.api('POST', '/api/v1/instances/site/backups', { type: 'full' });
    const b = await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    assert.equal(b.status, 'success', b.status_info);
    assert.equal(b.resources[0].counts.files, 3);

    await writeFile(join(src, 'index.html'), 'defaced');
    await writeFile(join(src, 'added-later.txt'), 'x');
    await rm(join(src, 'uploads'), { recursive: true });
    const r = await t.api('POST', '/api/v1/instances/site/restores', { backup: b.id });
    const done = await waitFor(t.api, `/api/v1/restores/${r.body.id}`);
    assert.equal(done.status, 'success', done.status_info);
    assert.deepEqual(await treeOf(src), before);

    const target = join(work.path, 'site-copy');
    const r2 = await t.api('POST', '/api/v1/instances/site/restores', { backup: b.id, targets: { www: { connection: target } } });
    assert.equal((await waitFor(t.api, `/api/v1/restores/${r2.body.id}`)).status, 'success');
    assert.deepEqual(await treeOf(target), before);

    const verify = await t.api('POST', `/api/v1/backups/${b.id}/verify`);
    assert.equal(verify.status, 202);
    const verified = await waitFor(t.api, `/api/v1/backups/${b.id}`, 'verify_status');
    assert.equal(verified.verify_status, 'success', JSON.stringify(verified.verify_result));
  });

  test('a drill of a backup whose stored artifact was damaged fails and names the artifact', async () => {
    const dbPath = join(work.path, 'drill.db');
    makeDb(dbPath, 30);
    await t.api('POST', '/api/v1/instances', { name: 'drill' });
    await t.api('POST', '/api/v1/instances/drill/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const b = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/drill/backups', { type: 'full' })).body.id}`);
    assert.equal(b.status, 'success', b.status_info);
    const stored = join(t.dir, 'storage', 'backups', b.id, 'resources', 'db', 'database.sqlite.zst');
    const bytes = await readFile(stored);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x55;
    await writeFile(stored, bytes);
    assert.equal((await t.api('POST', `/api/v1/backups/${b.id}/verify`)).status, 202);
    const v = await waitFor(t.api, `/api/v1/backups/${b.id}`, 'verify_status');
    assert.equal(v.verify_status, 'error');
    assert.match(JSON.stringify(v.verify_result), /resources\/db\/database\.sqlite\.zst/);
    // A restore from it fails too, and the live database is untouched.
    const before = dumpDb(dbPath);
    const r = await t.api('POST', '/api/v1/instances/drill/restores', { backup: b.id });
    const done = await waitFor(t.api, `/api/v1/restores/${r.body.id}`);
    assert.equal(done.status, 'error');
    assert.match(done.status_info, /database\.sqlite\.zst/);
    assert.deepEqual(dumpDb(dbPath), before);
  });

  test('an export encrypted with a passphrase decrypts to the exchange archive', async () => {
    const dbPath = join(work.path, 'export.db');
    makeDb(dbPath, 10);
    await t.api('POST', '/api/v1/instances', { name: 'exp' });
    await t.api('POST', '/api/v1/instances/exp/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const b = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/exp/backups', { type: 'full' })).body.id}`);
    const plain = await download(t, b.id);
    const short = await t.api('POST', `/api/v1/backups/${b.id}/export`, { passphrase: 'short' });
    assert.equal(short.status, 400);
    const res = await fetch(`${t.url}/api/v1/backups/${b.id}/export`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ passphrase: 'correct horse battery staple' }),
    });
    assert.equal(res.status, 200);
    const sealed = Buffer.from(await res.arrayBuffer());
    assert.equal(Number(res.headers.get('content-length')), sealed.length);
    assert.equal(sealed.includes(Buffer.from('manifest.json')), false, 'nothing readable inside');
    const { decryptExport } = await import('../src/storage/encrypted.ts');
    const { Readable } = await import('node:stream');
    const opened = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      decryptExport(Readable.from([sealed]), 'correct horse battery staple')
        .on('data', (c: Buffer) => chunks.push(c))
        .on('end', () => resolve(Buffer.concat(chunks)))
        .on('error', reject);
    });
    assert.deepEqual(opened, plain);
    await assert.rejects(
      new Promise((resolve, reject) => decryptExport(Readable.from([sealed]), 'wrong passphrase here').on('data', () => undefined).on('end', resolve).on('error', reject)),
    );
  });

  test('bad uploads are refused with a clear code and leave nothing behind', async () => {
    await t.api('POST', '/api/v1/instances', { name: 'imp' });
    const dbPath = join(work.path, 'imp.db');
    makeDb(dbPath, 5);
    await t.api('POST', '/api/v1/instances/imp/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const good = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/imp/backups', { type: 'full' })).body.id}`);
    const archive = await download(t, good.id);
    const x = join(work.path, 'imp-x');
    await mkdir(x);
    untarList(archive, x);
    const manifestBytes = await readFile(join(x, 'manifest.json'));
    const artifact = await readFile(join(x, 'resources/db/database.sqlite.zst'));
    const flipped = Buffer.from(artifact);
    flipped[Math.floor(flipped.length / 2)]! ^= 0xff;
    const cases: [string, Buffer, string][] = [
      ['garbage', Buffer.from('this is not a tar file at all'.repeat(40)), 'invalid_archive'],
      ['manifest not first', await buildTar([{ name: 'resources/db/database.sqlite.zst', data: artifact }, { name: 'manifest.json', data: manifestBytes }]), 'invalid_archive'],
      ['manifest not JSON', await buildTar([{ name: 'manifest.json', data: Buffer.from('{nope') }]), 'invalid_archive'],
      ['manifest wrong schema', await buildTar([{ name: 'manifest.json', data: Buffer.from('{"format":"backvault/1"}') }]), 'invalid_archive'],
      ['checksum mismatch', await buildTar([{ name: 'manifest.json', data: manifestBytes }, { name: 'resources/db/database.sqlite.zst', data: flipped }]), 'checksum_mismatch'],
      ['dot-dot entry', await buildTar([{ name: 'manifest.json', data: manifestBytes }, { name: 'resources/db/../../../evil', data: artifact }]), 'unsafe_path'],
      ['absolute entry', await buildTar([{ name: 'manifest.json', data: manifestBytes }, { name: '/etc/evil', data: artifact }]), 'unsafe_path'],
      ['symlink entry', await buildTar([{ name: 'manifest.json', data: manifestBytes }, { name: 'resources/db/database.sqlite.zst', type: 'symlink', linkname: '/etc/passwd' }]), 'unsafe_path'],
      ['missing artifact', await buildTar([{ name: 'manifest.json', data: manifestBytes }]), 'invalid_archive'],
    ];
    const before = (await t.api('GET', '/api/v1/instances/imp/backups')).body.pagination.total;
    for (const [name, data, code] of cases) {
      const res = await upload(t, 'imp', data);
      assert.equal(res.status >= 400 && res.status < 500, true, `${name}: status ${res.status} ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, code, `${name}: ${JSON.stringify(res.body)}`);
    }
    assert.equal((await t.api('GET', '/api/v1/instances/imp/backups')).body.pagination.total, before, 'no backup row is left by a refused upload');
    const stored = await readdir(join(t.dir, 'storage', 'backups'));
    const ids = (await t.api('GET', '/api/v1/backups?per_page=500')).body.items.map((b: any) => b.id);
    assert.deepEqual(stored.filter((id) => !ids.includes(id)), [], 'no objects are left by a refused upload');
  });

  test('a second restore while one waits gets 409; a used backup cannot be deleted; quota', async () => {
    const src = join(work.path, 'busy');
    await mkdir(src);
    await writeFile(join(src, 'a.txt'), 'a');
    await t.api('POST', '/api/v1/instances', { name: 'busy', max_backups: 3 });
    await t.api('POST', '/api/v1/instances/busy/resources', { name: 'www', type: 'files', connection: src });
    const first = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/busy/backups', { type: 'full' })).body.id}`);
    assert.equal(first.status, 'success');
    // Stop the workers so queued jobs stay queued while we probe.
    await t.server.pool.stop();
    try {
      const r1 = await t.api('POST', '/api/v1/instances/busy/restores', { backup: first.id });
      assert.equal(r1.status, 202);
      const r2 = await t.api('POST', '/api/v1/instances/busy/restores', { backup: first.id });
      assert.equal(r2.status, 409);
      assert.equal(r2.body.error.code, 'operation_in_progress');
      const del = await t.api('DELETE', `/api/v1/backups/${first.id}`);
      assert.equal(del.status, 409);
      assert.equal(del.body.error.code, 'backup_in_use');
      // Backups queue behind the restore rather than failing.
      const b2 = await t.api('POST', '/api/v1/instances/busy/backups', { type: 'full' });
      assert.equal(b2.status, 202);
      const b3 = await t.api('POST', '/api/v1/instances/busy/backups', { type: 'full' });
      assert.equal(b3.status, 202);
      const b4 = await t.api('POST', '/api/v1/instances/busy/backups', { type: 'full' });
      assert.equal(b4.status, 409);
      assert.equal(b4.body.error.code, 'quota_exceeded');
      // Cancelling a scheduled backup ends it in error at once.
      const c = await t.api('POST', `/api/v1/backups/${b3.body.id}/cancel`);
      assert.equal(c.status, 200);
      assert.equal(c.body.status, 'error');
      assert.match(c.body.status_info, /cancel/);
    } finally {
      t.server.pool.start();
    }
    await t.server.pool.idle();
    const restores = await t.api('GET', '/api/v1/instances/busy/restores');
    assert.equal(restores.body.items[0].status, 'success');
  });

  test('concurrent requests for the last places of a quota: exactly that many backups are made', async () => {
    const src = join(work.path, 'quota-race');
    await mkdir(src);
    await writeFile(join(src, 'a.txt'), 'a');
    await t.api('POST', '/api/v1/instances', { name: 'quota-race', max_backups: 2 });
    await t.api('POST', '/api/v1/instances/quota-race/resources', { name: 'www', type: 'files', connection: src });
    // Called in one tick, the eight creations interleave at every catalog query, as requests do
    // whenever one of them waits on I/O (and as a second process on the catalog does).
    const answers = await Promise.allSettled(Array.from({ length: 8 }, () => createBackup(t.server.ctx, 'quota-race', { type: 'full' })));
    assert.equal(answers.filter((a) => a.status === 'fulfilled').length, 2);
    for (const a of answers) if (a.status === 'rejected') assert.equal((a.reason as { code: string }).code, 'quota_exceeded');
    await t.server.pool.idle();
    const list = await t.api('GET', '/api/v1/instances/quota-race/backups');
    assert.equal(list.body.pagination.total, 2);
    // Through HTTP too.
    const more = await t.api('POST', '/api/v1/instances/quota-race/backups', { type: 'full' });
    assert.equal(more.status, 409);
    assert.equal(more.body.error.code, 'quota_exceeded');
  });
});

describe('imports from URLs and upload limits', () => {
  let open: TestServer;
  let strict: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let archive: Buffer;
  let fileServer: import('node:http').Server;
  let archiveUrl: string;

  before(async () => {
    work = await tempDir();
    open = await startTestServer({ allow_private_import_urls: true });
    strict = await startTestServer({ max_upload_bytes: 4096 });
    const dbPath = join(work.path, 'src.db');
    makeDb(dbPath, 50);
    await open.api('POST', '/api/v1/instances', { name: 'src' });
    await open.api('POST', '/api/v1/instances/src/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const b = await waitFor(open.api, `/api/v1/backups/${(await open.api('POST', '/api/v1/instances/src/backups', { type: 'full' })).body.id}`);
    archive = await download(open, b.id);
    const { createServer } = await import('node:http');
    fileServer = createServer((req, res) => {
      if (req.url === '/archive.tar') res.end(archive);
      else if (req.url === '/redirect') res.writeHead(302, { location: '/archive.tar' }).end();
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => fileServer.listen(0, '127.0.0.1', () => r()));
    archiveUrl = `http://127.0.0.1:${(fileServer.address() as { port: number }).port}`;
  });
  after(async () => {
    fileServer.close();
    await open.close();
    await strict.close();
    await work.cleanup();
  });

  test('a URL import fetches, validates and stores the archive', async () => {
    await open.api('POST', '/api/v1/instances', { name: 'dst' });
    const res = await open.api('POST', '/api/v1/instances/dst/backups/import', { url: `${archiveUrl}/redirect` });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.status, 'scheduled');
    const b = await waitFor(open.api, `/api/v1/backups/${res.body.id}`);
    assert.equal(b.status, 'success', b.status_info);
    assert.equal(b.instance, 'dst');
    assert.deepEqual(b.resources[0].counts.tables, { audit: 1, orders: 50, users: 50 });
    const missing = await open.api('POST', '/api/v1/instances/dst/backups/import', { url: `${archiveUrl}/nothing-here` });
    const m = await waitFor(open.api, `/api/v1/backups/${missing.body.id}`);
    assert.equal(m.status, 'error');
    assert.match(m.status_info, /404/);
  });

  test('URLs on loopback and private networks are refused by default', async () => {
    await strict.api('POST', '/api/v1/instances', { name: 'dst' });
    for (const url of [`${archiveUrl}/archive.tar`, 'http://169.254.169.254/latest/meta-data', 'http://localhost:65000/x.tar']) {
      const res = await strict.api('POST', '/api/v1/instances/dst/backups/import', { url });
      assert.equal(res.status, 202);
      const b = await waitFor(strict.api, `/api/v1/backups/${res.body.id}`);
      assert.equal(b.status, 'error', url);
      assert.match(b.status_info, /refused/, url);
    }
    const notHttp = await strict.api('POST', '/api/v1/instances/dst/backups/import', { url: 'file:///etc/passwd' });
    assert.equal(notHttp.status, 400);
    assert.equal(notHttp.body.error.code, 'import_url_refused');
  });

  test('an upload over the configured limit gets 413 and leaves nothing', async () => {
    await strict.api('POST', '/api/v1/instances', { name: 'small' });
    const res = await upload(strict, 'small', archive);
    assert.equal(res.status, 413, JSON.stringify(res.body));
    assert.equal(res.body.error.code, 'payload_too_large');
    assert.equal((await strict.api('GET', '/api/v1/instances/small/backups')).body.pagination.total, 0);
  });
});
