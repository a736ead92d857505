// Packs a directory tree into a tar stream (tar-stream writes ustar, and pax
// headers for long or non-ASCII names, which GNU tar reads). The walk and the
// file reads run ahead of the packer (AHEAD entries, AHEAD_BYTES of small
// files), so the thread pool stats and reads the next files while this one is
// packed; the archive keeps the walk's order. Each file's bytes are hashed
// once, as they are read, for the tree digest.
import { createHash } from 'node:crypto';
import { close, constants, fstat, open as openCb, read as readCb, type Stats } from 'node:fs';
import { open, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { AppError } from '../../errors/index.ts';
import type { DumpInfo } from '../engine.ts';
import type { PathFilter } from './select.ts';
import { Settled, TreeDigest, type TreeLine, type WalkEntry, walkTree } from './tree.ts';

type TarHeader = Partial<tar.Header> & { name: string };

/** Chunk size for large files, which are streamed. */
const CHUNK = 256 * 1024;
/** Files up to this size are read whole with one read call. */
const SMALL = 1024 * 1024;
/** Entries prepared (stat'ed, read) ahead of the one being packed, and the small-file bytes they may hold. */
const AHEAD = 16;
const AHEAD_BYTES = 16 * 1024 * 1024;

// O_NOFOLLOW: if a file was swapped for a symlink since lstat, fail rather
// than read what it points to; O_NONBLOCK: a fifo swapped in must not hang us.
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

// The callback API without FileHandle objects: a small file costs open, read and close, nothing more.
const openFd = promisify(openCb);
const readFd = promisify(readCb);
const fstatFd = promisify(fstat);
const closeFd = promisify(close);

/** Adds one entry and resolves once tar-stream has taken all of it (the callback fires then). */
function addEntry(pack: tar.Pack, header: TarHeader, body?: Buffer | ((sink: NodeJS.WritableStream) => Promise<void>)): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (Buffer.isBuffer(body)) {
      // Written and ended at once; the callback fires when the pack has taken it (its own backpressure).
      pack.entry(header, body, done).on('error', () => {});
      return;
    }
    const sink = pack.entry(header, done);
    // Failures arrive through the callback; an 'error' event without a listener would crash the process.
    sink.on('error', () => {});
    if (body) body(sink as unknown as NodeJS.WritableStream).catch((err: unknown) => {
      (sink as unknown as { destroy(e: unknown): void }).destroy(err);
      reject(err);
    });
  });
}

/** Waits for 'drain', or fails if the entry is destroyed meanwhile (the consumer went away): 'drain' would then never come. */
function drained(sink: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      sink.off('drain', onDrain);
      sink.off('close', onClose);
    };
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      reject(new AppError('cancelled', 'The dump stream was closed before its end.'));
    };
    sink.on('drain', onDrain);
    sink.on('close', onClose);
  });
}

function asAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  return new AppError('engine_failed', `Packing the files failed: ${(err as Error)?.message ?? String(err)}`, undefined, { cause: err });
}

function headerBase(st: Stats): Pick<TarHeader, 'mode' | 'mtime' | 'uid' | 'gid'> {
  return {
    // The full st_mode: tar-stream replaces a mode of 0 by a default, and
    // keeps only the permission bits when it writes the header.
    mode: st.mode,
    // Before 1970 cannot be written as an unsigned octal field.
    mtime: new Date(Math.max(0, Math.floor(st.mtimeMs / 1000) * 1000)),
    uid: st.uid,
    gid: st.gid,
  };
}

const cannotRead = (abs: string, err: unknown) => new AppError('engine_failed', `Cannot read ${abs}: ${(err as Error).message}`, undefined, { cause: err });
const changedType = (abs: string) => new AppError('engine_failed', `${abs} changed type while the backup read it; run the backup again.`);
const changedSize = (abs: string) =>
  new AppError('engine_failed', `${abs} changed size while it was read; a tar entry's size is fixed in its header, so the backup cannot take it. Run the backup again when the file is quiet, or exclude it.`);

interface SmallFile {
  st: Stats;
  data: Buffer;
  sha256: string;
}

/**
 * Reads a small file whole: one read of size+1 bytes, where size is the
 * walk's lstat, so a read that returns exactly size bytes has met the end
 * of the file. null when the size no longer agrees: the file is then packed
 * by packLarge, which goes by fstat and refuses a file that keeps changing.
 */
async function readSmall(e: WalkEntry): Promise<SmallFile | null> {
  let fd: number;
  try {
    fd = await openFd(e.abs, READ_FLAGS);
  } catch (err) {
    throw cannotRead(e.abs, err);
  }
  try {
    const size = e.stat.size;
    const buf = Buffer.allocUnsafe(size + 1);
    let got: number;
    try {
      got = (await readFd(fd, buf, 0, buf.length, 0)).bytesRead;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EISDIR') throw changedType(e.abs);
      throw cannotRead(e.abs, err);
    }
    if (got !== size) return null;
    // An empty read proves nothing about the type: a fifo swapped in reads as empty too.
    if (size === 0 && !(await fstatFd(fd)).isFile()) throw changedType(e.abs);
    const data = buf.subarray(0, size);
    return { st: e.stat, data, sha256: createHash('sha256').update(data).digest('hex') };
  } finally {
    await closeFd(fd).catch(() => {});
  }
}

