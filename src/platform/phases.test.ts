import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { PhaseTimer } from './phases.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('phases keep the order steps first ran, add up repeats, and count failed steps', async () => {
  const t = new PhaseTimer();
  assert.equal(await t.time('spool', async () => (await sleep(20), 'spooled')), 'spooled');
  await t.time('load', () => sleep(5));
  await t.time('spool', () => sleep(20));
  await assert.rejects(t.time('count', async () => {
    await sleep(10);
    throw new Error('boom');
  }), /boom/);
  const r = t.result();
  assert.deepEqual(Object.keys(r), ['spool', 'load', 'count']);
  assert.ok(r.spool! >= 38, `spool adds both runs: ${r.spool}`);
  assert.ok(r.count! >= 9, `a failed step is timed: ${r.count}`);
  for (const v of Object.values(r)) assert.ok(Number.isInteger(v));
});

test('laps time the stretches between them', async () => {
  const t = new PhaseTimer();
  await sleep(15);
  t.lap('stage');
  await sleep(5);
  t.lap('write');
  const r = t.result();
  assert.deepEqual(Object.keys(r), ['stage', 'write']);
  assert.ok(r.stage! >= 14 && r.write! >= 4 && r.write! < r.stage!, JSON.stringify(r));
});
