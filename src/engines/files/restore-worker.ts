// The restore worker thread (see restore-pool.ts): one extraction at a time,
// fed in batches; each batch is answered with its buffer (for reuse), the end
// with the result, any failure with the error as plain data. Messages of a
// job that already ended are dropped.
import { type MessagePort, parentPort } from 'node:worker_threads';
import { AppError, ERRORS, type ErrorCode, isAppError } from '../../errors/index.ts';
import { type DecodedMessage, type DecodedReturn, VerifyingDecoder } from '../../platform/decoder.ts';
import { SpanRecorder } from '../../platform/span-hash.ts';
import { Extractor } from './extract-sync.ts';
import type { PoolReply, PoolRequest } from './restore-pool.ts';

const port = parentPort!;

interface Job {
  id: number;
  ex: Extractor;
  /** with a decode spec the batches are the stored artifact: checked and decompressed here, straight into the extractor */
  decoder: VerifyingDecoder | null;
  /**
   * or a codec worker checks and decompresses it and sends the pieces here,
   * the verdict last; it also hashes the file bodies (noted by `spans` as
   * each piece is extracted) when the piece comes back, and sends the
   * digests with the next piece or the verdict
   */
  decoded: MessagePort | null;
  spans: SpanRecorder | null;
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
  job?.decoded?.close();
  job = null;
  if (isAppError(err)) post({ op: 'error', id, code: err.code, message: err.message, details: err.details });
  else post({ op: 'error', id, message: err instanceof Error ? err.message : String(err), errno: (err as NodeJS.ErrnoException)?.code });
}

/** Extracts decoded bytes; a failure is held until the stored bytes' verdict (see Job.held). */
function extract(j: Job, piece: Buffer): void {
  if (j.held) return;
  try {
    j.ex.push(piece);
  } catch (err) {
    // A cancel is not a doubt about the artifact.
    if (isAppError(err) && err.code === 'cancelled') throw err;
    j.held = { err };
    j.ex.close();
  }
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
  decoder.push(batch, (piece) => extract(j, piece));
}

/** Finishes the job once its stored bytes proved sound: the held failure, if any, else the extraction's result. */
function finish(j: Job): void {
  if (j.held) throw j.held.err;
  j.ex.finish();
  // The codec sends the verdict only after every piece came back and was hashed: no digest is missing now.
  const result = j.ex.result();
  j.decoded?.close();
  job = null;
  post({ op: 'done', id: j.id, result });
}

/** A message from the codec worker that decodes this job's artifact. */
function onDecoded(j: Job, m: DecodedMessage): void {
  if (job !== j) return;
  try {
    // Digests of files extracted from earlier pieces, in order.
    if ('digests' in m && m.digests && !j.held) j.ex.digested(m.digests);
    if ('piece' in m) {
      j.spans!.begin(m.piece);
      extract(j, Buffer.from(m.piece, 0, m.length));
      const hash = j.spans!.take();
      j.decoded!.postMessage((hash ? { back: m.piece, hash } : { back: m.piece }) satisfies DecodedReturn, [m.piece]);
    } else if ('end' in m) {
      finish(j);
    } else {
      throw m.code && m.code in ERRORS ? new AppError(m.code as ErrorCode, m.error) : new Error(m.error);
    }
  } catch (err) {
    fail(j.id, err);
  }
}

port.on('message', (m: PoolRequest) => {
  if (m.op === 'start') {
    try {
      const decoded = m.decoded ?? null;
      const spans = decoded ? new SpanRecorder() : null;
      const ex = new Extractor(m.staging, m.digestVersion, m.keepList, new Int32Array(m.stop), spans ?? undefined);
      const j: Job = { id: m.id, ex, decoder: m.decode && !decoded ? new VerifyingDecoder(m.decode) : null, decoded, spans };
      job = j;
      decoded?.on('message', (d: DecodedMessage) => onDecoded(j, d));
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
      finish(job);
    } else {
      fail(m.id, new Error('aborted'));
    }
  } catch (err) {
    fail(m.id, err);
  }
});
