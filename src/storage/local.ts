// Storage in a local directory: one file per key. Writes go to <root>/.tmp
// (same file system as the objects, so rename is atomic), are fsynced, then
// renamed into place and the directory fsynced: an object is either whole and
// durable or absent. .tmp is never a key.
//
// Local limitation: a key cannot also be a "directory" of other keys (put "a"
// and "a/b" both): the second put fails with storage_failed.
import { mkdirSync } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, opendir, readdir, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AppError } from '../errors/index.ts';
import { fsyncDir } from '../platform/fs.ts';
import { LendingFileReader } from '../platform/lending-reader.ts';
import { assertSafeKey, type ByteRange, type PutOptions, type Storage, type StoredObject } from './storage.ts';

const TMP = '.tmp';

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function isMissing(err: unknown): boolean {
  const code = errno(err);
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}

function failed(action: string, key: string, err: unknown): AppError {
  if (err instanceof AppError) return err;
  const code = errno(err);
  return new AppError('storage_failed', `Local storage failed ${action} ${key}${code ? ` (${code})` : ''}.`, undefined, { cause: err });
}

/** Compares keys by their UTF-8 bytes, the order S3 lists in. */
function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** writev until every byte is written: a write may be partial. */
async function writeAll(fh: FileHandle, buffers: Buffer[]): Promise<number> {
  let total = 0;
  for (const b of buffers) total += b.length;
  let left = buffers;
  let done = 0;
  while (done < total) {
    const { bytesWritten } = await fh.writev(left);
    done += bytesWritten;
    // Drop what was written; cut into the first buffer not written whole.
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of left) {
      if (skip >= b.length) skip -= b.length;
      else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    left = rest;
  }
  return total;
}

function abortError(signal: AbortSignal, key: string): AppError {
  const reason: unknown = signal.reason;
  if (reason instanceof AppError) return reason;
  return new AppError('cancelled', `Writing ${key} was cancelled.`, undefined, { cause: reason });
}

export class LocalStorage implements Storage {
  readonly description: string;
  private readonly root: string;
  private readonly tmpDir: string;

  constructor(root: string) {
    this.root = resolve(root);
    this.tmpDir = join(this.root, TMP);
    this.description = `local:${this.root}`;
    // Once at start-up, so a synchronous mkdir is fine and the constructor stays simple.
    mkdirSync(this.tmpDir, { recursive: true });
  }

  private pathOf(key: string): string {
    assertSafeKey(key);
    if (key === TMP || key.startsWith(`${TMP}/`)) throw new Error(`unsafe storage key: ${JSON.stringify(key)} (reserved)`);
    return join(this.root, ...key.split('/'));
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    const { signal } = options;
    let target: string;
    try {
      target = this.pathOf(key);
      if (signal?.aborted) throw abortError(signal, key);
    } catch (err) {
      // A refused body is destroyed, so whatever produces it stops too.
      body.destroy();
      throw err;
    }
    // Which stream failed first tells whether the body or the disk failed;
    // the body's own error is the caller's and goes back unchanged.
    let origin: { from: 'body' | 'disk'; err: unknown } | undefined;
    const onBodyError = (err: unknown): void => {
      origin ??= { from: 'body', err };
    };
    body.on('error', onBodyError);
    // The key's base name (cut short to stay within NAME_MAX) helps whoever looks into .tmp.
    const tmp = join(this.tmpDir, `${randomBytes(8).toString('hex')}-${(key.split('/').pop() ?? '').slice(0, 64)}`);
    try {
      await mkdir(this.tmpDir, { recursive: true });
      const fh = await open(tmp, 'wx', 0o644);
      let size = 0;
      try {
        // A plain Writable over the handle (not fh.createWriteStream, whose
        // handle cannot be closed while the stream holds it); final fsyncs,
        // so a resolved pipeline means the bytes are on disk.
        const out = new Writable({
          highWaterMark: 256 * 1024,
          writev(chunks, cb) {
            const buffers = chunks.map((c) => c.chunk as Buffer);
            writeAll(fh, buffers).then((n) => {
              size += n;
              cb();
            }, cb);
          },
          final(cb) {
            fh.sync().then(() => cb(), cb);
          },
        });
        out.once('error', (err) => {
          origin ??= { from: 'disk', err };
        });
        await pipeline(body, out, signal ? { signal } : {});
      } finally {
        await fh.close();
      }
      if (signal?.aborted) throw abortError(signal, key);
      await this.moveIntoPlace(tmp, target);
      body.off('error', onBodyError);
      return { size };
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      if (!body.destroyed) body.destroy();
      if (signal?.aborted) throw abortError(signal, key);
      if (origin?.from === 'body') throw origin.err;
      // The listener stays: a torn-down body may still emit its error later.
      throw failed('writing', key, err);
    }
  }

