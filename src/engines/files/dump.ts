// Packs a directory tree into a tar stream. The work (walk, reads, hashes,
// tar headers, tree digest) runs in a worker thread with synchronous calls
// (dump-pack.ts): on the main thread each asynchronous fs call cost ~30 µs of
// CPU through libuv's thread pool, taken from the event loop that serves the
// API. The main thread only passes the worker's batches on.
//
// Backpressure: the worker sends a batch only with credit. It starts with
// CREDIT batches. When the consumer takes the batches and gives them back
// (the compressor, platform/recycle.ts), a batch's credit goes back with the
// batch itself: the CREDIT batches in the consumer's hands and the one the
// worker fills are all there are. For any other consumer, a batch the stream
// takes below its high-water mark gives its credit back at once, the others
// when the consumer reads (_read): at most CREDIT batches and the stream's
// buffer are in flight. Either way the memory is bounded whatever the tree.
//
// Workers are long-lived and reused: starting one (under tsx especially)
// costs more than a small dump. Each runs one dump at a time; a dump takes an
// idle worker or starts one, and up to MAX_IDLE stay for the next dumps,
// leaving after workerIdle.ms (workers.ts). A worker keeps the process alive only while it has
// credit, i.e. while it works for a consumer that wants its bytes.
//
// Cancelling (the signal, or the consumer destroying the stream) sets a shared
// flag the worker checks between entries and between chunks of a file; it then
// reports and is reused. One that does not report within CANCEL_GRACE_MS
// (stuck in a system call) is terminated. A worker that dies fails its dump
// with engine_failed; the next dump gets a new worker.
import { resolve as resolvePath } from 'node:path';
import { Readable } from 'node:stream';
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import { AppError, type ErrorCode, ERRORS } from '../../errors/index.ts';
import { noteBufferBytes } from '../../platform/gc.ts';
import { lend } from '../../platform/recycle.ts';
import { startModuleWorker, workerIdle } from '../../platform/workers.ts';
import type { DumpInfo } from '../engine.ts';
import type { DumpSpec } from './dump-pack.ts';
import { CANCEL, CELLS, CREDIT, type DumpReply, type DumpRequest } from './dump-protocol.ts';
import type { PathFilter } from './select.ts';

/**
 * Batches (dump-pack.ts BATCH, 4 MiB) a worker may have sent and not had
 * credit back for: the codec compresses one while the next waits beside it
 * (codec.ts MAX_LOANS_IN_FLIGHT), and the worker fills a third meanwhile, so
 * no thread waits for another. Before credit followed the give-backs, the
 * consumer's two counted as taken, and two more waited in the streams'
 * buffers: six batches alive instead of three.
 */
const CREDIT_BATCHES = 2;
/** The stream's buffer; a batch pushed past it waits for the consumer to give its credit back. */
const HIGH_WATER = 512 * 1024;
// Idle workers kept (for workerIdle.ms): each costs about 10 MiB of the server's memory (its own V8 heap).
const MAX_IDLE = 1;
const CANCEL_GRACE_MS = 5_000;
/**
 * A small young generation for the worker: what it allocates per file dies at
 * once, and V8's default (up to 48 MiB) made its heap the largest part of the
 * process's peak memory during a dump.
 */
const WORKER_YOUNG_MB = 4;

interface Slot {
  worker: Worker;
  /** Batches the consumer copied go back to the worker on this port (recycle.ts); its other end goes with the first dump. */
  returns: MessagePort;
  workerEnd: MessagePort | undefined;
  run: DumpRun | undefined;
  idle: NodeJS.Timeout | undefined;
  /** The worker's 'error' event, reported when it exits. */
  error: Error | undefined;
  retired: boolean;
}

const slots = new Set<Slot>();
const idle: Slot[] = [];
let nextId = 1;

/** FOR TESTS: a view of the pool, and a way to empty it. */
export const filesDumpPool = {
  /** Workers started since the process began. */
  started: 0,
  /** Tar bytes received from workers since the process began. */
  received: 0,
  /** Batches that workers refilled after a consumer gave them back (recycle.ts), since the process began. */
  reused: 0,
  /** Batch buffers that workers allocated, since the process began. */
  made: 0,
  /** Workers alive. */
  live: () => slots.size,
  /** Workers alive and free for the next dump. */
  idle: () => idle.length,
  /** Terminates every worker, idle or busy (a busy one's dump fails as after a crash); resolves once they have exited. */
  async terminateAll(): Promise<void> {
    const all = [...slots];
    // Held until they exit: one that waits on its consumer is unref'd, and the exit is all this waits for.
    for (const s of all) s.worker.ref();
    const exits = all.map((s) => new Promise((resolve) => s.worker.once('exit', resolve)));
    for (const s of all) retire(s);
    await Promise.all(exits);
  },
};

