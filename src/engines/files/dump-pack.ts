// Packs a directory tree into tar bytes with synchronous calls; runs in the
// dump worker thread (dump-worker.ts), which hands the bytes to the main
// thread in batches (dump.ts). The archive is what tar-stream's pack makes
// (ustar, pax headers for long or non-ASCII names, which GNU tar reads), in
// the walk's order (walk-sync.ts). Each file's bytes are hashed once, as they
// are read, and each line goes into the v2 tree digest as it is packed, so
// nothing is kept per file. The walk runs AHEAD_ENTRIES entries ahead of the
// packing, and the files in that window are already open with their bytes
// on the way into the page cache (readahead.ts), so a cold tree is read with
// many disk requests in flight instead of one.
import * as crypto from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readlinkSync, readSync, type Stats } from 'node:fs';
import { AppError } from '../../errors/index.ts';
import { adviseWillNeed, readaheadAvailable } from '../../platform/readahead.ts';
import type { DumpInfo } from '../engine.ts';
import { PathFilter } from './select.ts';
import { type EncodeHeader, tarHeaders } from './tar-headers.ts';
import { TreeDigest, type TreeLine } from './tree.ts';
import { type WalkEntry, walkSync } from './walk-sync.ts';

/**
 * Bytes per batch sent to the main thread: the codec's segment (codec-worker.ts),
 * so the compressing stage takes each batch as it is, as one zstd frame, instead
 * of copying it into a segment (codec.ts adopt).
 */
export const BATCH = 4 * 1024 * 1024;
/** Files up to this size are read whole with one read call. */
const SMALL = 1024 * 1024;
/**
 * Entries walked ahead of the packing. Each file among them holds an open
 * descriptor and has up to SMALL bytes advised; the kernel's own readahead
 * follows a large file once it is read. 16 already took a cold read of 47k
 * files from 6.6 s to 2.3 s on the bench machine (ad hoc); 32 leaves room for
 * faster disks.
 */
const AHEAD_ENTRIES = 32;

// O_NOFOLLOW: if a file was swapped for a symlink since lstat, fail rather
// than read what it points to; O_NONBLOCK: a fifo swapped in must not hang us.
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

interface Header extends EncodeHeader {
  type: 'file' | 'directory' | 'symlink' | 'pax-header';
}

