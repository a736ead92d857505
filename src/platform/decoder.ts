// Checking stored artifact bytes against their manifest entry, in one place:
// the checks and messages that every reader of an artifact uses (the codec
// worker's streams, codec.ts), and a synchronous verifying decoder for the
// worker threads that decode where the bytes are used: a codec worker
// decoding into a file or to another worker's port, and the files restore
// worker checking an uncompressed artifact it parses. The decompressed bytes
// never reach the event loop.
import { createHash, type Hash } from 'node:crypto';
import binding from 'zstd-napi/binding.js';
import type { Compression } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';

/** What the stored bytes of an artifact must be, from its manifest entry. */
export interface DecodeSpec {
  compression: Compression;
  sha256: string;
  size: number;
  /** names the artifact in errors, e.g. "artifact resources/db/database.pgdump.zst" */
  label: string;
}

/** The error for stored bytes that run past the size their manifest gives. */
export function storedTooLarge(label: string, expectedSize: number): AppError {
  return new AppError('checksum_mismatch', `${label} is larger than its manifest says (${expectedSize} bytes)`);
}

/** The error for stored bytes that the decompressor refuses. */
export function storedUndecodable(label: string, compression: Compression, cause: unknown): AppError {
  return new AppError('checksum_mismatch', `${label} is not valid ${compression} data; the stored copy is damaged`, undefined, { cause });
}

/** Throws checksum_mismatch unless the stored bytes seen match the manifest entry; `truncated`: the last zstd frame did not end. */
export function checkStoredEnd(label: string, expected: { size: number; sha256: string }, seen: { bytes: number; sha256: string; truncated?: boolean }): void {
  if (seen.bytes !== expected.size) throw new AppError('checksum_mismatch', `${label} has ${seen.bytes} bytes, its manifest says ${expected.size}`);
  if (seen.sha256 !== expected.sha256) {
    throw new AppError('checksum_mismatch', `${label} does not match its sha256 in the manifest: the stored copy is damaged or was changed`);
  }
  if (seen.truncated) throw new AppError('checksum_mismatch', `${label} ends in the middle of a zstd frame; the stored copy is damaged`);
}

/**
 * A codec worker's decodeTo stream and its consumer (another worker) talk
 * over a MessagePort: decoded pieces (transferred), then one verdict on the
 * stored bytes, last, once every piece came back; the consumer hands each
 * piece's buffer back, which is also the flow control (the codec has a fixed
 * number of pieces out). With a piece the consumer may hand back notes of
 * byte ranges to hash (span-hash.ts); the digests of the bodies that ended
 * come back, in order, with the next piece or the verdict.
 */
export type DecodedMessage = { piece: ArrayBuffer; length: number; digests?: string[] } | { end: true; digests?: string[] } | { error: string; code?: string };
export interface DecodedReturn {
  back: ArrayBuffer;
  /** SpanRecorder notes on this piece */
  hash?: number[];
}

/** Compressions VerifyingDecoder handles (zlib has no incremental synchronous gunzip). */
export const SYNC_DECODABLE: readonly Compression[] = ['zstd', 'none'];

/** Decompressed output is handed on in pieces of at most this size. */
const OUT_SIZE = 256 * 1024;

/**
 * Hashes and counts stored bytes, decompresses them, and hands the result on
 * synchronously, piece by piece; end() throws checksum_mismatch unless the
 * bytes were exactly the manifest's. A consumer must commit nothing before
 * end() returned. Memory is one output buffer whatever the ratio: each piece
 * is handed on before the next is made.
 *
 * Two ways to drive it: push() decodes a chunk whole into a sink; feed() and
 * decodeInto() let the caller stop between pieces (when it has no buffer to
 * decode into, say) and go on later.
 */
