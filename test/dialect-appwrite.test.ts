// The Appwrite dialect driven by the official node-appwrite SDK (every method
// of its Backups service) against a real server whose project holds a SQLite
// database and a directory: archives, policies (checked natively too) and
// restorations in place and into new targets, with the data round-tripping.
// A second project adds a PostgreSQL database to the sqlite database and the
// directory: archived, changed, restored in place and with newResourceId into
// a new postgres database, all through the SDK.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Client, Backups, Query, ID, AppwriteException, BackupServices } from 'node-appwrite';
import { startTestServer, tempDir, type TestServer } from './helpers.ts';
import { changePg, createPgDatabase, pgQuery, pgDatabaseExists, pgSnapshot, PG_SERVER, type PgDatabase, type PgSnapshot } from './pg-helper.ts';

const PROJECT = 'appwrite-app';
const OTHER = 'appwrite-other';
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$/;
const CORE_ID = /^[0-9a-f]{24}$/;

function makeDb(path: string): void {
  const db = new Database(path);
  db.exec('CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL); CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT);');
  const n = db.prepare('INSERT INTO notes (body) VALUES (?)');
  const t = db.prepare('INSERT INTO tags (name) VALUES (?)');
  db.transaction(() => {
    for (let i = 1; i <= 50; i++) {
      n.run(`note ${i}`);
      t.run(`tag ${i}`);
    }
  })();
  db.close();
}

function dumpDb(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  const out = { notes: db.prepare('SELECT * FROM notes ORDER BY id').all(), tags: db.prepare('SELECT * FROM tags ORDER BY id').all() };
  db.close();
  return out;
}

async function filesOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir, { recursive: true })).sort()) {
    const p = join(dir, name);
    out[name] = (await stat(p)).isDirectory() ? '<dir>' : await readFile(p, 'utf8');
  }
  return out;
}

function client(url: string, project: string | null, key: string | null): Backups {
  const c = new Client().setEndpoint(`${url}/appwrite/v1`);
  if (project !== null) c.setProject(project);
  if (key !== null) c.setKey(key);
  return new Backups(c);
}

/** Asserts the promise fails with an AppwriteException of this status and type; returns it. */
async function rejectsWith(p: Promise<unknown>, code: number, type: string): Promise<AppwriteException> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AppwriteException, `not an AppwriteException: ${String(err)}`);
    assert.equal(err.code, code, `${err.code} ${err.type}: ${err.message}`);
    assert.equal(err.type, type, err.message);
    const body = JSON.parse(err.response);
    assert.deepEqual(Object.keys(body).sort(), ['code', 'message', 'type', 'version']);
    assert.equal(body.code, code);
    assert.equal(typeof body.version, 'string');
    return err;
  }
  assert.fail(`expected ${code} ${type}`);
}

function assertArchiveShape(a: any): void {
  for (const k of ['$id', '$createdAt', '$updatedAt', 'policyId', 'size', 'status', 'startedAt', 'migrationId', 'services', 'resources']) {
    assert.ok(k in a, `archive field ${k} missing in ${JSON.stringify(a)}`);
  }
  assert.match(a.$id, CORE_ID);
  assert.match(a.$createdAt, TIME);
  assert.match(a.$updatedAt, TIME);
  assert.equal(typeof a.policyId, 'string');
  assert.equal(typeof a.size, 'number');
  assert.ok(['pending', 'processing', 'uploading', 'completed', 'failed'].includes(a.status), a.status);
  assert.ok(Array.isArray(a.services) && Array.isArray(a.resources));
}

function assertPolicyShape(p: any): void {
  for (const k of ['$id', 'name', '$createdAt', '$updatedAt', 'services', 'resources', 'retention', 'schedule', 'type', 'enabled']) {
    assert.ok(k in p, `policy field ${k} missing in ${JSON.stringify(p)}`);
  }
  assert.match(p.$createdAt, TIME);
  assert.equal(typeof p.retention, 'number');
  assert.equal(typeof p.enabled, 'boolean');
  assert.equal(p.type, 'full');
}

function assertRestorationShape(r: any): void {
  for (const k of ['$id', '$createdAt', '$updatedAt', 'archiveId', 'policyId', 'status', 'startedAt', 'migrationId', 'services', 'resources', 'options']) {
    assert.ok(k in r, `restoration field ${k} missing in ${JSON.stringify(r)}`);
  }
  assert.match(r.$id, CORE_ID);
  assert.ok(['pending', 'processing', 'completed', 'failed'].includes(r.status), r.status);
  assert.equal(typeof r.options, 'string');
  JSON.parse(r.options);
}


