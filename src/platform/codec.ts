// zstd compression and decompression, with the sha256 of the stored bytes,
// and sha256 alone (gzip and uncompressed artifacts, passed through as they
// are), in worker threads (codec-worker.ts), so none of it blocks the event
// loop.
//
// Why not zstd-napi's own streams on the main thread: with nbWorkers they wait
// inside native code for zstd's thread whenever its buffers are full, and the
// whole event loop (API requests included) waits with them; without, the
// compression and both hash passes take the main thread's CPU. Here the main
// thread only copies bytes into 512 KiB batches and passes them on (or, for
// a files dump's 4 MiB batches, passes them on without a copy: see adopt in
// recycle.ts).
//
// Backpressure: at most MAX_IN_FLIGHT batches (or MAX_LOANS_IN_FLIGHT adopted
// ones) of a stream are in the worker, and neither new input nor a pull goes
// out while the readable side is over its high-water mark. A decompressing
// request makes at most 1 MiB of output (the worker keeps the rest of its
// input until pulled: a few KB of hostile zstd can expand to gigabytes); a
// compressing one sends each frame as it is made, no more bytes than the
// input in flight. Memory per stream stays bounded whatever the speed of
// either end or the compression ratio.
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import type { MessagePort, Worker } from 'node:worker_threads';
import { AppError, ERRORS, type ErrorCode } from '../errors/index.ts';
import { checkStoredEnd, storedTooLarge, type DecodeSpec } from './decoder.ts';
import { noteBufferBytes } from './gc.ts';
import { adopt, recycled } from './recycle.ts';
import { startModuleWorker, workerIdle } from './workers.ts';

export type CodecRequest =
  | { op: 'open'; id: number; mode: 'compress'; level: number }
  | { op: 'open'; id: number; mode: 'decompress'; spec: DecodeSpec }
  | { op: 'open'; id: number; mode: 'hash' }
  | { op: 'open'; id: number; mode: 'decodeFile'; spec: DecodeSpec; path: string }
  | { op: 'open'; id: number; mode: 'decodeTo'; spec: DecodeSpec; port: MessagePort }
  /** loan: the buffer is a producer's (recycle.ts adopt), compressed in place and handed back in `loans` */
  | { op: 'data'; id: number; buffer: ArrayBuffer; length: number; loan?: boolean }
  | { op: 'pull'; id: number }
  | { op: 'end'; id: number }
  | { op: 'close'; id: number };

export interface CodecReply {
  id: number;
  buffers: ArrayBuffer[];
  lengths: number[];
  /** batches of input the worker finished with during this request */
  consumed: number;
  /** input is left in the worker: pull when there is room for more output */
  more: boolean;
  /** sha256: of the output (compress) or the input (hash) only; a decoding stream's worker checked its input itself */
  end?: { sha256?: string; inBytes: number; outBytes: number };
  error?: string;
  /** the error's catalog code, when it had one (checksum_mismatch from a decodeFile stream) */
  code?: string;
  /** input batches the worker is done with, handed back to be filled again */
  returned?: ArrayBuffer[];
  /** lent input buffers the worker is done with, in the order they were sent (also counted in consumed) */
  loans?: ArrayBuffer[];
  /** only returns buffers (of a stream already closed); nothing else in it */
  orphan?: boolean;
}

const BATCH_BYTES = 512 * 1024;
/** Batches of a stream in the worker at once: 4 MiB, a whole segment queued while the previous one compresses. */
const MAX_IN_FLIGHT = 8;
/**
 * Adopted chunks (a files dump's 4 MiB batches, each compressed in place as
 * one frame) in the worker at once: one compressing and the next queued, so
 * the worker never waits for the main thread between them.
 */
const MAX_LOANS_IN_FLIGHT = 2;

interface PoolWorker {
  worker: Worker;
  streams: Map<number, CodecStream>;
  /** set while the worker has no stream: it leaves when this fires */
  idle: NodeJS.Timeout | undefined;
}

const pool: PoolWorker[] = [];
let nextId = 1;

/**
 * The pool's counters (read by tests). An idle codec worker costs ~9 MiB of
 * the server's memory (its own V8 heap, zstd's contexts and the buffers it
 * keeps), so it leaves after workerIdle.ms (workers.ts) without a stream.
 */
export const codecPool = {
  /** Workers started since the process began. */
  started: 0,
  /** Workers alive. */
  live: () => pool.length,
  /** Streams open in them (each holds its worker in the pool and the process alive). */
  openStreams: () => pool.reduce((n, p) => n + p.streams.size, 0),
};