export class VerifyingDecoder {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;
  private readonly dctx: InstanceType<typeof binding.DCtx> | null;
  private out: Buffer | null = null;
  /** zstd: the last return of decompressStream; 0 once a frame ended cleanly */
  private pending = 0;
  /** skip() was called: the rest is only counted and hashed */
  private skipping = false;
  /** fed bytes not decoded yet */
  private input: Buffer = Buffer.alloc(0);
  /** the fed bytes are all decoded and zstd holds no more output */
  private drained = true;

  /** `dctx`: a zstd context to use (reset to defaults) instead of a new one, for a caller that keeps them; see context. */
  constructor(
    private readonly spec: DecodeSpec,
    dctx?: InstanceType<typeof binding.DCtx>,
  ) {
    if (!SYNC_DECODABLE.includes(spec.compression)) throw new Error(`VerifyingDecoder cannot decode ${spec.compression}`);
    this.dctx = spec.compression === 'zstd' ? (dctx ?? new binding.DCtx()) : null;
  }

  /** The zstd context (null for uncompressed bytes), for the caller to keep once this decoder is done with. */
  get context(): InstanceType<typeof binding.DCtx> | null {
    return this.dctx;
  }

  /** Everything fed so far is decoded: the next feed() may come. */
  get idle(): boolean {
    return this.drained;
  }

  /** Takes the next stored bytes (only when idle): counted and hashed now, decoded by decodeInto(). The caller keeps chunk unchanged until idle again. */
  feed(chunk: Buffer): void {
    if (!this.drained) throw new Error('VerifyingDecoder: fed before the previous bytes were decoded');
    this.bytes += chunk.length;
    if (this.bytes > this.spec.size) throw storedTooLarge(this.spec.label, this.spec.size);
    this.hash.update(chunk);
    this.input = chunk;
    this.drained = chunk.length === 0;
  }

  /** Decodes fed bytes into out; returns how many it wrote (possibly 0 while not yet idle). */
  decodeInto(out: Buffer): number {
    if (this.drained) return 0;
    if (!this.dctx) {
      const n = this.input.copy(out);
      this.input = this.input.subarray(n);
      this.drained = this.input.length === 0;
      return n;
    }
    let ret: number;
    let produced: number;
    let consumed: number;
    try {
      [ret, produced, consumed] = this.dctx.decompressStream(out, this.input);
    } catch (err) {
      throw storedUndecodable(this.spec.label, 'zstd', err);
    }
    this.pending = ret;
    this.input = this.input.subarray(consumed);
    // Drained once the input is consumed and zstd holds nothing more: the buffer was not filled, or a frame just ended.
    this.drained = this.input.length === 0 && (produced < out.length || ret === 0);
    return produced;
  }

  /** Feeds the next stored bytes; `sink` gets each decompressed piece, valid only during its call. */
  push(chunk: Buffer, sink: (piece: Buffer) => void): void {
    if (!this.dctx) {
      this.feed(chunk);
      this.input = Buffer.alloc(0);
      this.drained = true;
      sink(chunk);
      return;
    }
    this.feed(chunk);
    this.out ??= Buffer.allocUnsafeSlow(OUT_SIZE);
    while (!this.drained) {
      const n = this.decodeInto(this.out);
      if (n > 0) sink(this.out.subarray(0, n));
    }
  }

  /**
   * Counts and hashes stored bytes without decoding them: after the consumer
   * failed on what was decoded, the rest is still checked, so that end()
   * tells a damaged artifact (whose garbage the consumer choked on) from a
   * sound one that holds something the consumer refuses.
   */
  skip(chunk: Buffer): void {
    this.skipping = true;
    this.bytes += chunk.length;
    if (this.bytes > this.spec.size) throw storedTooLarge(this.spec.label, this.spec.size);
    this.hash.update(chunk);
  }

  /** Checks size, sha256 and (zstd, unless skipping) that the last frame ended; throws checksum_mismatch otherwise. */
  end(): void {
    const truncated = this.dctx !== null && !this.skipping && this.pending !== 0;
    checkStoredEnd(this.spec.label, this.spec, { bytes: this.bytes, sha256: this.hash.digest('hex'), truncated });
  }
}
