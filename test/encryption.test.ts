// Encryption at rest through the whole server: what lands in storage is
// ciphertext, downloads are the plain exchange archive, restores and verifies
// work, tampering fails them, a wrong key is refused at start, rotation keeps
// every backup readable; with a generated key on S3 (a real radosgw) backups
// are refused until the key is exported. Also the storage contract for the
// encrypted wrapper over S3.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
} from '@aws-sdk/client-s3';
import { loadConfig, type Config } from '../src/config/index.ts';
import { isErrorCode } from '../src/errors/index.ts';
import { startServer } from '../src/main.ts';
import { archiveCrypt, keyExport, keyRotate } from '../src/cli/key-commands.ts';
import { encryptExport, EncryptedStorage, openKeyring } from '../src/storage/encrypted.ts';
import { readAll, runStorageContract } from '../src/storage/contract.ts';
import { S3Storage } from '../src/storage/s3.ts';
import { parseKeyFile } from '../src/platform/keys.ts';
import { s3Connection, s3AdminClient } from './s3-env.ts';
import { startTestServer, tempDir, TestClock, waitFor, type Api } from './helpers.ts';

const ROOT = join(import.meta.dirname, '..');

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function makeDb(path: string, rows = 300): void {
  const db = new Database(path);
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
  for (let i = 0; i < rows; i++) insert.run(`row ${i} ${'x'.repeat(200)}`);
  db.close();
}

