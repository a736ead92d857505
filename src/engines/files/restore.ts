// Extracts a tar into a private staging directory, refusing anything that
// could write outside it, then makes the result visible: a whole-tree swap
// (full restore) or per-entry renames into the target (partial overlay).
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, symlink, chmod, chown, lchown, lutimes, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { AppError } from '../../errors/index.ts';
import { fsyncDir, syncFileSystem } from '../../platform/fs.ts';
import { byteCompare } from './tree.ts';

type TarHeader = tar.Header;

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
}

/** Ownership can only be given away by root; anyone else keeps their own. */
const AS_ROOT = process.getuid?.() === 0;

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

async function writeAll(fh: Awaited<ReturnType<typeof open>>, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) {
    const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
    off += bytesWritten;
  }
}

/**
 * Extracts input into staging (an empty directory of ours) and returns its
 * entries in archive order. Every entry is checked before anything is written
 * for it. Symlinks are created only after the archive ended cleanly, so while
 * entries are written no symlink exists in staging to be written through;
 * entries below a symlink entry are refused.
 */
export async function extractInto(staging: string, input: Readable, signal: AbortSignal): Promise<Extracted[]> {
  const entries = new Map<string, Extracted>();
  const extract = tar.extract();
  const feed = pipeline(input, extract, { signal });
  // Awaited below; until then its rejection must not count as unhandled.
  feed.catch(() => {});

  for await (const entry of extract) {
    const h = entry.header;
    const rel = safeRel(h.name);
    if (rel === null) {
      entry.resume(); // "./": the target itself; its metadata is not ours to change
      continue;
    }
    const kind = kindOf(h);
    for (const a of ancestors(rel)) {
      const e = entries.get(a);
      if (e && e.kind === 'l') throw unsafe(h.name, `lies below the symlink ${JSON.stringify(a)}`);
      if (e && e.kind !== 'd') throw unsafe(h.name, `lies below ${JSON.stringify(a)}, which is not a directory`);
    }
    const existing = entries.get(rel);
    if (existing && !(existing.implicit && kind === 'd')) throw unsafe(h.name, 'appears twice');

    for (const a of ancestors(rel)) {
      if (entries.has(a)) continue;
      await mkdir(join(staging, a), { mode: 0o700 });
      entries.set(a, { rel: a, kind: 'd', mode: 0o755, mtime: new Date(), uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, implicit: true });
    }
    const abs = join(staging, rel);
    // Paranoia on top of the bookkeeping above: the parent must be a real directory.
    if (!(await lstat(dirname(abs))).isDirectory()) throw unsafe(h.name, 'has a parent that is not a directory');

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
      entries.delete(rel); // re-insert: keep archive order for an implicit directory made explicit
      entries.set(rel, meta);
      entry.resume();
    } else if (kind === 'l') {
      const link = h.linkname ?? '';
      if (link === '' || link.includes('\0')) throw unsafe(h.name, 'is a symlink without a valid target');
      entries.set(rel, { ...meta, linkname: link });
      entry.resume();
    } else {
      entries.set(rel, meta);
      // O_EXCL and O_NOFOLLOW: never open anything that already exists, least of all a link.
      const fh = await open(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        for await (const chunk of entry) await writeAll(fh, chunk as Buffer);
        if (AS_ROOT) await fh.chown(meta.uid, meta.gid);
        // After chown, which clears set-id bits.
        await fh.chmod(meta.mode);
        await fh.utimes(meta.mtime, meta.mtime);
        // No fsync per file: applyDirMeta flushes the whole file system once at the end.
      } finally {
        await fh.close();
      }
    }
  }
  // The input may fail only at its end (checksum); nothing is made visible before this.
  await feed;

  const list = [...entries.values()];
  for (const e of list) {
    if (e.kind !== 'l') continue;
    const abs = join(staging, e.rel);
    await symlink(e.linkname!, abs);
    if (AS_ROOT) await lchown(abs, e.uid, e.gid);
    await lutimes(abs, e.mtime, e.mtime);
  }
  await applyDirMeta(staging, list);
  return list;
}

/** Directory metadata last and deepest first: writing inside a directory changes its mtime, and a read-only mode would stop the writes. */
async function applyDirMeta(root: string, list: Extracted[], onlyExplicit = false): Promise<void> {
  const dirs = list.filter((e) => e.kind === 'd' && !(onlyExplicit && e.implicit));
  dirs.sort((a, b) => b.rel.split('/').length - a.rel.split('/').length);
  for (const d of dirs) {
    const abs = join(root, d.rel);
    if (d.implicit) continue;
    if (AS_ROOT) await chown(abs, d.uid, d.gid);
    await chmod(abs, d.mode);
    await utimes(abs, d.mtime, d.mtime);
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
  await applyDirMeta(target, sorted, true);
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
