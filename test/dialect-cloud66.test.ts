// The Cloud66 dialect, driven with the requests of reference/cloud66-backups.md
// as written (host, token and ids substituted), and its answers checked field
// by field against the document. Round trip: a backup task becomes a policy,
// its run (native run-now: Cloud66 has none) is listed and read through
// Cloud66, its file parts downloaded through their public URLs, joined with
// cat's semantics and imported back from remote_url; the imported backup
// restores the stack's sqlite, files and mysql data. A second stack holds a
// PostgreSQL database beside sqlite and a directory: a db_type postgresql task
// (excluded_tables as Cloud66 dumps them: definitions kept, rows left out) and
// an all-databases task, listed and filtered as postgresql, downloaded through
// the public URLs, imported back from remote_url and restored (natively:
// Cloud66's document has no restore endpoint), with the rows back.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mysql from 'mysql2/promise';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';
import { changePg, createPgDatabase, pgQuery, pgSnapshot, type PgDatabase, type PgSnapshot } from './pg-helper.ts';
import { backupFiles, backupJson, cloud66Id, cloud66Time, parseCloud66Id, splitSuffix, verifyStatus } from '../src/http/dialects/cloud66/views.ts';
import { policyFromTask } from '../src/http/dialects/cloud66/params.ts';
import type { ResourceTable } from '../src/catalog/schema.ts';

const STACK = 'shop';
const TINY = 'tiny';
const PART = 64 * 1024;
const MYSQL = { host: '127.0.0.1', port: 3306, user: 'root' };

/** The document's backup object keys, in its order; group is Backvault's one addition. */
const DOC_BACKUP_KEYS = [
  'id',
  'server_uid',
  'db_type',
  'database_name',
  'file_base',
  'backup_date_iso',
  'backup_status',
  'backup_result',
  'restore_status',
  'restore_result',
  'created_at_iso',
  'updated_at_iso',
  'verify_status',
  'verify_result',
  'storage_path',
  'skip_tables',
  'backup_size',
];
const BACKUP_KEYS = [...DOC_BACKUP_KEYS, 'group'];
const ISO_SECONDS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

interface Res {
  status: number;
  headers: Headers;
  body: any;
  bytes: Buffer;
}

/** A request as the document writes it: a path under /cloud66/api/3, a Bearer token, JSON. */
async function c66(t: TestServer, method: string, path: string, token: string | null, body?: unknown, headers: Record<string, string> = {}): Promise<Res> {
  const h: Record<string, string> = { Accept: 'application/json', ...headers };
  if (token !== null) h.Authorization = `Bearer ${token}`;
  let payload: string | undefined;
  if (body !== undefined) {
    h['Content-Type'] ??= 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(`${t.url}/cloud66/api/3${path}`, { method, headers: h, body: payload });
  return read(res);
}

async function read(res: Response): Promise<Res> {
  const bytes = Buffer.from(await res.arrayBuffer());
  let body: unknown = null;
  try {
    body = bytes.length ? JSON.parse(bytes.toString('utf8')) : null;
  } catch {
    body = null;
  }
  return { status: res.status, headers: res.headers, body, bytes };
}

function assertRateLimited(r: Res): void {
  assert.match(r.headers.get('x-ratelimit-limit') ?? '', /^\d+$/);
  assert.match(r.headers.get('x-ratelimit-remaining') ?? '', /^\d+$/);
}

function assertError(r: Res, status: number, error: string): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.deepEqual(Object.keys(r.body), ['error', 'error_description']);
  assert.equal(r.body.error, error);
  assert.equal(typeof r.body.error_description, 'string');
  assert.ok(r.body.error_description.length > 0);
  assertRateLimited(r);
}

function assertPagination(r: Res, count: number, current = 1, perPage = 30): void {
  const pages = Math.max(1, Math.ceil(count / perPage));
  assert.deepEqual(Object.keys(r.body), ['response', 'count', 'pagination']);
  assert.equal(r.body.count, count);
  assert.deepEqual(r.body.pagination, {
    previous: current > 1 ? current - 1 : null,
    next: current < pages ? current + 1 : null,
    current,
    per_page: perPage,
    count,
    pages,
  });
}

async function nativeBytes(t: TestServer, id: string): Promise<Buffer> {
  const res = await fetch(`${t.url}/api/v1/backups/${id}/download`, { headers: { authorization: `Bearer ${t.adminKey}` } });
  assert.equal(res.status, 200);
  return Buffer.from(await res.arrayBuffer());
}

