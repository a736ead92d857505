// The collector hooks' logic, with a stand-in collector put where the bin's
// --expose-gc-as flag puts V8's, before the module reads it (once, at import).
import { test } from 'node:test';
import assert from 'node:assert/strict';

const calls: unknown[] = [];
(globalThis as { backvaultGc?: unknown }).backvaultGc = (options: unknown) => calls.push(options);
const { noteBufferBytes, settleAfterWork } = await import('./gc.ts');
const MiB = 1024 * 1024;

test('a minor collection after every 4 MiB of noted buffers, none before', () => {
  calls.length = 0;
  for (let i = 0; i < 15; i++) noteBufferBytes(256 * 1024);
  assert.equal(calls.length, 0);
  noteBufferBytes(256 * 1024);
  assert.deepEqual(calls, [{ type: 'minor' }]);
  for (let i = 0; i < 64; i++) noteBufferBytes(256 * 1024);
  assert.equal(calls.length, 5);
});

test('after work: one full collection once 64 MiB passed since the last, none after small jobs', () => {
  // The test above noted 20 MiB.
  calls.length = 0;
  settleAfterWork();
  assert.deepEqual(calls, []);
  for (let i = 0; i < 43; i++) noteBufferBytes(MiB);
  calls.length = 0;
  settleAfterWork();
  assert.deepEqual(calls, [], '63 MiB is not enough');
  noteBufferBytes(MiB);
  calls.length = 0;
  settleAfterWork();
  assert.deepEqual(calls, [{ type: 'major', execution: 'async' }]);
  noteBufferBytes(1024);
  settleAfterWork();
  assert.equal(calls.length, 1);
});
