// Storage check and usage against a real server and real local storage:
// orphans and missing objects are reported in a dry run first, only removable
// orphans go on request, and nothing of a backup in progress is touched.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createWriteStream, existsSync } from 'node:fs';
import { cp, mkdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import { startTestServer, tempDir, waitFor, type TestServer, runCli } from './helpers.ts';
import { newId } from '../src/platform/ids.ts';


async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path);
  for (let done = 0; done < bytes; done += 1 << 20) {
    if (!out.write(randomBytes(1 << 20))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'close');
}

describe('storage check and usage', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let store: string;
  const ok: any[] = [];

  async function put(key: string, data: string | Buffer): Promise<void> {
    await t.server.ctx.storage.put(key, Readable.from([Buffer.from(data)]));
  }
  const exists = (key: string) => existsSync(join(store, ...key.split('/')));
  const check = async (body?: unknown, key?: string) => t.api('POST', '/api/v1/storage/check', body, key);

  before(async () => {
    t = await startTestServer();
    work = await tempDir();
    store = join(t.dir, 'storage');
    const www = join(work.path, 'www');
    await mkdir(www);
    await writeFile(join(www, 'a.txt'), 'alpha');
    await writeFile(join(www, 'b.bin'), randomBytes(20_000));
    const dbPath = join(work.path, 'shop.db');
    const db = new Database(dbPath);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    for (let i = 0; i < 100; i++) db.prepare('INSERT INTO t (v) VALUES (?)').run(`v${i}`);
    db.close();
    await t.api('POST', '/api/v1/instances', { name: 'shop' });
    await t.api('POST', '/api/v1/instances/shop/resources', { name: 'www', type: 'files', connection: www });
    await t.api('POST', '/api/v1/instances/shop/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    await t.api('POST', '/api/v1/instances', { name: 'empty' });
    for (let i = 0; i < 3; i++) {
      const b = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/shop/backups', { type: 'full' })).body.id}`);
      assert.equal(b.status, 'success', b.status_info);
      ok.push(b);
    }
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('storage and catalog agree; usage counts backups and stored bytes per instance', async () => {
    const r = await check();
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.dry_run, true);
    assert.equal(r.body.destination, 'default');
    assert.deepEqual(r.body.orphans, []);
    assert.deepEqual(r.body.missing, []);
    assert.equal(r.body.scanned.backup_dirs, 3);
    assert.equal(r.body.scanned.objects, 9, 'a manifest and two artifacts per backup');

    const readKey = (await t.api('POST', '/api/v1/keys', { name: 'reader', scope: 'read' })).body.key;
    const u = await t.api('GET', '/api/v1/storage/usage', undefined, readKey);
    assert.equal(u.status, 200);
    const shop = u.body.items.find((i: any) => i.instance === 'shop');
    const manifests = await Promise.all(ok.map((b) => readFile(join(store, 'backups', b.id, 'manifest.json'))));
    assert.deepEqual(shop, {
      instance: 'shop',
      destination: 'default',
      backups: 3,
      bytes: ok.reduce((s, b) => s + b.size, 0),
      stored_objects: 9,
      stored_bytes: ok.reduce((s, b) => s + b.size, 0) + manifests.reduce((s, m) => s + m.length, 0),
    });
    assert.deepEqual(u.body.items.find((i: any) => i.instance === 'empty'), { instance: 'empty', destination: 'default', backups: 0, bytes: 0, stored_objects: 0, stored_bytes: 0 });
    assert.deepEqual(u.body.unattributed, [{ destination: 'default', objects: 0, bytes: 0 }]);
    assert.equal(u.body.pagination.total, u.body.items.length);
    const one = await t.api('GET', '/api/v1/storage/usage?instance=empty', undefined, readKey);
    assert.deepEqual(one.body.items.map((i: any) => i.instance), ['empty']);
    assert.equal((await t.api('GET', '/api/v1/storage/usage?instance=nope')).body.error.code, 'instance_not_found');

    const denied = await check({ remove_orphans: true }, readKey);
    assert.equal(denied.status, 403, 'the check is for admin keys');
    assert.equal((await check({ remove_orphans: 'yes' })).status, 400);
  });

  test('orphans and missing objects: reported in a dry run, only removable orphans removed on request', async () => {
    const [b1, b2, b3] = ok;
    // An incomplete directory: no manifest, no catalog row.
    const incomplete = newId();
    await put(`backups/${incomplete}/resources/www/files.tar.zst`, 'half');
    // Leftovers of a failed backup.
    const failed = newId();
    const now = new Date().toISOString();
    const rowOf = (id: string, status: string) => ({
      id, instance: 'shop', type: 'full' as const, origin: 'api' as const, label: null, description: null, status, status_info: status === 'error' ? 'disk full' : null,
      compression: 'zstd', selection: null, exclude: null, size: 0, resources: '[]', progress: null, policy_id: null, verify_status: null, verify_result: null,
      created_at: now, updated_at: now, started_at: now, finished_at: null,
    });
    await t.server.ctx.db.insertInto('backups').values(rowOf(failed, 'error')).execute();
    await put(`backups/${failed}/resources/db/database.sqlite.zst`, 'partial dump');
    // A backup being uploaded: its objects are never touched.
    const uploading = newId();
    await t.server.ctx.db.insertInto('backups').values(rowOf(uploading, 'uploading')).execute();
    await put(`backups/${uploading}/resources/db/database.sqlite.zst`, 'in flight');
    // A stray artifact in a good backup, an unknown file next to its manifest, and a file outside any backup.
    await put(`backups/${b1.id}/resources/www/old.tar.zst`, 'stray');
    await put(`backups/${b1.id}/notes.txt`, 'someone else');
    await put('backups/README', 'hello');
    // A complete backup the catalog does not know, and a directory with a broken manifest.
    const unknown = newId();
    await cp(join(store, 'backups', b2.id), join(store, 'backups', unknown), { recursive: true });
    const m = JSON.parse(await readFile(join(store, 'backups', unknown, 'manifest.json'), 'utf8'));
    await writeFile(join(store, 'backups', unknown, 'manifest.json'), JSON.stringify({ ...m, backup_id: unknown }));
    const broken = newId();
    await put(`backups/${broken}/manifest.json`, '{not json');
    // Missing and wrong-sized artifacts of successful backups.
    const gone = `backups/${b2.id}/resources/${b2.resources[0].name}/${b2.resources[0].artifact}`;
    await t.server.ctx.storage.delete(gone);
    const short = `backups/${b3.id}/resources/${b3.resources[1].name}/${b3.resources[1].artifact}`;
    await put(short, 'abc');
    // A temp file of a write cut short, an hour old.
    const tmp = join(store, '.tmp', 'deadbeef-files.tar.zst');
    await writeFile(tmp, 'torn');
    await utimes(tmp, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));

    const dry = await check({});
    assert.equal(dry.status, 200, JSON.stringify(dry.body));
    assert.equal(dry.body.dry_run, true);
    const kinds = (r: any) => Object.fromEntries(r.orphans.map((o: any) => [`${o.kind}:${o.backup_id ?? o.keys[0]}`, o]));
    const o = kinds(dry.body);
    assert.deepEqual(Object.keys(o).sort(), [
      `failed_backup:${failed}`,
      `incomplete:${incomplete}`,
      `not_in_catalog:${unknown}`,
      `stray_artifact:${b1.id}`,
      'temp:.tmp/deadbeef-files.tar.zst',
      `unknown_object:${b1.id}`,
      'unknown_object:backups/README',
      `unreadable_manifest:${broken}`,
    ].sort());
    assert.equal(o[`incomplete:${incomplete}`].removable, true);
    assert.equal(o[`failed_backup:${failed}`].removable, true);
    assert.deepEqual(o[`stray_artifact:${b1.id}`].keys, [`backups/${b1.id}/resources/www/old.tar.zst`]);
    assert.equal(o[`not_in_catalog:${unknown}`].removable, false, 'a complete backup is never an orphan to delete');
    assert.match(o[`not_in_catalog:${unknown}`].reason, /catalog rebuild/);
    assert.equal(o[`unreadable_manifest:${broken}`].removable, false);
    assert.equal(o[`unknown_object:${b1.id}`].removable, false);
    assert.equal(o['temp:.tmp/deadbeef-files.tar.zst'].removable, false, 'temp files stay while a backup is in progress');
    assert.ok(dry.body.orphans.every((x: any) => x.removed === false));
    assert.deepEqual(dry.body.in_progress.map((p: any) => [p.backup_id, p.status]), [[uploading, 'uploading']]);
    const missing = Object.fromEntries(dry.body.missing.map((x: any) => [x.backup_id, x.problems]));
    assert.deepEqual(missing[b2.id], [{ key: gone, problem: 'missing', expected_size: b2.resources[0].size }]);
    assert.deepEqual(missing[b3.id], [{ key: short, problem: 'wrong_size', expected_size: b3.resources[1].size, actual_size: 3 }]);
    assert.equal(Object.keys(missing).length, 2);
    for (const key of [`backups/${incomplete}/resources/www/files.tar.zst`, `backups/${failed}/resources/db/database.sqlite.zst`, `backups/${b1.id}/resources/www/old.tar.zst`]) {
      assert.ok(exists(key), `${key} is still there after the dry run`);
    }

    // The CLI: a failing check (missing objects) exits 1 and names them.
    const env = { BACKVAULT_URL: t.url, BACKVAULT_KEY: t.adminKey };
    const human = await runCli(['storage', 'check'], env);
    assert.equal(human.status, 1, human.stderr);
    assert.match(human.stdout, /would remove/);
    assert.match(human.stdout, /wrong size: 3 bytes/);
    assert.match(human.stdout, new RegExp(`In progress \\(not touched\\): ${uploading}`));
    assert.match(human.stderr, /Dry run: nothing was removed/);

    const removal = await runCli(['--json', 'storage', 'check', '--remove-orphans'], env);
    assert.equal(removal.status, 1, removal.stderr);
    const removed = JSON.parse(removal.stdout);
    assert.equal(removed.dry_run, false);
    const r = kinds(removed);
    for (const k of [`incomplete:${incomplete}`, `failed_backup:${failed}`, `stray_artifact:${b1.id}`]) assert.equal(r[k].removed, true, k);
    for (const k of [`not_in_catalog:${unknown}`, `unreadable_manifest:${broken}`, `unknown_object:${b1.id}`, 'unknown_object:backups/README', 'temp:.tmp/deadbeef-files.tar.zst']) {
      assert.equal(r[k].removed, false, k);
    }
    assert.equal(removed.summary.removed_objects, 3);
    assert.ok(!exists(`backups/${incomplete}/resources/www/files.tar.zst`));
    assert.ok(!exists(`backups/${failed}/resources/db/database.sqlite.zst`));
    assert.ok(!exists(`backups/${b1.id}/resources/www/old.tar.zst`));
    assert.ok(exists(`backups/${uploading}/resources/db/database.sqlite.zst`), 'the backup in progress keeps its objects');
    assert.ok(exists(`backups/${unknown}/manifest.json`), 'the complete backup the catalog lacks is kept');
    assert.ok(exists(`backups/${b1.id}/notes.txt`) && exists('backups/README') && exists(`backups/${broken}/manifest.json`));
    assert.ok(existsSync(tmp));
    for (const b of ok) assert.ok(exists(`backups/${b.id}/manifest.json`), 'good backups keep their manifests');

    // Once the upload has failed, its leftovers and the temp file go too.
    await t.server.ctx.db.updateTable('backups').set({ status: 'error' }).where('id', '=', uploading).execute();
    const second = await check({ remove_orphans: true });
    const s = kinds(second.body);
    assert.equal(s[`failed_backup:${uploading}`].removed, true);
    assert.equal(s['temp:.tmp/deadbeef-files.tar.zst'].removed, true);
    assert.ok(!exists(`backups/${uploading}/resources/db/database.sqlite.zst`));
    assert.ok(!existsSync(tmp));

    const last = await check();
    assert.ok(last.body.orphans.every((x: any) => !x.removable), 'nothing removable is left');
    assert.equal(last.body.missing.length, 2, 'missing objects are reported, never "fixed"');

    // Usage: objects of the unknown backup and the loose file belong to no catalog backup.
    const u = await t.api('GET', '/api/v1/storage/usage');
    const unattributed = u.body.unattributed[0];
    assert.ok(unattributed.objects >= 5, JSON.stringify(unattributed));

    // Clean up for the next test: the planted objects and the damaged backups.
    for (const id of [unknown, broken]) await rm(join(store, 'backups', id), { recursive: true, force: true });
    await rm(join(store, 'backups', 'README'));
    await t.server.ctx.storage.delete(`backups/${b1.id}/notes.txt`);
    for (const id of [b2.id, b3.id]) assert.equal((await t.api('DELETE', `/api/v1/backups/${id}`)).status, 204);
    for (const id of [failed, uploading]) await t.server.ctx.db.deleteFrom('backups').where('id', '=', id).execute();
    const clean = await check();
    assert.deepEqual([clean.body.orphans, clean.body.missing], [[], []]);
  });

  test('a real backup in progress is never touched, even with remove_orphans', async () => {
    const src = join(work.path, 'big');
    await mkdir(join(src, 'a'), { recursive: true });
    await mkdir(join(src, 'b'), { recursive: true });
    await writeFile(join(src, 'a', 'small.txt'), 'small');
    // Random data through gzip is slow enough to be caught mid-way.
    await writeRandomFile(join(src, 'b', 'blob.bin'), 128 << 20);
    await t.api('POST', '/api/v1/instances', { name: 'big' });
    await t.api('POST', '/api/v1/instances/big/resources', { name: 'a', type: 'files', connection: join(src, 'a') });
    await t.api('POST', '/api/v1/instances/big/resources', { name: 'b', type: 'files', connection: join(src, 'b') });
    const created = await t.api('POST', '/api/v1/instances/big/backups', { type: 'full', compression: 'gzip' });
    const id = created.body.id as string;
    const first = `backups/${id}/resources/a/files.tar.gz`;
    const deadline = Date.now() + 60_000;
    // Wait until resource a is stored while b is still being dumped.
    while (!exists(first)) {
      assert.ok(Date.now() < deadline, 'the first artifact never appeared');
      await new Promise((r) => setTimeout(r, 10));
    }
    const r = await check({ remove_orphans: true });
    assert.equal(r.status, 200);
    const status = (await t.api('GET', `/api/v1/backups/${id}`)).body.status;
    assert.ok(['running', 'uploading'].includes(status), `the backup is still in progress (${status})`);
    assert.deepEqual(r.body.in_progress.map((p: any) => p.backup_id), [id]);
    assert.ok(!r.body.orphans.some((o: any) => o.backup_id === id));
    assert.equal(r.body.summary.removed_objects, 0);
    assert.ok(exists(first), 'the stored artifact of the running backup is still there');

    const done = await waitFor(t.api, `/api/v1/backups/${id}`, 'status', 120_000);
    assert.equal(done.status, 'success', done.status_info);
    const after = await check();
    assert.deepEqual([after.body.orphans, after.body.missing, after.body.in_progress], [[], [], []]);
  });
});
