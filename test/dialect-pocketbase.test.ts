// The PocketBase dialect driven by the official `pocketbase` SDK against a real
// server, with an app holding a SQLite database and a files directory.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import Database from 'better-sqlite3';
import PocketBase, { ClientResponseError } from 'pocketbase';
import yauzl from 'yauzl';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';
import { upsertSuperuser } from '../src/services/auth.ts';
import { createBackup } from '../src/services/backups.ts';

const EMAIL = 'admin@example.com';
const PASSWORD = 'correct horse battery';
const BUSY = 'Try again later - another backup/restore process has already been started.';

function makeDb(path: string): void {
  const db = new Database(path);
  db.exec('CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body BLOB)');
  const ins = db.prepare('INSERT INTO posts (title, body) VALUES (?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= 100; i++) ins.run(`post ${i} ✓`, Buffer.from([i, 0, 255]));
  })();
  db.close();
}

function dumpDb(path: string): unknown[] {
  const db = new Database(path, { readonly: true });
  const rows = db.prepare('SELECT * FROM posts ORDER BY id').all();
  db.close();
  return rows;
}

async function treeOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath ?? (e as unknown as { path: string }).path, e.name);
    out[p.slice(dir.length + 1)] = createHash('sha256').update(await readFile(p)).digest('hex');
  }
  return out;
}

/** What a failed SDK call answered: its status and PocketBase error body. */
async function failure(p: Promise<unknown> | (() => Promise<unknown>)): Promise<{ status: number; body: any }> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    assert.ok(err instanceof ClientResponseError, String(err));
    return { status: err.status, body: err.response };
  }
  assert.fail('the call succeeded');
}

function zipEntries(buf: Buffer): Promise<{ name: string; method: number; size: number }[]> {
  return new Promise((resolve, reject) => {
    yauzl.fromBuffer(buf, { lazyEntries: true }, (err, zip) => {
      if (err) return reject(err);
      const out: { name: string; method: number; size: number }[] = [];
      zip.on('entry', (e: yauzl.Entry) => {
        out.push({ name: e.fileName, method: e.compressionMethod, size: e.uncompressedSize });
        zip.readEntry();
      });
      zip.on('end', () => resolve(out));
      zip.on('error', reject);
      zip.readEntry();
    });
  });
}

