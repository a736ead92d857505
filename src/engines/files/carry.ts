// Full in-place restore and the resource's own include/exclude options: what
// the options leave out was never in any backup, so "make the target equal to
// the backup" must not delete it (rsync --delete keeps excluded paths too).
// Before the swap, those paths of the current target are moved into the
// staged tree (renames on one file system: no copy, no symlink ever followed),
// and the swap keeps them. Paths the options cover and the backup lacks still
// go. Where the backup has something at a left-out path (or a file or link
// above it), the backup wins.
import type { Stats } from 'node:fs';
import { chmod, chown, lstat, mkdir, readdir, rename, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AppError } from '../../errors/index.ts';
import { fsyncDir } from '../../platform/fs.ts';
import type { PathFilter } from './select.ts';
import { byteCompare } from './tree.ts';

const AS_ROOT = process.getuid?.() === 0;

type Op = { kind: 'mkdir'; rel: string; st: Stats } | { kind: 'move'; rel: string; st: Stats };

export interface CarryPlan {
  ops: Op[];
  /** left-out paths of the target that the backup replaces (it has something at them, or a file or link above them) */
  replaced: string[];
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

/**
 * Finds the target's left-out paths and how to carry them into staging,
 * changing nothing. A left-out directory moves whole (its contents are left
 * out too) unless the backup also has a directory there: then its children
 * are carried one by one. A directory the options do not take but may take
 * something below (include "a/b/**" and directory "a") is entered, and it is
 * made in staging, with the target's metadata, only when something is
 * carried into it. Taken directories are entered only where an exclusion may
 * match below them. Honours the signal: nothing has moved yet.
 */
export async function planCarry(target: string, staging: string, filter: PathFilter, skip: Set<string>, signal: AbortSignal): Promise<CarryPlan> {
  const ops: Op[] = [];
  const replaced: string[] = [];
  const rootDev = (await lstat(target)).dev;
  type Pending = { rel: string; st: Stats; emitted: boolean };
  /** what staging has at the directory being visited: that directory, nothing, or a file or link at or above it */
  type Where = 'dir' | 'absent' | 'blocked';

  const visit = async (dirRel: string, where: Where, pending: Pending[], leftOut: boolean, inherited: boolean[]): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(join(target, dirRel));
    } catch (err) {
      if (isNotFound(err) && dirRel !== '') return; // gone meanwhile: nothing to carry
      throw err;
    }
    names.sort(byteCompare);
    for (const name of names) {
      if (signal.aborted) throw new AppError('cancelled');
      if (dirRel === '' && skip.has(name)) continue;
      const rel = dirRel === '' ? name : `${dirRel}/${name}`;
      const st = await lstatOrNull(join(target, rel));
      if (!st) continue;
      const isDir = st.isDirectory();
      let out = leftOut;
      let taken = inherited;
      let mixed = false;
      if (!out) {
        if (filter.excluded(rel)) out = true;
        else {
          taken = filter.taken(rel, inherited);
          if (!taken.every(Boolean)) {
            if (isDir && filter.mayContain(rel, taken)) mixed = true;
            else out = true;
          }
        }
      }
      const there = where === 'dir' ? await lstatOrNull(join(staging, rel)) : null;
      if (out) {
        if (where === 'blocked' || (there !== null && !(there.isDirectory() && isDir))) {
          replaced.push(rel);
        } else if (there === null) {
          if (st.dev !== rootDev) {
            throw new AppError(
              'engine_failed',
              `${join(target, rel)} is left out of backups by the resource's options and is another file system (a mount point), which a full in-place restore cannot keep; nothing was changed. Unmount it for the restore, or restore into a new target.`,
            );
          }
          for (const p of pending) {
            if (p.emitted) continue;
            p.emitted = true;
            ops.push({ kind: 'mkdir', rel: p.rel, st: p.st });
          }
          ops.push({ kind: 'move', rel, st });
        } else {
          await visit(rel, 'dir', [], true, taken);
        }
      } else if (isDir && (mixed || filter.mayExcludeBelow(rel))) {
        const next: Where = where === 'blocked' ? 'blocked' : there === null ? 'absent' : there.isDirectory() ? 'dir' : 'blocked';
        await visit(rel, next, next === 'absent' ? [...pending, { rel, st, emitted: false }] : [], false, taken);
      }
    }
  };
  await visit('', 'dir', [], false, filter.rootInherited());
  return { ops, replaced };
}

