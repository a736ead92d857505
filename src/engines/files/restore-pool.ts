// Runs a restore's extraction (extract-sync.ts) in a worker thread. The main
// thread only passes the input on: the file system calls are synchronous
// there, which for many small files costs a fraction of async calls through
// libuv's thread pool, and the event loop stays free. A stored zstd artifact
// goes to a codec worker, which checks and decompresses it and sends the
// pieces straight to the restore worker (codec.ts DecodeToPort); anything
// else is copied into batches for the restore worker itself.
//
// Workers are long-lived and reused (starting one costs far more than a
// small restore); an idle one does not keep the process alive and exits
// after workerIdle.ms (workers.ts). Backpressure: at most IN_FLIGHT batches are in the worker.
// A job settles only once its worker has stopped touching staging (it
// answered, or exited), so the caller may remove staging right after.
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import { AppError, ERRORS, type ErrorCode } from '../../errors/index.ts';
import { DecodeToPort } from '../../platform/codec.ts';
import { noteBufferBytes } from '../../platform/gc.ts';
import { recycled } from '../../platform/recycle.ts';
import { startModuleWorker, workerIdle } from '../../platform/workers.ts';
import type { DecodeSpec } from '../../platform/decoder.ts';
import type { ExtractResult } from './extract-sync.ts';

export type PoolRequest =
  | {
      op: 'start';
      id: number;
      staging: string;
      digestVersion: 1 | 2;
      keepList: boolean;
      stop: SharedArrayBuffer;
      /** the batches are the stored artifact, which the worker checks and decompresses itself */
      decode?: DecodeSpec;
      /** no batches: a codec worker sends the decoded artifact on this port (codec.ts DecodeToPort) */
      decoded?: MessagePort;
    }
  | { op: 'data'; id: number; buffer: ArrayBuffer; length: number }
  | { op: 'end'; id: number }
  | { op: 'abort'; id: number };

export type PoolReply =
  | { op: 'ack'; id: number; buffer: ArrayBuffer }
  | { op: 'done'; id: number; result: ExtractResult }
  | { op: 'error'; id: number; code?: string; message: string; details?: Record<string, unknown>; errno?: string };

const BATCH = 1024 * 1024;
const IN_FLIGHT = 4;
/** After a cancel, the worker gets this long to stop by itself before it is terminated. */
const CANCEL_GRACE_MS = 5_000;

interface Slot {
  worker: Worker;
  job: Job | null;
  idle: NodeJS.Timeout | undefined;
  error: Error | undefined;
}

const slots = new Set<Slot>();
let nextId = 1;

/** FOR TESTS: a view of the pool, and a way to end every worker. */
export const restoreWorkerPool = {
  started: 0,
  live: () => slots.size,
  /** Terminates every worker, idle or busy (a busy one's job fails as after a crash); resolves once they have exited. */
  async terminateAll(): Promise<void> {
    const exits = [...slots].map((s) => new Promise((resolve) => s.worker.once('exit', resolve)));
    for (const s of slots) void s.worker.terminate();
    await Promise.all(exits);
  },
};

class Job {
  readonly id = nextId++;
  private credits = IN_FLIGHT;
  private readonly free: ArrayBuffer[] = [];
  private wake: (() => void) | null = null;
  /** why the job fails, as first known (the input's error, a cancel, the worker's error) */
  reason: unknown = undefined;
  settled = false;
  readonly done: Promise<ExtractResult>;
  private resolve!: (r: ExtractResult) => void;
  private reject!: (e: unknown) => void;
  onSettle: () => void = () => {};

