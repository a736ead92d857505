// Policies and the scheduler against a real server, with a driven clock: runs
// happen once per due time (also across daylight-saving changes and restarts),
// retention never eats good backups, late policies are noticed.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';
import { Scheduler } from '../src/scheduler/scheduler.ts';

async function filesInstance(t: TestServer, name: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'a.txt'), `data of ${name}`);
  assert.equal((await t.api('POST', '/api/v1/instances', { name })).status, 201);
  assert.equal((await t.api('POST', `/api/v1/instances/${name}/resources`, { name: 'www', type: 'files', connection: dir })).status, 201);
}

async function policyBackups(t: TestServer, policy: string): Promise<any[]> {
  return (await t.api('GET', `/api/v1/backups?policy=${policy}&per_page=500`)).body.items;
}

describe('policies and scheduler', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };

  before(async () => {
    // The background pass is made rare: tests call tick() themselves.
    t = await startTestServer({ scheduler_tick_seconds: 3600, policy_late_grace_seconds: 600 });
    work = await tempDir();
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  test('policies are validated', async () => {
    await filesInstance(t, 'val', join(work.path, 'val'));
    const cases: [unknown, string][] = [
      [{ name: 'x', schedule: 'every day please' }, 'schedule'],
      [{ name: 'x', schedule: '0 3 * * *', timezone: 'Mars/Olympus' }, 'timezone'],
      [{ name: 'x'.repeat(129), schedule: '0 3 * * *' }, 'name'],
      [{ name: 'x', schedule: '0 3 * * *', retention: { keep_daily: -1 } }, 'keep_daily'],
      [{ name: 'x', schedule: '0 3 * * *', type: 'partial' }, 'selection'],
      [{ name: 'x', schedule: '0 3 * * *', type: 'partial', selection: { nope: null } }, 'nope'],
    ];
    for (const [body, word] of cases) {
      const res = await t.api('POST', '/api/v1/instances/val/policies', body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.match(JSON.stringify(res.body.error), new RegExp(word), JSON.stringify(res.body));
    }
    const ok = await t.api('POST', '/api/v1/instances/val/policies', { name: 'nightly', schedule: '0 3 * * *', timezone: 'Europe/Berlin', retention: { keep_daily: 7 } });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    assert.equal(ok.body.state, 'pending');
    assert.equal(ok.body.timezone, 'Europe/Berlin');
    assert.ok(Date.parse(ok.body.next_run_at) > Date.now());
    const patched = await t.api('PATCH', `/api/v1/policies/${ok.body.id}`, { enabled: false });
    assert.equal(patched.body.state, 'disabled');
    assert.equal(patched.body.next_run_at, null);
    assert.equal((await t.api('GET', '/api/v1/instances/val/policies')).body.pagination.total, 1);
    assert.equal((await t.api('DELETE', `/api/v1/policies/${ok.body.id}`)).status, 204);
    assert.equal((await t.api('GET', `/api/v1/policies/${ok.body.id}`)).status, 404);
  });

  test('a scheduler pass after many missed ticks runs the policy once', async () => {
    await filesInstance(t, 'hourly', join(work.path, 'hourly'));
    t.clock.set('2026-06-01T10:10:00Z');
    const p = (await t.api('POST', '/api/v1/instances/hourly/policies', { name: 'hourly', schedule: '0 * * * *' })).body;
    assert.equal(p.next_run_at, '2026-06-01T11:00:00.000Z');
    t.clock.set('2026-06-01T15:30:00Z'); // five ticks missed
    const report = await t.server.scheduler.tick();
    assert.deepEqual(report.started, [p.id]);
    assert.deepEqual((await t.server.scheduler.tick()).started, [], 'a second pass at the same time starts nothing');
    await t.server.pool.idle();
    await t.server.scheduler.settle();
    const bs = await policyBackups(t, p.id);
    assert.equal(bs.length, 1);
    assert.equal(bs[0].status, 'success', bs[0].status_info);
    assert.equal(bs[0].policy_id, p.id);
    const after = (await t.api('GET', `/api/v1/policies/${p.id}`)).body;
    assert.equal(after.next_run_at, '2026-06-01T16:00:00.000Z');
    assert.equal(after.state, 'ok');
    assert.ok(after.last_success_at && after.last_run_at);
    await t.api('PATCH', `/api/v1/policies/${p.id}`, { enabled: false });
  });

  test('a daily run at 02:30 happens once a day across both daylight-saving changes', async () => {
    await filesInstance(t, 'dst', join(work.path, 'dst'));
    for (const [from, to, expected] of [
      ['2026-03-27T12:00:00Z', '2026-03-31T00:00:00Z', ['2026-03-28T01:30:00.000Z', '2026-03-29T01:30:00.000Z', '2026-03-30T00:30:00.000Z']],
      ['2026-10-23T12:00:00Z', '2026-10-27T00:00:00Z', ['2026-10-24T00:30:00.000Z', '2026-10-25T01:30:00.000Z', '2026-10-26T01:30:00.000Z']],
    ] as const) {
      t.clock.set(from);
      const p = (await t.api('POST', '/api/v1/instances/dst/policies', { name: `dst-${from.slice(0, 7)}`, schedule: '30 2 * * *', timezone: 'Europe/Berlin' })).body;
      const runs: string[] = [];
      // Walk the clock in 15-minute steps, one scheduler pass each.
      for (let now = Date.parse(from); now < Date.parse(to); now += 15 * 60_000) {
        t.clock.set(new Date(now));
        const due = (await t.api('GET', `/api/v1/policies/${p.id}`)).body.next_run_at as string;
        const report = await t.server.scheduler.tick();
        if (report.started.includes(p.id)) runs.push(due);
        if (report.started.length > 0) await t.server.pool.idle();
      }
      assert.deepEqual(runs, expected);
      await t.api('PATCH', `/api/v1/policies/${p.id}`, { enabled: false });
    }
  });

  test('missed runs at start: once with catch_up, skipped without', async () => {
    await filesInstance(t, 'restart', join(work.path, 'restart'));
    t.clock.set('2026-07-01T00:00:00Z');
    const yes = (await t.api('POST', '/api/v1/instances/restart/policies', { name: 'catch', schedule: '*/10 * * * *' })).body;
    const no = (await t.api('POST', '/api/v1/instances/restart/policies', { name: 'nocatch', schedule: '*/10 * * * *', catch_up: false })).body;
    // The server is "down" for ten hours: a fresh scheduler starts on the same catalog.
    await t.server.scheduler.stop();
    t.clock.set('2026-07-01T10:05:00Z');
    const restarted = new Scheduler(t.server.ctx);
    await restarted.start();
    await restarted.settle();
    await t.server.pool.idle();
    await restarted.stop();
    assert.equal((await policyBackups(t, yes.id)).length, 1, 'catch_up runs once, not sixty times');
    assert.equal((await policyBackups(t, no.id)).length, 0);
    assert.equal((await t.api('GET', `/api/v1/policies/${no.id}`)).body.next_run_at, '2026-07-01T10:10:00.000Z');
    await t.api('PATCH', `/api/v1/policies/${yes.id}`, { enabled: false });
    await t.api('PATCH', `/api/v1/policies/${no.id}`, { enabled: false });
    await t.server.scheduler.start();
  });

  test('retention runs after successes only, never counts failures, touches only its own backups', async () => {
    const dir = join(work.path, 'ret');
    await filesInstance(t, 'ret', dir);
    t.clock.set('2026-08-01T00:00:00Z');
    const p = (await t.api('POST', '/api/v1/instances/ret/policies', { name: 'ret', schedule: '0 0 1 1 *', retention: { retention_days: 2, keep_last: 1 } })).body;
    const manual = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/ret/backups', { type: 'full' })).body.id}`);
    const run = async () => {
      const b = await t.api('POST', `/api/v1/policies/${p.id}/run`);
      assert.equal(b.status, 202, JSON.stringify(b.body));
      const done = await waitFor(t.api, `/api/v1/backups/${b.body.id}`);
      await t.server.scheduler.settle();
      return done;
    };
    const good = [];
    for (let day = 1; day <= 3; day++) {
      t.clock.set(`2026-08-0${day}T03:00:00Z`);
      good.push(await run());
    }
    // Day 3: retention_days 2 keeps days 2 and 3; day 1 is gone.
    assert.deepEqual((await policyBackups(t, p.id)).map((b) => b.id).sort(), [good[1].id, good[2].id].sort());
    // Days of failures: the directory is gone, every run fails, nothing good is deleted.
    await rm(dir, { recursive: true });
    for (let day = 10; day <= 14; day++) {
      t.clock.set(`2026-08-${day}T03:00:00Z`);
      const failed = await run();
      assert.equal(failed.status, 'error');
    }
    const after = await policyBackups(t, p.id);
    assert.equal(after.filter((b) => b.status === 'success').length, 2, 'failed runs never trigger retention');
    assert.equal(after.filter((b) => b.status === 'error').length, 5);
    const preview = (await t.api('GET', `/api/v1/policies/${p.id}/retention-preview`)).body;
    assert.deepEqual(preview.keep.map((d: any) => d.id), [good[2].id]);
    assert.deepEqual(preview.keep[0].reasons, ['newest', 'keep_last 1']);
    assert.deepEqual(preview.delete.map((d: any) => d.id), [good[1].id]);
    assert.equal((await t.api('GET', `/api/v1/policies/${p.id}`)).body.state, 'failing');
    // The data comes back; the next success applies retention: only the newest success stays.
    await mkdir(dir);
    await writeFile(join(dir, 'a.txt'), 'back');
    t.clock.set('2026-08-15T03:00:00Z');
    const last = await run();
    assert.equal(last.status, 'success');
    const final = await policyBackups(t, p.id);
    assert.deepEqual(final.filter((b) => b.status === 'success').map((b) => b.id), [last.id]);
    assert.equal((await t.api('GET', `/api/v1/backups/${manual.id}`)).status, 200, 'a backup the policy did not make is never touched');
  });

  test('a late policy is marked and announced once; a success clears it', async () => {
    await filesInstance(t, 'late', join(work.path, 'late'));
    const seen: any[] = [];
    const listener = (e: any) => seen.push(e);
    t.server.ctx.events.on('policy.late', listener);
    try {
      t.clock.set('2026-09-01T00:05:00Z');
      const p = (await t.api('POST', '/api/v1/instances/late/policies', { name: 'late', schedule: '0 * * * *' })).body;
      // Simulate runs that never happen (a stuck queue, a dead worker): push the policy's next run far away.
      await t.server.ctx.db.updateTable('policies').set({ next_run_at: '2099-01-01T00:00:00.000Z' }).where('id', '=', p.id).execute();
      // Due at 01:00, grace 10 minutes: at 01:05 it is not late yet, at 01:11 it is.
      t.clock.set('2026-09-01T01:05:00Z');
      const early = await t.server.scheduler.tick();
      assert.deepEqual(early.late.filter((id) => id === p.id), []);
      assert.deepEqual(early.started.filter((id) => id === p.id), []);
      t.clock.set('2026-09-01T01:11:00Z');
      await t.server.scheduler.tick();
      await t.server.scheduler.tick();
      assert.equal(seen.filter((e) => e.policy.id === p.id).length, 1, 'announced once');
      assert.equal((await t.api('GET', `/api/v1/policies/${p.id}`)).body.state, 'late');
      const b = await t.api('POST', `/api/v1/policies/${p.id}/run`);
      await waitFor(t.api, `/api/v1/backups/${b.body.id}`);
      await t.server.scheduler.settle();
      const cleared = (await t.api('GET', `/api/v1/policies/${p.id}`)).body;
      assert.equal(cleared.state, 'ok');
      assert.equal(cleared.late_since, null);
      await t.api('PATCH', `/api/v1/policies/${p.id}`, { enabled: false });
    } finally {
      t.server.ctx.events.off('policy.late', listener);
    }
  });

  test('verify: a policy with verify runs a restore drill after each backup', async () => {
    await filesInstance(t, 'drill', join(work.path, 'drill'));
    const p = (await t.api('POST', '/api/v1/instances/drill/policies', { name: 'drill', schedule: '0 0 1 1 *', verify: true })).body;
    const b = await t.api('POST', `/api/v1/policies/${p.id}/run`);
    await waitFor(t.api, `/api/v1/backups/${b.body.id}`);
    await t.server.scheduler.settle();
    const verified = await waitFor(t.api, `/api/v1/backups/${b.body.id}`, 'verify_status');
    assert.equal(verified.verify_status, 'success', JSON.stringify(verified.verify_result));
  });
});

test('a job running past its timeout is stopped and fails saying so', async (t) => {
  const server = await startTestServer({ job_timeout_seconds: { backup: 1, restore: 3600, verify: 3600, import: 3600 } });
  const work = await tempDir();
  t.after(async () => {
    await server.close();
    await work.cleanup();
  });
  const { randomBytes } = await import('node:crypto');
  const dir = join(work.path, 'big');
  await mkdir(dir);
  // Random data with gzip takes seconds: longer than the 1 s timeout.
  for (let i = 0; i < 12; i++) await writeFile(join(dir, `f${i}`), randomBytes(8 << 20));
  await server.api('POST', '/api/v1/instances', { name: 'slow' });
  await server.api('POST', '/api/v1/instances/slow/resources', { name: 'www', type: 'files', connection: dir });
  const b = await server.api('POST', '/api/v1/instances/slow/backups', { type: 'full', compression: 'gzip' });
  const done = await waitFor(server.api, `/api/v1/backups/${b.body.id}`);
  assert.equal(done.status, 'error');
  assert.match(done.status_info, /timeout of 1 seconds/);
});