function countRows(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/** A server on a data directory that outlives it (restarts with other keys); port 0. */
async function startAt(dir: string, api?: { adminKey: string }) {
  const config = loadConfig({ flags: { dir, port: 0, rate_limit_per_minute: 100_000, log_level: 'silent' }, env: {} });
  const server = await startServer(config, { clock: new TestClock() });
  const adminKey = api?.adminKey ?? server.initialKey!.key;
  const call: Api = async (method, path, body, key = adminKey) => {
    const headers: Record<string, string> = { authorization: `Bearer ${key}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(server.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
  };
  return { server, api: call, adminKey, url: server.url };
}

async function download(api: Api, id: string): Promise<Buffer> {
  const link = await api('POST', `/api/v1/backups/${id}/download-link`, {});
  assert.equal(link.status, 200, JSON.stringify(link.body));
  const res = await fetch(link.body.url);
  assert.equal(res.status, 200);
  return Buffer.from(await res.arrayBuffer());
}

async function backup(api: Api, instance: string) {
  const created = await api('POST', `/api/v1/instances/${instance}/backups`, { type: 'full' });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  return waitFor(api, `/api/v1/backups/${created.body.id}`);
}

async function restoreInto(api: Api, instance: string, id: string, target: string) {
  const r = await api('POST', `/api/v1/instances/${instance}/restores`, { backup: id, targets: { db: { connection: target } } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return waitFor(api, `/api/v1/restores/${r.body.id}`);
}

/** Every stored file under root with its sha256. */
async function storedHashes(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== '.tmp') await walk(p);
      } else out.set(relative(root, p), sha256(await readFile(p)));
    }
  };
  await walk(root);
  return out;
}

test('encrypted local storage: ciphertext at rest, plain downloads, restore, tampering, wrong key, rotation', { timeout: 300_000 }, async () => {
  const work = await tempDir('bv-enc-e2e-');
  try {
    const dir = join(work.path, 'data');
    await mkdir(dir);
    const key1 = join(work.path, 'key1');
    const key2 = join(work.path, 'key2');
    await writeFile(key1, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    await writeFile(key2, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    // The key is named in <dir>/config.json, as a user would, so the CLI finds it too.
    await writeFile(join(dir, 'config.json'), JSON.stringify({ encryption_key_file: key1 }));
    const dbPath = join(work.path, 'app.db');
    makeDb(dbPath);

    let s = await startAt(dir);
    const admin = { adminKey: s.adminKey };
    assert.equal((await s.api('POST', '/api/v1/instances', { name: 'app' })).status, 201);
    assert.equal((await s.api('POST', '/api/v1/instances/app/resources', { name: 'db', type: 'sqlite', connection: dbPath })).status, 201);
    const b = await backup(s.api, 'app');
    assert.equal(b.status, 'success', b.status_info);
    const entry = b.resources[0];

    // At rest: ciphertext only.
    const storage = join(dir, 'storage');
    const artifactPath = join(storage, 'backups', b.id, 'resources', 'db', entry.artifact);
    const stored = await readFile(artifactPath);
    assert.equal(stored.subarray(0, 4).toString('latin1'), 'BVEN');
    assert.notEqual(sha256(stored), entry.sha256, 'stored bytes are not the artifact');
    assert.equal(stored.length - entry.size, 48 + 16 * Math.max(1, Math.ceil(entry.size / 65536)), 'header and one tag per 64 KiB');
    assert.throws(() => execFileSync('zstd', ['-t', '-q', artifactPath], { stdio: 'pipe' }), 'the stored artifact is not zstd data');
    const storedManifest = await readFile(join(storage, 'backups', b.id, 'manifest.json'));
    assert.ok(!storedManifest.includes('"backup_id"'), 'the stored manifest is not readable JSON');
    assert.deepEqual((await readdir(join(storage, 'backups', b.id))).sort(), ['.key', 'manifest.json', 'resources']);

    // Through the API: plaintext, byte for byte what the manifest says.
    const files = await s.api('GET', `/api/v1/backups/${b.id}/files`);
    assert.deepEqual(files.body.items.map((f: { path: string }) => f.path), ['manifest.json', `resources/db/${entry.artifact}`]);
    const archive = await download(s.api, b.id);
    const x = join(work.path, 'extract');
    await mkdir(x);
    execFileSync('tar', ['-xf', '-', '-C', x], { input: archive });
    const manifest = JSON.parse(await readFile(join(x, 'manifest.json'), 'utf8'));
    assert.equal(manifest.format, 'backvault/1');
    const artifact = await readFile(join(x, 'resources', 'db', entry.artifact));
    assert.equal(sha256(artifact), entry.sha256);
    execFileSync('zstd', ['-d', '-q', join(x, 'resources', 'db', entry.artifact), '-o', join(x, 'restored.db')]);
    assert.equal(countRows(join(x, 'restored.db')), 300);
    const link = await s.api('POST', `/api/v1/backups/${b.id}/download-link`, {});
    const ranged = await fetch(link.body.url, { headers: { range: 'bytes=700-70000' } });
    assert.equal(ranged.status, 206);
    assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), archive.subarray(700, 70001));

    // The passphrase export decrypts with the CLI to the same archive.
    const sealedPath = join(work.path, 'archive.tar.bvx');
    await writeFile(sealedPath, await readAll(encryptExport(Readable.from([archive]), 'export pass', { scryptLog2N: 14 })));
    const quiet = () => undefined;
    assert.equal(await archiveCrypt('decrypt', sealedPath, join(work.path, 'plain.tar'), quiet, { BACKVAULT_ARCHIVE_PASSPHRASE: 'export pass' }), 0);
    assert.deepEqual(await readFile(join(work.path, 'plain.tar')), archive);
    await assert.rejects(archiveCrypt('decrypt', sealedPath, join(work.path, 'bad.tar'), quiet, { BACKVAULT_ARCHIVE_PASSPHRASE: 'nope' }), /passphrase does not open/);
    await assert.rejects(stat(join(work.path, 'bad.tar')), 'nothing is written on failure');

    const r1 = await restoreInto(s.api, 'app', b.id, join(work.path, 'r1.db'));
    assert.equal(r1.status, 'success', r1.status_info);
    assert.equal(countRows(join(work.path, 'r1.db')), 300);
    assert.equal((await s.api('POST', `/api/v1/backups/${b.id}/verify`)).status, 202);
    const v = await waitFor(s.api, `/api/v1/backups/${b.id}`, 'verify_status');
    assert.equal(v.verify_status, 'success', JSON.stringify(v.verify_result));

    // One flipped byte in storage: restore and verify fail, naming the object.
    const damaged = Buffer.from(stored);
    damaged[48 + 100]! ^= 0x20;
    await writeFile(artifactPath, damaged);
    const r2 = await restoreInto(s.api, 'app', b.id, join(work.path, 'r2.db'));
    assert.equal(r2.status, 'error');
    assert.match(r2.status_info, new RegExp(`stored object backups/${b.id}/resources/db/${entry.artifact.replace('.', '\\.')} fails authentication at chunk 0`));
    await assert.rejects(stat(join(work.path, 'r2.db')), 'nothing was restored');
    assert.equal((await s.api('POST', `/api/v1/backups/${b.id}/verify`)).status, 202);
    const v2 = await waitFor(s.api, `/api/v1/backups/${b.id}`, 'verify_status');
    assert.equal(v2.verify_status, 'error');
    assert.match(JSON.stringify(v2.verify_result), /fails authentication/);
    await writeFile(artifactPath, stored);
    const b2 = await backup(s.api, 'app');
    assert.equal(b2.status, 'success', b2.status_info);
    await s.server.close();

    // A wrong key is refused at start, before any restore.
    await writeFile(join(dir, 'config.json'), JSON.stringify({ encryption_key_file: key2 }));
    await assert.rejects(startAt(dir, admin), (err) => isErrorCode(err, 'encryption_key_invalid') && /Wrong master key/.test(err.message));
    // So is starting without encryption over encrypted storage.
    await writeFile(join(dir, 'config.json'), '{}');
    await assert.rejects(startAt(dir, admin), /encryption is not configured/);

    // Rotation to key2 (server stopped): every data key re-wrapped, no other byte changed.
    await writeFile(join(dir, 'config.json'), JSON.stringify({ encryption_key_file: key1 }));
    const before = await storedHashes(storage);
    const lines: string[] = [];
    assert.equal(await keyRotate({ dir, newKeyFile: key2 }, (l) => lines.push(l), {}, null), 0);
    assert.match(lines.join('\n'), /default: re-wrapped 2 data keys: master key [0-9a-f]+ -> [0-9a-f]+\. No backup object was rewritten\./);
    const afterRotation = await storedHashes(storage);
    assert.deepEqual([...afterRotation.keys()].sort(), [...before.keys()].sort());
    for (const [path, hash] of before) {
      const rewrapped = path.endsWith('.key') || path.startsWith('encryption/');
      assert.equal(afterRotation.get(path) === hash, !rewrapped, `${path} ${rewrapped ? 'changed' : 'unchanged'}`);
    }
    await assert.rejects(startAt(dir, admin), /Wrong master key/);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ encryption_key_file: key2 }));
    s = await startAt(dir, admin);
    for (const id of [b.id, b2.id]) {
      const target = join(work.path, `after-${id}.db`);
      const r = await restoreInto(s.api, 'app', id, target);
      assert.equal(r.status, 'success', r.status_info);
      assert.equal(countRows(target), 300);
    }
    assert.equal((await s.api('DELETE', `/api/v1/backups/${b.id}`)).status, 204);
    await assert.rejects(stat(join(storage, 'backups', b.id)), 'the deleted backup left nothing, its key included');
    await s.server.close();
  } finally {
    await work.cleanup();
  }
});

describe('encryption on S3 (radosgw)', () => {
  const conn = s3Connection();
  const bucket = `bv-enc-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const admin = s3AdminClient(conn);
  const made = admin.send(new CreateBucketCommand({ Bucket: bucket }));
  const listKeys = async (prefix: string) => {
    const out = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!).sort();
  };

  after(async () => {
    for (;;) {
      const out = await admin.send(new ListObjectsV2Command({ Bucket: bucket }));
      for (const o of out.Contents ?? []) await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key! }));
      if (!out.IsTruncated) break;
    }
    await admin.send(new DeleteBucketCommand({ Bucket: bucket }));
    admin.destroy();
  });

  runStorageContract('encrypted over s3', async () => {
    await made;
    const dir = await tempDir('bv-enc-s3-');
    const keyPath = join(dir.path, 'k');
    await writeFile(keyPath, randomBytes(32).toString('hex'));
    const inner = new S3Storage({ ...conn, bucket, prefix: `contract-${randomBytes(4).toString('hex')}` });
    const storage = new EncryptedStorage(inner, await openKeyring(inner, { kind: 'key_file', path: keyPath }));
    return {
      storage,
      async cleanup() {
        inner.destroy();
        await dir.cleanup();
      },
    };
  });

  test('a generated key: backups are refused until `key export`, then encrypted in the bucket; a new machine needs the key', { timeout: 300_000 }, async () => {
    await made;
    const work = await tempDir('bv-enc-s3e2e-');
    const s3: Partial<Config> = { storage: `s3://${bucket}/bv`, s3_endpoint: conn.endpoint, s3_region: conn.region, s3_access_key: conn.accessKeyId, s3_secret_key: conn.secretAccessKey };
    const t = await startTestServer({ ...s3, encryption: true });
    try {
      assert.equal((await stat(join(t.dir, 'master.key'))).mode & 0o777, 0o600);
      const dbPath = join(work.path, 'app.db');
      makeDb(dbPath, 100);
      await t.api('POST', '/api/v1/instances', { name: 's3app' });
      await t.api('POST', '/api/v1/instances/s3app/resources', { name: 'db', type: 'sqlite', connection: dbPath });
      const refused = await backup(t.api, 's3app');
      assert.equal(refused.status, 'error');
      assert.match(refused.status_info, /generated into .*master\.key and exists nowhere else.*backvault key export --dir/);
      assert.deepEqual(await listKeys('bv/backups/'), [], 'nothing was written');

      // Export through the real CLI binary: the key alone on stdout.
      const exported = await new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, ['bin/backvault.js', 'key', 'export', '--dir', t.dir], { cwd: ROOT, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`key export exited ${code}: ${err}`))));
      });
      const keyFromCli = parseKeyFile(Buffer.from(exported), 'stdout');
      assert.deepEqual(keyFromCli, parseKeyFile(await readFile(join(t.dir, 'master.key')), 'master.key'));

      // No restart needed.
      const b = await backup(t.api, 's3app');
      assert.equal(b.status, 'success', b.status_info);
      assert.deepEqual(await listKeys(`bv/backups/${b.id}/`), [`bv/backups/${b.id}/.key`, `bv/backups/${b.id}/manifest.json`, `bv/backups/${b.id}/resources/db/${b.resources[0].artifact}`]);
      const obj = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: `bv/backups/${b.id}/resources/db/${b.resources[0].artifact}` }));
      const raw = Buffer.from(await obj.Body!.transformToByteArray());
      assert.equal(raw.subarray(0, 4).toString('latin1'), 'BVEN');
      assert.notEqual(sha256(raw), b.resources[0].sha256);
      const archive = await download(t.api, b.id);
      const x = join(work.path, 'x');
      await mkdir(x);
      execFileSync('tar', ['-xf', '-', '-C', x], { input: archive });
      assert.equal(sha256(await readFile(join(x, 'resources', 'db', b.resources[0].artifact))), b.resources[0].sha256);
      const r = await restoreInto(t.api, 's3app', b.id, join(work.path, 'restored.db'));
      assert.equal(r.status, 'success', r.status_info);
      assert.equal(countRows(join(work.path, 'restored.db')), 100);

      // The second key export goes to a file, for the new machine below.
      const keyCopy = join(work.path, 'copy.key');
      assert.equal(await keyExport({ dir: t.dir, output: keyCopy }, () => undefined, () => undefined), 0);
      assert.equal((await stat(keyCopy)).mode & 0o777, 0o600);
      await assert.rejects(keyExport({ dir: t.dir, output: keyCopy }, () => undefined, () => undefined), /already exists/);

      const b2 = await backup(t.api, 's3app');
      assert.equal((await t.api('DELETE', `/api/v1/backups/${b2.id}`)).status, 204);
      assert.deepEqual(await listKeys(`bv/backups/${b2.id}/`), [], 'deleting a backup removes its data key too');
      await t.server.close();

      // A new machine with only the bucket: without the key it refuses to start (no new key is made) ...
      const fresh = join(work.path, 'fresh');
      await mkdir(fresh);
      const cfg = (over: Partial<Config>) => loadConfig({ flags: { dir: fresh, port: 0, log_level: 'silent', ...s3, ...over }, env: {} });
      await assert.rejects(startServer(cfg({ encryption: true })), /does not exist and no key file or passphrase is configured/);
      await assert.rejects(stat(join(fresh, 'master.key')));
      // ... and with the exported key it starts, and reads the backup (the catalog is rebuilt elsewhere).
      const second = await startServer(cfg({ encryption_key_file: keyCopy }), { clock: new TestClock() });
      try {
        const text = await readAll(await second.ctx.storage.get(`backups/${b.id}/manifest.json`));
        assert.equal(JSON.parse(text.toString()).backup_id, b.id);
      } finally {
        await second.close();
      }
    } finally {
      await t.close().catch(() => undefined);
      await work.cleanup();
    }
  });
});
