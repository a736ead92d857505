// Storage in an S3-compatible bucket (AWS S3, Ceph radosgw, MinIO, ...).
// Keys map to "<prefix>/<key>" (just "<key>" when the prefix is empty).
//
// put streams the body with backpressure and its own multipart loop (not
// lib-storage's Upload, whose part size is fixed for the whole upload, so a
// stream of unknown size either wastes memory or hits the 10,000-part limit).
// Bodies up to one part go up as a single PutObject; anything larger as a
// multipart upload that only becomes visible at CompleteMultipartUpload. A
// failing body, part or abort signal aborts the multipart upload.
//
// Two S3 clients, because retrying is only honest where bytes can be resent:
// - `client` (stat, list, delete, get, presign): maxAttempts 1; transient
//   failures are left to the withRetries wrapper (retry.ts), which knows the
//   whole operation. No socket timeout: a GET stream may legitimately stall
//   while its consumer is busy (e.g. a restore building an index).
// - `uploadClient` (PutObject, multipart calls): the AWS SDK's standard retry
//   (uploadAttempts, default 4) with a socket timeout. Every body it sends is a
//   Buffer held in memory, so the SDK can resend it; the stream itself is never
//   replayed. A duplicate CreateMultipartUpload after a lost response can leave
//   an orphan upload: give buckets an AbortIncompleteMultipartUpload lifecycle rule.
//
// Errors: missing key → storage_not_found; bad credentials, access denied,
// missing bucket, wrong region and other 4xx → storage_failed marked not
// retryable, with a message naming what to fix; 5xx, throttling, timeouts and
// network errors → storage_failed marked retryable. No message carries a
// secret: they name the endpoint, bucket and key only.
import { createHash } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { AppError } from '../errors/index.ts';
import { storageFailure } from './retry.ts';
import { assertSafeKey, type ByteRange, type PutOptions, type Storage, type StoredObject } from './storage.ts';

const MiB = 1024 * 1024;

/** S3 allows at most this many parts in one multipart upload. */
export const MAX_PARTS = 10_000;
/** The first parts' size; every part but the last must be at least 5 MiB. */
export const FIRST_PART_SIZE = 8 * MiB;
/** The part size doubles after every this many parts. */
export const PARTS_PER_DOUBLING = 1000;

/**
 * Size of part partNumber (1-based): 8 MiB × 2^floor((partNumber - 1) / 1000).
 *
 * The total size is unknown up front, so parts grow with the data. Parts
 * 1-1000 are 8 MiB, 1001-2000 16 MiB, ..., 9001-10000 4 GiB. After k full
 * steps the upload holds 1000 × 8 MiB × (2^k - 1); at the 10,000-part limit
 * (k = 10) that is 1000 × 8 MiB × 1023 ≈ 7.8 TiB, above S3's 5 TiB object
 * limit, and the largest part (4 GiB) stays under S3's 5 GiB part limit.
 *
 * Memory: put holds at most queueSize parts in flight plus the one filling,
 * so about (queueSize + 1) × the current part size: 24 MiB (queueSize 2) for
 * objects up to 7.8 GiB, 48 MiB up to 23 GiB, 96 MiB up to 55 GiB, 192 MiB up
 * to 117 GiB; it reaches gigabytes only for objects of terabytes, the price of
 * staying under 10,000 parts without knowing the size.
 */
export function partSize(partNumber: number): number {
  return FIRST_PART_SIZE * 2 ** Math.floor((partNumber - 1) / PARTS_PER_DOUBLING);
}

export interface S3StorageOptions {
  /** e.g. http://127.0.0.1:7480; omitted for AWS itself. */
  endpoint?: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing '/'; may be ''. */
  prefix: string;
  /** Path-style URLs (http://host/bucket/key); default true when an endpoint is given. */
  forcePathStyle?: boolean;
  /** Parts uploaded at once by one put (default 2). */
  queueSize?: number;
  /** Tries per buffered upload request, by the SDK (default 4). */
  uploadAttempts?: number;
  /** Keys per ListObjectsV2 page (default 1000, S3's maximum). */
  listPageSize?: number;
  /** Time limit of a stat/list page/delete request and of opening a get (default 60 s). */
  requestTimeoutMs?: number;
}

