// The Storage interface: where manifests and artifacts live. Every backend
// (local now, S3 later) passes the shared contract suite in contract.ts.
// Keys are relative, '/'-separated, without '..' or leading '/'.
import type { Readable } from 'node:stream';

export interface StoredObject {
  key: string;
  size: number;
  modified: Date;
}

export interface PutOptions {
  /** Aborting makes put reject and leaves nothing visible under the key. */
  signal?: AbortSignal;
}

export interface ByteRange {
  /** first byte, inclusive */
  start: number;
  /** last byte, inclusive; omitted means to the end */
  end?: number;
}

export interface Storage {
  /** A short description for logs, without secrets, e.g. "local:/var/lib/backvault/storage". */
  readonly description: string;

  /**
   * Writes the whole body under key. The object becomes visible under key only
   * once every byte is durably written (local: temp file, fsync, rename); if
   * the body errors, the signal aborts or the write fails, put rejects and
   * nothing is visible under key (an older object under key stays as it was).
   * Resolves with the number of bytes written.
   */
  put(key: string, body: Readable, options?: PutOptions): Promise<{ size: number }>;

  /**
   * Opens a stream of the object's bytes, or of a byte range of it.
   * Rejects with AppError storage_not_found when the key does not exist.
   */
  get(key: string, range?: ByteRange): Promise<Readable>;

  /** Size and time of an object, or null when it does not exist. */
  stat(key: string): Promise<StoredObject | null>;

  /** Every object whose key starts with prefix, in lexical order of key. */
  list(prefix: string): AsyncIterable<StoredObject>;

  /** Removes the object; succeeds when it does not exist. */
  delete(key: string): Promise<void>;

  /**
   * Optional capability (S3): a URL that lets anyone holding it GET the
   * object, without credentials, until expiresInSeconds have passed. Backends
   * that cannot (local) leave it undefined; callers then stream through the server.
   */
  presignGet?(key: string, expiresInSeconds: number): Promise<string>;
}

/** Throws unless key is a safe relative storage key. */
export function assertSafeKey(key: string): void {
  if (
    key.length === 0 ||
    key.length > 1024 ||
    key.startsWith('/') ||
    key.includes('\\') ||
    key.includes('\0') ||
    key.split('/').some((part) => part === '' || part === '.' || part === '..')
  ) {
    throw new Error(`unsafe storage key: ${JSON.stringify(key)}`);
  }
}

/** Deletes every object under prefix. */
export async function deletePrefix(storage: Storage, prefix: string): Promise<number> {
  let n = 0;
  const keys: string[] = [];
  for await (const obj of storage.list(prefix)) keys.push(obj.key);
  for (const key of keys) {
    await storage.delete(key);
    n++;
  }
  return n;
}
