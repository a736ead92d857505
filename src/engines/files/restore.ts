// Extracts a tar into a private staging directory, refusing anything that
// could write outside it, then makes the result visible: a whole-tree swap
// (full restore) or per-entry renames into the target (partial overlay).
// The extraction runs in a worker thread with synchronous file system calls
// (restore-pool.ts, extract-sync.ts).
import { chmod, chown, lstat, mkdir, readdir, rename, rm, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { fsyncDir, syncFileSystem, whileFlushing } from '../../platform/fs.ts';
import type { DecodeSpec } from '../../platform/decoder.ts';
import { PhaseTimer } from '../../platform/phases.ts';
import { ancestors, type Extracted, type ExtractResult, unsafe } from './extract-sync.ts';
import { extractInWorker } from './restore-pool.ts';
import { byteCompare } from './tree.ts';

export type { Extracted };
export { restoreWorkerPool } from './restore-pool.ts';

/** Ownership can only be given away by root; anyone else keeps their own. */
const AS_ROOT = process.getuid?.() === 0;

/** Metadata calls (directories) in flight. */
const META_CALLS = 16;

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

/**
 * Extracts input into staging (an empty directory of ours) and returns the
 * counts of what it wrote, with the entries in archive order when keepList
 * (a partial overlay needs them; a full restore keeps memory flat without).
 * Everything is flushed to disk before it returns. Fails, with staging
 * quiet, if the input errors, even at its very end.
 */
export async function extractInto(
  staging: string,
  input: Readable,
  digestVersion: 1 | 2,
  signal: AbortSignal,
  keepList = false,
  phases = new PhaseTimer(),
  decode?: DecodeSpec,
): Promise<ExtractResult> {
  // Flushed in the background while it is written, so the one syncfs below has little left to do.
  const result = await phases.time('extract', () => whileFlushing(staging, () => extractInWorker(staging, input, digestVersion, keepList, signal, decode)));
  // One syncfs for every file and directory written, before anything is renamed into view.
  await phases.time('sync', () => syncFileSystem(staging));
  return result;
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