/** The worker with the fewest open streams; a new one while the pool is below its size. */
function pickWorker(): PoolWorker {
  const size = Math.max(1, Math.min(availableParallelism(), 4));
  let p = pool.find((w) => w.streams.size === 0);
  if (!p && pool.length < size) p = startWorker();
  p ??= pool.reduce((a, b) => (b.streams.size < a.streams.size ? b : a));
  clearTimeout(p.idle);
  p.idle = undefined;
  return p;
}

function startWorker(): PoolWorker {
  const worker = startModuleWorker(import.meta.url, './codec-worker');
  codecPool.started++;
  // Idle codec workers must not keep the process alive.
  worker.unref();
  const p: PoolWorker = { worker, streams: new Map(), idle: undefined };
  worker.on('message', (m: CodecReply) => p.streams.get(m.id)?.reply(m));
  const fail = (err: Error) => {
    clearTimeout(p.idle);
    const i = pool.indexOf(p);
    if (i >= 0) pool.splice(i, 1);
    for (const s of p.streams.values()) s.destroy(new AppError('internal', `The compression worker stopped: ${err.message}`));
    p.streams.clear();
  };
  worker.on('error', fail);
  worker.on('exit', (code) => fail(new Error(`exit code ${code}`)));
  pool.push(p);
  return p;
}

/** The worker's last stream closed: it leaves unless another comes within workerIdle.ms. */
function idleWorker(p: PoolWorker): void {
  p.worker.unref();
  clearTimeout(p.idle);
  p.idle = setTimeout(() => {
    if (p.streams.size > 0) return;
    const i = pool.indexOf(p);
    if (i >= 0) pool.splice(i, 1);
    void p.worker.terminate();
  }, workerIdle.ms);
  p.idle.unref();
}

abstract class CodecStream extends Transform {
  protected readonly id = nextId++;
  private readonly home: PoolWorker;
  private batch: Buffer | undefined;
  /** batch buffers the worker handed back: refilled rather than left to the garbage collector */
  private readonly spare: Buffer[] = [];
  private batchUsed = 0;
  private inFlight = 0;
  /** adopted chunks in the worker, and the functions that give each back to its lender, oldest first */
  private readonly loans: ((buffer: ArrayBuffer) => void)[] = [];
  private outputFull = false;
  private waiting: (() => void) | undefined;
  private onEnd: ((err?: Error) => void) | undefined;
  private pullWanted = false;
  private endSent = false;
  private released = false;

  /**
   * `passes`: the input goes on unchanged (the worker only hashes it) rather
   * than the worker's output. `adopts`: a lent chunk (recycle.ts) goes to
   * the worker as it is instead of being copied into a batch; only for a
   * stage that passes nothing on.
   */
  constructor(
    open: CodecRequest,
    private readonly passes = false,
    transfer: MessagePort[] = [],
    private readonly adopts = false,
  ) {
    super();
    this.home = pickWorker();
    this.home.streams.set(this.id, this);
    this.home.worker.ref();
    this.home.worker.postMessage({ ...open, id: this.id }, transfer);
  }

  private send(m: CodecRequest, transfer: ArrayBuffer[] = []): void {
    this.home.worker.postMessage(m, transfer);
  }

  private sendBatch(): void {
    if (!this.batch || this.batchUsed === 0) return;
    const buffer = this.batch.buffer as ArrayBuffer;
    this.send({ op: 'data', id: this.id, buffer, length: this.batchUsed }, [buffer]);
    this.batch = undefined;
    this.batchUsed = 0;
    this.inFlight++;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.counted(chunk.length);
    if (this.destroyed) {
      noteBufferBytes(chunk.length);
      return;
    }
    if (this.passes && !this.push(chunk)) this.outputFull = true;
    if (this.adopts && this.batchUsed === 0 && this.sendLoan(chunk)) {
      if (this.mayTakeMore()) cb();
      else this.waiting = () => cb();
      return;
    }
    let offset = 0;
    while (offset < chunk.length) {
      this.batch ??= this.spare.pop() ?? Buffer.allocUnsafeSlow(BATCH_BYTES);
      const n = chunk.copy(this.batch, this.batchUsed, offset);
      this.batchUsed += n;
      offset += n;
      if (this.batchUsed === BATCH_BYTES) this.sendBatch();
    }
    // Copied, and (unless passed on) held by no one: a lent chunk (a files
    // dump batch) goes back to the worker that made it; any other
    // (a pipe's, a file's) is garbage now.
    if (this.passes || !recycled(chunk)) noteBufferBytes(chunk.length);
    if (this.mayTakeMore()) cb();
    else this.waiting = () => cb();
  }