  constructor(readonly slot: Slot) {
    this.done = new Promise((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.done.catch(() => {}); // awaited by the caller, maybe only after the input ends
  }

  post(m: PoolRequest, transfer: (ArrayBuffer | MessagePort)[] = []): void {
    if (!this.settled) this.slot.worker.postMessage(m, transfer);
  }

  /** Resolves when another batch may go to the worker, or the job has settled. */
  room(): Promise<void> {
    if (this.credits > 0 || this.settled) return Promise.resolve();
    return new Promise((r) => (this.wake = r));
  }

  take(): Buffer {
    this.credits--;
    return Buffer.from(this.free.pop() ?? new ArrayBuffer(BATCH));
  }

  /** Stops the worker's extraction; the job settles when it confirms (or exits) with `reason`. */
  stop(reason: unknown, flag: Int32Array): void {
    this.reason ??= reason;
    Atomics.store(flag, 0, 1);
    this.post({ op: 'abort', id: this.id });
  }

  reply(m: PoolReply): void {
    if (m.op === 'ack') {
      this.credits++;
      this.free.push(m.buffer);
      this.wakeUp();
    } else if (m.op === 'done') {
      if (this.reason === undefined) this.settle(m.result);
      else this.settle(undefined, this.reason);
    } else {
      const err =
        m.code && m.code in ERRORS ? new AppError(m.code as ErrorCode, m.message, m.details) : Object.assign(new Error(m.message), m.errno ? { code: m.errno } : {});
      this.settle(undefined, this.reason ?? err);
    }
  }

  settle(result: ExtractResult | undefined, err?: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.onSettle();
    this.wakeUp();
    if (err === undefined) this.resolve(result!);
    else this.reject(err);
  }

  private wakeUp(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
}

function startWorker(): Slot {
  const worker = startModuleWorker(import.meta.url, './restore-worker');
  restoreWorkerPool.started++;
  const slot: Slot = { worker, job: null, idle: undefined, error: undefined };
  slots.add(slot);
  worker.on('message', (m: PoolReply) => {
    if (slot.job?.id === m.id) slot.job.reply(m);
  });
  worker.on('error', (err) => {
    slot.error ??= err;
  });
  // Crashed, terminated or idle: the thread is gone, so its job (if any) fails now and the next one gets a new worker.
  worker.on('exit', (code) => {
    slots.delete(slot);
    clearTimeout(slot.idle);
    const job = slot.job;
    slot.job = null;
    if (job) {
      const why = slot.error ? slot.error.message : `exit code ${code}`;
      job.settle(undefined, job.reason ?? new AppError('engine_failed', `The restore worker stopped unexpectedly (${why}); nothing was restored.`));
    }
  });
  return slot;
}

function acquire(): Slot {
  for (const s of slots) {
    if (!s.job) {
      clearTimeout(s.idle);
      s.idle = undefined;
      return s;
    }
  }
  return startWorker();
}

function release(slot: Slot): void {
  if (!slots.has(slot)) return;
  slot.job = null;
  slot.error = undefined;
  slot.worker.unref();
  slot.idle = setTimeout(() => {
    // Out of the pool first: a job must not be given to a worker on its way out.
    slots.delete(slot);
    void slot.worker.terminate();
  }, workerIdle.ms);
  slot.idle.unref();
}

/**
 * Extracts input into staging in a worker and returns its result. Fails
 * with the input's own error when it errors (even at its very end: the
 * worker is then told to stop and nothing is finished), with cancelled on
 * abort, and with the worker's error otherwise. With `decode`, input is the
 * stored artifact (checksum_mismatch when it is damaged): zstd is checked
 * and decompressed by a codec worker that sends the pieces straight to the
 * restore worker, so the two share the cores; uncompressed bytes are checked
 * by the restore worker itself.
 */
export async function extractInWorker(
  staging: string,
  input: Readable,
  digestVersion: 1 | 2,
  keepList: boolean,
  signal: AbortSignal,
  decode?: DecodeSpec,
): Promise<ExtractResult> {
  if (signal.aborted) throw new AppError('cancelled');
  const channel = decode?.compression === 'zstd' ? new MessageChannel() : null;
  const decoding = channel ? new DecodeToPort(decode!, channel.port1) : null;
  let slot: Slot;
  try {
    slot = acquire();
  } catch (err) {
    decoding?.destroy();
    throw err;
  }
  const job = new Job(slot);
  slot.job = job;
  // While it runs a job, the worker keeps the process alive, as the job's promise would.
  slot.worker.ref();
  const flag = new Int32Array(new SharedArrayBuffer(4));
  let kill: NodeJS.Timeout | undefined;
  const onAbort = () => {
    job.stop(new AppError('cancelled'), flag);
    kill = setTimeout(() => void slot.worker.terminate(), CANCEL_GRACE_MS);
  };
  // A job that ends while the input is still awaited stops the reading (and the decoding).
  job.onSettle = () => {
    clearTimeout(kill);
    signal.removeEventListener('abort', onAbort);
    if (!input.readableEnded) input.destroy();
    if (decoding && !decoding.writableFinished) decoding.destroy();
    if (slot.job === job) release(slot);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  const start: PoolRequest = { op: 'start', id: job.id, staging, digestVersion, keepList, stop: flag.buffer as SharedArrayBuffer };
  if (channel) job.post({ ...start, decoded: channel.port2 }, [channel.port2]);
  else job.post(decode ? { ...start, decode } : start);

  try {
    // Its readable side carries nothing, but must be read for the stream to end.
    if (decoding) await pipeline(input, decoding, new Writable({ write: (_c, _e, cb) => cb() }));
    else await sendBatches(job, input);
  } catch (err) {
    // The input failed (a checksum at its end, say): nothing may be finished.
    job.stop(err, flag);
  }
  return job.done;
}

/** Copies input into batches for the worker, as far as it has room, then tells it the end. */
async function sendBatches(job: Job, input: Readable): Promise<void> {
  let batch: Buffer | null = null;
  let used = 0;
  const send = () => {
    if (!batch || used === 0) return;
    const buffer = batch.buffer as ArrayBuffer;
    job.post({ op: 'data', id: job.id, buffer, length: used }, [buffer]);
    batch = null;
    used = 0;
  };
  for await (const chunk of input as AsyncIterable<Buffer>) {
    for (let off = 0; off < chunk.length && !job.settled; ) {
      if (!batch) {
        await job.room();
        if (job.settled) break;
        batch = job.take();
      }
      const n = chunk.copy(batch, used, off);
      used += n;
      off += n;
      if (used === BATCH) send();
    }
    // Copied, and held by no one now: a lent chunk (local storage's, lending-reader.ts) goes back to be read into again; any other is garbage.
    if (!recycled(chunk)) noteBufferBytes(chunk.length);
    if (job.settled) break;
  }
  send();
  job.post({ op: 'end', id: job.id });
}
