// GET /metrics after real backups (manual and by policy, succeeding and
// failing), with a queued job, and again after a restart on the same data.
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../src/config/index.ts';
import { startServer, type Server } from '../src/main.ts';
import { startTestServer, tempDir, waitFor, type Api, type TestServer } from './helpers.ts';

/** Sample lines as "name{label="v",...}" -> value, labels in the order prom-client writes them. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function scrape(url: string, key: string | null): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${url}/metrics`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

async function backup(api: Api, path: string): Promise<any> {
  const res = await api('POST', path, {});
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return waitFor(api, `/api/v1/backups/${res.body.id}`);
}

describe('metrics', () => {
  let t: TestServer;
  let restarted: Server | undefined;
  let work: Awaited<ReturnType<typeof tempDir>>;
  after(async () => {
    await restarted?.close();
    await t?.server.close();
    if (t) await rm(t.dir, { recursive: true, force: true });
    await work?.cleanup();
  });

  test('series and values after real backups, and after a restart', async () => {
    t = await startTestServer();
    work = await tempDir();
    const dbPath = join(work.path, 'shop.db');
    const db = new Database(dbPath);
    db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)');
    for (let i = 0; i < 100; i++) db.prepare('INSERT INTO orders (note) VALUES (?)').run(`order ${i}`);
    db.close();
    await t.api('POST', '/api/v1/instances', { name: 'shop' });
    await t.api('POST', '/api/v1/instances/shop/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const site = join(work.path, 'site');
    await mkdir(site);
    await writeFile(join(site, 'a.txt'), 'a');
    await t.api('POST', '/api/v1/instances', { name: 'site' });
    await t.api('POST', '/api/v1/instances/site/resources', { name: 'www', type: 'files', connection: site });
    await rm(site, { recursive: true });

    const nightly = await t.api('POST', '/api/v1/instances/shop/policies', { name: 'nightly', schedule: '0 3 * * *', catch_up: false });
    assert.equal(nightly.status, 201, JSON.stringify(nightly.body));
    const hourly = await t.api('POST', '/api/v1/instances/site/policies', { name: 'hourly', schedule: '0 * * * *', catch_up: false });
    assert.equal(hourly.status, 201, JSON.stringify(hourly.body));

    await backup(t.api, '/api/v1/instances/shop/backups');
    const manual = await backup(t.api, '/api/v1/instances/shop/backups');
    assert.equal(manual.status, 'success');
    const run = await t.api('POST', `/api/v1/policies/${nightly.body.id}/run`);
    assert.equal(run.status, 202, JSON.stringify(run.body));
    const byPolicy = await waitFor(t.api, `/api/v1/backups/${run.body.id}`);
    assert.equal(byPolicy.status, 'success');
    assert.equal(byPolicy.policy_id, nightly.body.id);
    assert.equal((await backup(t.api, '/api/v1/instances/site/backups')).status, 'error');
    const runSite = await t.api('POST', `/api/v1/policies/${hourly.body.id}/run`);
    assert.equal((await waitFor(t.api, `/api/v1/backups/${runSite.body.id}`)).status, 'error');

    // A read key is needed (admin works too); without one the answer is the API's 401.
    const none = await scrape(t.url, null);
    assert.equal(none.status, 401);
    assert.equal(JSON.parse(none.text).error.code, 'unauthorized');
    const read = (await t.api('POST', '/api/v1/keys', { name: 'prometheus', scope: 'read' })).body.key as string;

    // Failure counters follow events, which trail the API's status by a moment.
    let m = new Map<string, number>();
    for (let i = 0; i < 100; i++) {
      const res = await scrape(t.url, read);
      assert.equal(res.status, 200, res.text);
      assert.match(res.type ?? '', /^text\/plain; version=0\.0\.4/);
      m = parse(res.text);
      if (m.get('backvault_backup_failures_total{instance_name="site",policy="hourly"}') === 1 && m.get('backvault_backup_failures_total{instance_name="site",policy=""}') === 1) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    const secs = (iso: string) => Date.parse(iso) / 1000;
    const shop = (policy: string) => `{instance_name="shop",policy="${policy}"}`;
    assert.equal(m.get(`backvault_backup_last_success_timestamp_seconds${shop('')}`), secs(manual.finished_at));
    assert.equal(m.get(`backvault_backup_last_success_timestamp_seconds${shop('nightly')}`), secs(byPolicy.finished_at));
    assert.equal(m.get(`backvault_backup_last_success_duration_seconds${shop('')}`), (Date.parse(manual.finished_at) - Date.parse(manual.started_at)) / 1000);
    assert.equal(m.get(`backvault_backup_last_success_size_bytes${shop('')}`), manual.size);
    assert.equal(m.get(`backvault_backup_last_success_size_bytes${shop('nightly')}`), byPolicy.size);
    assert.ok(manual.size > 0);
    assert.equal(m.get('backvault_backup_last_success_timestamp_seconds{instance_name="site",policy=""}'), undefined, 'no success, no series');

    assert.equal(m.get('backvault_backup_failures_total{instance_name="site",policy=""}'), 1);
    assert.equal(m.get('backvault_backup_failures_total{instance_name="site",policy="hourly"}'), 1);
    assert.equal(m.get(`backvault_backup_failures_total${shop('')}`), 0);
    assert.equal(m.get(`backvault_backup_failures_total${shop('nightly')}`), 0);

    assert.equal(m.get('backvault_backups{instance_name="shop",status="success"}'), 3);
    assert.equal(m.get('backvault_backups{instance_name="shop",status="error"}'), 0);
    assert.equal(m.get('backvault_backups{instance_name="site",status="error"}'), 2);
    assert.equal(m.get('backvault_backups{instance_name="site",status="running"}'), 0);
    assert.equal(m.get('backvault_jobs_queued{kind="backup"}'), 0);
    assert.equal(m.get('backvault_jobs_running{kind="backup"}'), 0);
    assert.equal(m.get(`backvault_policy_late${shop('nightly')}`), 0);
    // Default process metrics come along.
    assert.ok((m.get('process_cpu_user_seconds_total') ?? -1) >= 0);
    assert.ok((m.get('nodejs_heap_size_used_bytes') ?? 0) > 0);

    // Queue depth: with the workers stopped, a new backup waits.
    await t.server.pool.stop();
    const waiting = await t.api('POST', '/api/v1/instances/shop/backups', {});
    assert.equal(waiting.status, 202);
    m = parse((await scrape(t.url, t.adminKey)).text);
    assert.equal(m.get('backvault_jobs_queued{kind="backup"}'), 1);
    assert.equal(m.get('backvault_backups{instance_name="shop",status="scheduled"}'), 1);
    t.server.pool.start();
    assert.equal((await waitFor(t.api, `/api/v1/backups/${waiting.body.id}`)).status, 'success');
    const newest = (await t.api('GET', `/api/v1/backups/${waiting.body.id}`)).body;

    // After a restart the catalog-backed values are the same; counters of this process start again at 0.
    await t.server.close();
    const config = loadConfig({ flags: { dir: t.dir, port: 0, rate_limit_per_minute: 100_000, log_level: 'silent', metrics_public: true }, env: {} });
    restarted = await startServer(config);
    const open = await scrape(restarted.url, null);
    assert.equal(open.status, 200, 'metrics_public serves without a key');
    m = parse(open.text);
    assert.equal(m.get(`backvault_backup_last_success_timestamp_seconds${shop('')}`), secs(newest.finished_at));
    assert.equal(m.get(`backvault_backup_last_success_size_bytes${shop('nightly')}`), byPolicy.size);
    assert.equal(m.get('backvault_backups{instance_name="shop",status="success"}'), 4);
    assert.equal(m.get('backvault_backups{instance_name="site",status="error"}'), 2);
    assert.equal(m.get('backvault_backup_failures_total{instance_name="site",policy="hourly"}'), 0);
    assert.equal(m.get('backvault_jobs_queued{kind="backup"}'), 0);
  });
});