/** Streams a file of any size into its entry, sized by fstat after open; the next chunk is read while this one is packed. */
async function packLarge(pack: tar.Pack, e: WalkEntry, signal: AbortSignal): Promise<TreeLine> {
  let fh;
  try {
    fh = await open(e.abs, READ_FLAGS);
  } catch (err) {
    throw cannotRead(e.abs, err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw changedType(e.abs);
    const size = st.size;
    const hash = createHash('sha256');
    const readAt = (pos: number) => {
      // A fresh buffer per chunk: tar-stream keeps a reference until the consumer has read it.
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - pos));
      const p = fh.read(buf, 0, buf.length, pos).then(({ bytesRead }) => (bytesRead === buf.length ? buf : buf.subarray(0, bytesRead)));
      p.catch(() => {}); // awaited below; a failure while we wait for drain must not count as unhandled
      return p;
    };
    await addEntry(pack, { ...headerBase(st), name: e.rel, type: 'file', size }, async (sink) => {
      let next = size > 0 ? readAt(0) : null;
      try {
        let pos = 0;
        while (pos < size) {
          if (signal.aborted) throw new AppError('cancelled');
          const chunk = await next!;
          if (chunk.length === 0) throw changedSize(e.abs);
          pos += chunk.length;
          next = pos < size ? readAt(pos) : null;
          hash.update(chunk);
          if (!sink.write(chunk)) await drained(sink);
        }
        // Read exactly the header's size; anything more means the file grew.
        const { bytesRead: extra } = await fh.read(Buffer.alloc(1), 0, 1, size);
        if (extra > 0) throw changedSize(e.abs);
        sink.end();
      } finally {
        // The file is closed only once no read is in flight on it.
        await next?.catch(() => {});
      }
    });
    return { kind: 'f', path: e.rel, size, sha256: hash.digest('hex') };
  } finally {
    await fh.close();
  }
}

/** One walked entry with its reads started. */
type Prepared =
  | { e: WalkEntry; kind: 'd' }
  | { e: WalkEntry; kind: 'l'; target: Promise<Settled<string>> }
  | { e: WalkEntry; kind: 'f'; small: Promise<Settled<SmallFile | null>> | null };

function prepare(e: WalkEntry): Prepared | null {
  switch (e.kind) {
    case 'd':
      return { e, kind: 'd' };
    case 'l':
      return { e, kind: 'l', target: Settled.of(readlink(e.abs)) };
    case 'f':
      return { e, kind: 'f', small: e.stat.size <= SMALL ? Settled.of(readSmall(e)) : null };
    default:
      return null;
  }
}

async function packOne(pack: tar.Pack, p: Prepared, signal: AbortSignal): Promise<TreeLine> {
  const { e } = p;
  switch (p.kind) {
    case 'd':
      // A trailing slash marks a directory for old readers too.
      await addEntry(pack, { ...headerBase(e.stat), name: `${e.rel}/`, type: 'directory' });
      return { kind: 'd', path: e.rel };
    case 'l': {
      // The link itself, never what it points to.
      const target = (await p.target).unwrap();
      await addEntry(pack, { ...headerBase(e.stat), name: e.rel, type: 'symlink', linkname: target });
      return { kind: 'l', path: e.rel, target };
    }
    case 'f': {
      const small = p.small ? (await p.small).unwrap() : null;
      if (!small) return packLarge(pack, e, signal);
      await addEntry(pack, { ...headerBase(small.st), name: e.rel, type: 'file', size: small.data.length }, small.data);
      return { kind: 'f', path: e.rel, size: small.data.length, sha256: small.sha256 };
    }
  }
}

export interface TreeDump {
  stream: Readable;
  info: Promise<DumpInfo>;
}

export function dumpTree(root: string, filter: PathFilter, signal: AbortSignal): TreeDump {
  const pack = tar.pack();
  // Its failures reach the caller through `stream` (destroyed below); an
  // 'error' event nobody listens to would crash the process.
  pack.on('error', () => {});
  // Lines in walk order, which is the archive's: the v2 digest (tree.ts).
  const digest = new TreeDigest(2);
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);

  const produce = async () => {
    // Entries in walk order whose reads are under way; the head is packed next.
    const queue: Prepared[] = [];
    let queuedBytes = 0;
    const packNext = async () => {
      const p = queue.shift()!;
      if (p.kind === 'f' && p.small) queuedBytes -= p.e.stat.size;
      if (signal.aborted) throw new AppError('cancelled');
      digest.add(await packOne(pack, p, signal));
    };
    await walkTree(
      root,
      filter,
      async (e) => {
        if (signal.aborted) throw new AppError('cancelled');
        const p = prepare(e);
        if (!p) {
          warn(`${e.rel} is a socket, fifo or device; skipped`);
          return;
        }
        queue.push(p);
        if (p.kind === 'f' && p.small) queuedBytes += e.stat.size;
        while (queue.length > AHEAD || queuedBytes > AHEAD_BYTES) await packNext();
      },
      warn,
      signal,
    );
    while (queue.length > 0) await packNext();
    for (const g of filter.unmatched()) warn(`the glob ${JSON.stringify(g)} matched nothing`);
    pack.finalize();
  };

  // Node stream for callers (tar-stream's are streamx streams).
  const stream = Readable.from(pack, { objectMode: false });
  const onAbort = () => stream.destroy(new AppError('cancelled'));
  signal.addEventListener('abort', onAbort, { once: true });

  const produced = produce();
  produced.catch((err: unknown) => {
    const e = asAppError(err);
    pack.destroy(e);
    stream.destroy(e);
  });

  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => reject(asAppError(err)));
    stream.once('close', () => {
      signal.removeEventListener('abort', onAbort);
      if (!ended) {
        pack.destroy(new Error('dump stream closed'));
        reject(signal.aborted ? new AppError('cancelled') : new AppError('cancelled', 'The dump stream was closed before its end.'));
        return;
      }
      produced.then(() => resolve({ counts: digest.result(), warnings }), (err: unknown) => reject(asAppError(err)));
    });
  });
  info.catch(() => {});
  return { stream, info };
}
