// Extracts a tar into a private staging directory, refusing anything that
// could write outside it, then makes the result visible: a whole-tree swap
// (full restore) or per-entry renames into the target (partial overlay).
// Small files are taken whole from the archive and written by a few jobs in
// flight (one create, write, utimes and close each) while the archive is
// read on; their bytes are hashed as they pass, for the tree digest.
import { createHash } from 'node:crypto';
import { close, constants, fchmod, fchown, fstat, futimes, open as openCb, write } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readdir, rename, rm, symlink, chmod, chown, lchown, lutimes, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import type { ObjectCounts } from '../../domain/types.ts';
import { AppError } from '../../errors/index.ts';
import { fsyncDir, syncFileSystem } from '../../platform/fs.ts';
import { byteCompare, TreeDigest, type TreeLine } from './tree.ts';

type TarHeader = tar.Header;
type TarEntry = AsyncIterable<Buffer> & NodeJS.EventEmitter & { header: TarHeader; resume(): unknown };

export interface Extracted {
  rel: string;
  kind: 'd' | 'f' | 'l';
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
  linkname?: string;
  /** a directory the archive did not list but whose contents it had */
  implicit?: boolean;
  /** a file's size and sha256, as written */
  size?: number;
  sha256?: string;
}

export interface Extraction {
  /** the entries in archive order */
  list: Extracted[];
  /** what staging holds, described as at dump time (tree.ts) */
  counts: ObjectCounts;
}

/** Ownership can only be given away by root; anyone else keeps their own. */
const AS_ROOT = process.getuid?.() === 0;

/** Files up to this size are collected whole and written by a job; larger ones are streamed. */
const SMALL = 1024 * 1024;
/** Small-file write jobs in flight, and the bytes they may hold. */
const WRITES = 16;
const WRITE_BYTES = 32 * 1024 * 1024;
/** Metadata calls (directories, symlinks) in flight. */
const META_CALLS = 16;

// O_EXCL and O_NOFOLLOW: never open anything that already exists, least of all a link.
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

// The callback API without FileHandle objects: a small file costs as few thread-pool round trips as possible.
const openFd = promisify(openCb);
const writeFd = promisify(write);
const fchownFd = promisify(fchown);
const fchmodFd = promisify(fchmod);
const futimesFd = promisify(futimes);
const fstatFd = promisify(fstat);
const closeFd = promisify(close);

