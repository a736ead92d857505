// The collector hook's logic, with a stand-in collector put where the bin's
// --expose-gc-as flag puts V8's (before the module reads it).
import { test } from 'node:test';
import assert from 'node:assert/strict';

test('a minor collection after every 16 MiB of noted buffers, none before', async () => {
  const calls: unknown[] = [];
  (globalThis as { backvaultGc?: unknown }).backvaultGc = (options: unknown) => calls.push(options);
  const { noteBufferBytes } = await import('./gc.ts');
  const MiB = 1024 * 1024;
  for (let i = 0; i < 15; i++) noteBufferBytes(MiB);
  assert.equal(calls.length, 0);
  noteBufferBytes(MiB);
  assert.deepEqual(calls, [{ type: 'minor' }]);
  for (let i = 0; i < 64; i++) noteBufferBytes(256 * 1024);
  assert.equal(calls.length, 2);
});
