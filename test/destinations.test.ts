// Several destinations: one dump goes to every storage at once, each copy has
// a status, reads fall back to a good copy, retention can differ per
// destination, and a destination that fails does not fail the backup.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, rename, writeFile, readdir, rm, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startTestServer, tempDir, waitFor } from './helpers.ts';
import type { Config } from '../src/config/index.ts';

function makeDb(path: string, rows: number): void {
  const db = new Database(path);
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
  const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
  for (let i = 0; i < rows; i++) insert.run(`value ${i}`);
  db.close();
}

function rowCount(path: string): number {
  const db = new Database(path, { readonly: true });
  const n = (db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n;
  db.close();
  return n;
}

/** A work directory and a server with a second destination `name` in a directory of it; both go when the test ends. */
async function withSecondDestination(t: TestContext, name: string, config: Partial<Config> = {}) {
  const work = await tempDir();
  const second = join(work.path, name);
  const server = await startTestServer({ destinations: [{ name, storage: `file://${second}` }], ...config });
  t.after(async () => {
    await server.close();
    await work.cleanup();
  });
  return { work, second, server };
}

/** A server with a second destination "offsite" and one successful backup of a SQLite database of `rows` rows, in both. */
async function backedUpTwice(t: TestContext, rows: number) {
  const { work, second, server } = await withSecondDestination(t, 'offsite');
  makeDb(join(work.path, 'app.db'), rows);
  await server.api('POST', '/api/v1/instances', { name: 'app' });
  await server.api('POST', '/api/v1/instances/app/resources', { name: 'db', type: 'sqlite', connection: join(work.path, 'app.db') });
  const b = await waitFor(server.api, `/api/v1/backups/${(await server.api('POST', '/api/v1/instances/app/backups', { type: 'full' })).body.id}`);
  assert.equal(b.status, 'success', b.status_info);
  return { work, second, server, b };
}

test('two destinations: both get every backup; a damaged copy gives way to the other; delete removes both', async (t) => {
  const { work, second, server, b } = await backedUpTwice(t, 120);
  assert.deepEqual(
    b.copies.map((c: any) => [c.destination, c.status]),
    [
      ['default', 'success'],
      ['offsite', 'success'],
    ],
  );
  const primaryArtifact = join(server.dir, 'storage', 'backups', b.id, 'resources', 'db', 'database.sqlite.zst');
  const offsiteArtifact = join(second, 'backups', b.id, 'resources', 'db', 'database.sqlite.zst');
  assert.deepEqual(await readFile(primaryArtifact), await readFile(offsiteArtifact), 'one dump, the same bytes in both');

  // The primary copy is damaged: the restore uses the offsite copy, says so, and marks the bad one.
  const bytes = await readFile(primaryArtifact);
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  await writeFile(primaryArtifact, bytes);
  const target = join(work.path, 'restored.db');
  const r = await server.api('POST', '/api/v1/instances/app/restores', { backup: b.id, targets: { db: { connection: target } } });
  const done = await waitFor(server.api, `/api/v1/restores/${r.body.id}`);
  assert.equal(done.status, 'success', done.status_info);
  assert.equal(rowCount(target), 120);
  assert.match(done.result.resources[0].warnings.join(' '), /default could not be used/);
  const after = (await server.api('GET', `/api/v1/backups/${b.id}`)).body;
  assert.deepEqual(
    after.copies.map((c: any) => [c.destination, c.status]),
    [
      ['default', 'error'],
      ['offsite', 'success'],
    ],
  );
  // Downloads and drills use the good copy.
  const link = await server.api('POST', `/api/v1/backups/${b.id}/download-link`, {});
  assert.equal((await fetch(link.body.url)).status, 200);
  await server.api('POST', `/api/v1/backups/${b.id}/verify`);
  assert.equal((await waitFor(server.api, `/api/v1/backups/${b.id}`, 'verify_status')).verify_status, 'success');

  assert.equal((await server.api('DELETE', `/api/v1/backups/${b.id}`)).status, 204);
  assert.deepEqual(await readdir(join(second, 'backups')).catch(() => []), []);
  assert.deepEqual(await readdir(join(server.dir, 'storage', 'backups')).catch(() => []), []);
});

test('a copy that cannot be read this time (a storage failure, not damage) is passed over but not marked bad', async (t) => {
  const { work, second, server, b } = await backedUpTwice(t, 50);
  const primaryArtifact = join(server.dir, 'storage', 'backups', b.id, 'resources', 'db', 'database.sqlite.zst');
  const saved = join(work.path, 'saved.zst');
  await rename(primaryArtifact, saved);
  // A symlink to itself: opening it fails with ELOOP, which local storage reports as storage_failed.
  await symlink('database.sqlite.zst', primaryArtifact);
  const restoreInto = async (name: string) => {
    const r = await server.api('POST', '/api/v1/instances/app/restores', { backup: b.id, targets: { db: { connection: join(work.path, name) } } });
    return waitFor(server.api, `/api/v1/restores/${r.body.id}`);
  };
  const first = await restoreInto('first.db');
  assert.equal(first.status, 'success', first.status_info);
  assert.equal(rowCount(join(work.path, 'first.db')), 50);
  assert.match(first.result.resources[0].warnings.join(' '), /default could not be read this time.*another copy was used/);
  const copies = (await server.api('GET', `/api/v1/backups/${b.id}`)).body.copies;
  assert.deepEqual(
    copies.map((c: any) => [c.destination, c.status]),
    [
      ['default', 'success'],
      ['offsite', 'success'],
    ],
  );
  // Once storage answers again, the primary copy is used as before, without a warning.
  await rm(primaryArtifact);
  await rename(saved, primaryArtifact);
  await rm(second, { recursive: true, force: true });
  const second_ = await restoreInto('second.db');
  assert.equal(second_.status, 'success', second_.status_info);
  assert.deepEqual(second_.result.resources[0].warnings, []);
});

test('a destination that fails drops out; the backup succeeds in the other and says which copy failed', async (t) => {
  const { work, second, server } = await withSecondDestination(t, 'flaky');
  // The destination's directory is replaced by a file: every write there fails.
  await rm(second, { recursive: true, force: true });
  await writeFile(second, 'not a directory');
  const src = join(work.path, 'site');
  await mkdir(src);
  await writeFile(join(src, 'index.html'), 'hello');
  await server.api('POST', '/api/v1/instances', { name: 'site' });
  await server.api('POST', '/api/v1/instances/site/resources', { name: 'www', type: 'files', connection: src });
  const b = await waitFor(server.api, `/api/v1/backups/${(await server.api('POST', '/api/v1/instances/site/backups', { type: 'full' })).body.id}`);
  assert.equal(b.status, 'success');
  assert.match(b.status_info, /copy in flaky failed/);
  const copies = Object.fromEntries(b.copies.map((c: any) => [c.destination, c.status]));
  assert.deepEqual(copies, { default: 'success', flaky: 'error' });
  assert.ok((await stat(second)).isFile(), 'nothing was written there');
});

test('retention per destination: the offsite copy is kept longer than the local one', async (t) => {
  const { work, second, server } = await withSecondDestination(t, 'archive', { scheduler_tick_seconds: 3600 });
  const src = join(work.path, 'data');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'a');
  await server.api('POST', '/api/v1/instances', { name: 'ret' });
  await server.api('POST', '/api/v1/instances/ret/resources', { name: 'www', type: 'files', connection: src });
  const bad = await server.api('POST', '/api/v1/instances/ret/policies', { name: 'p', schedule: '0 0 1 1 *', retention: { keep_last: 1, destinations: { nowhere: { keep_last: 1 } } } });
  assert.equal(bad.status, 400);
  const p = (await server.api('POST', '/api/v1/instances/ret/policies', { name: 'p', schedule: '0 0 1 1 *', retention: { keep_last: 1, destinations: { archive: { keep_last: 3 } } } })).body;
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    const b = await server.api('POST', `/api/v1/policies/${p.id}/run`);
    await waitFor(server.api, `/api/v1/backups/${b.body.id}`);
    await server.server.scheduler.settle();
    ids.push(b.body.id);
  }
  const listed = (await server.api('GET', `/api/v1/backups?policy=${p.id}`)).body.items;
  const where = Object.fromEntries(listed.map((b: any) => [b.id, b.copies.filter((c: any) => c.status === 'success').map((c: any) => c.destination)]));
  assert.deepEqual(where[ids[3]!], ['default', 'archive'], 'the newest is in both');
  assert.deepEqual(where[ids[2]!], ['archive']);
  assert.deepEqual(where[ids[1]!], ['archive']);
  assert.equal(where[ids[0]!], undefined, 'the oldest is gone from both, so the backup is gone');
  assert.deepEqual((await readdir(join(server.dir, 'storage', 'backups'))).sort(), [ids[3]]);
  assert.deepEqual((await readdir(join(second, 'backups'))).sort(), [ids[1], ids[2], ids[3]].sort());
  const usage = (await server.api('GET', '/api/v1/storage/usage?instance=ret')).body.items;
  assert.deepEqual(
    usage.map((u: any) => [u.destination, u.backups]),
    [
      ['default', 1],
      ['archive', 3],
    ],
    'usage per instance and destination',
  );
  const preview = (await server.api('GET', `/api/v1/policies/${p.id}/retention-preview`)).body;
  assert.deepEqual(Object.keys(preview.destinations).sort(), ['archive', 'default']);
  // A backup only offsite still restores.
  const target = join(work.path, 'back');
  const r = await server.api('POST', '/api/v1/instances/ret/restores', { backup: ids[1], targets: { www: { connection: target } } });
  assert.equal((await waitFor(server.api, `/api/v1/restores/${r.body.id}`)).status, 'success');
  assert.equal(await readFile(join(target, 'a.txt'), 'utf8'), 'a');
});

