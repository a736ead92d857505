import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCatalog } from '../catalog/db.ts';
import { JobQueue } from './queue.ts';
import { WorkerPool, type JobHandler } from './pool.ts';

class DrivenClock {
  t = Date.parse('2026-11-21T00:00:00Z');
  now() {
    return new Date(this.t);
  }
}

async function setup(t: import('node:test').TestContext) {
  const dir = await mkdtemp(join(tmpdir(), 'bv-jobs-'));
  const db = await openCatalog(join(dir, 'catalog.db'));
  t.after(async () => {
    await db.destroy();
    await rm(dir, { recursive: true, force: true });
  });
  const clock = new DrivenClock();
  return { db, clock, queue: new JobQueue(db, clock, 30) };
}

test('exclusive jobs of one instance run one at a time, in order; other instances are not blocked', async (t) => {
  const { queue, clock } = await setup(t);
  const a1 = await queue.enqueue({ kind: 'backup', instance: 'a', subjectId: 's1', exclusive: true });
  clock.t += 1;
  const a2 = await queue.enqueue({ kind: 'restore', instance: 'a', subjectId: 's2', exclusive: true });
  clock.t += 1;
  const b1 = await queue.enqueue({ kind: 'backup', instance: 'b', subjectId: 's3', exclusive: true });
  clock.t += 1;
  const av = await queue.enqueue({ kind: 'verify', instance: 'a', subjectId: 's1', exclusive: false });
  assert.equal((await queue.claim('w'))?.id, a1);
  // a2 waits for a1; b1 and the non-exclusive verify may run.
  assert.equal((await queue.claim('w'))?.id, b1);
  assert.equal((await queue.claim('w'))?.id, av);
  assert.equal(await queue.claim('w'), null);
  await queue.finish(a1, 'done');
  assert.equal((await queue.claim('w'))?.id, a2);
});

test('a job whose lease ran out is reaped; a live one is not', async (t) => {
  const { queue, clock } = await setup(t);
  const j = await queue.enqueue({ kind: 'backup', instance: 'a', subjectId: 's', exclusive: true });
  await queue.claim('w1');
  assert.deepEqual(await queue.reapDead(false), []);
  clock.t += 20_000;
  await queue.heartbeat(j, 'w1');
  clock.t += 20_000;
  assert.deepEqual(await queue.reapDead(false), [], 'the heartbeat extended the lease');
  clock.t += 31_000;
  const reaped = await queue.reapDead(false);
  assert.deepEqual(reaped.map((r) => r.id), [j]);
  assert.equal((await queue.heartbeat(j, 'w1')).lost, true, 'the old worker learns it lost the job');
});

test('cancel: a queued job ends at once, a running one is flagged for its worker', async (t) => {
  const { queue } = await setup(t);
  const q = await queue.enqueue({ kind: 'backup', instance: 'a', subjectId: 's', exclusive: true });
  const r = await queue.enqueue({ kind: 'verify', instance: 'b', subjectId: 's', exclusive: false });
  assert.equal((await queue.claim('w'))?.id, q);
  assert.equal((await queue.claim('w'))?.id, r);
  const q2 = await queue.enqueue({ kind: 'backup', instance: 'a', subjectId: 's2', exclusive: true });
  assert.equal(await queue.requestCancel(q2), 'cancelled_queued');
  assert.equal(await queue.requestCancel(r), 'flagged');
  assert.equal((await queue.heartbeat(r, 'w')).cancelRequested, true);
  await queue.finish(r, 'cancelled');
  assert.equal(await queue.requestCancel(r), 'not_active');
});

test('the pool runs jobs, records failures on the subject, and aborts on cancel', async (t) => {
  const { queue } = await setup(t);
  const failures: Record<string, string> = {};
  const ran: string[] = [];
  const handler: JobHandler = {
    async run(job, signal) {
      ran.push(job.subject_id);
      if (job.subject_id === 'boom') throw new Error('secret internal detail');
      if (job.subject_id === 'slow') {
        await new Promise((resolve, reject) => {
          const timer = setTimeout(resolve, 10_000);
          signal.addEventListener('abort', () => {
            clearTimeout(timer);
            reject(signal.reason);
          });
        });
      }
    },
    async fail(job, info) {
      failures[job.subject_id] = info;
    },
  };
  const pool = new WorkerPool(queue, { backup: handler, restore: handler, verify: handler, import: handler }, {
    concurrency: 2,
    pollMs: 20,
    heartbeatMs: 20,
    log: { error: () => undefined, info: () => undefined },
  });
  pool.start();
  t.after(() => pool.stop());
  await queue.enqueue({ kind: 'backup', instance: 'a', subjectId: 'ok', exclusive: true });
  await queue.enqueue({ kind: 'backup', instance: 'b', subjectId: 'boom', exclusive: true });
  const slow = await queue.enqueue({ kind: 'backup', instance: 'c', subjectId: 'slow', exclusive: true });
  queue.notify();
  while (!ran.includes('slow')) await new Promise((r) => setTimeout(r, 10));
  await queue.requestCancel(slow);
  await pool.idle(5000);
  assert.deepEqual(ran.sort(), ['boom', 'ok', 'slow']);
  assert.equal(failures.ok, undefined);
  assert.match(failures.boom!, /internal error/, 'an unexpected error is reported without its internal text');
  assert.ok(!failures.boom!.includes('secret'));
  assert.equal(failures.slow, 'cancelled by request');
});
