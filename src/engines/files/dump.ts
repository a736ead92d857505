// Packs a directory tree into a tar stream (tar-stream writes ustar, and pax
// headers for long or non-ASCII names, which GNU tar reads), file bytes
// streamed straight from disk into their entries while being hashed.
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readlink } from 'node:fs/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { AppError } from '../../errors/index.ts';
import type { DumpInfo } from '../engine.ts';
import type { PathFilter } from './select.ts';
import { summarize, type TreeLine, type WalkEntry, walkTree } from './tree.ts';

type TarHeader = Partial<tar.Header> & { name: string };

const CHUNK = 256 * 1024;

/** Adds one entry and resolves once tar-stream has taken all of it (the callback fires then). */
function addEntry(pack: tar.Pack, header: TarHeader, body?: (sink: NodeJS.WritableStream) => Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
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

function headerBase(e: WalkEntry): Pick<TarHeader, 'mode' | 'mtime' | 'uid' | 'gid'> {
  return {
    // The full st_mode: tar-stream replaces a mode of 0 by a default, and
    // keeps only the permission bits when it writes the header.
    mode: e.stat.mode,
    // Before 1970 cannot be written as an unsigned octal field.
    mtime: new Date(Math.max(0, Math.floor(e.stat.mtimeMs / 1000) * 1000)),
    uid: e.stat.uid,
    gid: e.stat.gid,
  };
}

async function packFile(pack: tar.Pack, e: WalkEntry, signal: AbortSignal): Promise<TreeLine | null> {
  let fh;
  try {
    // O_NOFOLLOW: if the file was swapped for a symlink since lstat, fail
    // rather than read what it points to; O_NONBLOCK: a fifo swapped in must not hang us.
    fh = await open(e.abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    throw new AppError('engine_failed', `Cannot read ${e.abs}: ${(err as Error).message}`, undefined, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new AppError('engine_failed', `${e.abs} changed type while the backup read it; run the backup again.`);
    const size = st.size;
    const hash = createHash('sha256');
    const changed = () =>
      new AppError('engine_failed', `${e.abs} changed size while it was read; a tar entry's size is fixed in its header, so the backup cannot take it. Run the backup again when the file is quiet, or exclude it.`);
    await addEntry(pack, { ...headerBase({ ...e, stat: st }), name: e.rel, type: 'file', size }, async (sink) => {
      let pos = 0;
      while (pos < size) {
        if (signal.aborted) throw new AppError('cancelled');
        // A fresh buffer per chunk: tar-stream keeps a reference until the consumer has read it.
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - pos));
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) throw changed();
        const chunk = bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
        hash.update(chunk);
        pos += bytesRead;
        if (!sink.write(chunk)) await drained(sink);
      }
      // Read exactly the header's size; anything more means the file grew.
      const { bytesRead: extra } = await fh.read(Buffer.alloc(1), 0, 1, size);
      if (extra > 0) throw changed();
      sink.end();
    });
    return { kind: 'f', path: e.rel, size, sha256: hash.digest('hex') };
  } finally {
    await fh.close();
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
  const lines: TreeLine[] = [];
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);

  const produce = async () => {
    await walkTree(
      root,
      filter,
      async (e) => {
        if (signal.aborted) throw new AppError('cancelled');
        switch (e.kind) {
          case 'd':
            // A trailing slash marks a directory for old readers too.
            await addEntry(pack, { ...headerBase(e), name: `${e.rel}/`, type: 'directory' });
            lines.push({ kind: 'd', path: e.rel });
            return;
          case 'l': {
            // The link itself, never what it points to.
            const target = await readlink(e.abs);
            await addEntry(pack, { ...headerBase(e), name: e.rel, type: 'symlink', linkname: target });
            lines.push({ kind: 'l', path: e.rel, target });
            return;
          }
          case 'f': {
            const line = await packFile(pack, e, signal);
            if (line) lines.push(line);
            return;
          }
          default:
            warn(`${e.rel} is a socket, fifo or device; skipped`);
        }
      },
      warn,
      signal,
    );
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
      produced.then(() => resolve({ counts: summarize(lines), warnings }), (err: unknown) => reject(asAppError(err)));
    });
  });
  info.catch(() => {});
  return { stream, info };
}