describe('Cloud66 dialect', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let readKey: string;
  let sqlitePath: string;
  let filesDir: string;
  let bigFile: Buffer;
  let my: mysql.Connection;
  const mysqlDb = `bvt_c66_${randomBytes(4).toString('hex')}`;
  let mysqlTask: any; // policy of the mysql task
  let fullTask: any; // policy of the all-databases task
  let mysqlBackup: any; // native views
  let fullBackup: any;
  let failedBackup: any;
  let tinyBackup: any;

  before(async () => {
    // Small parts, so a test backup is split as a large Cloud66 backup is.
    t = await startTestServer({ allow_private_import_urls: true, cloud66_part_bytes: PART });
    work = await tempDir();
    readKey = (await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' })).body.key;

    sqlitePath = join(work.path, 'app.db');
    const db = new Database(sqlitePath);
    db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a'), ('b');");
    db.close();
    filesDir = join(work.path, 'uploads');
    await mkdir(filesDir, { recursive: true });
    await writeFile(join(filesDir, 'note.txt'), 'hello');
    // Incompressible, so the archive spans several parts.
    bigFile = randomBytes(3 * PART);
    await writeFile(join(filesDir, 'big.bin'), bigFile);

    my = await mysql.createConnection({ ...MYSQL, multipleStatements: true });
    await my.query(`CREATE DATABASE \`${mysqlDb}\``);
    await my.query(
      `USE \`${mysqlDb}\`; CREATE TABLE orders (id INT PRIMARY KEY, total INT); INSERT INTO orders VALUES (1, 10), (2, 20);` +
        ' CREATE TABLE my_log_table (id INT PRIMARY KEY, line TEXT); INSERT INTO my_log_table VALUES (1, "noise");',
    );

    for (const name of [STACK, TINY, 'other']) assert.equal((await t.api('POST', '/api/v1/instances', { name })).status, 201);
    const add = async (instance: string, body: object) => {
      const r = await t.api('POST', `/api/v1/instances/${instance}/resources`, body);
      assert.equal(r.status, 201, JSON.stringify(r.body));
    };
    await add(STACK, { name: 'db', type: 'sqlite', connection: sqlitePath });
    await add(STACK, { name: 'uploads', type: 'files', connection: filesDir });
    await add(STACK, { name: 'mydb', type: 'mysql', connection: `mysql://root@127.0.0.1:3306/${mysqlDb}` });
    const tinyPath = join(work.path, 'tiny.db');
    const tdb = new Database(tinyPath);
    tdb.exec("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);");
    tdb.close();
    await add(TINY, { name: 'db', type: 'sqlite', connection: tinyPath });
  });

  after(async () => {
    if (my) {
      await my.query(`DROP DATABASE IF EXISTS \`${mysqlDb}\``);
      await my.end();
    }
    await t?.close();
    await work?.cleanup();
  });

  test('ids, times, split suffixes and parts', () => {
    const hex = '018f2b7c9a1e0003deadbeef';
    assert.equal(cloud66Id(hex), parseInt('018f2b7c9a1e', 16) * 2048 + 3);
    assert.equal(parseCloud66Id('4153'), 4153);
    assert.equal(parseCloud66Id('0'), null);
    assert.equal(parseCloud66Id('12a'), null);
    assert.equal(cloud66Time('2014-09-01T19:00:33.123Z'), '2014-09-01T19:00:33Z');
    assert.equal(splitSuffix(0), 'aa');
    assert.equal(splitSuffix(1), 'ab');
    assert.equal(splitSuffix(26), 'ba');
    assert.equal(splitSuffix(649), 'yz');
    assert.equal(splitSuffix(650), 'zaaa');
    assert.equal(splitSuffix(650 + 16899), 'zyzz');
    assert.equal(splitSuffix(650 + 16900), 'zzaaaa');
    assert.deepEqual(backupFiles('f', 10, 10), [{ id: 'tar', name: 'f.tar', size: 10, start: 0, end: 9 }]);
    assert.deepEqual(
      backupFiles('f', 25, 10).map((f) => [f.id, f.name, f.size, f.start, f.end]),
      [
        ['tar-aa', 'f.tar-aa', 10, 0, 9],
        ['tar-ab', 'f.tar-ab', 10, 10, 19],
        ['tar-ac', 'f.tar-ac', 5, 20, 24],
      ],
    );
    assert.deepEqual(verifyStatus({ verify_status: null, verify_result: null }), { status: 0, result: null });
    assert.equal(verifyStatus({ verify_status: 'running', verify_result: null }).status, 1);
    assert.equal(verifyStatus({ verify_status: 'error', verify_result: { error: 'no tool' } }).status, 4);
    assert.equal(verifyStatus({ verify_status: 'error', verify_result: { resources: [{ name: 'db', ok: false, differences: ['rows'] }] } }).status, 3);
  });

  test('backup task to policy: db types, excluded tables per engine, gzip', () => {
    const row = (name: string, type: string): ResourceTable => ({ instance: 's', name, type, connection: '', replica: null, options: '{}', created_at: '', updated_at: '' });
    const rows = [row('pg', 'postgres'), row('my', 'mysql'), row('cache', 'redis'), row('up', 'files')];
    const task = policyFromTask('s', rows, { db_type: 'postgresql,mysql', excluded_tables: 'logs, events', gzip: 'true', keep_count: '3' });
    assert.equal(task.type, 'partial');
    assert.deepEqual(task.selection, { pg: null, my: null });
    // PostgreSQL leaves out the rows and keeps the definitions; mysql leaves the tables out.
    assert.deepEqual(task.exclude, { pg: ['data:logs', 'data:events'], my: ['logs', 'events'] });
    assert.equal(task.compression, 'gzip');
    assert.equal(task.schedule, '0 0 * * *');
    assert.deepEqual(task.retention, { keep_count: 3 });
    const all = policyFromTask('s', rows, { excluded_tables: 'logs' });
    assert.equal(all.type, 'full');
    assert.equal(all.selection, null);
    assert.deepEqual(all.exclude, { pg: ['data:logs'], my: ['logs'] });
    assert.equal(all.compression, undefined); // Backvault's default, zstd
    assert.equal(policyFromTask('s', rows, { gzip: false }).compression, 'none');
    assert.deepEqual(policyFromTask('s', rows, { db_type: ['redis'] }).selection, { cache: null });

    // skip_tables shows the table names without the engine's data: prefix.
    const view = { ...({} as any), id: '018f2b7c9a1e0003deadbeef', instance: 's', status: 'success', status_info: null, size: 1, created_at: '2024-01-01T00:00:00.000Z', updated_at: '2024-01-01T00:00:00.000Z', started_at: null, verify_status: null, verify_result: null, policy_id: null, selection: null, exclude: task.exclude, resources: [] };
    assert.equal(backupJson(view, [{ name: 'pg', type: 'postgres' }, { name: 'my', type: 'mysql' }], undefined).skip_tables, 'logs,events');
  });

  test('auth and errors: the OAuth bearer words in Cloud66 error bodies', async () => {
    assertError(await c66(t, 'GET', `/stacks/${STACK}/backups`, null), 401, 'invalid_token');
    const bad = await c66(t, 'GET', `/stacks/${STACK}/backups`, 'bvk_not-a-key');
    assertError(bad, 401, 'invalid_token');
    assert.match(bad.headers.get('www-authenticate') ?? '', /^Bearer /);
    assertError(await c66(t, 'GET', '/stacks/no-such-stack/backups', t.adminKey), 404, 'stack_not_found');
    assertError(await c66(t, 'GET', '/stacks/Bad%20Id/backups', t.adminKey), 404, 'stack_not_found');
    assertError(await c66(t, 'GET', `/stacks/${STACK}/nothing-here`, null), 404, 'not_found');
    // The read key (public scope) cannot create a backup task (admin scope).
    const denied = await c66(t, 'POST', `/stacks/${STACK}/backups?db_type=mysql`, readKey);
    assertError(denied, 403, 'insufficient_scope');
    assert.equal((await t.api('GET', `/api/v1/instances/${STACK}/policies`)).body.items.length, 0);
    // A read key reads.
    const ok = await c66(t, 'GET', `/stacks/${STACK}/backups`, readKey);
    assert.equal(ok.status, 200);
    assertRateLimited(ok);
  });

  test('new backup task: refused parameters', async () => {
    const path = `/stacks/${STACK}/backups`;
    assertError(await c66(t, 'POST', `${path}?db_type=mongodb`, t.adminKey), 400, 'unsupported_db_type');
    assertError(await c66(t, 'POST', `${path}?db_type=redis`, t.adminKey), 400, 'invalid_request');
    assertError(await c66(t, 'POST', `${path}?db_type=oracle`, t.adminKey), 400, 'invalid_request');
    const cron = await c66(t, 'POST', `${path}?frequency=${encodeURIComponent('every hour')}`, t.adminKey);
    assertError(cron, 400, 'invalid_request');
    assert.match(cron.body.error_description, /^frequency/);
    assertError(await c66(t, 'POST', `${path}?keep_count=ten`, t.adminKey), 400, 'invalid_request');
    assertError(await c66(t, 'POST', `${path}?gzip=maybe`, t.adminKey), 400, 'invalid_request');
    assertError(await c66(t, 'POST', path, t.adminKey, '{"db_type": '), 400, 'invalid_request');
    assertError(await c66(t, 'POST', `${path}?db_type=files&excluded_tables=x`, t.adminKey), 400, 'invalid_request');
    assert.equal((await t.api('GET', `/api/v1/instances/${STACK}/policies`)).body.items.length, 0);
  });

  test('new backup task: the document\'s parameters become a policy', async () => {
    // As the document's query parameters.
    const q = new URLSearchParams({
      db_type: 'mysql',
      frequency: '0 */1 * * *',
      keep_count: '10',
      gzip: 'false',
      excluded_tables: 'my_log_table',
      run_on_replica_server: 'false',
    });
    const r = await c66(t, 'POST', `/stacks/${STACK}/backups?${q}`, t.adminKey);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body, { response: { ok: true, message: 'queued for creation' } });
    assertRateLimited(r);

    // The same parameters in a JSON body, typed: every database (db_type all), gzip.
    const r2 = await c66(t, 'POST', `/stacks/${STACK}/backups`, t.adminKey, { db_type: 'all', frequency: '0 3 * * *', keep_count: 5, gzip: true, run_on_replica_server: false });
    assert.equal(r2.status, 200, JSON.stringify(r2.body));
    assert.deepEqual(r2.body, { response: { ok: true, message: 'queued for creation' } });

    const list = (await t.api('GET', `/api/v1/instances/${STACK}/policies`)).body.items;
    assert.equal(list.length, 2);
    [mysqlTask, fullTask] = list;
    assert.equal(mysqlTask.schedule, '0 */1 * * *');
    assert.equal(mysqlTask.timezone, 'UTC');
    assert.equal(mysqlTask.type, 'partial');
    assert.deepEqual(mysqlTask.selection, { mydb: null });
    assert.deepEqual(mysqlTask.exclude, { mydb: ['my_log_table'] });
    assert.equal(mysqlTask.compression, 'none');
    assert.equal(mysqlTask.run_on_replica, false);
    assert.deepEqual(mysqlTask.retention, { keep_count: 10 });
    assert.equal(mysqlTask.enabled, true);

    assert.equal(fullTask.schedule, '0 3 * * *');
    assert.equal(fullTask.type, 'full');
    assert.equal(fullTask.selection, null);
    assert.equal(fullTask.compression, 'gzip');
    assert.deepEqual(fullTask.retention, { keep_count: 5 });
  });

  test('run the tasks (native run-now) and a failed backup', async () => {
    const run = async (policy: any) => {
      const r = await t.api('POST', `/api/v1/policies/${policy.id}/run`);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      const done = await waitFor(t.api, `/api/v1/backups/${r.body.id}`);
      assert.equal(done.status, 'success', done.status_info);
      return done;
    };
    mysqlBackup = await run(mysqlTask);
    fullBackup = await run(fullTask);
    const bad = await t.api('POST', `/api/v1/instances/${STACK}/backups`, { type: 'partial', selection: { db: ['no_such_table'] } });
    assert.equal(bad.status, 202);
    failedBackup = await waitFor(t.api, `/api/v1/backups/${bad.body.id}`);
    assert.equal(failedBackup.status, 'error');
    const tiny = await t.api('POST', `/api/v1/instances/${TINY}/backups`, {});
    tinyBackup = await waitFor(t.api, `/api/v1/backups/${tiny.body.id}`);
    assert.equal(tinyBackup.status, 'success');
  });

  test('backups list: the document\'s shape, field by field', async () => {
    const r = await c66(t, 'GET', `/stacks/${STACK}/backups`, t.adminKey);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    assertRateLimited(r);
    assertPagination(r, 3);
    const items = r.body.response;
    // Newest first, as the document lists them (id 4 before id 1).
    assert.deepEqual(
      items.map((b: any) => b.id),
      [failedBackup, fullBackup, mysqlBackup].map((b) => cloud66Id(b.id)),
    );
    assert.ok(items[0].id > items[1].id && items[1].id > items[2].id);
    for (const b of items) {
      assert.deepEqual(Object.keys(b), BACKUP_KEYS);
      assert.ok(Number.isSafeInteger(b.id) && b.id > 0);
      assert.match(b.server_uid, /^[0-9a-f]{32}$/);
      assert.equal(b.server_uid, items[0].server_uid); // one stack, one "server"
      for (const k of ['backup_date_iso', 'created_at_iso', 'updated_at_iso']) assert.match(b[k], ISO_SECONDS);
      for (const k of ['db_type', 'database_name', 'file_base', 'backup_result', 'storage_path', 'skip_tables']) assert.equal(typeof b[k], 'string');
      for (const k of ['backup_status', 'restore_status', 'verify_status', 'backup_size']) assert.ok(Number.isInteger(b[k]));
      assert.equal(b.restore_status, 0);
      assert.equal(b.restore_result, null);
      assert.equal(b.verify_status, 0);
      assert.equal(b.verify_result, null);
    }
    const [failed, full, mysqlOne] = items;

    assert.equal(mysqlOne.db_type, 'mysql');
    assert.equal(mysqlOne.database_name, 'mydb');
    assert.equal(mysqlOne.file_base, `backvault-${STACK}-${mysqlBackup.id}`);
    assert.equal(mysqlOne.backup_status, 0);
    assert.equal(mysqlOne.backup_result, '');
    assert.equal(mysqlOne.skip_tables, 'my_log_table');
    assert.equal(mysqlOne.storage_path, `backups/${mysqlBackup.id}`);
    assert.equal(mysqlOne.backup_size, mysqlBackup.size);
    assert.ok(mysqlOne.backup_size > 0);
    assert.equal(mysqlOne.created_at_iso, cloud66Time(mysqlBackup.created_at));
    assert.equal(mysqlOne.backup_date_iso, cloud66Time(mysqlBackup.started_at));
    assert.equal(mysqlOne.group, cloud66Id(mysqlTask.id));

    // Databases first, then files, as the core takes them.
    assert.equal(full.db_type, 'mysql,sqlite,files');
    assert.equal(full.database_name, 'mydb,db,uploads');
    assert.equal(full.skip_tables, '');
    assert.equal(full.backup_size, fullBackup.size);
    assert.equal(full.group, cloud66Id(fullTask.id));

    assert.equal(failed.backup_status, 1);
    assert.equal(failed.backup_result, failedBackup.status_info);
    assert.ok(failed.backup_result.length > 0);
    assert.equal(failed.db_type, 'sqlite');
    assert.equal(failed.database_name, 'db');
    assert.equal(failed.backup_size, 0);
    assert.equal(failed.group, null);

    // Another stack's list holds only its own.
    const tiny = await c66(t, 'GET', `/stacks/${TINY}/backups`, readKey);
    assertPagination(tiny, 1);
    assert.equal(tiny.body.response[0].id, cloud66Id(tinyBackup.id));
    const empty = await c66(t, 'GET', '/stacks/other/backups', readKey);
    assert.deepEqual(empty.body, { response: [], count: 0, pagination: { previous: null, next: null, current: 1, per_page: 30, count: 0, pages: 1 } });
  });

  test('backups list: group and db_type filters, pages', async () => {
    const ids = async (query: string) => {
      const r = await c66(t, 'GET', `/stacks/${STACK}/backups?${query}`, t.adminKey);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.response.map((b: any) => b.id);
    };
    const [failed, full, mysqlOne] = [failedBackup, fullBackup, mysqlBackup].map((b) => cloud66Id(b.id));
    assert.deepEqual(await ids('db_type=mysql'), [full, mysqlOne]);
    assert.deepEqual(await ids('db_type=sqlite'), [failed, full]);
    assert.deepEqual(await ids('db_type=redis'), []);
    assert.deepEqual(await ids('db_type=mongodb'), []);
    assert.deepEqual(await ids(`group=${cloud66Id(mysqlTask.id)}`), [mysqlOne]);
    assert.deepEqual(await ids(`group=${cloud66Id(fullTask.id)}&db_type=mysql`), [full]);
    assert.deepEqual(await ids(`group=${cloud66Id(fullTask.id)}&db_type=postgresql`), []);
    assert.deepEqual(await ids('group=15'), []);
    assertError(await c66(t, 'GET', `/stacks/${STACK}/backups?db_type=oracle`, t.adminKey), 400, 'invalid_request');
    assertError(await c66(t, 'GET', `/stacks/${STACK}/backups?group=abc`, t.adminKey), 400, 'invalid_request');

    const p2 = await c66(t, 'GET', `/stacks/${STACK}/backups?page=2&per_page=1`, t.adminKey);
    assertPagination(p2, 3, 2, 1);
    assert.deepEqual(p2.body.response.map((b: any) => b.id), [full]);
  });

  test('one backup: the document\'s shape; other stacks\' and unknown ids are not found', async () => {
    const list = (await c66(t, 'GET', `/stacks/${STACK}/backups`, t.adminKey)).body.response;
    for (const item of list) {
      const r = await c66(t, 'GET', `/stacks/${STACK}/backups/${item.id}`, readKey);
      assert.equal(r.status, 200);
      assertRateLimited(r);
      assert.deepEqual(Object.keys(r.body), ['response']);
      assert.deepEqual(r.body.response, item);
    }
    assertError(await c66(t, 'GET', `/stacks/${STACK}/backups/4153`, t.adminKey), 404, 'not_found');
    assertError(await c66(t, 'GET', `/stacks/${STACK}/backups/abc`, t.adminKey), 404, 'not_found');
    assertError(await c66(t, 'GET', `/stacks/${TINY}/backups/${list[0].id}`, t.adminKey), 404, 'not_found');
  });

  test('backup files: a small backup is one tar', async () => {
    const id = cloud66Id(tinyBackup.id);
    const r = await c66(t, 'GET', `/stacks/${TINY}/backups/${id}/files`, readKey);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assertRateLimited(r);
    assertPagination(r, 1);
    const archive = await nativeBytes(t, tinyBackup.id);
    assert.deepEqual(r.body.response, [{ id: 'tar', name: `backvault-${TINY}-${tinyBackup.id}.tar`, size: archive.length }]);

    const f = await c66(t, 'GET', `/stacks/${TINY}/backups/${id}/files/tar`, readKey);
    assert.equal(f.status, 200);
    assertRateLimited(f);
    assert.deepEqual(Object.keys(f.body), ['response']);
    assert.deepEqual(Object.keys(f.body.response), ['ok', 'public_url']);
    assert.equal(f.body.response.ok, true);
    const url = new URL(f.body.response.public_url);
    assert.ok(url.pathname.endsWith(`/backvault-${TINY}-${tinyBackup.id}.tar`));
    // No credentials but the URL's own.
    const dl = await fetch(url);
    assert.equal(dl.status, 200);
    assert.equal(dl.headers.get('content-type'), 'application/x-tar');
    assert.equal(dl.headers.get('content-length'), String(archive.length));
    assert.ok(Buffer.from(await dl.arrayBuffer()).equals(archive));

    // A failed backup left no file.
    const failed = await c66(t, 'GET', `/stacks/${STACK}/backups/${cloud66Id(failedBackup.id)}/files`, readKey);
    assert.deepEqual(failed.body, { response: [], count: 0, pagination: { previous: null, next: null, current: 1, per_page: 30, count: 0, pages: 1 } });
    assertError(await c66(t, 'GET', `/stacks/${TINY}/backups/${id}/files/tar-aa`, readKey), 404, 'not_found');
  });

  let joined: Buffer; // the full backup's parts, joined as `cat file.tar-aa file.tar-ab ... > file.tar` would

  test('backup files: a large backup is split into parts; each public URL serves its byte range', async () => {
    const id = cloud66Id(fullBackup.id);
    const archive = await nativeBytes(t, fullBackup.id);
    assert.ok(archive.length > 3 * PART);
    const r = await c66(t, 'GET', `/stacks/${STACK}/backups/${id}/files`, t.adminKey);
    assert.equal(r.status, 200);
    const parts = r.body.response;
    const n = Math.ceil(archive.length / PART);
    assertPagination(r, n);
    const base = `backvault-${STACK}-${fullBackup.id}`;
    assert.deepEqual(
      parts.map((p: any) => [p.id, p.name]),
      Array.from({ length: n }, (_, i) => [`tar-${splitSuffix(i)}`, `${base}.tar-${splitSuffix(i)}`]),
    );
    assert.equal(parts[0].id, 'tar-aa');
    assert.equal(parts[1].id, 'tar-ab');
    assert.equal(
      parts.reduce((s: number, p: any) => s + p.size, 0),
      archive.length,
    );

    const chunks: Buffer[] = [];
    for (const [i, p] of parts.entries()) {
      const f = await c66(t, 'GET', `/stacks/${STACK}/backups/${id}/files/${p.id}`, readKey);
      assert.equal(f.status, 200, JSON.stringify(f.body));
      assert.equal(f.body.response.ok, true);
      const dl = await fetch(f.body.response.public_url);
      assert.equal(dl.status, 200);
      assert.equal(dl.headers.get('content-disposition'), `attachment; filename="${p.name}"`);
      const bytes = Buffer.from(await dl.arrayBuffer());
      assert.equal(bytes.length, p.size);
      // The same range of the exchange archive.
      assert.ok(bytes.equals(archive.subarray(i * PART, i * PART + p.size)), `part ${p.id} differs from its range`);
      chunks.push(bytes);
    }
    joined = Buffer.concat(chunks);
    assert.ok(joined.equals(archive));

    // A resumed download of a part: a Range within the part.
    const f = await c66(t, 'GET', `/stacks/${STACK}/backups/${id}/files/tar-ab`, readKey);
    const ranged = await fetch(f.body.response.public_url, { headers: { Range: 'bytes=100-199' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get('content-range'), `bytes 100-199/${PART}`);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(archive.subarray(PART + 100, PART + 200)));
  });

  test('public URLs: the token alone grants them, for that backup, until they expire', async () => {
    const f = await c66(t, 'GET', `/stacks/${TINY}/backups/${cloud66Id(tinyBackup.id)}/files/tar`, readKey);
    const url = new URL(f.body.response.public_url);
    const noToken = new URL(url);
    noToken.search = '';
    assertError(await read(await fetch(noToken)), 401, 'invalid_token');
    const forged = new URL(url);
    forged.searchParams.set('token', 'x.y.z');
    assertError(await read(await fetch(forged)), 401, 'invalid_token');
    // The token of one backup does not open another.
    const other = new URL(url.toString().replace(tinyBackup.id, fullBackup.id));
    assertError(await read(await fetch(other)), 401, 'invalid_token');
    // It expires.
    t.clock.advance((15 * 60 + 5) * 1000);
    try {
      assertError(await read(await fetch(url)), 401, 'invalid_token');
    } finally {
      t.clock.advance(-(15 * 60 + 5) * 1000);
    }
    assert.equal((await fetch(url)).status, 200);
  });

  test('import from remote_url, then the imported backup restores the stack', async () => {
    // Serve the joined parts, as a Cloud66 user would host a backup file.
    const server: Server = createServer((req, res) => {
      if (req.url !== '/backups/shop.tar') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/x-tar', 'content-length': joined.length }).end(joined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const remote = `http://127.0.0.1:${(server.address() as AddressInfo).port}/backups/shop.tar`;
    try {
      const path = `/stacks/${STACK}/backups`;
      const group = cloud66Id(fullTask.id);
      // The import's parameters: group, db_type and remote_url are all required.
      assertError(await c66(t, 'POST', `${path}?remote_url=${encodeURIComponent(remote)}`, t.adminKey), 400, 'invalid_request');
      assertError(await c66(t, 'POST', `${path}?group=5&db_type=mysql&remote_url=${encodeURIComponent(remote)}`, t.adminKey), 404, 'not_found');
      assertError(await c66(t, 'POST', `${path}?group=${group}&db_type=mongodb&remote_url=${encodeURIComponent(remote)}`, t.adminKey), 400, 'unsupported_db_type');
      assertError(await c66(t, 'POST', path, readKey, { group, db_type: 'mysql', remote_url: remote }), 403, 'insufficient_scope');

      // Change the data, so the restore has something to bring back.
      const db = new Database(sqlitePath);
      db.exec("DELETE FROM items; INSERT INTO items (name) VALUES ('changed');");
      db.close();
      await writeFile(join(filesDir, 'note.txt'), 'changed');
      await my.query(`UPDATE \`${mysqlDb}\`.orders SET total = 0`);

      const before = (await t.api('GET', `/api/v1/instances/${STACK}/backups`)).body.items.map((b: any) => b.id);
      const q = new URLSearchParams({ group: String(group), db_type: 'mysql', remote_url: remote });
      const r = await c66(t, 'POST', `${path}?${q}`, t.adminKey);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body, { response: { ok: true, message: 'Your external backup queued for upload' } });
      assertRateLimited(r);

      const now = (await t.api('GET', `/api/v1/instances/${STACK}/backups`)).body.items;
      const fresh = now.filter((b: any) => !before.includes(b.id));
      assert.equal(fresh.length, 1);
      const imported = await waitFor(t.api, `/api/v1/backups/${fresh[0].id}`);
      assert.equal(imported.status, 'success', imported.status_info);
      assert.equal(imported.origin, 'import');
      assert.equal(imported.policy_id, fullTask.id, 'the import joins the group it names');

      // Cloud66 lists it like any other backup.
      const shown = await c66(t, 'GET', `/stacks/${STACK}/backups/${cloud66Id(imported.id)}`, t.adminKey);
      assert.equal(shown.status, 200);
      assert.equal(shown.body.response.db_type, 'mysql,sqlite,files');
      assert.equal(shown.body.response.backup_status, 0);
      assert.equal(shown.body.response.restore_status, 0);

      const restore = await t.api('POST', `/api/v1/instances/${STACK}/restores`, { backup: imported.id });
      assert.equal(restore.status, 202, JSON.stringify(restore.body));
      const done = await waitFor(t.api, `/api/v1/restores/${restore.body.id}`);
      assert.equal(done.status, 'success', done.status_info);

      const rows = new Database(sqlitePath, { readonly: true }).prepare('SELECT name FROM items ORDER BY id').all();
      assert.deepEqual(rows, [{ name: 'a' }, { name: 'b' }]);
      assert.equal(await readFile(join(filesDir, 'note.txt'), 'utf8'), 'hello');
      assert.ok((await readFile(join(filesDir, 'big.bin'))).equals(bigFile));
      const [orders] = await my.query(`SELECT id, total FROM \`${mysqlDb}\`.orders ORDER BY id`);
      assert.deepEqual(
        (orders as any[]).map((o) => ({ ...o })),
        [
          { id: 1, total: 10 },
          { id: 2, total: 20 },
        ],
      );

      // The restore shows as Cloud66's restore_status 2 (restored).
      const after = await c66(t, 'GET', `/stacks/${STACK}/backups/${cloud66Id(imported.id)}`, t.adminKey);
      assert.equal(after.body.response.restore_status, 2);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('verify_status follows the core restore drill', async () => {
    const v = await t.api('POST', `/api/v1/backups/${tinyBackup.id}/verify`);
    assert.equal(v.status, 202, JSON.stringify(v.body));
    await waitFor(t.api, `/api/v1/backups/${tinyBackup.id}`, 'verify_status');
    const r = await c66(t, 'GET', `/stacks/${TINY}/backups/${cloud66Id(tinyBackup.id)}`, readKey);
    assert.equal(r.body.response.verify_status, 2);
    assert.equal(typeof r.body.response.verify_result, 'string');
  });
});

describe('Cloud66 dialect: a stack with PostgreSQL, SQLite and a directory', () => {
  const PG_STACK = 'pgstack';
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let pgDb: PgDatabase;
  let sqlitePath: string;
  let filesDir: string;
  let original: PgSnapshot;
  let pgTask: any;
  let allTask: any;
  let pgBackup: any;
  let allBackup: any;

  const items = () => new Database(sqlitePath, { readonly: true }).prepare('SELECT name FROM items ORDER BY id').all();

  /** Downloads every file of a backup through its public URL and joins them. */
  const download = async (b: any): Promise<Buffer> => {
    const id = cloud66Id(b.id);
    const files = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${id}/files`, t.adminKey);
    assert.equal(files.status, 200, JSON.stringify(files.body));
    assert.ok(files.body.response.length >= 1);
    const chunks: Buffer[] = [];
    for (const f of files.body.response) {
      const link = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${id}/files/${f.id}`, t.adminKey);
      assert.equal(link.status, 200, JSON.stringify(link.body));
      const dl = await fetch(link.body.response.public_url);
      assert.equal(dl.status, 200);
      chunks.push(Buffer.from(await dl.arrayBuffer()));
    }
    const joined = Buffer.concat(chunks);
    assert.ok(joined.equals(await nativeBytes(t, b.id)), 'the parts join into the exchange archive');
    return joined;
  };

  const restoreNatively = async (backupId: string) => {
    const r = await t.api('POST', `/api/v1/instances/${PG_STACK}/restores`, { backup: backupId });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const done = await waitFor(t.api, `/api/v1/restores/${r.body.id}`, 'status', 120_000);
    assert.equal(done.status, 'success', done.status_info);
    return done;
  };

  before(async () => {
    pgDb = await createPgDatabase('bv_c66');
    original = await pgSnapshot(pgDb.name);
    t = await startTestServer({ allow_private_import_urls: true });
    work = await tempDir();
    sqlitePath = join(work.path, 'app.db');
    const db = new Database(sqlitePath);
    db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a'), ('b');");
    db.close();
    filesDir = join(work.path, 'uploads');
    await mkdir(filesDir, { recursive: true });
    await writeFile(join(filesDir, 'note.txt'), 'hello');
    assert.equal((await t.api('POST', '/api/v1/instances', { name: PG_STACK })).status, 201);
    for (const r of [
      { name: 'pg', type: 'postgres', connection: pgDb.connection },
      { name: 'db', type: 'sqlite', connection: sqlitePath },
      { name: 'uploads', type: 'files', connection: filesDir },
    ]) {
      const res = await t.api('POST', `/api/v1/instances/${PG_STACK}/resources`, r);
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
  });
  after(async () => {
    await t?.close();
    await work?.cleanup();
    await pgDb?.drop();
  });

  test('backup tasks: db_type postgresql with excluded_tables, and all databases', async () => {
    const q = new URLSearchParams({ db_type: 'postgresql', frequency: '0 */1 * * *', keep_count: '10', gzip: 'true', excluded_tables: 'audit_log' });
    const r = await c66(t, 'POST', `/stacks/${PG_STACK}/backups?${q}`, t.adminKey);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body, { response: { ok: true, message: 'queued for creation' } });
    const r2 = await c66(t, 'POST', `/stacks/${PG_STACK}/backups`, t.adminKey, { db_type: 'all', frequency: '0 3 * * *' });
    assert.equal(r2.status, 200, JSON.stringify(r2.body));
    [pgTask, allTask] = (await t.api('GET', `/api/v1/instances/${PG_STACK}/policies`)).body.items;
    assert.equal(pgTask.type, 'partial');
    assert.deepEqual(pgTask.selection, { pg: null });
    // Cloud66 dumps excluded postgresql tables' definitions without their rows: the engine's data: form.
    assert.deepEqual(pgTask.exclude, { pg: ['data:audit_log'] });
    assert.equal(pgTask.compression, 'gzip');
    assert.equal(allTask.type, 'full');

    for (const [task, set] of [
      [pgTask, (b: any) => (pgBackup = b)],
      [allTask, (b: any) => (allBackup = b)],
    ] as const) {
      const run = await t.api('POST', `/api/v1/policies/${task.id}/run`);
      assert.equal(run.status, 202, JSON.stringify(run.body));
      const done = await waitFor(t.api, `/api/v1/backups/${run.body.id}`, 'status', 120_000);
      assert.equal(done.status, 'success', done.status_info);
      set(done);
    }
    const pgEntry = pgBackup.resources.find((x: any) => x.name === 'pg');
    assert.equal(pgEntry.type, 'postgres');
    assert.equal(pgEntry.counts.tables['public.accounts'], 100);
  });

  test('backups list and one backup: db_type postgresql, the database, skip_tables, the filters', async () => {
    const r = await c66(t, 'GET', `/stacks/${PG_STACK}/backups`, t.adminKey);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assertPagination(r, 2);
    const [all, pgOnly] = r.body.response;
    for (const b of [all, pgOnly]) {
      assert.deepEqual(Object.keys(b), BACKUP_KEYS);
      assert.equal(b.backup_status, 0);
      assert.equal(b.backup_result, '');
      assert.equal(b.restore_status, 0);
    }
    assert.equal(pgOnly.id, cloud66Id(pgBackup.id));
    assert.equal(pgOnly.db_type, 'postgresql');
    assert.equal(pgOnly.database_name, 'pg');
    assert.equal(pgOnly.skip_tables, 'audit_log');
    assert.equal(pgOnly.backup_size, pgBackup.size);
    assert.ok(pgOnly.backup_size > 0);
    assert.equal(pgOnly.group, cloud66Id(pgTask.id));
    assert.equal(pgOnly.file_base, `backvault-${PG_STACK}-${pgBackup.id}`);
    assert.equal(all.id, cloud66Id(allBackup.id));
    assert.deepEqual(all.db_type.split(',').sort(), ['files', 'postgresql', 'sqlite']);
    assert.equal(all.db_type.split(',').at(-1), 'files', 'databases first');
    assert.deepEqual(all.database_name.split(',').sort(), ['db', 'pg', 'uploads']);
    assert.equal(all.skip_tables, '');
    assert.equal(all.group, cloud66Id(allTask.id));

    const ids = async (query: string) => (await c66(t, 'GET', `/stacks/${PG_STACK}/backups?${query}`, t.adminKey)).body.response.map((b: any) => b.id);
    assert.deepEqual(await ids('db_type=postgresql'), [all.id, pgOnly.id]);
    assert.deepEqual(await ids('db_type=sqlite'), [all.id]);
    assert.deepEqual(await ids(`group=${cloud66Id(pgTask.id)}&db_type=postgresql`), [pgOnly.id]);
    assert.deepEqual(await ids('db_type=mysql'), []);

    const one = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${pgOnly.id}`, t.adminKey);
    assert.equal(one.status, 200);
    assert.deepEqual(one.body.response, pgOnly);
  });

  test('the postgresql backup downloaded through public URLs, imported from remote_url, restored: the rows are back', async () => {
    const archive = await download(pgBackup);
    const server: Server = createServer((req, res) => {
      if (req.url !== '/pg.tar') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/x-tar', 'content-length': archive.length }).end(archive);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const remote = `http://127.0.0.1:${(server.address() as AddressInfo).port}/pg.tar`;
      await changePg(pgDb.name);
      await pgQuery(pgDb.name, 'DELETE FROM audit_log WHERE id > 5');
      assert.notDeepEqual(await pgSnapshot(pgDb.name), original);

      const before = (await t.api('GET', `/api/v1/instances/${PG_STACK}/backups`)).body.items.map((b: any) => b.id);
      const q = new URLSearchParams({ group: String(cloud66Id(pgTask.id)), db_type: 'postgresql', remote_url: remote });
      const r = await c66(t, 'POST', `/stacks/${PG_STACK}/backups?${q}`, t.adminKey);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body, { response: { ok: true, message: 'Your external backup queued for upload' } });
      const fresh = (await t.api('GET', `/api/v1/instances/${PG_STACK}/backups`)).body.items.filter((b: any) => !before.includes(b.id));
      assert.equal(fresh.length, 1);
      const imported = await waitFor(t.api, `/api/v1/backups/${fresh[0].id}`, 'status', 120_000);
      assert.equal(imported.status, 'success', imported.status_info);
      assert.equal(imported.policy_id, pgTask.id);

      const shown = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${cloud66Id(imported.id)}`, t.adminKey);
      assert.equal(shown.status, 200, JSON.stringify(shown.body));
      assert.equal(shown.body.response.db_type, 'postgresql');
      assert.equal(shown.body.response.database_name, 'pg');
      assert.equal(shown.body.response.group, cloud66Id(pgTask.id));
      assert.deepEqual(
        (await c66(t, 'GET', `/stacks/${PG_STACK}/backups?db_type=postgresql&group=${cloud66Id(pgTask.id)}`, t.adminKey)).body.response.map((b: any) => b.id),
        [cloud66Id(imported.id), cloud66Id(pgBackup.id)],
      );

      const restored = await restoreNatively(imported.id);
      const now = await pgSnapshot(pgDb.name);
      assert.deepEqual(now.accounts, original.accounts, 'the accounts rows are back');
      // A backup with excluded tables is partial: restored in place it replaces only what it holds, so
      // the table created later stays, and audit_log (definition without rows) is kept as it was.
      assert.deepEqual(now.tables, ['accounts', 'added_later', 'audit_log']);
      assert.equal(now.audit_log, 5);
      assert.match(restored.result.resources[0].warnings.join(' '), /Kept as they were.*public\.audit_log/);
      const after = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${cloud66Id(imported.id)}`, t.adminKey);
      assert.equal(after.body.response.restore_status, 2);
      assert.equal(after.body.response.skip_tables, 'audit_log', 'the import keeps the exclusions it was made with');
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('the all-databases backup restores postgresql, sqlite and the directory', async () => {
    await download(allBackup);
    await changePg(pgDb.name);
    const db = new Database(sqlitePath);
    db.exec("DELETE FROM items; INSERT INTO items (name) VALUES ('changed');");
    db.close();
    await writeFile(join(filesDir, 'note.txt'), 'changed');
    await restoreNatively(allBackup.id);
    assert.deepEqual(await pgSnapshot(pgDb.name), original);
    assert.deepEqual(items(), [{ name: 'a' }, { name: 'b' }]);
    assert.equal(await readFile(join(filesDir, 'note.txt'), 'utf8'), 'hello');
    const shown = await c66(t, 'GET', `/stacks/${PG_STACK}/backups/${cloud66Id(allBackup.id)}`, t.adminKey);
    assert.equal(shown.body.response.restore_status, 2);
  });
});