  /** Sends a lent chunk's memory to the worker as it is (recycle.ts adopt); false for any other chunk. */
  private sendLoan(chunk: Buffer): boolean {
    const giveBack = adopt(chunk);
    if (!giveBack) return false;
    this.loans.push(giveBack);
    const buffer = chunk.buffer as ArrayBuffer;
    this.send({ op: 'data', id: this.id, buffer, length: chunk.length, loan: true }, [buffer]);
    return true;
  }

  override _flush(cb: TransformCallback): void {
    this.sendBatch();
    this.onEnd = cb;
    this.pump();
  }

  override _read(size: number): void {
    this.outputFull = false;
    this.pump();
    super._read(size);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.close();
    cb(err);
  }

  private mayTakeMore(): boolean {
    return this.inFlight < MAX_IN_FLIGHT && this.loans.length < MAX_LOANS_IN_FLIGHT && !this.outputFull;
  }

  /** Asks for more output, takes more input, or ends, as far as the consumer keeps up. */
  private pump(): void {
    if (this.released || this.outputFull) return;
    if (this.pullWanted) {
      this.pullWanted = false;
      this.send({ op: 'pull', id: this.id });
    }
    if (this.waiting && this.mayTakeMore()) {
      const w = this.waiting;
      this.waiting = undefined;
      w();
    }
    if (this.onEnd && !this.endSent && this.inFlight === 0 && this.loans.length === 0 && !this.pullWanted) {
      this.endSent = true;
      this.send({ op: 'end', id: this.id });
    }
  }

  /** Tells the worker to forget the stream and lets the process exit when no stream is open. */
  private close(): void {
    if (this.released) return;
    this.released = true;
    this.home.streams.delete(this.id);
    this.send({ op: 'close', id: this.id });
    if (this.home.streams.size === 0) idleWorker(this.home);
  }

  reply(m: CodecReply): void {
    for (const b of m.returned ?? []) if (this.spare.length < MAX_IN_FLIGHT) this.spare.push(Buffer.from(b));
    // Back to the lender even after an error or close: the worker finished them, in order.
    for (const b of m.loans ?? []) this.loans.shift()?.(b);
    if (this.destroyed || m.orphan) return;
    if (m.error !== undefined) {
      this.close();
      this.destroy(this.workerError(m.error, m.code));
      return;
    }
    for (let i = 0; i < m.buffers.length; i++) {
      if (!this.push(Buffer.from(m.buffers[i]!, 0, m.lengths[i]))) this.outputFull = true;
      noteBufferBytes(m.lengths[i]!);
    }
    if (m.end) {
      this.close();
      const cb = this.onEnd!;
      let problem: Error | undefined;
      try {
        this.finished(m.end);
      } catch (err) {
        problem = err as Error;
      }
      cb(problem);
      return;
    }
    this.inFlight -= m.consumed - (m.loans?.length ?? 0);
    if (m.more) this.pullWanted = true;
    this.pump();
  }

  /** Called with each input chunk's size, before it is batched. */
  protected counted(_bytes: number): void {}
  protected abstract workerError(message: string, code?: string): Error;
  /** Checks the end of the stream; throwing fails the stream. */
  protected abstract finished(end: NonNullable<CodecReply['end']>): void;
}

/**
 * zstd compression at `level` with zstd's content checksum, as one frame
 * per 4 MiB of input (see codec-worker.ts). After the stream ended, `bytes`
 * and `sha256` describe the compressed output.
 */
export class ZstdCompressHash extends CodecStream {
  bytes = 0;
  private hex: string | undefined;

  constructor(level = 3) {
    super({ op: 'open', id: 0, mode: 'compress', level }, false, [], true);
  }

  protected workerError(message: string): Error {
    return new AppError('internal', `zstd compression failed: ${message}`);
  }

  protected finished(end: NonNullable<CodecReply['end']>): void {
    this.bytes = end.outBytes;
    this.hex = end.sha256!;
  }

  get sha256(): string {
    if (this.hex === undefined) throw new Error('ZstdCompressHash: stream has not ended');
    return this.hex;
  }
}