/** Node >= 20.12 hashes a buffer in one call, without a Hash object. */
const oneShot = (crypto as { hash?: (alg: string, data: Buffer, enc: 'hex') => string }).hash;
const sha256hex = oneShot ? (data: Buffer) => oneShot('sha256', data, 'hex') : (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

const cannotRead = (abs: string, err: unknown) => new AppError('engine_failed', `Cannot read ${abs}: ${(err as Error).message}`, undefined, { cause: err });
const changedType = (abs: string) => new AppError('engine_failed', `${abs} changed type while the backup read it; run the backup again.`);
const changedSize = (abs: string) =>
  new AppError('engine_failed', `${abs} changed size while it was read; a tar entry's size is fixed in its header, so the backup cannot take it. Run the backup again when the file is quiet, or exclude it.`);

/** Where the batches go. */
export interface BatchSink {
  /** Takes a full or final batch (the buffer is handed over); may block until the reader wants more. Throws when cancelled. */
  send(buffer: ArrayBuffer, length: number): void;
  /** Throws AppError('cancelled') once the dump is cancelled. */
  check(): void;
  /** A batch buffer (BATCH bytes) the reader gave back, if one is there: spares a fresh allocation. */
  reuse?(): Buffer | undefined;
}

/** Tar bytes gathered into batches of BATCH bytes. */
class TarOut {
  buf: Buffer = Buffer.allocUnsafeSlow(BATCH);
  used = 0;

  constructor(private readonly sink: BatchSink) {}

  get room(): number {
    return this.buf.length - this.used;
  }

  flush(): void {
    if (this.used === 0) return;
    // Sent first: while send waits for credit, the reader may give a batch back to be reused below.
    this.sink.send(this.buf.buffer as ArrayBuffer, this.used);
    // A buffer of its own (not from Node's pool), so it can be transferred.
    this.buf = this.sink.reuse?.() ?? Buffer.allocUnsafeSlow(BATCH);
    this.used = 0;
  }

  write(src: Buffer): void {
    let off = 0;
    while (off < src.length) {
      if (this.room === 0) this.flush();
      const n = src.copy(this.buf, this.used, off);
      this.used += n;
      off += n;
    }
  }

  zeros(n: number): void {
    while (n > 0) {
      if (this.room === 0) this.flush();
      const k = Math.min(n, this.room);
      this.buf.fill(0, this.used, this.used + k);
      this.used += k;
      n -= k;
    }
  }

  /** Zeros up to the next 512-byte block after a body of `size` bytes. */
  pad(size: number): void {
    const rest = size % 512;
    if (rest > 0) this.zeros(512 - rest);
  }
}

/** A header's blocks, as tar-stream's pack writes them: ustar when it fits, else a pax header first. */
function headerBytes(h: Header): Buffer {
  const plain = tarHeaders.encode(h);
  if (plain) return plain;
  const pax = tarHeaders.encodePax({ name: h.name, linkname: h.linkname });
  const ph: Header = { name: 'PaxHeader', mode: h.mode, uid: h.uid, gid: h.gid, size: pax.length, mtime: h.mtime, type: 'pax-header' };
  if (h.linkname) ph.linkname = 'PaxHeader';
  const padded = Math.ceil(pax.length / 512) * 512;
  const out = Buffer.alloc(512 + padded + 512);
  tarHeaders.encode(ph)!.copy(out, 0);
  pax.copy(out, 512);
  tarHeaders.encode({ ...ph, size: h.size, type: h.type })!.copy(out, 512 + padded);
  return out;
}

function headerBase(st: Stats): Pick<Header, 'mode' | 'mtime' | 'uid' | 'gid'> {
  return {
    // The full st_mode: tar-stream keeps only the permission bits when it writes the header.
    mode: st.mode,
    // Before 1970 cannot be written as an unsigned octal field.
    mtime: new Date(Math.max(0, Math.floor(st.mtimeMs / 1000) * 1000)),
    uid: st.uid,
    gid: st.gid,
  };
}

function openForRead(abs: string): number {
  try {
    return openSync(abs, READ_FLAGS);
  } catch (err) {
    throw cannotRead(abs, err);
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Read-only: nothing was written that a failed close could lose.
  }
}

/**
 * Opens a regular file of the window and advises its first bytes; -1 for
 * anything else, when the advice cannot reach the kernel (then opening early
 * gains nothing), or when the open fails: the packer opens it again when its
 * turn comes and reports the failure there, in order.
 */
function openAhead(e: WalkEntry): number {
  if (!readaheadAvailable || e.kind !== 'f' || e.stat.size === 0) return -1;
  let fd: number;
  try {
    fd = openSync(e.abs, READ_FLAGS);
  } catch {
    return -1;
  }
  adviseWillNeed(fd, 0, Math.min(e.stat.size, SMALL));
  return fd;
}

/** A small file's bytes land here when they do not fit in the current batch. */
let scratch: Buffer | undefined;

class Packer {
  readonly digest = new TreeDigest(2);
  readonly out: TarOut;

  constructor(private readonly sink: BatchSink) {
    this.out = new TarOut(sink);
  }

  /** `opened`: a descriptor of e.abs opened ahead (the caller closes it), or -1. */
  entry(e: WalkEntry, warn: (msg: string) => void, opened = -1): void {
    this.sink.check();
    let line: TreeLine;
    switch (e.kind) {
      case 'd':
        // A trailing slash marks a directory for old readers too.
        this.out.write(headerBytes({ ...headerBase(e.stat), name: `${e.rel}/`, type: 'directory', size: 0 }));
        line = { kind: 'd', path: e.rel };
        break;
      case 'l': {
        // The link itself, never what it points to.
        const target = readlinkSync(e.abs);
        this.out.write(headerBytes({ ...headerBase(e.stat), name: e.rel, type: 'symlink', size: 0, linkname: target }));
        line = { kind: 'l', path: e.rel, target };
        break;
      }
      case 'f':
        line = (e.stat.size <= SMALL ? this.small(e, opened) : null) ?? this.large(e, e.stat.size > SMALL ? opened : -1);
        break;
      default:
        warn(`${e.rel} is a socket, fifo or device; skipped`);
        return;
    }
    this.digest.add(line);
  }

  /**
   * Packs a small file with one read of size+1 bytes, where size is the
   * walk's lstat, so a read that returns exactly size bytes has met the end
   * of the file. null when the size no longer agrees: large() then goes by
   * fstat and refuses a file that keeps changing. The bytes are read straight
   * into the batch when they fit, behind the header, which stays uncounted
   * until the read agrees.
   */
  private small(e: WalkEntry, opened: number): TreeLine | null {
    const out = this.out;
    const fd = opened >= 0 ? opened : openForRead(e.abs);
    try {
      const size = e.stat.size;
      const header = headerBytes({ ...headerBase(e.stat), name: e.rel, type: 'file', size });
      const inPlace = out.room >= header.length + size + 1;
      const into = inPlace ? out.buf : (scratch ??= Buffer.allocUnsafe(SMALL + 1));
      const at = inPlace ? out.used + header.length : 0;
      let got: number;
      try {
        got = readSync(fd, into, at, size + 1, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EISDIR') throw changedType(e.abs);
        throw cannotRead(e.abs, err);
      }
      if (got !== size) return null;
      // An empty read proves nothing about the type: a fifo swapped in reads as empty too.
      if (size === 0 && !fstatSync(fd).isFile()) throw changedType(e.abs);
      const data = into.subarray(at, at + size);
      const sha256 = sha256hex(data);
      if (inPlace) {
        header.copy(out.buf, out.used);
        out.used += header.length + size;
      } else {
        out.write(header);
        out.write(data);
      }
      out.pad(size);
      return { kind: 'f', path: e.rel, size, sha256 };
    } finally {
      if (fd !== opened) closeQuietly(fd);
    }
  }

  /** Streams a file of any size through the batches, sized by fstat after open. */
  private large(e: WalkEntry, opened: number): TreeLine {
    const out = this.out;
    const fd = opened >= 0 ? opened : openForRead(e.abs);
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw changedType(e.abs);
      const size = st.size;
      out.write(headerBytes({ ...headerBase(st), name: e.rel, type: 'file', size }));
      const hash = crypto.createHash('sha256');
      let pos = 0;
      while (pos < size) {
        // A huge file is checked between chunks, not only between files.
        this.sink.check();
        if (out.room === 0) out.flush();
        let got: number;
        try {
          got = readSync(fd, out.buf, out.used, Math.min(out.room, size - pos), pos);
        } catch (err) {
          throw cannotRead(e.abs, err);
        }
        if (got === 0) throw changedSize(e.abs);
        hash.update(out.buf.subarray(out.used, out.used + got));
        out.used += got;
        pos += got;
      }
      // Read exactly the header's size; anything more means the file grew.
      let extra: number;
      try {
        extra = readSync(fd, Buffer.alloc(1), 0, 1, size);
      } catch (err) {
        throw cannotRead(e.abs, err);
      }
      if (extra > 0) throw changedSize(e.abs);
      out.pad(size);
      return { kind: 'f', path: e.rel, size, sha256: hash.digest('hex') };
    } finally {
      if (fd !== opened) closeQuietly(fd);
    }
  }
}

export interface DumpSpec {
  root: string;
  /** PathFilter's lists (select.ts), rebuilt here: a filter cannot cross threads. */
  takes: (string[] | null)[];
  excludes: string[];
}

/** Packs the tree into sink's batches; returns the counts and warnings once the last batch went. */
export function packTree(spec: DumpSpec, sink: BatchSink): DumpInfo {
  const filter = new PathFilter(spec.takes, spec.excludes);
  const packer = new Packer(sink);
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  const ahead: { entry: WalkEntry; fd: number }[] = [];
  const packNext = () => {
    const { entry, fd } = ahead.shift()!;
    try {
      packer.entry(entry, warn, fd);
    } finally {
      if (fd >= 0) closeQuietly(fd);
    }
  };
  try {
    walkSync(
      spec.root,
      filter,
      (entry) => {
        ahead.push({ entry, fd: openAhead(entry) });
        if (ahead.length > AHEAD_ENTRIES) packNext();
      },
      warn,
      () => sink.check(),
    );
    while (ahead.length > 0) packNext();
  } finally {
    // A failed or cancelled dump leaves the window's files open.
    for (const { fd } of ahead) if (fd >= 0) closeQuietly(fd);
  }
  for (const g of filter.unmatched()) warn(`the glob ${JSON.stringify(g)} matched nothing`);
  // End of archive: two zero blocks.
  packer.out.zeros(1024);
  packer.out.flush();
  return { counts: packer.digest.result(), warnings };
}
