// The restore worker thread (see restore-pool.ts): one extraction at a time,
// fed in batches; each batch is answered with its buffer (for reuse), the end
// with the result, any failure with the error as plain data. Messages of a
// job that already ended are dropped.
import { parentPort } from 'node:worker_threads';
import { isAppError } from '../../errors/index.ts';
import { VerifyingDecoder } from '../../platform/decoder.ts';
import { Extractor } from './extract-sync.ts';
import type { PoolReply, PoolRequest } from './restore-pool.ts';

const port = parentPort!;

interface Job {
  id: number;
  ex: Extractor;
  /** with a decode spec the batches are the stored artifact: checked and decompressed here, straight into the extractor */
  decoder: VerifyingDecoder | null;
  /**
   * The extraction failed while the stored bytes were not all checked yet:
   * damage decompresses to garbage that fails the tar parse before the
   * checksum can tell. The rest is then only hashed, and at the end the
   * error reported is checksum_mismatch if the artifact is damaged (so the
   * next copy is tried), else this one.
   */
  held?: { err: unknown };
}
let job: Job | null = null;

function post(m: PoolReply, transfer: ArrayBuffer[] = []): void {
  port.postMessage(m, transfer);
}

function fail(id: number, err: unknown): void {
  job?.ex.close();
  job = null;
  if (isAppError(err)) post({ op: 'error', id, code: err.code, message: err.message, details: err.details });
  else post({ op: 'error', id, message: err instanceof Error ? err.message : String(err), errno: (err as NodeJS.ErrnoException)?.code });
}

function take(j: Job, batch: Buffer): void {
  const { ex, decoder } = j;
  if (!decoder) {
    ex.push(batch);
    return;
  }
  if (j.held) {
    decoder.skip(batch);
    return;
  }
  decoder.push(batch, (piece) => {
    if (j.held) return;
    try {
      ex.push(piece);
    } catch (err) {
      // A cancel is not a doubt about the artifact.
      if (isAppError(err) && err.code === 'cancelled') throw err;
      j.held = { err };
      ex.close();
    }
  });
}

port.on('message', (m: PoolRequest) => {
  if (m.op === 'start') {
    try {
      const ex = new Extractor(m.staging, m.digestVersion, m.keepList, new Int32Array(m.stop));
      job = { id: m.id, ex, decoder: m.decode ? new VerifyingDecoder(m.decode) : null };
    } catch (err) {
      fail(m.id, err);
    }
    return;
  }
  if (!job || job.id !== m.id) return;
  try {
    if (m.op === 'data') {
      take(job, Buffer.from(m.buffer, 0, m.length));
      post({ op: 'ack', id: m.id, buffer: m.buffer }, [m.buffer]);
    } else if (m.op === 'end') {
      // The stored bytes are checked before anything is finished: a damaged artifact fails here, staging unfinished.
      job.decoder?.end();
      if (job.held) throw job.held.err;
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