/** The size and sha256 of the bytes that pass through, computed in a codec worker. */
export class Sha256PassThrough extends CodecStream {
  bytes = 0;
  private hex: string | undefined;

  constructor() {
    super({ op: 'open', id: 0, mode: 'hash' }, true);
  }

  protected workerError(message: string): Error {
    return new AppError('internal', `hashing failed: ${message}`);
  }

  protected finished(end: NonNullable<CodecReply['end']>): void {
    this.bytes = end.inBytes;
    this.hex = end.sha256!;
  }

  get sha256(): string {
    if (this.hex === undefined) throw new Error('Sha256PassThrough: stream has not ended');
    return this.hex;
  }
}

/**
 * Passes stored bytes through and, at the end, errors with checksum_mismatch
 * (naming `label`) unless they had `expectedSize` bytes and sha256
 * `expectedSha256`; hashed in a codec worker.
 */
export class VerifiedPassThrough extends CodecStream {
  private seen = 0;

  constructor(
    private readonly expectedSha256: string,
    private readonly expectedSize: number,
    private readonly label: string,
  ) {
    super({ op: 'open', id: 0, mode: 'hash' }, true);
  }

  protected override counted(bytes: number): void {
    this.seen += bytes;
    if (this.seen > this.expectedSize) this.destroy(storedTooLarge(this.label, this.expectedSize));
  }

  protected workerError(message: string): Error {
    return new AppError('internal', `hashing ${this.label} failed: ${message}`);
  }

  protected finished(end: NonNullable<CodecReply['end']>): void {
    checkStoredEnd(this.label, { size: this.expectedSize, sha256: this.expectedSha256 }, { bytes: end.inBytes, sha256: end.sha256! });
  }
}

/**
 * A stream whose worker checks the stored bytes itself (decoder.ts): its
 * errors carry their catalog code (checksum_mismatch for damage), and the
 * worker answers the end only after the check passed, so nothing is left
 * to check here.
 */
abstract class CheckedInWorker extends CodecStream {
  protected workerError(message: string, code?: string): Error {
    if (code && code in ERRORS) return new AppError(code as ErrorCode, message);
    return new Error(message);
  }

  protected finished(): void {}
}

/**
 * zstd decompression of stored bytes that must have `expectedSize` bytes and
 * sha256 `expectedSha256`; the stream errors with checksum_mismatch (naming
 * `label`) otherwise, at the latest at its end, so a consumer that commits
 * only after a clean end never commits damaged data. The worker checks them
 * as it decodes (decoder.ts VerifyingDecoder), as every other zstd reader does.
 */
export class VerifiedZstdDecompress extends CheckedInWorker {
  private seen = 0;

  constructor(
    expectedSha256: string,
    private readonly expectedSize: number,
    private readonly label: string,
  ) {
    super({ op: 'open', id: 0, mode: 'decompress', spec: { compression: 'zstd', sha256: expectedSha256, size: expectedSize, label } });
  }

  // Refused here already, so no more of it is sent to the worker.
  protected override counted(bytes: number): void {
    this.seen += bytes;
    if (this.seen > this.expectedSize) this.destroy(storedTooLarge(this.label, this.expectedSize));
  }
}

/**
 * Checks stored artifact bytes against `spec` and decompresses them straight
 * into a new file at `path`, in a codec worker: the decompressed bytes never
 * reach the event loop, and the worker's writes overlap the reading. For an
 * engine that spools its input to a file (pg_restore -j needs a seekable
 * one). The stream ends only once the bytes proved whole and the file is
 * closed; on any error it fails (checksum_mismatch for damage) and the
 * caller removes the file.
 */
export class DecodeToFile extends CheckedInWorker {
  constructor(spec: DecodeSpec, path: string) {
    super({ op: 'open', id: 0, mode: 'decodeFile', spec, path });
  }
}

/**
 * Checks stored artifact bytes against `spec` and decompresses them in a
 * codec worker that sends the decoded pieces over `port` (the other end of
 * a MessageChannel) to another worker, which hands each back and commits
 * nothing before the verdict that comes last (decoder.ts, DecodedMessage):
 * decompression gets a core of its own, and the decoded bytes never reach
 * the event loop. The stream ends once the verdict was sent; on damage it
 * fails with checksum_mismatch, and the consumer hears the same.
 */
export class DecodeToPort extends CheckedInWorker {
  constructor(spec: DecodeSpec, port: MessagePort) {
    super({ op: 'open', id: 0, mode: 'decodeTo', spec, port }, false, [port]);
  }
}