/** Environment-like settings read by S3Storage.fromUrl (process.env fits). */
export type S3Env = Readonly<Record<string, string | undefined>>;

/** Parses s3://BUCKET[/PREFIX] into bucket and prefix (no leading/trailing '/'). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  if (!url.startsWith('s3://')) throw new Error('S3 storage URL must look like s3://BUCKET/PREFIX');
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const authority = slash === -1 ? rest : rest.slice(0, slash);
  // The URL is not echoed here: it might hold credentials.
  if (authority.includes('@') || authority.includes(':')) {
    throw new Error('S3 storage URL must not hold credentials or a port; pass the keys and endpoint as S3_ACCESS_KEY, S3_SECRET_KEY and S3_ENDPOINT');
  }
  if (rest.includes('?') || rest.includes('#')) throw new Error(`S3 storage URL must not have a query or fragment: ${url}`);
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{1,62}$/.test(authority)) throw new Error(`S3 storage URL has an invalid bucket name: ${url}`);
  const prefix = normalizePrefix(slash === -1 ? '' : rest.slice(slash + 1));
  return { bucket: authority, prefix };
}

function normalizePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+|\/+$/g, '');
  if (p !== '') {
    try {
      assertSafeKey(p);
    } catch {
      throw new Error(`unsafe S3 key prefix: ${JSON.stringify(prefix)}`);
    }
  }
  return p;
}

/** Same rule as LocalStorage: the part up to the last '/' must be a safe key. */
function assertSafeListPrefix(prefix: string): void {
  const cut = prefix.lastIndexOf('/');
  if (cut > 0) assertSafeKey(prefix.slice(0, cut));
  if (cut === 0 || prefix.includes('\0') || prefix.includes('\\')) throw new Error(`unsafe storage prefix: ${JSON.stringify(prefix)}`);
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk);
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError('storage put body must yield bytes');
}

function md5(data: Buffer): string {
  return createHash('md5').update(data).digest('base64');
}

function cancelled(signal: AbortSignal, key: string): AppError {
  const reason: unknown = signal.reason;
  if (reason instanceof AppError) return reason;
  return new AppError('cancelled', `Writing ${key} was cancelled.`, undefined, { cause: reason });
}

interface SdkError {
  name?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
}

function statusOf(err: unknown): number | undefined {
  return (err as SdkError | null)?.$metadata?.httpStatusCode;
}

function nameOf(err: unknown): string {
  return (err as SdkError | null)?.name ?? '';
}

function isNotFound(err: unknown): boolean {
  const name = nameOf(err);
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(err) === 404;
}

const THROTTLING = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'RequestThrottled', 'ServiceUnavailable', 'InternalError', 'TooManyRequestsException']);
const NETWORK = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED']);

export class S3Storage implements Storage {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  /** The client for single requests (no SDK retries); exposed for admin tasks and tests. */
  readonly client: S3Client;
  /** The client for buffered uploads (SDK retries); exposed for tests. */
  readonly uploadClient: S3Client;
  private readonly where: string;
  private readonly queueSize: number;
  private readonly listPageSize: number;
  private readonly requestTimeoutMs: number;
  /** Set once the bucket has answered; HEAD's bodiless 404 needs it to tell a missing key from a missing bucket. */
  private bucketSeen = false;

