// Stream helpers shared by services, storage and engines: hashing, counting,
// compression. zstd (the default) and the sha256 of stored artifacts (of any
// compression) run in codec worker threads (codec.ts); gzip runs in zlib's
// thread pool; so the event loop stays free.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Transform, Writable, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import type { Compression } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';
import { DecodeToFile, Sha256PassThrough, VerifiedPassThrough, VerifiedZstdDecompress, ZstdCompressHash } from './codec.ts';
import { storedUndecodable, type DecodeSpec } from './decoder.ts';

/** Passes bytes through and counts them. */
export class ByteCounter extends Transform {
  bytes = 0;

  constructor(private readonly onChunk?: (bytes: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.onChunk?.(this.bytes);
    cb(null, chunk);
  }
}

/** Passes bytes through and records their count and sha256. */
export class HashCounter extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  private hex: string | undefined;
  private readonly onChunk: ((bytes: number) => void) | undefined;

  constructor(onChunk?: (bytes: number) => void) {
    super();
    this.onChunk = onChunk;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    this.onChunk?.(this.bytes);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.hex = this.hash.digest('hex');
    cb();
  }

  /** sha256 hex of everything that passed; only after the stream ended */
  get sha256(): string {
    if (this.hex === undefined) throw new Error('HashCounter: stream has not ended');
    return this.hex;
  }
}

/**
 * zlib's output comes in chunks of this size (its default is 16 KiB): each
 * costs the event loop a callback and a push, so larger ones cut its time to
 * about half for gzip and a fifth for gunzip (bench/codec.ts). The bytes are
 * the same.
 */
const ZLIB_CHUNK = 256 * 1024;

export function compressor(c: Compression): Transform {
  switch (c) {
    case 'zstd':
      return new ZstdCompressHash(3);
    case 'gzip':
      return createGzip({ level: 6, chunkSize: ZLIB_CHUNK });
    case 'none':
      return passThrough();
  }
}

/**
 * The stages that compress a dump for storage, and the size and sha256 of
 * what they produce (read after the stream ended).
 */
export function compressForStorage(c: Compression): { stages: Transform[]; stored: () => { size: number; sha256: string } } {
  if (c === 'zstd') {
    const z = new ZstdCompressHash(3);
    return { stages: [z], stored: () => ({ size: z.bytes, sha256: z.sha256 }) };
  }
  const hashed = new Sha256PassThrough();
  return { stages: c === 'gzip' ? [createGzip({ level: 6, chunkSize: ZLIB_CHUNK }), hashed] : [hashed], stored: () => ({ size: hashed.bytes, sha256: hashed.sha256 }) };
}

/**
 * The stages that check stored bytes against their manifest entry and
 * decompress them; they error with checksum_mismatch (naming `label`) on
 * any difference, at the latest when the input ends.
 */
export function verifyAndDecompress(entry: { compression: Compression; sha256: string; size: number }, label: string): Transform[] {
  if (entry.compression === 'zstd') return [new VerifiedZstdDecompress(entry.sha256, entry.size, label)];
  const verified = new VerifiedPassThrough(entry.sha256, entry.size, label);
  return entry.compression === 'gzip' ? [verified, decompressor('gzip', label)] : [verified];
}

/** A decompressor whose errors name the artifact and carry code checksum_mismatch (the data is damaged). */
export function decompressor(c: Compression, label: string): Transform {
  let inner: Transform;
  switch (c) {
    case 'zstd':
      inner = new DecompressStream() as unknown as Transform;
      break;
    case 'gzip':
      inner = createGunzip({ chunkSize: ZLIB_CHUNK });
      break;
    case 'none':
      return passThrough();
  }
  const destroy = inner.destroy.bind(inner);
  inner.destroy = (err?: Error | null) => {
    if (err && !(err instanceof AppError)) err = storedUndecodable(label, c, err);
    return destroy(err ?? undefined);
  };
  return inner;
}

export function passThrough(): Transform {
  return new Transform({ transform: (chunk, _e, cb) => cb(null, chunk) });
}

/**
 * Writes a restore's input into a new private file at `path` (it must not
 * exist). With `decode` (the engine takes this compression as stored) the
 * input is the stored artifact, checked and decompressed into the file by a
 * codec worker (DecodeToFile); without, the input is already checked and
 * decompressed and is copied. Fails on damage with checksum_mismatch. The
 * worker opens the file itself, so `path` must lie in a directory the
 * caller removes afterwards (its work directory): after a failure the file
 * may appear a moment after the caller removed it.
 */
export async function spoolInput(input: Readable, path: string, decode: DecodeSpec | undefined, signal: AbortSignal): Promise<void> {
  if (decode) {
    const nothing = new Writable({ write: (_c, _e, cb) => cb() });
    await pipeline(input, new DecodeToFile(decode, path), nothing, { signal });
  } else {
    await pipeline(input, createWriteStream(path, { flags: 'wx', mode: 0o600 }), { signal });
  }
}