test('a damaged files copy whose garbage fails the tar parse before its checksum is read still counts as damaged and gives way to the other copy', async (t) => {
  const { work, server } = await withSecondDestination(t, 'offsite');
  const src = join(work.path, 'site');
  await mkdir(join(src, 'pages'), { recursive: true });
  for (let i = 0; i < 50; i++) await writeFile(join(src, 'pages', `p${i}.html`), `<p>page ${i}</p>\n`.repeat(200));
  await server.api('POST', '/api/v1/instances', { name: 'site' });
  await server.api('POST', '/api/v1/instances/site/resources', { name: 'www', type: 'files', connection: src });
  // Uncompressed, so a flipped byte reaches the tar parser as it is (the restore worker reads the stored bytes itself).
  const b = await waitFor(server.api, `/api/v1/backups/${(await server.api('POST', '/api/v1/instances/site/backups', { type: 'full', compression: 'none' })).body.id}`);
  assert.equal(b.status, 'success', b.status_info);
  const primary = join(server.dir, 'storage', 'backups', b.id, 'resources', 'www', 'files.tar');
  const bytes = await readFile(primary);
  bytes[10]! ^= 0x20; // inside the first tar header: its checksum no longer matches
  await writeFile(primary, bytes);

  const target = join(work.path, 'restored');
  const r = await server.api('POST', '/api/v1/instances/site/restores', { backup: b.id, targets: { www: { connection: target } } });
  const done = await waitFor(server.api, `/api/v1/restores/${r.body.id}`);
  assert.equal(done.status, 'success', done.status_info);
  assert.match(done.result.resources[0].warnings.join(' '), /default could not be used/);
  assert.equal(await readFile(join(target, 'pages', 'p7.html'), 'utf8'), '<p>page 7</p>\n'.repeat(200));
  const copies = (await server.api('GET', `/api/v1/backups/${b.id}`)).body.copies;
  assert.deepEqual(
    copies.map((c: any) => [c.destination, c.status]),
    [
      ['default', 'error'],
      ['offsite', 'success'],
    ],
  );
});
