// The restore worker thread (see restore-pool.ts): one extraction at a time,
// fed in batches; each batch is answered with its buffer (for reuse), the end
// with the result, any failure with the error as plain data. Messages of a
// job that already ended are dropped.
import { parentPort } from 'node:worker_threads';
import { isAppError } from '../../errors/index.ts';
import { Extractor } from './extract-sync.ts';
import type { PoolReply, PoolRequest } from './restore-pool.ts';

const port = parentPort!;
let job: { id: number; ex: Extractor } | null = null;

function post(m: PoolReply, transfer: ArrayBuffer[] = []): void {
  port.postMessage(m, transfer);
}

function fail(id: number, err: unknown): void {
  job?.ex.close();
  job = null;
  if (isAppError(err)) post({ op: 'error', id, code: err.code, message: err.message, details: err.details });
  else post({ op: 'error', id, message: err instanceof Error ? err.message : String(err), errno: (err as NodeJS.ErrnoException)?.code });
}

port.on('message', (m: PoolRequest) => {
  if (m.op === 'start') {
    try {
      job = { id: m.id, ex: new Extractor(m.staging, m.digestVersion, m.keepList, new Int32Array(m.stop)) };
    } catch (err) {
      fail(m.id, err);
    }
    return;
  }
  if (!job || job.id !== m.id) return;
  try {
    if (m.op === 'data') {
      job.ex.push(Buffer.from(m.buffer, 0, m.length));
      post({ op: 'ack', id: m.id, buffer: m.buffer }, [m.buffer]);
    } else if (m.op === 'end') {
      const result = job.ex.finish();
      job = null;
      post({ op: 'done', id: m.id, result });
    } else {
      fail(m.id, new Error('aborted'));
    }
  } catch (err) {
    fail(m.id, err);
  }
});
