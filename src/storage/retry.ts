// withRetries: a Storage wrapper that retries transient failures with
// exponential backoff and jitter. Retrying lives here, not inside backends, so
// every backend gets the same policy and backends stay simple.
//
// What is retried, and what honestly cannot be:
// - stat, delete: the whole call.
// - get: only opening the stream. Once bytes flow, a failure mid-stream is the
//   consumer's to handle (it may call get again with a range).
// - list: a failed listing restarts from the beginning and skips the keys it
//   already yielded (lists are in key order), so the consumer sees each key once.
// - put: NOT retried in general. The body is a stream that the failed attempt
//   has consumed; replaying it is impossible. A put is retried only when the
//   backend marks the error with bodyUntouched (nothing was read) and the body
//   is indeed unread. Backends make their own puts resilient where they can
//   replay bytes: S3Storage buffers each multipart part and lets the AWS SDK's
//   standard retry resend that buffer (see s3.ts).
//
// Errors retrying cannot fix fail at once: storage_not_found, cancelled, any
// AppError other than storage_failed, storage_failed marked not retryable
// (access denied, bad credentials, missing bucket) and plain Errors (unsafe
// keys, bad ranges).
import type { Readable } from 'node:stream';
import { AppError } from '../errors/index.ts';
import type { ByteRange, PutOptions, Storage, StoredObject } from './storage.ts';

interface FailureMarks {
  retryable?: boolean;
  bodyUntouched?: boolean;
}

/**
 * A storage_failed AppError that says whether retrying may help, and (for put)
 * whether the body was left unread. The marks are non-enumerable, so they never
 * show in API error details.
 */
export function storageFailure(message: string, marks: FailureMarks & { cause?: unknown }): AppError {
  const err = new AppError('storage_failed', message, undefined, marks.cause === undefined ? undefined : { cause: marks.cause });
  return markFailure(err, marks);
}

/** Adds retry marks to an existing error (non-enumerable). */
export function markFailure<E extends Error>(err: E, marks: FailureMarks): E {
  if (marks.retryable !== undefined) Object.defineProperty(err, 'retryable', { value: marks.retryable, configurable: true });
  if (marks.bodyUntouched !== undefined) Object.defineProperty(err, 'bodyUntouched', { value: marks.bodyUntouched, configurable: true });
  return err;
}

function marks(err: unknown): FailureMarks {
  return typeof err === 'object' && err !== null ? (err as FailureMarks) : {};
}

// Raw network errors of a backend that does not wrap its errors.
const TRANSIENT_ERRNO = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH']);

/** The default policy: only failures that another attempt may fix. */
export function isRetryableStorageError(err: unknown): boolean {
  if (err instanceof AppError) return err.code === 'storage_failed' && marks(err).retryable !== false;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && TRANSIENT_ERRNO.has(code);
}

export interface RetryOptions {
  /** Tries in all, the first included (default 5). */
  attempts?: number;
  /** Backoff before the second try (default 200 ms); doubles each time. */
  baseDelayMs?: number;
  /** Upper bound of one backoff (default 5000 ms). */
  maxDelayMs?: number;
  isRetryable?: (err: unknown) => boolean;
  /** Injected by tests; defaults to a timer. */
  sleep?: (ms: number) => Promise<void>;
  /** Injected by tests; defaults to Math.random. */
  random?: () => number;
  /** Called before each backoff, e.g. to log; err messages are ours and hold no secrets. */
  onRetry?: (info: { operation: string; key: string; attempt: number; delayMs: number; error: unknown }) => void;
}

/** Compares keys by their UTF-8 bytes, the order lists come in. */
function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Wraps storage so transient failures are retried; see the file comment for what is and is not retried. */
export function withRetries(storage: Storage, options: RetryOptions = {}): Storage {
  const attempts = Math.max(1, Math.floor(options.attempts ?? 5));
  const baseDelayMs = options.baseDelayMs ?? 200;
  const maxDelayMs = options.maxDelayMs ?? 5000;
  const isRetryable = options.isRetryable ?? isRetryableStorageError;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const random = options.random ?? Math.random;

  // "Equal jitter": half the exponential delay is fixed, so the backoff really
  // grows, and half is random, so many clients failing together spread out.
  const delayFor = (failures: number): number => {
    const exp = Math.min(maxDelayMs, baseDelayMs * 2 ** (failures - 1));
    return Math.round(exp / 2 + random() * (exp / 2));
  };

  const backoff = async (operation: string, key: string, failures: number, error: unknown): Promise<void> => {
    const delayMs = delayFor(failures);
    options.onRetry?.({ operation, key, attempt: failures + 1, delayMs, error });
    await sleep(delayMs);
  };

  async function retry<T>(operation: string, key: string, fn: () => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      try {
        return await fn();
      } catch (err) {
        if (failures >= attempts || !isRetryable(err)) throw err;
        await backoff(operation, key, failures, err);
      }
    }
  }

  const wrapped: Storage = {
    description: storage.description,

    async put(key: string, body: Readable, putOptions?: PutOptions): Promise<{ size: number }> {
      for (let failures = 1; ; failures++) {
        try {
          return await storage.put(key, body, putOptions);
        } catch (err) {
          // Only a body nobody has read can be offered again.
          const replayable = marks(err).bodyUntouched === true && !body.destroyed && !body.readableDidRead;
          if (failures >= attempts || !replayable || putOptions?.signal?.aborted || !isRetryable(err)) throw err;
          await backoff('put', key, failures, err);
        }
      }
    },

    get(key: string, range?: ByteRange): Promise<Readable> {
      return retry('get', key, () => storage.get(key, range));
    },

    stat(key: string): Promise<StoredObject | null> {
      return retry('stat', key, () => storage.stat(key));
    },

    async *list(prefix: string): AsyncIterable<StoredObject> {
      let last: string | undefined;
      // Counts failures since the last key yielded: a long listing over a
      // flaky link may fail more than `attempts` times in all while still
      // making progress.
      let failures = 0;
      for (;;) {
        try {
          for await (const obj of storage.list(prefix)) {
            if (last !== undefined && compareKeys(obj.key, last) <= 0) continue;
            last = obj.key;
            failures = 0;
            yield obj;
          }
          return;
        } catch (err) {
          failures++;
          if (failures >= attempts || !isRetryable(err)) throw err;
          await backoff('list', prefix, failures, err);
        }
      }
    },

    delete(key: string): Promise<void> {
      return retry('delete', key, () => storage.delete(key));
    },
  };

  // Optional capabilities pass through, so wrapping loses none.
  const presign = storage.presignGet?.bind(storage);
  if (presign) {
    wrapped.presignGet = (key: string, expiresInSeconds: number) => retry('presign', key, () => presign(key, expiresInSeconds));
  }
  return wrapped;
}