/** Polls an archive or restoration until Appwrite's status words say it ended. */
async function waitEnd<T extends { status: string }>(get: () => Promise<T>, what: string, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await get();
    if (v.status === 'completed' || v.status === 'failed') return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not end`);
}

describe('Appwrite dialect (node-appwrite SDK)', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let admin: Backups;
  let reader: Backups;
  let readKey: string;
  let dbPath: string;
  let filesDir: string;
  let original: { db: Record<string, unknown[]>; files: Record<string, string> };
  let fullArchive: string;
  let dbArchive: string;
  let filesArchive: string;

  const waitArchive = (id: string) => waitEnd(() => admin.getArchive({ archiveId: id }), `archive ${id}`, 60000);
  const waitRestoration = (id: string) => waitEnd(() => admin.getRestoration({ restorationId: id }), `restoration ${id}`, 60000);

  before(async () => {
    t = await startTestServer();
    work = await tempDir();
    dbPath = join(work.path, 'app', 'app.db');
    filesDir = join(work.path, 'uploads');
    await mkdir(join(work.path, 'app'), { recursive: true });
    makeDb(dbPath);
    await mkdir(join(filesDir, 'sub'), { recursive: true });
    await writeFile(join(filesDir, 'a.txt'), 'alpha');
    await writeFile(join(filesDir, 'sub', 'b.txt'), 'beta');
    original = { db: dumpDb(dbPath), files: await filesOf(filesDir) };
    for (const name of [PROJECT, OTHER]) assert.equal((await t.api('POST', '/api/v1/instances', { name })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${PROJECT}/resources`, { name: 'db', type: 'sqlite', connection: dbPath })).status, 201);
    assert.equal((await t.api('POST', `/api/v1/instances/${PROJECT}/resources`, { name: 'files', type: 'files', connection: filesDir })).status, 201);
    const otherDb = join(work.path, 'other.db');
    makeDb(otherDb);
    assert.equal((await t.api('POST', `/api/v1/instances/${OTHER}/resources`, { name: 'db', type: 'sqlite', connection: otherDb })).status, 201);
    const k = await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' });
    assert.equal(k.status, 201);
    readKey = k.body.key;
    admin = client(t.url, PROJECT, t.adminKey);
    reader = client(t.url, PROJECT, readKey);
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('createArchive with every service backs up the whole project', async () => {
    const created = await admin.createArchive({ services: [BackupServices.Databases, BackupServices.Storage] });
    assertArchiveShape(created);
    assert.ok(['pending', 'processing', 'uploading', 'completed'].includes(created.status));
    assert.equal(created.policyId, '');
    assert.equal(created.resourceId, undefined);
    fullArchive = created.$id;
    const done = await waitArchive(fullArchive);
    assertArchiveShape(done);
    assert.equal(done.status, 'completed');
    assert.ok(done.size > 0);
    assert.match(done.startedAt, TIME);
    assert.deepEqual(done.services, ['databases', 'storage']);
    assert.deepEqual([...done.resources].sort(), ['db', 'files']);
    const native = await t.api('GET', `/api/v1/backups/${fullArchive}`);
    assert.equal(native.body.type, 'full');
    assert.equal(native.body.instance, PROJECT);
    assert.equal(native.body.size, done.size);
  });

  test('createArchive with one service, and with a resourceId', async () => {
    // The positional (deprecated) SDK style sends the same request.
    const dbOnly = await admin.createArchive([BackupServices.Tablesdb]);
    dbArchive = dbOnly.$id;
    const files = await admin.createArchive({ services: [BackupServices.Storage, BackupServices.Databases], resourceId: 'files' });
    filesArchive = files.$id;
    const a = await waitArchive(dbArchive);
    const b = await waitArchive(filesArchive);
    assert.equal(a.status, 'completed');
    assert.deepEqual(a.services, ['databases']);
    assert.deepEqual(a.resources, ['db']);
    assert.equal(a.resourceId, 'db');
    assert.equal(a.resourceType, 'database');
    assert.equal(b.status, 'completed');
    assert.deepEqual(b.services, ['storage']);
    assert.deepEqual(b.resources, ['files']);
    assert.equal(b.resourceId, 'files');
    assert.equal(b.resourceType, 'bucket');
    const native = await t.api('GET', `/api/v1/backups/${filesArchive}`);
    assert.equal(native.body.type, 'partial');
    assert.deepEqual(native.body.selection, { files: null });
    // A resource the services do not cover, and one that does not exist.
    await rejectsWith(admin.createArchive({ services: [BackupServices.Databases], resourceId: 'files' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createArchive({ services: [BackupServices.Databases], resourceId: 'nope' }), 400, 'general_argument_invalid');
  });

  test('getArchive answers the same model the list shows', async () => {
    const got = await admin.getArchive({ archiveId: fullArchive });
    const listed = await admin.listArchives({ queries: [Query.equal('$id', fullArchive)] });
    assert.equal(listed.total, 1);
    assert.deepEqual({ ...listed.archives[0] }, { ...got });
    // A read key reads.
    assert.equal((await reader.getArchive(fullArchive)).$id, fullArchive);
  });

  test('listArchives with queries', async () => {
    const all = await admin.listArchives();
    assert.equal(all.total, 3);
    assert.equal(all.archives.length, 3);
    // Oldest first by default.
    assert.deepEqual(
      all.archives.map((a) => a.$id),
      [fullArchive, dbArchive, filesArchive],
    );
    const limited = await admin.listArchives({ queries: [Query.limit(1)] });
    assert.equal(limited.total, 3);
    assert.deepEqual(
      limited.archives.map((a) => a.$id),
      [fullArchive],
    );
    const desc = await admin.listArchives({ queries: [Query.orderDesc('$createdAt'), Query.offset(1), Query.limit(5)] });
    assert.deepEqual(
      desc.archives.map((a) => a.$id),
      [dbArchive, fullArchive],
    );
    const asc = await admin.listArchives({ queries: [Query.orderAsc('$createdAt'), Query.cursorAfter(fullArchive)] });
    assert.deepEqual(
      asc.archives.map((a) => a.$id),
      [dbArchive, filesArchive],
    );
    const before = await admin.listArchives({ queries: [Query.cursorBefore(filesArchive), Query.limit(1)] });
    assert.deepEqual(
      before.archives.map((a) => a.$id),
      [dbArchive],
    );
    const completed = await admin.listArchives({ queries: [Query.equal('status', ['completed'])] });
    assert.equal(completed.total, 3);
    const single = await admin.listArchives({ queries: [Query.equal('resourceId', 'files')] });
    assert.deepEqual(
      single.archives.map((a) => a.$id),
      [filesArchive],
    );
    const storage = await admin.listArchives({ queries: [Query.contains('services', 'storage'), Query.orderDesc('size')] });
    assert.equal(storage.total, 2);
    const bySize = await admin.listArchives({ queries: [Query.orderAsc('size')] });
    const sizes = bySize.archives.map((a) => a.size);
    assert.deepEqual(sizes, [...sizes].sort((x, y) => x - y));
    const none = await admin.listArchives({ queries: [Query.equal('status', 'failed')] });
    assert.deepEqual({ total: none.total, archives: none.archives }, { total: 0, archives: [] });
    const recent = await admin.listArchives({ queries: [Query.createdAfter('2000-01-01T00:00:00.000+00:00')] });
    assert.equal(recent.total, 3);
    // Unsupported queries and bad values are refused with Appwrite's error.
    await rejectsWith(admin.listArchives({ queries: [Query.search('status', 'x')] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.listArchives({ queries: [Query.equal('nope', 'x')] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.listArchives({ queries: [Query.equal('size', 'big')] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.listArchives({ queries: ['not json'] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.listArchives({ queries: [Query.limit(6000)] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.listArchives({ queries: [Query.cursorAfter('0123456789abcdef01234567')] }), 400, 'general_cursor_not_found');
    // The other project's archives are not listed here.
    const other = client(t.url, OTHER, t.adminKey);
    const o = await other.createArchive({ services: [BackupServices.Databases] });
    assert.equal((await other.listArchives()).total, 1);
    assert.equal((await admin.listArchives()).total, 3);
    await rejectsWith(admin.getArchive(o.$id), 404, 'backup_archive_not_found');
  });

  test('createRestoration in place: the changed data comes back', async () => {
    // Change both resources.
    const db = new Database(dbPath);
    db.exec("DELETE FROM notes WHERE id > 10; UPDATE tags SET name = 'changed'; INSERT INTO notes (body) VALUES ('new');");
    db.close();
    await writeFile(join(filesDir, 'a.txt'), 'changed');
    await writeFile(join(filesDir, 'c.txt'), 'added');
    assert.notDeepEqual(dumpDb(dbPath), original.db);
    const created = await admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases, BackupServices.Storage] });
    assertRestorationShape(created);
    assert.equal(created.archiveId, fullArchive);
    assert.equal(created.options, '{}');
    assert.deepEqual(created.services, ['databases', 'storage']);
    assert.deepEqual([...created.resources].sort(), ['db', 'files']);
    const done = await waitRestoration(created.$id);
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.match(done.startedAt, TIME);
    assert.deepEqual(dumpDb(dbPath), original.db);
    assert.deepEqual(await filesOf(filesDir), original.files);
  });

  test('createRestoration with newResourceId restores into a new target beside the original', async () => {
    // sqlite: <dir>/<newResourceId>.db, the original untouched.
    const r1 = await admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases], newResourceId: 'copy', newResourceName: 'Copy of db' });
    assertRestorationShape(r1);
    assert.deepEqual(r1.resources, ['db']);
    const opts1 = JSON.parse(r1.options);
    assert.equal(opts1.resourceId, 'db');
    assert.equal(opts1.newResourceId, 'copy');
    assert.equal(opts1.newResourceName, 'Copy of db');
    assert.equal(opts1.target, join(work.path, 'app', 'copy.db'));
    assert.equal((await waitRestoration(r1.$id)).status, 'completed');
    assert.deepEqual(dumpDb(join(work.path, 'app', 'copy.db')), original.db);
    const native = await t.api('GET', `/api/v1/restores/${r1.$id}`);
    assert.deepEqual(native.body.targets, { db: { connection: join(work.path, 'app', 'copy.db') } });

    // files: a sibling directory named by a generated ID.
    const id = ID.unique();
    const r2 = await admin.createRestoration(filesArchive, [BackupServices.Storage], id);
    assert.equal((await waitRestoration(r2.$id)).status, 'completed');
    assert.deepEqual(await filesOf(join(work.path, id)), original.files);
    assert.equal(JSON.parse((await admin.getRestoration(r2.$id)).options).newResourceId, id);
    assert.deepEqual(await filesOf(filesDir), original.files);

    // unique() asks the server for an ID.
    const r3 = await admin.createRestoration({ archiveId: dbArchive, services: [BackupServices.Databases], newResourceId: 'unique()' });
    const generated = JSON.parse(r3.options).newResourceId;
    assert.match(generated, CORE_ID);
    assert.equal((await waitRestoration(r3.$id)).status, 'completed');
    assert.deepEqual(dumpDb(join(work.path, 'app', `${generated}.db`)), original.db);

    // The archived resource's own ID overwrites it: a restore in place.
    const r4 = await admin.createRestoration({ archiveId: dbArchive, services: [BackupServices.Databases], newResourceId: 'db' });
    assert.equal(r4.options, '{}');
    assert.equal((await waitRestoration(r4.$id)).status, 'completed');

    // A new target must be new: never a neighbour's data (here the directory holding app.db).
    await rejectsWith(admin.createRestoration({ archiveId: filesArchive, services: [BackupServices.Storage], newResourceId: 'app' }), 409, 'storage_bucket_already_exists');
    await rejectsWith(admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases], newResourceId: 'copy' }), 409, 'database_already_exists');
    assert.deepEqual(dumpDb(dbPath), original.db);

    // One resource at a time, and a name needs an ID.
    await rejectsWith(admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases, BackupServices.Storage], newResourceId: 'both' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases], newResourceName: 'x' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases], newResourceId: '_bad' }), 400, 'general_argument_invalid');
    // The services must find something in the archive.
    await rejectsWith(admin.createRestoration({ archiveId: filesArchive, services: [BackupServices.Databases] }), 400, 'general_argument_invalid');
  });

  test('listRestorations and getRestoration', async () => {
    const all = await admin.listRestorations();
    assert.equal(all.total, 5);
    for (const r of all.restorations) assertRestorationShape(r);
    const got = await reader.getRestoration({ restorationId: all.restorations[0]!.$id });
    assert.deepEqual({ ...got }, { ...all.restorations[0] });
    const page = await admin.listRestorations({ queries: [Query.limit(2), Query.offset(1), Query.orderDesc('$createdAt')] });
    assert.equal(page.total, 5);
    assert.deepEqual(
      page.restorations.map((r) => r.$id),
      all.restorations.slice(2, 4).reverse().map((r) => r.$id),
    );
    const ofArchive = await admin.listRestorations([Query.equal('archiveId', filesArchive), Query.equal('status', 'completed')]);
    assert.equal(ofArchive.total, 1);
    assert.deepEqual(ofArchive.restorations[0]!.services, ['storage']);
    await rejectsWith(admin.getRestoration('0123456789abcdef01234567'), 404, 'backup_restoration_not_found');
    await rejectsWith(admin.getRestoration('no way'), 400, 'general_argument_invalid');
  });

  test('policies: create with ID.unique() and a custom ID, list, get, update, delete; they exist natively', async () => {
    const uniqueId = ID.unique();
    const p1 = await admin.createPolicy({ policyId: uniqueId, services: [BackupServices.Databases, BackupServices.Storage], retention: 7, schedule: '0 3 * * *', name: 'nightly' });
    assertPolicyShape(p1);
    assert.equal(p1.$id, uniqueId);
    assert.equal(p1.name, 'nightly');
    assert.equal(p1.retention, 7);
    assert.equal(p1.schedule, '0 3 * * *');
    assert.equal(p1.enabled, true);
    assert.deepEqual(p1.services, ['databases', 'storage']);
    assert.equal(p1.resourceId, undefined);
    let native = await t.api('GET', `/api/v1/policies/${uniqueId}`);
    assert.equal(native.status, 200);
    assert.equal(native.body.instance, PROJECT);
    assert.equal(native.body.retention.retention_days, 7);
    assert.equal(native.body.schedule, '0 3 * * *');
    assert.equal(native.body.timezone, 'UTC');
    assert.equal(native.body.type, 'full');
    assert.equal(native.body.enabled, true);

    // Positional style: policyId, services, retention, schedule, name, resourceId, enabled.
    const custom = 'db-hourly_1.x';
    const p2 = await admin.createPolicy(custom, [BackupServices.Databases], 30, '0 * * * *', undefined, 'db', false);
    assert.equal(p2.$id, custom);
    assert.equal(p2.name, custom);
    assert.equal(p2.resourceId, 'db');
    assert.equal(p2.resourceType, 'database');
    assert.equal(p2.enabled, false);
    native = await t.api('GET', `/api/v1/policies/${custom}`);
    assert.equal(native.body.type, 'partial');
    assert.deepEqual(native.body.selection, { db: null });
    assert.equal(native.body.retention.retention_days, 30);
    assert.equal(native.body.enabled, false);

    // unique() asks the server for an ID.
    const p3 = await admin.createPolicy({ policyId: 'unique()', services: [BackupServices.Storage], retention: 1, schedule: '*/5 * * * *' });
    assert.match(p3.$id, CORE_ID);
    assert.deepEqual(p3.resources, ['files']);

    const list = await admin.listPolicies();
    assert.equal(list.total, 3);
    assert.deepEqual(
      list.policies.map((p) => p.$id),
      [uniqueId, custom, p3.$id],
    );
    const disabled = await reader.listPolicies({ queries: [Query.equal('enabled', false)] });
    assert.deepEqual(
      disabled.policies.map((p) => p.$id),
      [custom],
    );
    const byRetention = await admin.listPolicies({ queries: [Query.orderDesc('retention'), Query.limit(1)] });
    assert.deepEqual(
      byRetention.policies.map((p) => p.$id),
      [custom],
    );
    assert.deepEqual({ ...(await reader.getPolicy({ policyId: custom })) }, { ...list.policies[1] });

    const updated = await admin.updatePolicy({ policyId: uniqueId, name: 'nightly-2', retention: 14, schedule: '30 2 * * *', enabled: false });
    assert.equal(updated.name, 'nightly-2');
    assert.equal(updated.retention, 14);
    assert.equal(updated.schedule, '30 2 * * *');
    assert.equal(updated.enabled, false);
    native = await t.api('GET', `/api/v1/policies/${uniqueId}`);
    assert.equal(native.body.retention.retention_days, 14);
    assert.equal(native.body.schedule, '30 2 * * *');
    assert.equal(native.body.name, 'nightly-2');
    assert.equal(native.body.enabled, false);
    // Positional style, one field.
    assert.equal((await admin.updatePolicy(uniqueId, undefined, undefined, undefined, true)).enabled, true);

    // An archive made by a policy carries its ID.
    const run = await t.api('POST', `/api/v1/policies/${custom}/run`);
    assert.equal(run.status, 202);
    const byPolicy = await waitArchive(run.body.id);
    assert.equal(byPolicy.policyId, custom);
    assert.equal((await admin.listArchives({ queries: [Query.equal('policyId', custom)] })).total, 1);
    const restoration = await admin.createRestoration({ archiveId: byPolicy.$id, services: [BackupServices.Databases] });
    assert.equal(restoration.policyId, custom);
    assert.equal((await waitRestoration(restoration.$id)).status, 'completed');

    // Errors: a taken ID, a bad ID, a bad schedule, missing and bad params.
    await rejectsWith(admin.createPolicy({ policyId: custom, services: [BackupServices.Databases], retention: 1, schedule: '0 * * * *' }), 409, 'backup_policy_already_exists');
    await rejectsWith(admin.createPolicy({ policyId: 'x'.repeat(37), services: [BackupServices.Databases], retention: 1, schedule: '0 * * * *' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createPolicy({ policyId: ID.unique(), services: [BackupServices.Databases], retention: 1, schedule: 'every day' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createPolicy({ policyId: ID.unique(), services: [BackupServices.Databases], retention: 0, schedule: '0 * * * *' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createPolicy({ policyId: ID.unique(), services: [BackupServices.Documentsdb], retention: 1, schedule: '0 * * * *' }), 400, 'general_argument_invalid');
    await rejectsWith(admin.updatePolicy({ policyId: uniqueId, retention: -1 }), 400, 'general_argument_invalid');

    await admin.deletePolicy({ policyId: custom });
    await admin.deletePolicy(p3.$id);
    await rejectsWith(admin.getPolicy(custom), 404, 'backup_policy_not_found');
    await rejectsWith(admin.updatePolicy({ policyId: custom, name: 'x' }), 404, 'backup_policy_not_found');
    await rejectsWith(admin.deletePolicy(custom), 404, 'backup_policy_not_found');
    assert.equal((await t.api('GET', `/api/v1/policies/${custom}`)).status, 404);
    assert.equal((await admin.listPolicies()).total, 1);
    // Another project's policy is not found here.
    await rejectsWith(client(t.url, OTHER, t.adminKey).getPolicy(uniqueId), 404, 'backup_policy_not_found');
  });

  test('deleteArchive', async () => {
    const res = await admin.deleteArchive({ archiveId: filesArchive });
    assert.deepEqual({ ...res }, { message: '' });
    await rejectsWith(admin.getArchive(filesArchive), 404, 'backup_archive_not_found');
    assert.equal((await t.api('GET', `/api/v1/backups/${filesArchive}`)).status, 404);
    await rejectsWith(admin.deleteArchive(filesArchive), 404, 'backup_archive_not_found');
    // Its restoration is still listed, with what it restored.
    const r = await admin.listRestorations({ queries: [Query.equal('archiveId', filesArchive)] });
    assert.equal(r.total, 1);
    assert.deepEqual(r.restorations[0]!.resources, ['files']);
  });

  test('errors: unknown archive, bad ID, unsupported service, credentials, project, route', async () => {
    // Unknown archive: the 404 shape, byte for byte what the SDK parses.
    const raw = await fetch(`${t.url}/appwrite/v1/backups/archives/0123456789abcdef01234567`, { headers: { 'X-Appwrite-Project': PROJECT, 'X-Appwrite-Key': t.adminKey } });
    assert.equal(raw.status, 404);
    assert.match(raw.headers.get('content-type') ?? '', /application\/json/);
    assert.ok(raw.headers.get('x-ratelimit-limit'));
    assert.ok(raw.headers.get('x-ratelimit-remaining'));
    const body = await raw.json();
    assert.deepEqual(Object.keys(body).sort(), ['code', 'message', 'type', 'version']);
    assert.equal(body.code, 404);
    assert.equal(body.type, 'backup_archive_not_found');
    await rejectsWith(admin.getArchive('validButUnknown'), 404, 'backup_archive_not_found');

    // Bad IDs.
    await rejectsWith(admin.getArchive('-starts-with-dash'), 400, 'general_argument_invalid');
    await rejectsWith(admin.getArchive('a'.repeat(37)), 400, 'general_argument_invalid');
    await rejectsWith(admin.deleteArchive('bad$id'), 400, 'general_argument_invalid');
    await rejectsWith(admin.getPolicy('.dot'), 400, 'general_argument_invalid');

    // Services Backvault cannot back up, and values that are no service.
    const fn = await rejectsWith(admin.createArchive({ services: [BackupServices.Functions] }), 400, 'general_argument_invalid');
    assert.match(fn.message, /functions/);
    await rejectsWith(admin.createArchive({ services: [BackupServices.Databases, BackupServices.Vectorsdb] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createArchive({ services: ['nonsense' as BackupServices] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createArchive({ services: [] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Functions] }), 400, 'general_argument_invalid');
    await rejectsWith(admin.createRestoration({ archiveId: 'abcdefabcdefabcdefabcdef', services: [BackupServices.Databases] }), 404, 'backup_archive_not_found');

    // No key, a wrong key, a read key writing.
    const anonymous = client(t.url, PROJECT, null);
    await rejectsWith(anonymous.listArchives(), 401, 'general_unauthorized_scope');
    await rejectsWith(anonymous.createArchive({ services: [BackupServices.Databases] }), 401, 'general_unauthorized_scope');
    await rejectsWith(client(t.url, PROJECT, 'bvk_wrong').listPolicies(), 401, 'user_unauthorized');
    assert.equal((await reader.listArchives()).total, 3);
    const scope = await rejectsWith(reader.createArchive({ services: [BackupServices.Databases] }), 401, 'general_unauthorized_scope');
    assert.match(scope.message, /archives\.write/);
    await rejectsWith(reader.deleteArchive(fullArchive), 401, 'general_unauthorized_scope');
    await rejectsWith(reader.createPolicy({ policyId: ID.unique(), services: [BackupServices.Databases], retention: 1, schedule: '0 * * * *' }), 401, 'general_unauthorized_scope');
    await rejectsWith(reader.updatePolicy({ policyId: 'whatever', name: 'x' }), 401, 'general_unauthorized_scope');
    await rejectsWith(reader.deletePolicy('whatever'), 401, 'general_unauthorized_scope');
    await rejectsWith(reader.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases] }), 401, 'general_unauthorized_scope');

    // The project: missing, and unknown.
    await rejectsWith(client(t.url, null, t.adminKey).listArchives(), 400, 'project_unknown');
    await rejectsWith(client(t.url, 'no-such-project', t.adminKey).listArchives(), 404, 'project_not_found');
    await rejectsWith(client(t.url, 'Not A Name', t.adminKey).listArchives(), 404, 'project_not_found');

    // A route Appwrite's Backups service does not have.
    const nowhere = await fetch(`${t.url}/appwrite/v1/backups/nowhere`, { headers: { 'X-Appwrite-Project': PROJECT } });
    assert.equal(nowhere.status, 404);
    assert.equal((await nowhere.json()).type, 'general_route_not_found');
    // A body that is not JSON.
    const bad = await fetch(`${t.url}/appwrite/v1/backups/archives`, {
      method: 'POST',
      headers: { 'X-Appwrite-Project': PROJECT, 'X-Appwrite-Key': t.adminKey, 'content-type': 'application/json' },
      body: '{nope',
    });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).type, 'general_argument_invalid');
  });
});

describe('Appwrite dialect (node-appwrite SDK): a project with PostgreSQL, SQLite and a directory', () => {
  const PG_PROJECT = 'appwrite-pg';
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let pgDb: PgDatabase;
  let admin: Backups;
  let dbPath: string;
  let filesDir: string;
  let original: { pg: PgSnapshot; db: Record<string, unknown[]>; files: Record<string, string> };
  let fullArchive: string;
  let pgArchive: string;

  const waitArchive = (id: string) => waitEnd(() => admin.getArchive({ archiveId: id }), `archive ${id}`, 120000);
  const waitRestoration = (id: string) => waitEnd(() => admin.getRestoration({ restorationId: id }), `restoration ${id}`, 120000);

  before(async () => {
    pgDb = await createPgDatabase('bv_aw');
    t = await startTestServer();
    work = await tempDir();
    dbPath = join(work.path, 'app', 'app.db');
    filesDir = join(work.path, 'uploads');
    await mkdir(join(work.path, 'app'), { recursive: true });
    makeDb(dbPath);
    await mkdir(filesDir, { recursive: true });
    await writeFile(join(filesDir, 'a.txt'), 'alpha');
    original = { pg: await pgSnapshot(pgDb.name), db: dumpDb(dbPath), files: await filesOf(filesDir) };
    assert.equal(original.pg.accounts.length, 100);
    assert.equal((await t.api('POST', '/api/v1/instances', { name: PG_PROJECT })).status, 201);
    for (const r of [
      { name: 'pg', type: 'postgres', connection: pgDb.connection },
      { name: 'db', type: 'sqlite', connection: dbPath },
      { name: 'files', type: 'files', connection: filesDir },
    ]) {
      const res = await t.api('POST', `/api/v1/instances/${PG_PROJECT}/resources`, r);
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    admin = client(t.url, PG_PROJECT, t.adminKey);
  });
  after(async () => {
    await t?.close();
    await work?.cleanup();
    await pgDb?.drop();
  });

  test('createArchive: every service takes the postgres database too; dedicatedDatabases takes only it', async () => {
    const full = await admin.createArchive({ services: [BackupServices.Databases, BackupServices.Storage] });
    fullArchive = full.$id;
    const done = await waitArchive(fullArchive);
    assert.equal(done.status, 'completed');
    assert.deepEqual(done.services, ['databases', 'storage']);
    assert.deepEqual([...done.resources].sort(), ['db', 'files', 'pg']);
    const native = await t.api('GET', `/api/v1/backups/${fullArchive}`);
    assert.equal(native.body.type, 'full');
    const entry = native.body.resources.find((r: any) => r.name === 'pg');
    assert.equal(entry.type, 'postgres');
    assert.equal(entry.counts.tables['public.accounts'], 100);

    const dedicated = await admin.createArchive({ services: [BackupServices.DedicatedDatabases] });
    pgArchive = dedicated.$id;
    const d = await waitArchive(pgArchive);
    assert.equal(d.status, 'completed');
    assert.deepEqual(d.services, ['databases']);
    assert.deepEqual(d.resources, ['pg']);
    assert.ok(d.size > 0);

    // resourceId names the postgres resource: an Appwrite "database".
    const one = await waitArchive((await admin.createArchive({ services: [BackupServices.Databases], resourceId: 'pg' })).$id);
    assert.equal(one.status, 'completed');
    assert.equal(one.resourceId, 'pg');
    assert.equal(one.resourceType, 'database');
    assert.deepEqual(one.resources, ['pg']);
    assert.deepEqual((await t.api('GET', `/api/v1/backups/${one.$id}`)).body.selection, { pg: null });
  });

  test('createRestoration in place: changed postgres rows, sqlite rows and files come back', async () => {
    await changePg(pgDb.name);
    const db = new Database(dbPath);
    db.exec("DELETE FROM notes WHERE id > 5; UPDATE tags SET name = 'changed';");
    db.close();
    await writeFile(join(filesDir, 'a.txt'), 'changed');
    assert.notDeepEqual(await pgSnapshot(pgDb.name), original.pg);

    const created = await admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.Databases, BackupServices.Storage] });
    assert.deepEqual([...created.resources].sort(), ['db', 'files', 'pg']);
    const done = await waitRestoration(created.$id);
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.deepEqual(await pgSnapshot(pgDb.name), original.pg, 'postgres rows are back, the later table gone');
    assert.deepEqual(dumpDb(dbPath), original.db);
    assert.deepEqual(await filesOf(filesDir), original.files);

    // dedicatedDatabases restores only the postgres database: the sqlite change stays.
    await changePg(pgDb.name);
    const sq = new Database(dbPath);
    sq.exec("UPDATE notes SET body = 'kept'");
    sq.close();
    const r2 = await admin.createRestoration({ archiveId: fullArchive, services: [BackupServices.DedicatedDatabases] });
    assert.deepEqual(r2.resources, ['pg']);
    assert.equal((await waitRestoration(r2.$id)).status, 'completed');
    assert.deepEqual(await pgSnapshot(pgDb.name), original.pg);
    assert.ok(dumpDb(dbPath).notes!.every((n: any) => n.body === 'kept'));
    assert.deepEqual((await t.api('GET', `/api/v1/restores/${r2.$id}`)).body.resources, ['pg']);
  });

  test('createRestoration with newResourceId: a new postgres database beside the original', async () => {
    const copy = `${pgDb.name}_copy`;
    pgDb.alsoDrop(copy);
    assert.equal(await pgDatabaseExists(copy), false);
    // The live database moves on; the copy must hold the archived rows, the live one its own.
    await changePg(pgDb.name);
    const changed = await pgSnapshot(pgDb.name);

    const r = await admin.createRestoration({ archiveId: pgArchive, services: [BackupServices.Databases], newResourceId: copy, newResourceName: 'Copy of pg' });
    assert.deepEqual(r.resources, ['pg']);
    const opts = JSON.parse(r.options);
    assert.equal(opts.resourceId, 'pg');
    assert.equal(opts.newResourceId, copy);
    assert.equal(opts.newResourceName, 'Copy of pg');
    const done = await waitRestoration(r.$id);
    assert.equal(done.status, 'completed', JSON.stringify(done));
    assert.equal(JSON.parse(done.options).newResourceId, copy);
    const native = await t.api('GET', `/api/v1/restores/${r.$id}`);
    assert.deepEqual(native.body.targets, { pg: { connection: `${PG_SERVER}/${copy}` } });

    assert.equal(await pgDatabaseExists(copy), true, 'the restoration created the new database');
    assert.deepEqual(await pgSnapshot(copy), original.pg);
    assert.deepEqual(await pgSnapshot(pgDb.name), changed, 'the original is untouched');

    // The archived resource's own ID is a restore in place.
    const inPlace = await admin.createRestoration({ archiveId: pgArchive, services: [BackupServices.DedicatedDatabases], newResourceId: 'pg' });
    assert.equal(inPlace.options, '{}');
    assert.equal((await waitRestoration(inPlace.$id)).status, 'completed');
    assert.deepEqual(await pgSnapshot(pgDb.name), original.pg);

    // A database another resource is registered at is not new: 409, and it is left alone.
    assert.equal((await t.api('POST', '/api/v1/instances', { name: 'appwrite-neighbour' })).status, 201);
    const reg = await t.api('POST', '/api/v1/instances/appwrite-neighbour/resources', { name: 'pg', type: 'postgres', connection: `${PG_SERVER}/${copy}` });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    await pgQuery(copy, "UPDATE accounts SET owner = 'neighbour'");
    await rejectsWith(admin.createRestoration({ archiveId: pgArchive, services: [BackupServices.Databases], newResourceId: copy }), 409, 'database_already_exists');
    assert.equal((await pgQuery(copy, "SELECT count(*)::int AS n FROM accounts WHERE owner = 'neighbour'"))[0].n, 100);
    assert.equal((await t.api('DELETE', '/api/v1/instances/appwrite-neighbour/resources/pg')).status, 204);
  });

  // The dialect cannot see databases it has not registered; the postgres engine refuses a new
  // target that exists and is not empty (target_not_empty), so the restoration fails and nothing is lost.
  test('createRestoration with newResourceId naming an existing, unregistered postgres database leaves it untouched', async () => {
    const other = `${pgDb.name}_other`;
    pgDb.alsoDrop(other);
    await pgQuery('postgres', `CREATE DATABASE "${other}"`);
    await pgQuery(other, "CREATE TABLE precious (x text); INSERT INTO precious VALUES ('keep me')");
    const created = await admin.createRestoration({ archiveId: pgArchive, services: [BackupServices.Databases], newResourceId: other });
    const ended = await waitRestoration(created.$id);
    assert.equal(ended.status, 'failed');
    assert.deepEqual(await pgQuery(other, 'SELECT x FROM precious'), [{ x: 'keep me' }]);
  });
});