  private async moveIntoPlace(tmp: string, target: string): Promise<void> {
    const dir = dirname(target);
    // A concurrent delete may remove a just-created empty parent before the
    // rename; recreate it and try again.
    for (let attempt = 1; ; attempt++) {
      const created = await mkdir(dir, { recursive: true });
      try {
        await rename(tmp, target);
      } catch (err) {
        if (errno(err) === 'ENOENT' && attempt < 5) continue;
        throw err;
      }
      // New directories are durable only once their parents are synced too.
      if (created !== undefined) {
        for (let d = dir; ; d = dirname(d)) {
          if (d !== dir) await fsyncDir(d);
          if (d === dirname(created) || d === this.root) break;
        }
      }
      await fsyncDir(dir);
      return;
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const path = this.pathOf(key);
    if (range) {
      const { start, end } = range;
      if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
        throw new RangeError(`invalid byte range ${start}-${end ?? ''} for ${key}`);
      }
    }
    let fh;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      if (isMissing(err)) throw new AppError('storage_not_found', `The object ${key} does not exist in storage.`);
      throw failed('reading', key, err);
    }
    try {
      const info = await fh.stat();
      if (!info.isFile()) throw new AppError('storage_not_found', `The object ${key} does not exist in storage.`);
      if (range && range.start >= info.size) {
        throw new RangeError(`byte range starts at ${range.start}, past the end of ${key} (${info.size} bytes)`);
      }
      // An end past the last byte is clamped, as HTTP and S3 do. Chunks are lent (lending-reader.ts).
      return range ? new LendingFileReader(fh, range.start, Math.min(range.end ?? Infinity, info.size - 1)) : new LendingFileReader(fh);
    } catch (err) {
      await fh.close();
      if (err instanceof RangeError) throw err;
      if (isMissing(err)) throw new AppError('storage_not_found', `The object ${key} does not exist in storage.`);
      throw failed('reading', key, err);
    }
  }

  async stat(key: string): Promise<StoredObject | null> {
    const path = this.pathOf(key);
    try {
      const info = await stat(path);
      return info.isFile() ? { key, size: info.size, modified: info.mtime } : null;
    } catch (err) {
      if (isMissing(err)) return null;
      throw failed('reading', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    // Start in the deepest directory the prefix names whole; the rest of the
    // prefix filters names in it.
    const cut = prefix.lastIndexOf('/');
    const dirKey = cut === -1 ? '' : prefix.slice(0, cut);
    if (dirKey !== '') this.pathOf(dirKey);
    if (prefix.startsWith('/') || prefix.includes('\0') || prefix.includes('\\')) throw new Error(`unsafe storage prefix: ${JSON.stringify(prefix)}`);
    yield* this.walk(dirKey, prefix);
  }

  private async *walk(dirKey: string, prefix: string): AsyncGenerator<StoredObject> {
    const dir = dirKey === '' ? this.root : join(this.root, ...dirKey.split('/'));
    let names;
    try {
      names = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw failed('listing', dirKey || '/', err);
    }
    // Sorting a directory as "name/" makes a depth-first walk yield keys in
    // lexical order: "a-b" < "a/x" because '-' < '/'.
    const entries = names
      .filter((d) => (d.isFile() || d.isDirectory()) && !(dirKey === '' && d.name === TMP))
      .map((d) => ({ key: dirKey === '' ? d.name : `${dirKey}/${d.name}`, isDir: d.isDirectory() }))
      .map((e) => ({ ...e, sortKey: e.isDir ? `${e.key}/` : e.key }))
      .sort((a, b) => compareKeys(a.sortKey, b.sortKey));
    for (const e of entries) {
      if (e.isDir) {
        // Descend only where keys can start with prefix.
        if (e.sortKey.startsWith(prefix) || prefix.startsWith(e.sortKey)) yield* this.walk(e.key, prefix);
      } else if (e.key.startsWith(prefix)) {
        try {
          const info = await lstat(join(this.root, ...e.key.split('/')));
          if (info.isFile()) yield { key: e.key, size: info.size, modified: info.mtime };
        } catch (err) {
          if (!isMissing(err)) throw failed('listing', e.key, err);
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await unlink(path);
    } catch (err) {
      // A directory is not an object, so there is nothing to delete.
      if (isMissing(err) || errno(err) === 'EPERM') return;
      throw failed('deleting', key, err);
    }
    await fsyncDir(dirname(path)).catch(() => undefined);
    // Remove parents left empty, up to (not including) the root. rmdir refuses
    // a non-empty directory, so a concurrent put into it is safe.
    for (let dir = dirname(path); dir !== this.root && dir.startsWith(this.root); dir = dirname(dir)) {
      try {
        await rmdir(dir);
      } catch {
        break;
      }
    }
  }

  /**
   * Removes what crashed puts left in .tmp. Call it only when no put is
   * running (at server start). Resolves with the number of entries removed.
   */
  async cleanupTemp(): Promise<number> {
    let n = 0;
    await mkdir(this.tmpDir, { recursive: true });
    const dir = await opendir(this.tmpDir);
    for await (const d of dir) {
      await rm(join(this.tmpDir, d.name), { recursive: true, force: true });
      n++;
    }
    return n;
  }
}