function unsafe(name: string, why: string): AppError {
  const shown = JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}…` : name);
  return new AppError('unsafe_path', `The archive entry ${shown} ${why}; nothing was restored.`, { entry: name.slice(0, 1000) });
}

/** The entry's path relative to the staging root, or null for the root itself ("./"). */
function safeRel(name: string): string | null {
  if (name.includes('\0')) throw unsafe(name, 'holds a NUL byte');
  if (name.startsWith('/')) throw unsafe(name, 'is an absolute path');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(name, 'climbs out with ..');
  return parts.length === 0 ? null : parts.join('/');
}

function kindOf(h: TarHeader): Extracted['kind'] {
  switch (h.type) {
    case 'file':
    case 'contiguous-file':
      return 'f';
    case 'directory':
      return 'd';
    case 'symlink':
      return 'l';
    case 'link':
      // A hard link shares an inode with a path we may not control, and our dumps never make one.
      throw unsafe(h.name, 'is a hard link');
    case 'character-device':
    case 'block-device':
    case 'fifo':
      throw unsafe(h.name, 'is a device or fifo');
    default:
      throw unsafe(h.name, `has an unsupported type (${String(h.type)})`);
  }
}

function ancestors(rel: string): string[] {
  const parts = rel.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
}

/** An entry's whole body; fails with the archive's error if it breaks off. */
function readBody(entry: TarEntry): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let ended = false;
    entry.on('data', (c: Buffer) => parts.push(c));
    entry.on('end', () => {
      ended = true;
      resolve(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    });
    entry.on('error', reject);
    entry.on('close', () => {
      if (!ended) reject(new Error('Unexpected end of data'));
    });
  });
}

/** Runs fn over items, up to `limit` at a time; the first failure is thrown once all have settled. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | null = null;
  const worker = async () => {
    while (next < items.length && !failure) {
      try {
        await fn(items[next++]!);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw (failure as { err: unknown }).err;
}

/** Jobs in flight, bounded in number and bytes; the first failure is kept and thrown by room() or drain(). */
class Jobs {
  private readonly running = new Set<Promise<void>>();
  private bytes = 0;
  private failure: { err: unknown } | null = null;

  add(bytes: number, job: () => Promise<void>): void {
    this.bytes += bytes;
    const p: Promise<void> = job()
      .catch((err: unknown) => {
        this.failure ??= { err };
      })
      .finally(() => {
        this.bytes -= bytes;
        this.running.delete(p);
      });
    this.running.add(p);
  }

  /** Waits until another job of `bytes` fits. */
  async room(count: number, maxBytes: number, bytes: number): Promise<void> {
    while (this.running.size > 0 && (this.running.size >= count || this.bytes + bytes > maxBytes)) await Promise.race(this.running);
    this.check();
  }

  /** Waits for every job; with `quiet`, never throws (cleanup on a failure path). */
  async drain(quiet = false): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running);
    if (!quiet) this.check();
  }

  private check(): void {
    if (this.failure) throw this.failure.err;
  }
}

/** What the process gives a new file and directory in staging without being asked: the umask's mode bits and the owner. */
interface Defaults {
  /** the permission bits open() keeps of the mode it is given */
  keep: number;
  uid: number;
  gid: number;
}

/**
 * Learns the defaults from staging itself: the umask from a probe file (it
 * cannot be read without changing it for a moment), the group from
 * staging, which a set-group-ID parent passes on to everything below it.
 * Knowing them spares a chmod or chown per file that already has the
 * archive's mode and owner.
 */
async function stagingDefaults(staging: string): Promise<Defaults> {
  const probe = join(staging, '.backvault-umask-probe');
  const fd = await openFd(probe, CREATE_FLAGS, 0o777);
  let mode: number;
  try {
    mode = (await fstatFd(fd)).mode & 0o777;
  } finally {
    await closeFd(fd);
    await rm(probe, { force: true });
  }
  const st = await lstat(staging);
  const uid = process.geteuid?.() ?? st.uid;
  const gid = st.mode & 0o2000 ? st.gid : (process.getegid?.() ?? st.gid);
  return { keep: mode, uid, gid };
}
/** Creates a file with its whole body, owner, mode and mtime: four calls when the defaults already give the owner and mode. */
async function writeSmall(abs: string, data: Buffer, meta: Extracted, d: Defaults): Promise<void> {
  const fd = await openFd(abs, CREATE_FLAGS, meta.mode & 0o777);
  try {
    for (let off = 0; off < data.length; ) off += (await writeFd(fd, data, off, data.length - off, null)).bytesWritten;
    await finishFile(fd, meta, d);
  } finally {
    await closeFd(fd);
  }
}

async function finishFile(fd: number, meta: Extracted, d: Defaults): Promise<void> {
  const chowned = AS_ROOT && (meta.uid !== d.uid || meta.gid !== d.gid);
  if (chowned) await fchownFd(fd, meta.uid, meta.gid);
  // After chown, which clears set-id bits; not needed when the create gave the mode already.
  if (chowned || (meta.mode & d.keep) !== meta.mode) await fchmodFd(fd, meta.mode);
  await futimesFd(fd, meta.mtime, meta.mtime);
  // No fsync per file: applyDirMeta flushes the whole file system once at the end.
}

/** Writes all of bufs at the file's position (writev may write less than asked). */
async function writeAll(fh: FileHandle, bufs: Buffer[]): Promise<void> {
  let rest = bufs;
  while (rest.length > 0) {
    let n = (await fh.writev(rest)).bytesWritten;
    while (rest.length > 0 && n >= rest[0]!.length) {
      n -= rest[0]!.length;
      rest = rest.slice(1);
    }
    if (n > 0) rest = [rest[0]!.subarray(n), ...rest.slice(1)];
  }
}

/** Streams a large entry into a new file in writes of about SMALL bytes, the next batch gathered while one is written. */
async function writeLarge(abs: string, entry: TarEntry, meta: Extracted, d: Defaults): Promise<{ size: number; sha256: string }> {
  const fh = await open(abs, CREATE_FLAGS, meta.mode & 0o777);
  let writing: Promise<void> | null = null;
  try {
    const hash = createHash('sha256');
    let size = 0;
    let batch: Buffer[] = [];
    let batched = 0;
    const flush = async () => {
      if (writing) await writing;
      writing = writeAll(fh, batch);
      writing.catch(() => {}); // awaited by the next flush or below
      batch = [];
      batched = 0;
    };
    for await (const chunk of entry) {
      hash.update(chunk);
      size += chunk.length;
      batch.push(chunk);
      batched += chunk.length;
      if (batched >= SMALL) await flush();
    }
    await flush();
    await writing;
    await finishFile(fh.fd, meta, d);
    return { size, sha256: hash.digest('hex') };
  } finally {
    // Closed only once no write is in flight on it.
    await (writing as Promise<void> | null)?.catch(() => {});
    await fh.close();
  }
}

/**
 * Extracts input into staging (an empty directory of ours) and returns its
 * entries in archive order with the counts of what it wrote. Every entry is
 * checked before anything is written for it. Symlinks are created only after
 * the archive ended cleanly, so while entries are written no symlink exists
 * in staging to be written through; entries below a symlink entry are
 * refused.
 */
export async function extractInto(staging: string, input: Readable, digestVersion: 1 | 2, signal: AbortSignal): Promise<Extraction> {
  const entries = new Map<string, Extracted>();
  const defaults = await stagingDefaults(staging);
  /** directories of staging known to be real directories (made by us, or checked) */
  const dirs = new Set<string>([staging]);
  const jobs = new Jobs();
  const extract = tar.extract();
  const feed = pipeline(input, extract, { signal });
  // Awaited below; until then its rejection must not count as unhandled.
  feed.catch(() => {});

  try {
    for await (const entry of extract as unknown as AsyncIterable<TarEntry>) {
      const h = entry.header;
      const rel = safeRel(h.name);
      if (rel === null) {
        entry.resume(); // "./": the target itself; its metadata is not ours to change
        continue;
      }
      const kind = kindOf(h);
      const above = ancestors(rel);
      for (const a of above) {
        const e = entries.get(a);
        if (e && e.kind === 'l') throw unsafe(h.name, `lies below the symlink ${JSON.stringify(a)}`);
        if (e && e.kind !== 'd') throw unsafe(h.name, `lies below ${JSON.stringify(a)}, which is not a directory`);
      }
      const existing = entries.get(rel);
      if (existing && !(existing.implicit && kind === 'd')) throw unsafe(h.name, 'appears twice');

      for (const a of above) {
        if (entries.has(a)) continue;
        await mkdir(join(staging, a), { mode: 0o700 });
        dirs.add(join(staging, a));
        entries.set(a, { rel: a, kind: 'd', mode: 0o755, mtime: new Date(), uid: defaults.uid, gid: defaults.gid, implicit: true });
      }
      const abs = join(staging, rel);
      // Paranoia on top of the bookkeeping above: the parent must be a real directory (checked once per directory).
      const parent = dirname(abs);
      if (!dirs.has(parent)) {
        if (!(await lstat(parent)).isDirectory()) throw unsafe(h.name, 'has a parent that is not a directory');
        dirs.add(parent);
      }

      const meta: Extracted = {
        rel,
        kind,
        mode: (h.mode ?? (kind === 'd' ? 0o755 : 0o644)) & 0o7777,
        mtime: h.mtime ?? new Date(),
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
      };
      if (kind === 'd') {
        if (!existing) await mkdir(abs, { mode: 0o700 });
        dirs.add(abs);
        entries.delete(rel); // re-insert: keep archive order for an implicit directory made explicit
        entries.set(rel, meta);
        entry.resume();
      } else if (kind === 'l') {
        const link = h.linkname ?? '';
        if (link === '' || link.includes('\0')) throw unsafe(h.name, 'is a symlink without a valid target');
        entries.set(rel, { ...meta, linkname: link });
        entry.resume();
      } else if ((h.size ?? 0) <= SMALL) {
        entries.set(rel, meta);
        const data = await readBody(entry);
        meta.size = data.length;
        meta.sha256 = createHash('sha256').update(data).digest('hex');
        await jobs.room(WRITES, WRITE_BYTES, data.length);
        jobs.add(data.length, () => writeSmall(abs, data, meta, defaults));
      } else {
        entries.set(rel, meta);
        Object.assign(meta, await writeLarge(abs, entry, meta, defaults));
      }
    }
    // The input may fail only at its end (checksum); nothing is made visible before this.
    await feed;
    await jobs.drain();
  } finally {
    // Nothing of ours may still be writing into staging when the caller removes it.
    await jobs.drain(true);
  }

  const list = [...entries.values()];
  const links = list.filter((e) => e.kind === 'l');
  await eachLimited(links, META_CALLS, async (e) => {
    const abs = join(staging, e.rel);
    await symlink(e.linkname!, abs);
    if (AS_ROOT && (e.uid !== defaults.uid || e.gid !== defaults.gid)) await lchown(abs, e.uid, e.gid);
    await lutimes(abs, e.mtime, e.mtime);
  });
  await applyDirMeta(staging, list);
  // The list is in archive order, which the v2 digest hashes (v1 sorts it itself).
  const digest = new TreeDigest(digestVersion);
  for (const e of list) digest.add(lineOf(e));
  return { list, counts: digest.result() };
}

/** The tree line (tree.ts) of an extracted entry, as countTree would describe it on disk. */
function lineOf(e: Extracted): TreeLine {
  switch (e.kind) {
    case 'd':
      return { kind: 'd', path: e.rel };
    case 'l':
      return { kind: 'l', path: e.rel, target: e.linkname! };
    case 'f':
      return { kind: 'f', path: e.rel, size: e.size!, sha256: e.sha256! };
  }
}

/**
 * Directory metadata last and deepest first: writing inside a directory
 * changes its mtime, and a read-only mode would stop the writes. The
 * directories of one depth are done together.
 */
async function applyDirMeta(root: string, list: Extracted[]): Promise<void> {
  const byDepth = new Map<number, Extracted[]>();
  for (const e of list) {
    // A directory the archive did not list keeps the metadata it has.
    if (e.kind !== 'd' || e.implicit) continue;
    const depth = e.rel.split('/').length;
    let level = byDepth.get(depth);
    if (!level) byDepth.set(depth, (level = []));
    level.push(e);
  }
  for (const depth of [...byDepth.keys()].sort((a, b) => b - a)) {
    await eachLimited(byDepth.get(depth)!, META_CALLS, async (d) => {
      const abs = join(root, d.rel);
      if (AS_ROOT) await chown(abs, d.uid, d.gid);
      await chmod(abs, d.mode);
      await utimes(abs, d.mtime, d.mtime);
    });
  }
  // One syncfs for every file and directory written, before anything is renamed into view.
  await syncFileSystem(root);
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

async function lstatOrNull(path: string) {
  try {
    return await lstat(path);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

/**
 * Partial in-place restore: moves each backed-up entry from staging into
 * target with one atomic rename per file or symlink, creating directories as
 * needed and leaving everything else in target alone. Never writes through a
 * symlink: every parent is checked with lstat first. It does not stop for
 * cancellation half-way: a target half overlaid is worse than a finished one.
 */
export async function overlayInto(staging: string, target: string, list: Extracted[]): Promise<void> {
  await mkdir(target, { recursive: true });
  const sorted = [...list].sort((a, b) => byteCompare(a.rel, b.rel)); // parents first
  // Refuse before changing anything when an entry would land below a target
  // symlink or file that the backup does not itself replace by a directory.
  const backedDirs = new Set(list.filter((e) => e.kind === 'd').map((e) => e.rel));
  const checked = new Set<string>();
  for (const e of sorted) {
    for (const a of ancestors(e.rel)) {
      if (backedDirs.has(a) || checked.has(a)) continue;
      checked.add(a);
      const st = await lstatOrNull(join(target, a));
      if (st && !st.isDirectory()) throw unsafe(e.rel, `would be written through ${JSON.stringify(a)} in the target, which is a symlink or file`);
    }
  }
  const touched = new Set<string>();
  for (const e of sorted) {
    for (const a of ancestors(e.rel)) {
      const st = await lstatOrNull(join(target, a));
      if (st === null) await mkdir(join(target, a), { mode: 0o755 });
      else if (!st.isDirectory()) throw unsafe(e.rel, `would be written through ${JSON.stringify(a)} in the target, which is a symlink or file`);
    }
    const dst = join(target, e.rel);
    const st = await lstatOrNull(dst);
    if (e.kind === 'd') {
      if (st && !st.isDirectory()) await rm(dst); // a file or symlink where the backup has a directory; rm does not follow links
      if (!st || !st.isDirectory()) await mkdir(dst, { mode: 0o700 });
    } else {
      // The backup has a file or symlink here: it replaces whatever the target has.
      if (st?.isDirectory()) await rm(dst, { recursive: true });
      await rename(join(staging, e.rel), dst);
      touched.add(dirname(dst));
    }
  }
  // Only directories the backup listed get its metadata; the others keep theirs.
  await applyDirMeta(target, sorted);
  for (const d of touched) await fsyncDir(d);
}

/**
 * Full restore: staging takes target's place. With staging beside target
 * two renames do it (a crash between them leaves the old tree under a
 * ".name.tmp-…" name beside it). Returns warnings.
 */
export async function swapInto(staging: string, target: string, oldPath: string): Promise<string[]> {
  const warnings: string[] = [];
  const existed = (await lstatOrNull(target)) !== null;
  if (existed) await rename(target, oldPath);
  try {
    await rename(staging, target);
  } catch (err) {
    if (existed) await rename(oldPath, target);
    throw err;
  }
  await fsyncDir(dirname(target));
  if (existed) {
    try {
      await rm(oldPath, { recursive: true, force: true });
    } catch (err) {
      warnings.push(`the previous contents could not be removed from ${oldPath}: ${(err as Error).message}`);
    }
  }
  return warnings;
}

/**
 * Full restore into a mount point, which cannot be renamed: staging and the
 * old contents live inside target, and its top-level entries are moved one
 * by one. Not atomic: for a moment target holds neither tree entirely.
 */
export async function swapContents(staging: string, target: string, oldDir: string): Promise<string[]> {
  const warnings: string[] = [];
  const keep = new Set([staging, oldDir].map((p) => p.slice(target.length + 1)));
  await mkdir(oldDir, { mode: 0o700 });
  const moved: string[] = [];
  try {
    for (const name of await readdir(target)) {
      if (keep.has(name)) continue;
      await rename(join(target, name), join(oldDir, name));
      moved.push(name);
    }
    for (const name of await readdir(staging)) await rename(join(staging, name), join(target, name));
  } catch (err) {
    // Put the old contents back where they were; what came from staging goes back there.
    for (const name of await readdir(target)) {
      if (!keep.has(name)) await rename(join(target, name), join(staging, name)).catch(() => {});
    }
    for (const name of moved) await rename(join(oldDir, name), join(target, name)).catch(() => {});
    await rm(oldDir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
  await fsyncDir(target);
  try {
    await rm(oldDir, { recursive: true, force: true });
  } catch (err) {
    warnings.push(`the previous contents could not be removed from ${oldDir}: ${(err as Error).message}`);
  }
  return warnings;
}
