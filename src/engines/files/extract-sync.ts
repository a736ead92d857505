// The extraction itself, with synchronous file system calls: it runs in the
// restore worker (restore-worker.ts), where a blocking call costs a few µs
// instead of a thread-pool round trip, and blocks nothing else.
//
// Memory does not grow with the number of files: the checks keep only the
// directories (their metadata is applied at the end) and the symlinks
// (created at the end); a duplicate or misplaced file is found by the file
// system itself (O_EXCL, lstat). The entry list is kept only when the
// caller asks (partial overlay), and tree lines only for a v1 digest, or
// while they wait for a file's sha256 computed elsewhere (span-hash.ts: a
// codec worker that decoded the bytes hashes them), at most a few pieces'
// worth.
import { chmodSync, chownSync, closeSync, constants, fchmodSync, fchownSync, fstatSync, futimesSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, rmSync, symlinkSync, utimesSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { ObjectCounts } from '../../domain/types.ts';
import { AppError } from '../../errors/index.ts';
import { type BodyHashes, LocalHashes } from '../../platform/span-hash.ts';
import { TarReader, type TarHeader, type TarSink } from './extract-tar.ts';
import { TreeDigest, type TreeLine } from './tree.ts';

export interface Extracted {
  rel: string;
  kind: 'd' | 'f' | 'l';
  mode: number;
  /** seconds since the epoch */
  mtime: number;
  uid: number;
  gid: number;
  linkname?: string;
  /** a directory the archive did not list but whose contents it had */
  implicit?: boolean;
}

export interface ExtractResult {
  /** what staging holds, described as at dump time (tree.ts) */
  counts: ObjectCounts;
  /** the entries in archive order, when asked for */
  list: Extracted[] | null;
}

// O_EXCL and O_NOFOLLOW: never open anything that already exists, least of all a link.
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

export function unsafe(name: string, why: string): AppError {
  const shown = JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}…` : name);
  return new AppError('unsafe_path', `The archive entry ${shown} ${why}; nothing was restored.`, { entry: name.slice(0, 1000) });
}

/** The entry's path relative to the staging root, or null for the root itself ("./"). */
export function safeRel(name: string): string | null {
  if (name.includes('\0')) throw unsafe(name, 'holds a NUL byte');
  if (name.startsWith('/')) throw unsafe(name, 'is an absolute path');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(name, 'climbs out with ..');
  return parts.length === 0 ? null : parts.join('/');
}

export function ancestors(rel: string): string[] {
  const parts = rel.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
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

function isCode(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException)?.code === code;
}

/** What the process gives a new file in staging without being asked: the umask's mode bits and the owner. */
interface Defaults {
  keep: number;
  uid: number;
  gid: number;
}

/**
 * Learns the defaults from staging itself: the umask from a probe file (it
 * cannot be read without changing it for a moment), the group from staging,
 * which a set-group-ID parent passes on. Knowing them spares a chmod or
 * chown per file that already has the archive's mode and owner.
 */
function stagingDefaults(staging: string): Defaults {
  const probe = join(staging, '.backvault-umask-probe');
  const fd = openSync(probe, CREATE_FLAGS, 0o777);
  let mode: number;
  try {
    mode = fstatSync(fd).mode & 0o777;
  } finally {
    closeSync(fd);
    rmSync(probe, { force: true });
  }
  const st = lstatSync(staging);
  const uid = process.geteuid?.() ?? st.uid;
  const gid = st.mode & 0o2000 ? st.gid : (process.getegid?.() ?? st.gid);
  return { keep: mode, uid, gid };
}

/**
 * Extracts a tar pushed to it in pieces into staging (an empty directory of
 * ours). Every entry is checked before anything is written for it. Symlinks
 * are created only by finish(), after the archive ended cleanly, so while
 * entries are written no symlink exists in staging to be written through;
 * entries below a symlink entry are refused.
 */
export class Extractor implements TarSink {
  private readonly reader = new TarReader(this);
  private readonly digest: TreeDigest;
  private readonly defaults: Defaults;
  private readonly asRoot = process.getuid?.() === 0;
  /** every directory made in staging, by relative path (explicit ones carry the archive's metadata) */
  private readonly dirs = new Map<string, Extracted>();
  private readonly links = new Map<string, Extracted>();
  private readonly list: Extracted[] | null;
  private file: { fd: number; size: number; meta: Extracted } | null = null;
  /** tree lines in archive order from the first file whose sha256 is still to come (digested() brings them) */
  private readonly waiting: TreeLine[] = [];
  /** the file lines among them still without a sha256, in order */
  private readonly unhashed: Extract<TreeLine, { kind: 'f' }>[] = [];

  constructor(
    private readonly staging: string,
    digestVersion: 1 | 2,
    keepList: boolean,
    /** set to 1 by the main thread to cancel */
    private readonly stop: Int32Array,
    /** where file bodies are hashed: here, or (SpanRecorder) by whoever decoded them */
    private readonly hashes: BodyHashes = new LocalHashes(),
  ) {
    this.digest = new TreeDigest(digestVersion);
    this.list = keepList ? [] : null;
    this.defaults = stagingDefaults(staging);
  }

  push(chunk: Buffer): void {
    this.checkStop();
    this.reader.push(chunk);
  }

  /** The input ended cleanly: checks the archive's end, creates the symlinks, applies directory metadata. */
  finish(): void {
    this.reader.end();
    this.checkStop();
    const d = this.defaults;
    for (const e of this.links.values()) {
      const abs = join(this.staging, e.rel);
      symlinkSync(e.linkname!, abs);
      if (this.asRoot && (e.uid !== d.uid || e.gid !== d.gid)) lchownSync(abs, e.uid, e.gid);
      lutimesSync(abs, e.mtime, e.mtime);
    }
    this.applyDirMeta();
  }

  /** The sha256 of the next files whose bodies were hashed elsewhere, in archive order. */
  digested(digests: readonly string[]): void {
    if (digests.length > this.unhashed.length) throw new Error(`${digests.length} file digests came for ${this.unhashed.length} files`);
    for (const d of digests) {
      if (!/^[0-9a-f]{64}$/.test(d)) throw new Error('a file digest that is not a sha256 came');
      this.unhashed.shift()!.sha256 = d;
    }
    let ready = 0;
    while (ready < this.waiting.length && !this.isUnhashed(this.waiting[ready]!)) ready++;
    for (const line of this.waiting.splice(0, ready)) this.digest.add(line);
  }

  /** What staging holds: after finish(), once no file waits for its digest. */
  result(): ExtractResult {
    if (this.unhashed.length > 0) throw new Error(`${this.unhashed.length} files still wait for their sha256`);
    return { counts: this.digest.result(), list: this.list };
  }

  /** Closes the file being written, if any (after a failure). */
  close(): void {
    if (this.file) {
      try {
        closeSync(this.file.fd);
      } catch {
        // already failing; the caller removes staging
      }
      this.file = null;
    }
  }

  private checkStop(): void {
    if (Atomics.load(this.stop, 0) !== 0) throw new AppError('cancelled');
  }

  entry(h: TarHeader): void {
    this.checkStop();
    const rel = safeRel(h.name);
    if (rel === null) return; // "./": the target itself; its metadata is not ours to change
    const kind = kindOf(h);
    const slash = rel.lastIndexOf('/');
    // A known parent was made by us below known directories: nothing above it can be a link or file.
    if (slash > 0 && !this.dirs.has(rel.slice(0, slash))) this.makeParents(rel, h.name);
    const meta: Extracted = { rel, kind, mode: h.mode & 0o7777, mtime: h.mtime, uid: h.uid, gid: h.gid };
    const abs = join(this.staging, rel);
    const twice = () => unsafe(h.name, 'appears twice');
    if (kind === 'd') {
      const existing = this.dirs.get(rel);
      if (existing) {
        if (!existing.implicit) throw twice();
        // Listed after its contents: it keeps its place in the digest and list, and gets the archive's metadata.
        Object.assign(existing, meta);
        delete existing.implicit;
        return;
      }
      if (this.links.has(rel)) throw twice();
      try {
        mkdirSync(abs, 0o700);
      } catch (err) {
        if (isCode(err, 'EEXIST')) throw twice();
        throw err;
      }
      this.added(meta);
      this.dirs.set(rel, meta);
    } else if (kind === 'l') {
      if (this.links.has(rel) || this.dirs.has(rel) || lstatSync(abs, { throwIfNoEntry: false })) throw twice();
      const link = h.linkname ?? '';
      if (link === '' || link.includes('\0')) throw unsafe(h.name, 'is a symlink without a valid target');
      meta.linkname = link;
      this.added(meta);
      this.links.set(rel, meta);
    } else {
      if (this.links.has(rel)) throw twice();
      let fd: number;
      try {
        fd = openSync(abs, CREATE_FLAGS, meta.mode & 0o777);
      } catch (err) {
        if (isCode(err, 'EEXIST')) throw twice();
        throw err;
      }
      this.file = { fd, size: 0, meta };
    }
  }

  body(chunk: Buffer): void {
    const f = this.file;
    if (!f) return; // the body of an entry that has none on disk
    for (let off = 0; off < chunk.length; ) off += writeSync(f.fd, chunk, off, chunk.length - off);
    this.hashes.update(chunk);
    f.size += chunk.length;
  }

  entryEnd(): void {
    const f = this.file;
    if (!f) return;
    const { fd, meta } = f;
    const d = this.defaults;
    const chowned = this.asRoot && (meta.uid !== d.uid || meta.gid !== d.gid);
    if (chowned) fchownSync(fd, meta.uid, meta.gid);
    // After chown, which clears set-id bits; not needed when the create gave the mode already.
    if (chowned || (meta.mode & d.keep) !== meta.mode) fchmodSync(fd, meta.mode);
    futimesSync(fd, meta.mtime, meta.mtime);
    // No fsync per file: the caller flushes the whole file system once at the end.
    this.file = null;
    closeSync(fd);
    const sha256 = this.hashes.end();
    const line = { kind: 'f' as const, path: meta.rel, size: f.size, sha256: sha256 ?? '' };
    if (sha256 === null) this.unhashed.push(line);
    this.line(line);
    this.list?.push(meta);
  }

  private added(meta: Extracted): void {
    this.line(meta.kind === 'l' ? { kind: 'l', path: meta.rel, target: meta.linkname! } : { kind: 'd', path: meta.rel });
    this.list?.push(meta);
  }

  /** Into the digest now, or behind a line that waits (the digest takes lines in archive order). */
  private line(line: TreeLine): void {
    if (this.waiting.length === 0 && !this.isUnhashed(line)) this.digest.add(line);
    else this.waiting.push(line);
  }

  /** A file line whose sha256 is still to come ('' until digested() sets it). */
  private isUnhashed(line: TreeLine): boolean {
    return line.kind === 'f' && line.sha256 === '';
  }

  /** Checks the directories above rel top-down and makes the missing ones (implicit directories). */
  private makeParents(rel: string, name: string): void {
    for (const a of ancestors(rel)) {
      if (this.dirs.has(a)) continue;
      if (this.links.has(a)) throw unsafe(name, `lies below the symlink ${JSON.stringify(a)}`);
      const abs = join(this.staging, a);
      // Not a directory of ours, yet there: a file the archive put there.
      if (lstatSync(abs, { throwIfNoEntry: false })) throw unsafe(name, `lies below ${JSON.stringify(a)}, which is not a directory`);
      mkdirSync(abs, 0o700);
      const meta: Extracted = { rel: a, kind: 'd', mode: 0o755, mtime: Date.now() / 1000, uid: this.defaults.uid, gid: this.defaults.gid, implicit: true };
      this.added(meta);
      this.dirs.set(a, meta);
    }
  }

  /**
   * Directory metadata last and deepest first: writing inside a directory
   * changes its mtime, and a read-only mode would stop the writes.
   */
  private applyDirMeta(): void {
    const explicit = [...this.dirs.values()].filter((e) => !e.implicit);
    const depth = (e: Extracted) => e.rel.split('/').length;
    explicit.sort((a, b) => depth(b) - depth(a));
    for (const e of explicit) {
      this.checkStop();
      const abs = join(this.staging, e.rel);
      if (this.asRoot) chownSync(abs, e.uid, e.gid);
      chmodSync(abs, e.mode);
      utimesSync(abs, e.mtime, e.mtime);
    }
  }
}