/** A minimal stored zip with whatever names it is given (yazl refuses hostile ones, as it should). */
function rawZip(entries: { name: string; data: Buffer }[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const crc = crc32(e.data) >>> 0;
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt16LE(0x800, 6);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(e.data.length, 18);
    lh.writeUInt32LE(e.data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    locals.push(lh, name, e.data);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt16LE(0x800, 8);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(e.data.length, 20);
    ch.writeUInt32LE(e.data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(offset, 42);
    centrals.push(ch, name);
    offset += 30 + name.length + e.data.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, eocd]);
}

describe('PocketBase dialect', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let pb: PocketBase;
  let base: string;
  let dbPath: string;
  let filesDir: string;

  before(async () => {
    t = await startTestServer();
    work = await tempDir();
    await upsertSuperuser(t.server.ctx.db, EMAIL, PASSWORD, new Date());
    dbPath = join(work.path, 'app.db');
    makeDb(dbPath);
    filesDir = join(work.path, 'pb_storage');
    await mkdir(join(filesDir, 'avatars'), { recursive: true });
    await writeFile(join(filesDir, 'avatars', 'a.png'), Buffer.from([1, 2, 3, 4]));
    await writeFile(join(filesDir, 'readme.txt'), 'hello');
    assert.equal((await t.api('POST', '/api/v1/instances', { name: 'myapp' })).status, 201);
    assert.equal((await t.api('POST', '/api/v1/instances/myapp/resources', { name: 'data', type: 'sqlite', connection: dbPath })).status, 201);
    assert.equal((await t.api('POST', '/api/v1/instances/myapp/resources', { name: 'storage', type: 'files', connection: filesDir })).status, 201);
    base = `${t.url}/pocketbase/myapp`;
    pb = new PocketBase(base);
    pb.autoCancellation(false);
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('superuser authWithPassword; a wrong password; 401 without a token', async () => {
    const anon = new PocketBase(base);
    const none = await failure(anon.backups.getFullList());
    assert.equal(none.status, 401);
    assert.deepEqual(none.body, { status: 401, message: 'The request requires valid record authorization token.', data: {} });
    const badToken = await fetch(`${base}/api/backups`, { headers: { authorization: 'not-a-token' } });
    assert.equal(badToken.status, 401);
    assert.ok(badToken.headers.get('x-ratelimit-remaining'), 'the rate-limit headers are kept');

    const wrong = await failure(anon.collection('_superusers').authWithPassword(EMAIL, 'wrong password!'));
    assert.equal(wrong.status, 400);
    assert.deepEqual(wrong.body, { status: 400, message: 'Failed to authenticate.', data: {} });
    const blank = await failure(anon.collection('_superusers').authWithPassword('', ''));
    assert.equal(blank.body.data.identity.code, 'validation_required');
    assert.equal((await failure(anon.collection('users').authWithPassword(EMAIL, PASSWORD))).status, 404);

    const auth = await pb.collection('_superusers').authWithPassword(EMAIL, PASSWORD);
    assert.equal(pb.authStore.isSuperuser, true, 'the SDK recognises a superuser session');
    assert.ok(auth.token);
    assert.equal(auth.record.collectionName, '_superusers');
    assert.equal(auth.record.email, EMAIL);
    assert.match(auth.record.id, /^[0-9a-f]{24}$/);
    assert.ok(pb.authStore.isValid);
    assert.ok(!JSON.stringify(auth).includes(PASSWORD));
    // The raw token in Authorization (as the SDK sends it) and "Bearer <token>" both work, and so does an admin API key.
    for (const header of [auth.token, `Bearer ${auth.token}`, t.adminKey, `Bearer ${t.adminKey}`]) {
      assert.equal((await fetch(`${base}/api/backups`, { headers: { authorization: header } })).status, 200, header.slice(0, 10));
    }
  });

  test('create with and without a name, list with fields, duplicate and bad names', async () => {
    assert.equal(await pb.backups.create('first.zip'), true);
    assert.equal(await pb.backups.create(''), true);
    const list = await pb.backups.getFullList();
    assert.equal(list.length, 2);
    const keys = list.map((b) => b.key).sort();
    assert.equal(keys[0], 'first.zip');
    assert.match(keys[1]!, /^pb_backup_\d{14}\.zip$/);
    for (const b of list) {
      assert.deepEqual(Object.keys(b).sort(), ['key', 'modified', 'size']);
      assert.match(b.modified, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.ok(b.size > 0);
    }
    const dup = await failure(pb.backups.create('first.zip'));
    assert.equal(dup.status, 400);
    assert.equal(dup.body.data.name.code, 'validation_backup_name_exists');
    for (const bad of ['Bad Name.zip', 'first.tar', '../x.zip', `${'a'.repeat(70)}.zip`]) {
      const res = await failure(pb.backups.create(bad));
      assert.equal(res.status, 400, bad);
      assert.equal(res.body.message, 'An error occurred while validating the submitted data.');
      assert.ok(['validation_match_invalid', 'validation_length_out_of_range'].includes(res.body.data.name.code), bad);
    }
    // fields: a plain list, *, and the excerpt modifier
    const only = await pb.backups.getFullList({ fields: 'key' });
    assert.deepEqual(only.map((b) => Object.keys(b)), [['key'], ['key']]);
    const star = await pb.backups.getFullList({ fields: '*' });
    assert.deepEqual(star, list);
    const ex = await pb.backups.getFullList({ fields: '*,key:excerpt(5,true)' });
    assert.ok(ex.some((b) => b.key === 'first...'));
    assert.ok(ex.every((b) => typeof b.size === 'number' && b.modified));
    const auth = await pb.collection('_superusers').authWithPassword(EMAIL, PASSWORD, { fields: 'token' });
    assert.ok(auth.token);
  });

  test('download with a file token: a stored zip with manifest.json first, whose size the list shows', async () => {
    const token = await pb.files.getToken();
    assert.ok(token);
    const url = pb.backups.getDownloadURL(token, 'first.zip');
    assert.equal(url, `${base}/api/backups/first.zip?token=${encodeURIComponent(token)}`);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/zip');
    const buf = Buffer.from(await res.arrayBuffer());
    assert.equal(Number(res.headers.get('content-length')), buf.length);
    const listed = (await pb.backups.getFullList()).find((b) => b.key === 'first.zip')!;
    assert.equal(listed.size, buf.length);
    const entries = await zipEntries(buf);
    assert.equal(entries[0]!.name, 'manifest.json');
    assert.deepEqual(entries.map((e) => e.name).slice(1).sort(), ['resources/data/database.sqlite.zst', 'resources/storage/files.tar.zst'].sort());
    assert.ok(entries.every((e) => e.method === 0), 'entries are stored, not recompressed');
    // Standard unzip agrees the zip is sound.
    const file = join(work.path, 'dl.zip');
    await writeFile(file, buf);
    assert.match(execFileSync('unzip', ['-t', file]).toString(), /No errors detected/);

    const head = await fetch(url, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(Number(head.headers.get('content-length')), buf.length);

    // Wrong or missing tokens; a token of another app; a download token is not a login token.
    assert.equal((await fetch(`${base}/api/backups/first.zip`)).status, 401);
    const bad = await fetch(`${base}/api/backups/first.zip?token=nope`);
    assert.equal(bad.status, 403);
    assert.deepEqual(await bad.json(), { status: 403, message: 'Only superusers can perform this action.', data: {} });
    await t.api('POST', '/api/v1/instances', { name: 'other' });
    const otherToken = await new PocketBase(`${t.url}/pocketbase/other`).send('/api/files/token', { method: 'POST', headers: { authorization: t.adminKey } });
    assert.equal((await fetch(`${base}/api/backups/first.zip?token=${otherToken.token}`)).status, 403);
    assert.equal((await fetch(`${base}/api/backups`, { headers: { authorization: token } })).status, 401);
    // An expired token
    t.clock.advance(181_000);
    try {
      assert.equal((await fetch(url)).status, 403);
    } finally {
      t.clock.advance(-181_000);
    }
  });

  test('unknown keys and unknown paths answer the documented 404', async () => {
    const body = { status: 404, message: "The requested resource wasn't found.", data: {} };
    for (const p of [() => pb.backups.delete('nope.zip'), () => pb.backups.restore('nope.zip'), () => pb.backups.delete('NOPE')]) {
      const res = await failure(p);
      assert.equal(res.status, 404);
      assert.deepEqual(res.body, body);
    }
    const token = await pb.files.getToken();
    const dl = await fetch(pb.backups.getDownloadURL(token, 'nope.zip'));
    assert.equal(dl.status, 404);
    assert.deepEqual(await dl.json(), body);
    const path = await fetch(`${base}/api/nothing-here`, { headers: { authorization: pb.authStore.token } });
    assert.equal(path.status, 404);
    assert.deepEqual(await path.json(), body);
    const app = await fetch(`${t.url}/pocketbase/no-such-app/api/backups`, { headers: { authorization: pb.authStore.token } });
    assert.equal(app.status, 404);
    assert.deepEqual(await app.json(), body);
  });

  test('a read-scope key lists but may not change anything: 403', async () => {
    const readKey = (await t.api('POST', '/api/v1/keys', { name: 'pb-reader', scope: 'read' })).body.key as string;
    const reader = new PocketBase(base);
    reader.authStore.save(readKey, null);
    assert.ok((await reader.backups.getFullList()).length >= 2);
    for (const p of [() => reader.backups.create('x.zip'), () => reader.backups.delete('first.zip'), () => reader.backups.restore('first.zip')]) {
      const res = await failure(p);
      assert.equal(res.status, 403);
      assert.deepEqual(res.body, { status: 403, message: 'Only superusers can perform this action.', data: {} });
    }
  });

  test('upload: a downloaded zip uploads back under its new name; non-zips and hostile zips are refused', async () => {
    const token = await pb.files.getToken();
    const buf = Buffer.from(await (await fetch(pb.backups.getDownloadURL(token, 'first.zip'))).arrayBuffer());
    assert.equal(await pb.backups.upload({ file: new File([new Uint8Array(buf)], 'copy.zip', { type: 'application/zip' }) }), true);
    const list = await pb.backups.getFullList();
    const copy = list.find((b) => b.key === 'copy.zip');
    assert.ok(copy, JSON.stringify(list));
    // The same content comes back out (the manifest is rewritten for the new backup, so compare the artifacts).
    const again = Buffer.from(await (await fetch(pb.backups.getDownloadURL(await pb.files.getToken(), 'copy.zip'))).arrayBuffer());
    const a = await zipEntries(buf);
    const b = await zipEntries(again);
    assert.deepEqual(a.slice(1), b.slice(1));

    // The same name twice
    const dup = await failure(pb.backups.upload({ file: new File([new Uint8Array(buf)], 'copy.zip') }));
    assert.equal(dup.status, 400);
    assert.equal(dup.body.data.file.code, 'validation_backup_name_exists');

    // A bare Blob (the document's example) gets a generated name.
    const before = (await pb.backups.getFullList()).length;
    assert.equal(await pb.backups.upload({ file: new Blob([new Uint8Array(buf)]) }), true);
    assert.equal((await pb.backups.getFullList()).length, before + 1);

    // Not a zip
    const notZip = await failure(pb.backups.upload({ file: new File(['just some text'], 'notes.zip', { type: 'application/zip' }) }));
    assert.equal(notZip.status, 400);
    assert.deepEqual(notZip.body, {
      status: 400,
      message: 'Failed to upload the backup.',
      data: { file: { code: 'validation_invalid_mime_type', message: 'The file must be a zip archive.' } },
    });

    // A zip that climbs out with ".." (with a valid manifest): refused before anything is written.
    const entries = await new Promise<Buffer>((resolve, reject) => {
      yauzl.fromBuffer(buf, { lazyEntries: true }, (err, zip) => {
        if (err) return reject(err);
        zip.on('entry', (e: yauzl.Entry) => {
          zip.openReadStream(e, async (err2, s) => {
            if (err2) return reject(err2);
            const chunks: Buffer[] = [];
            for await (const c of s) chunks.push(c as Buffer);
            resolve(Buffer.concat(chunks));
          });
        });
        zip.readEntry();
      });
    });
    const hostile = rawZip([
      { name: 'manifest.json', data: entries },
      { name: '../../evil.txt', data: Buffer.from('owned') },
    ]);
    const countBefore = (await t.api('GET', '/api/v1/instances/myapp/backups')).body.pagination.total;
    const refused = await failure(pb.backups.upload({ file: new File([new Uint8Array(hostile)], 'evil.zip') }));
    assert.equal(refused.status, 400);
    assert.equal(refused.body.message, 'Failed to upload the backup.');
    assert.equal(refused.body.data.file.code, 'validation_unsafe_path');
    assert.equal((await t.api('GET', '/api/v1/instances/myapp/backups')).body.pagination.total, countBefore, 'no backup is left by a refused upload');
    const leftovers = await readdir(join(t.dir, 'work', 'pocketbase-uploads')).catch(() => []);
    assert.deepEqual(leftovers, [], 'the temporary copy is removed');

    // A zip with the manifest only (artifacts missing)
    const partial = await failure(pb.backups.upload({ file: new File([new Uint8Array(rawZip([{ name: 'manifest.json', data: entries }]))], 'partial.zip') }));
    assert.equal(partial.body.data.file.code, 'validation_invalid_archive');
    // No file at all
    const missing = await failure(pb.backups.upload({ other: 'x' }));
    assert.equal(missing.status, 400);
    assert.equal(missing.body.data.file.code, 'validation_required');
  });

  test('a zip re-packed with deflate by the zip tool uploads too', async () => {
    const token = await pb.files.getToken();
    const buf = Buffer.from(await (await fetch(pb.backups.getDownloadURL(token, 'first.zip'))).arrayBuffer());
    const dir = join(work.path, 'repack');
    await mkdir(dir);
    await writeFile(join(dir, 'in.zip'), buf);
    execFileSync('unzip', ['-q', 'in.zip', '-d', 'x'], { cwd: dir });
    // resources first, manifest last, deflated (-9)
    execFileSync('zip', ['-q', '-r', '-9', '../repacked.zip', 'resources', 'manifest.json'], { cwd: join(dir, 'x') });
    const repacked = await readFile(join(dir, 'repacked.zip'));
    assert.ok((await zipEntries(repacked)).some((e) => e.method === 8), 'the zip tool deflated something');
    assert.equal(await pb.backups.upload({ file: new File([new Uint8Array(repacked)], 'repacked.zip') }), true);
    assert.ok((await pb.backups.getFullList()).some((b) => b.key === 'repacked.zip'));
  });

  test('restore replaces the data; delete', async () => {
    const original = { db: dumpDb(dbPath), files: await treeOf(filesDir) };
    // change the data
    const db = new Database(dbPath);
    db.exec("DELETE FROM posts WHERE id > 10; UPDATE posts SET title = 'changed'");
    db.close();
    await writeFile(join(filesDir, 'readme.txt'), 'changed');
    await writeFile(join(filesDir, 'new.txt'), 'new');
    await rm(join(filesDir, 'avatars', 'a.png'));
    assert.notDeepEqual(dumpDb(dbPath), original.db);

    assert.equal(await pb.backups.restore('copy.zip'), true);
    const restores = await t.api('GET', '/api/v1/instances/myapp/restores');
    const restore = await waitFor(t.api, `/api/v1/restores/${restores.body.items[0].id}`);
    assert.equal(restore.status, 'success', JSON.stringify(restore));
    assert.deepEqual(dumpDb(dbPath), original.db);
    assert.deepEqual(await treeOf(filesDir), original.files);

    assert.equal(await pb.backups.delete('copy.zip'), true);
    assert.ok(!(await pb.backups.getFullList()).some((b) => b.key === 'copy.zip'));
    assert.equal((await failure(pb.backups.delete('copy.zip'))).status, 404);
  });

  test('native backups show with a backvault_<id>.zip key', async () => {
    const created = await t.api('POST', '/api/v1/instances/myapp/backups', { type: 'full', label: 'nightly' });
    await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    const key = `backvault_${created.body.id}.zip`;
    assert.ok((await pb.backups.getFullList()).some((b) => b.key === key));
    const res = await fetch(pb.backups.getDownloadURL(await pb.files.getToken(), key));
    assert.equal(res.status, 200);
    await res.arrayBuffer();
  });

  test('backups asked for at the same moment: one is made, the others are refused as busy', async () => {
    await t.server.pool.idle();
    // Stopped, so the backup that is made stays waiting while the dialect is asked.
    await t.server.pool.stop();
    try {
      await raceAndAsk();
    } finally {
      t.server.pool.start();
    }
    await t.server.pool.idle();
  });

  async function raceAndAsk(): Promise<void> {
    // Called in one tick, the creations interleave at every catalog query, as requests do whenever
    // one of them waits on I/O. PocketBase's route asks the core for exactly this (requireIdle).
    const outcomes = await Promise.allSettled(['race-a', 'race-b', 'race-c'].map((label) => createBackup(t.server.ctx, 'myapp', { type: 'full', label, requireIdle: true })));
    assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 1);
    for (const o of outcomes) if (o.status === 'rejected') assert.equal((o.reason as { code: string }).code, 'operation_in_progress');
    // Which the dialect answers with PocketBase's busy error.
    const res = await failure(pb.backups.create('race-d.zip'));
    assert.equal(res.status, 400);
    assert.deepEqual(res.body, { status: 400, message: BUSY, data: {} });
  }

  test('while a restore waits: create, restore and delete of the used backup answer 400 busy', async () => {
    await t.server.pool.idle();
    await t.server.pool.stop();
    try {
      assert.equal(await pb.backups.restore('first.zip'), true);
      for (const p of [() => pb.backups.create('busy.zip'), () => pb.backups.restore('first.zip'), () => pb.backups.delete('first.zip')]) {
        const res = await failure(p);
        assert.equal(res.status, 400);
        assert.deepEqual(res.body, { status: 400, message: BUSY, data: {} });
      }
    } finally {
      t.server.pool.start();
    }
    await t.server.pool.idle();
    const restores = await t.api('GET', '/api/v1/instances/myapp/restores');
    assert.equal(restores.body.items[0].status, 'success');
    // idle again: a backup can be made
    assert.equal(await pb.backups.create('after.zip'), true);
  });
});

describe('PocketBase dialect upload limit', () => {
  let t: TestServer;
  before(async () => {
    t = await startTestServer({ max_upload_bytes: 4096 });
    await upsertSuperuser(t.server.ctx.db, EMAIL, PASSWORD, new Date());
    await t.api('POST', '/api/v1/instances', { name: 'small' });
  });
  after(() => t.close());

  test('an upload past max_upload_bytes is refused with a file size error and leaves nothing', async () => {
    const pb = new PocketBase(`${t.url}/pocketbase/small`);
    await pb.collection('_superusers').authWithPassword(EMAIL, PASSWORD);
    const big = rawZip([{ name: 'manifest.json', data: Buffer.alloc(10_000, 32) }]);
    const res = await failure(pb.backups.upload({ file: new File([new Uint8Array(big)], 'big.zip') }));
    assert.equal(res.status, 400);
    assert.equal(res.body.message, 'Failed to upload the backup.');
    assert.equal(res.body.data.file.code, 'validation_file_size_limit');
    assert.equal((await t.api('GET', '/api/v1/instances/small/backups')).body.pagination.total, 0);
  });
});