interface DirMeta {
  mode: number;
  atime: Date;
  mtime: Date;
}

/**
 * Runs a plan, and can undo it. It does not stop for cancellation: the moves
 * are quick, and undo() puts everything back if the restore fails later.
 */
export class Carrier {
  /** rels moved from target into staging, in order */
  readonly moved: string[] = [];
  /** directories whose mode (to let us rename in or out) and times (renames change them) are put back afterwards */
  private saved = new Map<string, DirMeta>();

  constructor(
    private readonly target: string,
    private readonly staging: string,
    private readonly plan: CarryPlan,
  ) {}

  /** Records a directory's metadata once and, when not root, lets its owner write and search it. */
  private async open(dir: string): Promise<void> {
    if (this.saved.has(dir)) return;
    const st = await lstat(dir);
    this.saved.set(dir, { mode: st.mode & 0o7777, atime: st.atime, mtime: st.mtime });
    if (!AS_ROOT && (st.mode & 0o300) !== 0o300) await chmod(dir, (st.mode & 0o7777) | 0o300);
  }

  /** Renames one entry; a directory moving to another parent must itself be writable (its ".." changes). */
  private async move(from: string, to: string, st: Stats): Promise<void> {
    await this.open(dirname(from));
    await this.open(dirname(to));
    const fix = !AS_ROOT && st.isDirectory() && (st.mode & 0o200) === 0;
    if (fix) await chmod(from, (st.mode & 0o7777) | 0o200);
    try {
      await rename(from, to);
    } finally {
      if (fix) await chmod((await lstatOrNull(to)) ? to : from, st.mode & 0o7777);
    }
  }

  /** Puts back the recorded metadata (deepest first) and syncs the directories; best effort on the target side. */
  private async close(): Promise<void> {
    const dirs = [...this.saved.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    this.saved = new Map();
    for (const [dir, m] of dirs) {
      const ours = dir === this.staging || dir.startsWith(`${this.staging}/`);
      try {
        await fsyncDir(dir);
        await utimes(dir, m.atime, m.mtime);
        await chmod(dir, m.mode);
      } catch (err) {
        if (ours) throw err;
      }
    }
  }

  async run(): Promise<void> {
    const made: Op[] = [];
    for (const op of this.plan.ops) {
      const dst = join(this.staging, op.rel);
      if (op.kind === 'mkdir') {
        await this.open(dirname(dst));
        await mkdir(dst, { mode: 0o700 });
        made.push(op);
        continue;
      }
      try {
        await this.move(join(this.target, op.rel), dst, op.st);
      } catch (err) {
        if (isNotFound(err) && !(await lstatOrNull(join(this.target, op.rel)))) continue; // gone meanwhile
        throw new AppError('engine_failed', `Keeping ${join(this.target, op.rel)}, which the resource's options leave out of backups, failed: ${(err as Error).message}`, undefined, { cause: err });
      }
      this.moved.push(op.rel);
    }
    // Directories made here take the target's metadata, deepest first, after everything has moved into them.
    for (const op of made.reverse()) {
      const abs = join(this.staging, op.rel);
      this.saved.delete(abs);
      await fsyncDir(abs);
      if (AS_ROOT) await chown(abs, op.st.uid, op.st.gid);
      await utimes(abs, op.st.atime, op.st.mtime);
      await chmod(abs, op.st.mode & 0o7777);
    }
    await this.close();
  }

  /** Moves everything back into the target, never over something there. Returns the rels that could not be. */
  async undo(): Promise<string[]> {
    const failed: string[] = [];
    for (const rel of [...this.moved].reverse()) {
      const from = join(this.staging, rel);
      const to = join(this.target, rel);
      try {
        const st = await lstat(from);
        if (await lstatOrNull(to)) throw new Error('something else is there now');
        await this.move(from, to, st);
      } catch {
        failed.push(rel);
      }
    }
    await this.close().catch(() => {});
    return failed;
  }
}
