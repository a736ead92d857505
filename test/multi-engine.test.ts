// One instance with a PostgreSQL database, a Redis database and a directory:
// one backup takes them all (databases first), one manifest describes them,
// a restore brings all of them back or only the ones asked for, and a drill
// proves the backup without touching the live data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { startTestServer, tempDir, waitFor } from './helpers.ts';

const PG = 'postgres://postgres@127.0.0.1:5432';
const REDIS_DB = 7;

async function pgQuery(db: string, sql: string): Promise<any[]> {
  const client = new pg.Client({ connectionString: `${PG}/${db}` });
  try {
    await client.connect();
  } catch (err) {
    throw new Error(`PostgreSQL on 127.0.0.1:5432 is needed for this test: ${(err as Error).message}`);
  }
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

test('postgres + redis + files: one backup, one manifest, full and selective restores, a drill', async (t) => {
  const db = `bv_multi_${randomBytes(4).toString('hex')}`;
  await pgQuery('postgres', `CREATE DATABASE ${db}`);
  const redis = new Redis({ host: '127.0.0.1', port: 6379, db: REDIS_DB, lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect().catch((err: Error) => {
    throw new Error(`Redis on 127.0.0.1:6379 is needed for this test: ${err.message}`);
  });
  await redis.flushdb();
  const server = await startTestServer();
  const work = await tempDir();
  t.after(async () => {
    await server.close();
    await work.cleanup();
    await redis.flushdb();
    redis.disconnect();
    await pgQuery('postgres', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await pgQuery('postgres', `DROP DATABASE IF EXISTS ${db}_copy WITH (FORCE)`);
  });

  await pgQuery(db, `CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);
                     INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g * 10 FROM generate_series(1, 300) g;`);
  await redis.set('session:1', 'alice');
  await redis.hset('user:1', { name: 'Alice', plan: 'pro' });
  await redis.set('session:2', 'bob', 'EX', 3600);
  const files = join(work.path, 'uploads');
  await mkdir(files);
  await writeFile(join(files, 'avatar.png'), randomBytes(4096));

  await server.api('POST', '/api/v1/instances', { name: 'shop' });
  const res = [
    { name: 'db', type: 'postgres', connection: `postgres://postgres:not-needed-secret@127.0.0.1:5432/${db}` },
    { name: 'cache', type: 'redis', connection: `redis://127.0.0.1:6379/${REDIS_DB}` },
    { name: 'uploads', type: 'files', connection: files },
  ];
  for (const r of res) {
    const created = await server.api('POST', '/api/v1/instances/shop/resources', r);
    assert.equal(created.status, 201, JSON.stringify(created.body));
  }
  const shown = await server.api('GET', '/api/v1/instances/shop/resources/db');
  assert.equal(shown.body.connection, `postgres://postgres:****@127.0.0.1:5432/${db}`, 'the password is masked');
  assert.ok(!JSON.stringify((await server.api('GET', '/api/v1/instances/shop')).body).includes('not-needed-secret'));
  const tables = await server.api('GET', '/api/v1/instances/shop/resources/db/objects');
  assert.ok(tables.body.items.some((o: any) => o.name === 'public.accounts'));
  const prefixes = await server.api('GET', '/api/v1/instances/shop/resources/cache/objects');
  assert.ok(prefixes.body.items.some((o: any) => o.kind === 'key_prefix' && o.name.startsWith('session')));

  const b = await waitFor(server.api, `/api/v1/backups/${(await server.api('POST', '/api/v1/instances/shop/backups', { type: 'full' })).body.id}`, 'status', 120_000);
  assert.equal(b.status, 'success', b.status_info);
  assert.deepEqual(b.resources.map((r: any) => r.name), ['db', 'cache', 'uploads'], 'databases first, files last');
  const dbEntry = b.resources[0];
  assert.equal(dbEntry.counts.tables['public.accounts'], 300);
  assert.match(dbEntry.server_version, /^15/);
  assert.ok(dbEntry.tool_version);
  assert.equal(b.resources[1].counts.keys, 3);
  assert.equal(b.resources[2].counts.files, 1);
  const manifest = JSON.parse(await readFile(join(server.dir, 'storage', 'backups', b.id, 'manifest.json'), 'utf8'));
  assert.equal(manifest.resources.length, 3);
  assert.ok(!JSON.stringify(manifest).includes('not-needed-secret'), 'no secret in the manifest');

  // Everything changes; a full restore brings all three back.
  await pgQuery(db, `DELETE FROM accounts WHERE id > 100; CREATE TABLE added_later (x int);`);
  await redis.flushdb();
  await redis.set('added:later', 'x');
  await rm(join(files, 'avatar.png'));
  const r1 = await server.api('POST', '/api/v1/instances/shop/restores', { backup: b.id });
  const done = await waitFor(server.api, `/api/v1/restores/${r1.body.id}`, 'status', 120_000);
  assert.equal(done.status, 'success', done.status_info);
  assert.equal((await pgQuery(db, 'SELECT count(*)::int AS n FROM accounts'))[0].n, 300);
  assert.equal((await pgQuery(db, `SELECT count(*)::int AS n FROM pg_tables WHERE tablename = 'added_later'`))[0].n, 0, 'a full restore drops what the backup lacks');
  assert.equal(await redis.get('session:1'), 'alice');
  assert.equal(await redis.get('added:later'), null);
  const ttl = await redis.ttl('session:2');
  assert.ok(ttl > 3500 && ttl <= 3600, `TTL kept: ${ttl}`);
  assert.equal((await readFile(join(files, 'avatar.png'))).length, 4096);
  // Each resource's result says where its time went, step by step, in the order the steps ran.
  const phases = Object.fromEntries(done.result.resources.map((r: any) => [r.name, r.phases]));
  assert.deepEqual(Object.keys(phases.db), ['spool', 'create_staging', 'pg_restore', 'count', 'swap']);
  assert.deepEqual(Object.keys(phases.cache), ['spool', 'write', 'count']);
  assert.deepEqual(Object.keys(phases.uploads), ['extract', 'sync', 'swap']);
  for (const [name, p] of Object.entries(phases) as [string, Record<string, number>][]) {
    for (const [step, ms] of Object.entries(p)) assert.ok(Number.isInteger(ms) && ms >= 0, `${name}.${step}: ${ms}`);
  }
  assert.ok(phases.db.pg_restore > 0, 'pg_restore takes measurable time');

  // Only the cache: the database keeps its new rows.
  await pgQuery(db, `INSERT INTO accounts (owner, balance) VALUES ('new', 1)`);
  await redis.set('session:1', 'mallory');
  const r2 = await server.api('POST', '/api/v1/instances/shop/restores', { backup: b.id, resources: ['cache'] });
  assert.equal((await waitFor(server.api, `/api/v1/restores/${r2.body.id}`)).status, 'success');
  assert.equal(await redis.get('session:1'), 'alice');
  assert.equal((await pgQuery(db, 'SELECT count(*)::int AS n FROM accounts'))[0].n, 301);

  // The database into a new database on the same server, created for it.
  const r3 = await server.api('POST', '/api/v1/instances/shop/restores', {
    backup: b.id,
    resources: ['db'],
    targets: { db: { connection: `postgres://postgres@127.0.0.1:5432/${db}_copy` } },
  });
  assert.equal((await waitFor(server.api, `/api/v1/restores/${r3.body.id}`, 'status', 120_000)).status, 'success');
  assert.equal((await pgQuery(`${db}_copy`, 'SELECT count(*)::int AS n FROM accounts'))[0].n, 300);

  // A backup that came from another major version restores with a warning that says so.
  const manifestPath = join(server.dir, 'storage', 'backups', b.id, 'manifest.json');
  const stored = JSON.parse(await readFile(manifestPath, 'utf8'));
  stored.resources[0].server_version = '14.11';
  await writeFile(manifestPath, JSON.stringify(stored));
  // A new target that exists and holds tables is refused, and left as it was.
  const again = await server.api('POST', '/api/v1/instances/shop/restores', { backup: b.id, resources: ['db'], targets: { db: { connection: `postgres://postgres@127.0.0.1:5432/${db}_copy` } } });
  const refused = await waitFor(server.api, `/api/v1/restores/${again.body.id}`, 'status', 120_000);
  assert.equal(refused.status, 'error');
  assert.match(refused.status_info, /not empty/);
  assert.equal((await pgQuery(`${db}_copy`, 'SELECT count(*)::int AS n FROM accounts'))[0].n, 300);
  await pgQuery('postgres', `DROP DATABASE ${db}_copy WITH (FORCE)`);
  const r4 = await server.api('POST', '/api/v1/instances/shop/restores', { backup: b.id, resources: ['db'], targets: { db: { connection: `postgres://postgres@127.0.0.1:5432/${db}_copy` } } });
  const warned = await waitFor(server.api, `/api/v1/restores/${r4.body.id}`, 'status', 120_000);
  assert.equal(warned.status, 'success', warned.status_info);
  assert.match(warned.result.resources[0].warnings.join(' '), /14\.11.*another major version/);
  stored.resources[0].server_version = dbEntry.server_version;
  await writeFile(manifestPath, JSON.stringify(stored));

  // A drill restores everything into scratch targets and leaves the live data alone.
  await server.api('POST', `/api/v1/backups/${b.id}/verify`);
  const v = await waitFor(server.api, `/api/v1/backups/${b.id}`, 'verify_status', 120_000);
  assert.equal(v.verify_status, 'success', JSON.stringify(v.verify_result));
  assert.equal((await pgQuery(db, 'SELECT count(*)::int AS n FROM accounts'))[0].n, 301);
  const scratch = await pgQuery('postgres', `SELECT datname FROM pg_database WHERE datname LIKE 'bv_scratch_%'`);
  assert.deepEqual(scratch, [], 'scratch databases are dropped');
});