function startWorker(): Slot {
  const worker = startModuleWorker(import.meta.url, './dump-worker', { resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_MB } });
  filesDumpPool.started++;
  const { port1, port2 } = new MessageChannel();
  // Holds nothing open: only the worker listens, and only while it packs.
  port1.unref();
  const slot: Slot = { worker, returns: port1, workerEnd: port2, run: undefined, idle: undefined, error: undefined, retired: false };
  slots.add(slot);
  worker.on('message', (m: DumpReply) => slot.run?.message(m));
  worker.on('error', (err) => {
    slot.error ??= err;
  });
  worker.on('exit', (code) => {
    forget(slot);
    slot.returns.close();
    const run = slot.run;
    slot.run = undefined;
    run?.workerDied(slot.error, code);
  });
  return slot;
}

function forget(slot: Slot): void {
  slots.delete(slot);
  const i = idle.indexOf(slot);
  if (i >= 0) idle.splice(i, 1);
  clearTimeout(slot.idle);
}

function retire(slot: Slot): void {
  slot.retired = true;
  forget(slot);
  void slot.worker.terminate();
}

function acquire(): Slot {
  const slot = idle.pop();
  if (!slot) return startWorker();
  clearTimeout(slot.idle);
  slot.idle = undefined;
  return slot;
}

function release(slot: Slot): void {
  slot.run = undefined;
  slot.worker.unref();
  if (slot.retired) return;
  if (idle.length >= MAX_IDLE) {
    retire(slot);
    return;
  }
  slot.idle = setTimeout(() => retire(slot), workerIdle.ms);
  slot.idle.unref();
  idle.push(slot);
}

/** A batch the worker sent, until its credit goes back. */
interface SentBatch {
  credited: boolean;
}

/** One dump: its worker, its stream, and the credit between them. */
class DumpRun {
  readonly id = nextId++;
  readonly stream: Readable;
  result: DumpInfo | undefined;
  private readonly cells = new Int32Array(new SharedArrayBuffer(CELLS * Int32Array.BYTES_PER_ELEMENT));
  private slot: Slot | undefined;
  /** Batches the worker may send or has in transit. */
  private credit = CREDIT_BATCHES;
  /** Batches pushed past the high-water mark: their credit goes back when the consumer reads. */
  private owed: SentBatch[] = [];
  /** The consumer takes the batches and gives each back when done (the compressor): credit follows the give-backs. */
  private recycling = false;
  /** The worker is done with this dump (it answered, or died). */
  private done = false;
  private grace: NodeJS.Timeout | undefined;

  constructor(spec: DumpSpec) {
    this.stream = new Readable({
      highWaterMark: HIGH_WATER,
      read: () => this.giveBack(),
      destroy: (err, cb) => {
        this.stop();
        cb(err);
      },
    });
    Atomics.store(this.cells, CREDIT, CREDIT_BATCHES);
    let slot: Slot;
    try {
      slot = acquire();
    } catch (err) {
      throw new AppError('engine_failed', `Cannot start the files dump worker: ${(err as Error).message}`, undefined, { cause: err });
    }
    this.slot = slot;
    slot.run = this;
    const returns = slot.workerEnd;
    slot.workerEnd = undefined;
    const request: DumpRequest = { id: this.id, spec, cells: this.cells.buffer as SharedArrayBuffer, ...(returns ? { returns } : {}) };
    slot.worker.postMessage(request, returns ? [returns] : []);
    this.updateRef();
  }

  message(m: DumpReply): void {
    if (m.id !== this.id || this.done) return;
    switch (m.kind) {
      case 'data': {
        this.credit--;
        filesDumpPool.received += m.length;
        if (this.stream.destroyed) break;
        const sent: SentBatch = { credited: false };
        if (this.stream.push(this.lent(m.buffer, m.length, sent))) this.consumed([sent]);
        else this.owed.push(sent);
        break;
      }
      case 'end':
        this.result = m.info;
        filesDumpPool.reused += m.reused;
        filesDumpPool.made += m.made;
        this.finish();
        this.stream.push(null);
        break;
      case 'error':
        this.finish();
        this.stream.destroy(new AppError(m.code in ERRORS ? (m.code as ErrorCode) : 'engine_failed', m.message, m.details));
        break;
    }
    this.updateRef();
  }

