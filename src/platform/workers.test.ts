import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { moduleWorkerStart } from './workers.ts';

describe('moduleWorkerStart', () => {
  it('starts the compiled .js module directly, without a TypeScript loader', () => {
    const compiled = moduleWorkerStart('file:///opt/backvault/dist/engines/sqlite/offload.js', './worker', { workerData: { a: 1 } });
    assert.equal(String(compiled.script), 'file:///opt/backvault/dist/engines/sqlite/worker.js');
    assert.deepEqual(compiled.options, { workerData: { a: 1 } });
  });

  it('registers tsx in the worker before importing the .ts module when run from sources', () => {
    const source = moduleWorkerStart('file:///opt/backvault/src/engines/sqlite/offload.ts', './worker', { workerData: { a: 1 } });
    assert.equal(source.options.eval, true);
    assert.match(String(source.script), /register\(\)/);
    const data = source.options.workerData as { a: number; __tsx: string; __entry: string };
    assert.equal(data.a, 1);
    assert.equal(data.__entry, 'file:///opt/backvault/src/engines/sqlite/worker.ts');
    assert.match(data.__tsx, /^file:.*\/tsx\//);
  });
});
