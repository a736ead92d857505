// The whole server on S3-compatible storage (a real radosgw): a backup goes
// to the bucket, downloads, restores; the local disk holds no artifact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CreateBucketCommand, ListObjectsV2Command, DeleteObjectCommand, DeleteBucketCommand } from '@aws-sdk/client-s3';
import { s3Connection, s3AdminClient } from './s3-env.ts';
import { startTestServer, tempDir, waitFor } from './helpers.ts';

test('backups on S3 storage: backup, list objects in the bucket, download, restore', async (t) => {
  const conn = s3Connection();
  const bucket = `bv-e2e-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const admin = s3AdminClient(conn);
  await admin.send(new CreateBucketCommand({ Bucket: bucket }));
  const server = await startTestServer({
    storage: `s3://${bucket}/backvault`,
    s3_endpoint: conn.endpoint,
    s3_region: conn.region,
    s3_access_key: conn.accessKeyId,
    s3_secret_key: conn.secretAccessKey,
  });
  const work = await tempDir();
  t.after(async () => {
    await server.close();
    await work.cleanup();
    const objects = await admin.send(new ListObjectsV2Command({ Bucket: bucket }));
    for (const o of objects.Contents ?? []) await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key! }));
    await admin.send(new DeleteBucketCommand({ Bucket: bucket }));
    admin.destroy();
  });

  const dbPath = join(work.path, 'app.db');
  const db = new Database(dbPath);
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
  for (let i = 0; i < 500; i++) insert.run(`row ${i}`);
  db.close();
  await server.api('POST', '/api/v1/instances', { name: 's3app' });
  await server.api('POST', '/api/v1/instances/s3app/resources', { name: 'db', type: 'sqlite', connection: dbPath });
  const b = await waitFor(server.api, `/api/v1/backups/${(await server.api('POST', '/api/v1/instances/s3app/backups', { type: 'full' })).body.id}`);
  assert.equal(b.status, 'success', b.status_info);

  const listed = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `backvault/backups/${b.id}/` }));
  assert.deepEqual((listed.Contents ?? []).map((o) => o.Key).sort(), [`backvault/backups/${b.id}/manifest.json`, `backvault/backups/${b.id}/resources/db/database.sqlite.zst`]);
  assert.deepEqual(await readdir(join(server.dir, 'storage')).catch(() => []), [], 'nothing is stored on the local disk');

  const link = await server.api('POST', `/api/v1/backups/${b.id}/download-link`, {});
  const res = await fetch(link.body.url);
  assert.equal(res.status, 200);
  assert.equal(Number(res.headers.get('content-length')), (await res.arrayBuffer()).byteLength);

  const target = join(work.path, 'restored.db');
  const r = await server.api('POST', '/api/v1/instances/s3app/restores', { backup: b.id, targets: { db: { connection: target } } });
  const done = await waitFor(server.api, `/api/v1/restores/${r.body.id}`);
  assert.equal(done.status, 'success', done.status_info);
  const restored = new Database(target, { readonly: true });
  assert.equal((restored.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, 500);
  restored.close();

  assert.equal((await server.api('DELETE', `/api/v1/backups/${b.id}`)).status, 204);
  const after = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `backvault/backups/${b.id}/` }));
  assert.equal(after.KeyCount ?? 0, 0, 'deleting the backup removes its objects');
});