  /**
   * The batch as a chunk that a consumer which copies it and keeps nothing
   * (the codec's compressing stage) gives back for the worker to refill.
   * The dump stream must therefore have that one consumer: it is never teed.
   */
  private lent(buffer: ArrayBuffer, length: number, sent: SentBatch): Buffer {
    const returns = this.slot!.returns;
    return lend(
      Buffer.from(buffer, 0, length),
      (b) => {
        // A batch whose credit went back when it was read: the worker made another in its place, so this one is not needed.
        // After the end it would wait in the idle worker's port (4 MiB each) until its next dump. Either way: dropped here, for the collector.
        if (this.done || sent.credited) {
          noteBufferBytes(b.byteLength);
          return;
        }
        // The buffer before the credit, so the worker finds it when it wakes.
        returns.postMessage(b, [b]);
        sent.credited = true;
        this.grant(1);
        this.updateRef();
      },
      () => {
        this.recycling = true;
      },
    );
  }

  /**
   * The consumer read these batches: their credit goes back now, unless the
   * consumer gives batches back, which it does once it is done with them.
   * That keeps the batches alive at CREDIT_BATCHES and the one the worker
   * fills, instead of as many again waiting in the streams' buffers.
   */
  private consumed(batches: SentBatch[]): void {
    if (this.recycling) return;
    let n = 0;
    for (const b of batches) {
      if (b.credited) continue;
      b.credited = true;
      n++;
    }
    if (n > 0) this.grant(n);
  }

  workerDied(err: Error | undefined, code: number): void {
    if (this.done) return;
    this.done = true;
    this.slot = undefined;
    clearTimeout(this.grace);
    this.stream.destroy(new AppError('engine_failed', `The files dump worker stopped before the dump ended (${err ? err.message : `exit code ${code}`}); run the backup again.`));
  }

  private giveBack(): void {
    if (this.owed.length === 0 || this.done) return;
    const batches = this.owed;
    this.owed = [];
    this.consumed(batches);
    this.updateRef();
  }

  private grant(n: number): void {
    this.credit += n;
    Atomics.add(this.cells, CREDIT, n);
    Atomics.notify(this.cells, CREDIT);
  }

  /** While the worker has credit it works for us and keeps the process alive; without, it waits on the consumer, which decides. */
  private updateRef(): void {
    if (!this.slot) return;
    if (!this.done && this.credit > 0) this.slot.worker.ref();
    else this.slot.worker.unref();
  }

  private finish(): void {
    this.done = true;
    clearTimeout(this.grace);
    const slot = this.slot;
    this.slot = undefined;
    if (slot) release(slot);
  }

  /** The stream was destroyed: stop the worker if it still runs. */
  private stop(): void {
    if (this.done) return;
    Atomics.store(this.cells, CANCEL, 1);
    // A credit too, so a worker about to wait for one does not sleep through the cancel.
    Atomics.add(this.cells, CREDIT, 1);
    Atomics.notify(this.cells, CREDIT);
    this.grace = setTimeout(() => {
      if (!this.done && this.slot) retire(this.slot);
    }, CANCEL_GRACE_MS);
    this.grace.unref();
  }
}

function asAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  return new AppError('engine_failed', `Packing the files failed: ${(err as Error)?.message ?? String(err)}`, undefined, { cause: err });
}

export interface TreeDump {
  stream: Readable;
  info: Promise<DumpInfo>;
}

export function dumpTree(root: string, filter: PathFilter, signal: AbortSignal): TreeDump {
  const run = new DumpRun({ root: resolvePath(root), takes: filter.takes, excludes: filter.excludes });
  const stream = run.stream;
  const onAbort = () => stream.destroy(new AppError('cancelled'));
  signal.addEventListener('abort', onAbort, { once: true });

  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => reject(asAppError(err)));
    stream.once('close', () => {
      signal.removeEventListener('abort', onAbort);
      if (!ended || !run.result) {
        reject(signal.aborted ? new AppError('cancelled') : new AppError('cancelled', 'The dump stream was closed before its end.'));
        return;
      }
      resolve(run.result);
    });
  });
  info.catch(() => {});
  if (signal.aborted) onAbort();
  return { stream, info };
}
