// Stream helpers shared by services, storage and engines: hashing, counting,
// compression. Compression runs in native code (zstd-napi, zlib) so the event
// loop stays free.
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { createGzip, createGunzip } from 'node:zlib';
import { CompressStream, DecompressStream } from 'zstd-napi';
import type { Compression } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';

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
 * Passes bytes through and, at the end, errors unless they had the expected
 * size and sha256. Consumers that commit only after a clean end therefore
 * never commit tampered data.
 */
export class ChecksumVerifier extends Transform {
  private readonly hash = createHash('sha256');
  private bytes = 0;

  constructor(
    private readonly expectedSha256: string,
    private readonly expectedSize: number,
    private readonly label: string,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expectedSize) {
      cb(new AppError('checksum_mismatch', `${this.label} is larger than its manifest says (${this.expectedSize} bytes)`));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.bytes !== this.expectedSize) {
      cb(new AppError('checksum_mismatch', `${this.label} has ${this.bytes} bytes, its manifest says ${this.expectedSize}`));
      return;
    }
    const got = this.hash.digest('hex');
    if (got !== this.expectedSha256) {
      cb(new AppError('checksum_mismatch', `${this.label} does not match its sha256 in the manifest: the stored copy is damaged or was changed`));
      return;
    }
    cb();
  }
}

export function compressor(c: Compression): Transform {
  switch (c) {
    case 'zstd':
      // nbWorkers moves compression onto zstd's own thread, off the event loop.
      return new CompressStream({ compressionLevel: 3, nbWorkers: 1, checksumFlag: true }) as unknown as Transform;
    case 'gzip':
      return createGzip({ level: 6 });
    case 'none':
      return passThrough();
  }
}

/** A decompressor whose errors name the artifact and carry code checksum_mismatch (the data is damaged). */
export function decompressor(c: Compression, label: string): Transform {
  let inner: Transform;
  switch (c) {
    case 'zstd':
      inner = new DecompressStream() as unknown as Transform;
      break;
    case 'gzip':
      inner = createGunzip();
      break;
    case 'none':
      return passThrough();
  }
  const destroy = inner.destroy.bind(inner);
  inner.destroy = (err?: Error | null) => {
    if (err && !(err instanceof AppError)) {
      err = new AppError('checksum_mismatch', `${label} is not valid ${c} data; the stored copy is damaged`, undefined, { cause: err });
    }
    return destroy(err ?? undefined);
  };
  return inner;
}

export function passThrough(): Transform {
  return new Transform({ transform: (chunk, _e, cb) => cb(null, chunk) });
}