  constructor(options: S3StorageOptions) {
    if (!options.bucket) throw new Error('S3 storage needs a bucket');
    if (!options.region) throw new Error('S3 storage needs a region');
    if (!options.accessKeyId || !options.secretAccessKey) throw new Error('S3 storage needs an access key and a secret key');
    let where = `AWS S3 (${options.region})`;
    if (options.endpoint !== undefined) {
      let url: URL;
      try {
        url = new URL(options.endpoint);
      } catch {
        throw new Error('S3 endpoint is not a valid URL');
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('S3 endpoint must be an http(s) URL');
      if (url.username || url.password) throw new Error('S3 endpoint must not hold credentials');
      where = url.origin;
    }
    this.bucket = options.bucket;
    this.prefix = normalizePrefix(options.prefix);
    this.where = where;
    this.description = `s3://${this.bucket}/${this.prefix}${this.prefix ? '/' : ''} at ${where}`;
    this.queueSize = Math.max(1, options.queueSize ?? 2);
    this.listPageSize = Math.min(1000, Math.max(1, options.listPageSize ?? 1000));
    this.requestTimeoutMs = options.requestTimeoutMs ?? 60_000;

    const base: S3ClientConfig = {
      region: options.region,
      credentials: {
        accessKeyId: options.accessKeyId,
        secretAccessKey: options.secretAccessKey,
        ...(options.sessionToken ? { sessionToken: options.sessionToken } : {}),
      },
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      // Ceph 16 answers 411 to the SDK's default aws-chunked CRC32 uploads;
      // integrity comes from Content-MD5 on every part instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
    };
    this.client = new S3Client({ ...base, maxAttempts: 1, requestHandler: { connectionTimeout: 10_000 } });
    this.uploadClient = new S3Client({
      ...base,
      maxAttempts: Math.max(1, options.uploadAttempts ?? 4),
      retryMode: 'standard',
      // A server that stops answering mid-part fails that try (and the SDK resends the part).
      requestHandler: { connectionTimeout: 10_000, socketTimeout: 120_000 },
    });
  }

  /** Builds storage from s3://BUCKET/PREFIX and S3_* (or AWS_*) settings. */
  static fromUrl(url: string, env: S3Env = process.env, overrides: Partial<S3StorageOptions> = {}): S3Storage {
    const { bucket, prefix } = parseS3Url(url);
    const accessKeyId = env.S3_ACCESS_KEY ?? env.AWS_ACCESS_KEY_ID;
    const secretAccessKey = env.S3_SECRET_KEY ?? env.AWS_SECRET_ACCESS_KEY;
    if (!accessKeyId || !secretAccessKey) throw new Error('S3 storage needs S3_ACCESS_KEY and S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)');
    const endpoint = env.S3_ENDPOINT ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
    const pathStyle = env.S3_FORCE_PATH_STYLE;
    let forcePathStyle: boolean | undefined;
    if (pathStyle !== undefined && pathStyle !== '') {
      if (!/^(true|false|1|0)$/i.test(pathStyle)) throw new Error('S3_FORCE_PATH_STYLE must be true or false');
      forcePathStyle = /^(true|1)$/i.test(pathStyle);
    }
    const sessionToken = env.S3_SESSION_TOKEN ?? env.AWS_SESSION_TOKEN;
    return new S3Storage({
      region: env.S3_REGION ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1',
      accessKeyId,
      secretAccessKey,
      bucket,
      prefix,
      ...(endpoint ? { endpoint } : {}),
      ...(forcePathStyle !== undefined ? { forcePathStyle } : {}),
      ...(sessionToken ? { sessionToken } : {}),
      ...overrides,
    });
  }

  /** Closes the clients' sockets. */
  destroy(): void {
    this.client.destroy();
    this.uploadClient.destroy();
  }

  private objectKey(key: string): string {
    assertSafeKey(key);
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  /** Maps an SDK or network error to an AppError whose message says what to do. */
  private failure(action: string, key: string, err: unknown): AppError {
    if (err instanceof AppError) return err;
    const name = nameOf(err);
    const status = statusOf(err);
    const errno = (err as SdkError | null)?.code;
    const bucket = `bucket "${this.bucket}" at ${this.where}`;
    const permanent = (message: string) => storageFailure(message, { retryable: false, cause: err });
    const transient = (message: string) => storageFailure(message, { retryable: true, cause: err });

    if (name === 'NoSuchBucket') return permanent(`S3 ${bucket} does not exist: create the bucket or fix the bucket name in the storage configuration.`);
    if (name === 'InvalidAccessKeyId') return permanent(`S3 at ${this.where} does not know the access key: check the access key ID in the storage configuration.`);
    if (name === 'SignatureDoesNotMatch') {
      return permanent(`S3 at ${this.where} rejected the request signature: the secret key does not match the access key; check the secret key in the storage configuration.`);
    }
    if (name === 'AccessDenied') {
      return permanent(`S3 denied ${action} ${key} in ${bucket}: check that the access key may read, write, list and delete objects in the bucket.`);
    }
    if (status === 403) {
      // HEAD answers have no body, so there is no error code to tell these apart.
      return permanent(`S3 refused ${action} ${key} in ${bucket} (HTTP 403): check the access key, the secret key, and that the key may use the bucket.`);
    }
    if (name === 'AuthorizationHeaderMalformed' || name === 'PermanentRedirect' || status === 301) {
      return permanent(`S3 ${bucket} is in another region than the configured one: set the bucket's region in the storage configuration.`);
    }
    if (name === 'NoSuchUpload') return transient(`S3 lost the multipart upload while ${action} ${key} in ${bucket}; write it again.`);
    if ((status !== undefined && (status >= 500 || status === 429)) || THROTTLING.has(name)) {
      return transient(`S3 ${bucket} failed ${action} ${key} (HTTP ${status ?? '?'} ${name}); this is usually temporary, try again later.`);
    }
    if (status !== undefined && status >= 400) return permanent(`S3 ${bucket} refused ${action} ${key} (HTTP ${status} ${name}).`);
    if (name === 'TimeoutError' || name === 'AbortError') return transient(`S3 at ${this.where} did not answer in time while ${action} ${key}; check the endpoint and network.`);
    if (errno && NETWORK.has(errno)) return transient(`Cannot reach S3 at ${this.where} (${errno}) while ${action} ${key}; check the endpoint and that the server is running.`);
    return transient(`S3 ${bucket} failed ${action} ${key}${name ? ` (${name})` : ''}.`);
  }

  /** Runs one control request with a time limit. */
  private async timed<T>(run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const signal = AbortSignal.timeout(this.requestTimeoutMs);
    try {
      return await run(signal);
    } catch (err) {
      if (signal.aborted) throw Object.assign(new Error(`timed out after ${this.requestTimeoutMs} ms`), { name: 'TimeoutError', cause: err });
      throw err;
    }
  }

  /** After a bodiless 404 from HEAD: is it the key or the whole bucket that is missing? */
  private async ensureBucket(action: string, key: string): Promise<void> {
    if (this.bucketSeen) return;
    try {
      await this.timed((abortSignal) => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal }));
    } catch (err) {
      if (statusOf(err) === 404 || nameOf(err) === 'NotFound') {
        throw this.failure(action, key, Object.assign(new Error('no such bucket'), { name: 'NoSuchBucket', cause: err }));
      }
      throw this.failure(action, key, err);
    }
    this.bucketSeen = true;
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const { signal } = options;
    let objectKey: string;
    try {
      objectKey = this.objectKey(key);
      if (signal?.aborted) throw cancelled(signal, key);
    } catch (err) {
      // A refused body is destroyed, so whatever produces it stops too.
      body.destroy();
      throw err;
    }
    // A torn-down body may still emit its error after put has settled.
    body.on('error', () => undefined);

    // Aborts every request of this put: on the caller's signal or on the first failed part.
    const inner = new AbortController();
    let partFailure: unknown;
    let tornDown = false;
    let bodyError: { err: unknown } | undefined;
    const onAbort = (): void => {
      inner.abort();
      body.destroy();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    let uploadId: string | undefined;
    const parts: CompletedPart[] = [];
    const inflight = new Set<Promise<void>>();
    const Bucket = this.bucket;
    const Key = objectKey;

    const startPart = async (partNumber: number, data: Buffer): Promise<void> => {
      if (partNumber > MAX_PARTS) throw storageFailure(`The object ${key} is larger than S3 multipart uploads allow (${MAX_PARTS} parts).`, { retryable: false });
      if (uploadId === undefined) {
        const created = await this.uploadClient.send(new CreateMultipartUploadCommand({ Bucket, Key }), { abortSignal: inner.signal });
        if (!created.UploadId) throw storageFailure(`S3 at ${this.where} started no multipart upload for ${key}.`, { retryable: true });
        uploadId = created.UploadId;
      }
      // Backpressure: no more body is read until a slot is free.
      while (inflight.size >= this.queueSize) await Promise.race(inflight);
      if (partFailure !== undefined) throw partFailure;
      const UploadId = uploadId;
      const p: Promise<void> = this.uploadClient
        .send(
          new UploadPartCommand({ Bucket, Key, UploadId, PartNumber: partNumber, Body: data, ContentLength: data.length, ContentMD5: md5(data) }),
          { abortSignal: inner.signal },
        )
        .then(
          (out) => {
            if (!out.ETag) throw storageFailure(`S3 at ${this.where} returned no ETag for part ${partNumber} of ${key}.`, { retryable: true });
            parts[partNumber - 1] = { PartNumber: partNumber, ETag: out.ETag };
          },
        )
        .catch((err: unknown) => {
          if (partFailure === undefined && !tornDown) {
            partFailure = err;
            // Stop the other parts and the body at once.
            inner.abort();
            body.destroy();
          }
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
    };

    try {
      let chunks: Buffer[] = [];
      let filled = 0;
      let partNumber = 1;
      let target = partSize(1);
      let size = 0;
      const iterator = body[Symbol.asyncIterator]();
      for (;;) {
        let next: IteratorResult<unknown>;
        try {
          next = await iterator.next();
        } catch (err) {
          bodyError = { err };
          throw err;
        }
        if (next.done) break;
        let chunk = toBuffer(next.value);
        size += chunk.length;
        while (chunk.length > 0) {
          if (filled === target) {
            // The part is full and more data follows, so it is not the last one.
            await startPart(partNumber, Buffer.concat(chunks, filled));
            chunks = [];
            filled = 0;
            partNumber++;
            target = partSize(partNumber);
          }
          const take = Math.min(chunk.length, target - filled);
          chunks.push(take === chunk.length ? chunk : chunk.subarray(0, take));
          filled += take;
          chunk = chunk.subarray(take);
        }
      }
      const last = Buffer.concat(chunks, filled);
      chunks = [];
      if (signal?.aborted) throw cancelled(signal, key);

      if (uploadId === undefined) {
        // One part or less: a single PutObject, which is atomic too.
        await this.uploadClient.send(
          new PutObjectCommand({ Bucket, Key, Body: last, ContentLength: last.length, ContentMD5: md5(last) }),
          { abortSignal: inner.signal },
        );
      } else {
        await startPart(partNumber, last);
        while (inflight.size > 0) await Promise.race(inflight);
        if (partFailure !== undefined) throw partFailure;
        if (signal?.aborted) throw cancelled(signal, key);
        // The commit point. It is not abortable: aborting a request the server
        // may already have carried out would leave the outcome unknown.
        await this.uploadClient.send(
          new CompleteMultipartUploadCommand({ Bucket, Key, UploadId: uploadId, MultipartUpload: { Parts: parts } }),
        );
      }
      this.bucketSeen = true;
      return { size };
    } catch (err) {
      // What failed first decides the error: parts aborted below fail too, as a consequence.
      const firstPartFailure = partFailure;
      tornDown = true;
      inner.abort();
      if (!body.destroyed) body.destroy();
      // Every part request must have ended before the abort, or a part could land after it.
      await Promise.allSettled([...inflight]);
      if (uploadId !== undefined) {
        // Best effort: if this fails too, a lifecycle rule has to clean up.
        await this.uploadClient.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId: uploadId })).catch(() => undefined);
      }
      if (signal?.aborted) throw cancelled(signal, key);
      if (firstPartFailure !== undefined) throw this.failure('writing', key, firstPartFailure);
      // The body's own error goes back unchanged: it is the caller's root cause.
      if (bodyError !== undefined) throw bodyError.err;
      throw this.failure('writing', key, err);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const Key = this.objectKey(key);
    let Range: string | undefined;
    if (range) {
      const { start, end } = range;
      if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
        throw new RangeError(`invalid byte range ${start}-${end ?? ''} for ${key}`);
      }
      Range = `bytes=${start}-${end ?? ''}`;
    }
    // The time limit covers opening only: once bytes flow, the consumer sets the pace.
    const opening = new AbortController();
    const timer = setTimeout(() => opening.abort(), this.requestTimeoutMs);
    let source: Readable;
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, ...(Range ? { Range } : {}) }), {
        abortSignal: opening.signal,
      });
      if (!(out.Body instanceof Readable)) throw new Error('S3 returned no body stream');
      source = out.Body;
    } catch (err) {
      if (nameOf(err) === 'InvalidRange' || statusOf(err) === 416) {
        throw new RangeError(`byte range starts at ${range?.start ?? 0}, past the end of ${key}`);
      }
      if (isNotFound(err)) throw new AppError('storage_not_found', `The object ${key} does not exist in storage.`);
      throw this.failure('reading', key, opening.signal.aborted ? Object.assign(new Error('timed out'), { name: 'TimeoutError', cause: err }) : err);
    } finally {
      clearTimeout(timer);
    }
    this.bucketSeen = true;
    // A connection that breaks mid-stream surfaces as a storage_failed AppError, not a raw socket error.
    const out = new PassThrough({ highWaterMark: 64 * 1024 });
    source.on('error', (err) => out.destroy(this.failure('reading', key, err)));
    out.on('close', () => {
      if (!source.destroyed) source.destroy();
    });
    source.pipe(out);
    return out;
  }

  async stat(key: string): Promise<StoredObject | null> {
    const Key = this.objectKey(key);
    try {
      const out = await this.timed((abortSignal) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), { abortSignal }));
      this.bucketSeen = true;
      return { key, size: out.ContentLength ?? 0, modified: out.LastModified ?? new Date(0) };
    } catch (err) {
      if (isNotFound(err)) {
        await this.ensureBucket('reading', key);
        return null;
      }
      throw this.failure('reading', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    assertSafeListPrefix(prefix);
    const base = this.prefix ? `${this.prefix}/` : '';
    const Prefix = base + prefix;
    let ContinuationToken: string | undefined;
    do {
      let out;
      try {
        out = await this.timed((abortSignal) =>
          this.client.send(
            new ListObjectsV2Command({
              Bucket: this.bucket,
              MaxKeys: this.listPageSize,
              ...(Prefix ? { Prefix } : {}),
              ...(ContinuationToken ? { ContinuationToken } : {}),
            }),
            { abortSignal },
          ),
        );
      } catch (err) {
        throw this.failure('listing', prefix || '/', err);
      }
      this.bucketSeen = true;
      for (const obj of out.Contents ?? []) {
        if (obj.Key === undefined || !obj.Key.startsWith(base)) continue;
        yield { key: obj.Key.slice(base.length), size: obj.Size ?? 0, modified: obj.LastModified ?? new Date(0) };
      }
      ContinuationToken = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  async delete(key: string): Promise<void> {
    const Key = this.objectKey(key);
    try {
      // S3 answers 204 for a missing key too, so delete is idempotent by nature.
      await this.timed((abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }), { abortSignal }));
      this.bucketSeen = true;
    } catch (err) {
      if (isNotFound(err)) {
        await this.ensureBucket('deleting', key);
        return;
      }
      throw this.failure('deleting', key, err);
    }
  }

  /** A URL that GETs the object without credentials until it expires (1 s to 7 days). */
  async presignGet(key: string, expiresInSeconds: number): Promise<string> {
    const Key = this.objectKey(key);
    if (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > 604_800) {
      throw new RangeError('presigned URL expiry must be 1 to 604800 seconds');
    }
    try {
      return await getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key }), { expiresIn: expiresInSeconds });
    } catch (err) {
      throw this.failure('signing a link to', key, err);
    }
  }
}
