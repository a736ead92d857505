// What a file tree holds, described the same way at dump and at restore:
// "d/f/l" lines whose sha256 is the tree's fingerprint (tree_sha256). The
// walk never follows symlinks, so nothing outside the tree is ever read.
//
// Two definitions of the fingerprint exist, told apart by the files engine's
// format version in the manifest:
// - v1 (format 1) hashes the lines sorted by full path. Dump order is the
//   walk's, which differs ("a/b" walks before "a-c" but sorts after it), so
//   every line had to be kept until the end: memory grew with file count.
// - v2 (format 2) hashes the lines in archive order, which is the walk's
//   order: depth first, siblings in byte order, a directory before its
//   contents. Dump and restore hash each line as it passes and keep nothing.
//   A restore hashes in the order it reads the archive, so the digest also
//   proves the entries came in the order they were written.
import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { ObjectCounts } from '../../domain/types.ts';
import { AppError } from '../../errors/index.ts';
import type { PathFilter } from './select.ts';

export type TreeLine =
  | { kind: 'd'; path: string }
  | { kind: 'f'; path: string; size: number; sha256: string }
  | { kind: 'l'; path: string; target: string };

/** Byte order of the UTF-8 encodings (what `LC_ALL=C sort` does), the same on every platform. */
export function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function lineText(l: TreeLine): string {
  switch (l.kind) {
    case 'd':
      return `d ${l.path}`;
    case 'f':
      return `f ${l.path} ${l.size} ${l.sha256}`;
    case 'l':
      return `l ${l.path} ${l.target}`;
  }
}

/** Counts and the v1 tree_sha256 (lines sorted by path) of a set of lines. */
export function summarize(lines: TreeLine[]): ObjectCounts {
  const keyed = lines.map((l) => ({ key: Buffer.from(l.path, 'utf8'), l }));
  keyed.sort((a, b) => Buffer.compare(a.key, b.key));
  const hash = createHash('sha256');
  let files = 0;
  let directories = 0;
  let symlinks = 0;
  let bytes = 0;
  for (const { l } of keyed) {
    hash.update(`${lineText(l)}\n`);
    if (l.kind === 'd') directories++;
    else if (l.kind === 'l') symlinks++;
    else {
      files++;
      bytes += l.size;
    }
  }
  return { files, directories, symlinks, bytes, tree_sha256: hash.digest('hex') };
}

/**
 * Counts entries and computes tree_sha256 as lines arrive. Version 2 hashes
 * each line at once (constant memory); version 1 keeps the lines for the
 * sorted hash of summarize(), for artifacts written in format 1.
 */
export class TreeDigest {
  private readonly hash = createHash('sha256');
  private readonly kept: TreeLine[] = [];
  private files = 0;
  private directories = 0;
  private symlinks = 0;
  private bytes = 0;

  constructor(readonly version: 1 | 2) {}

  add(line: TreeLine): void {
    if (this.version === 1) {
      this.kept.push(line);
      return;
    }
    this.hash.update(`${lineText(line)}\n`);
    if (line.kind === 'd') this.directories++;
    else if (line.kind === 'l') this.symlinks++;
    else {
      this.files++;
      this.bytes += line.size;
    }
  }

  /** The counts; call once, after the last line. */
  result(): ObjectCounts {
    if (this.version === 1) return summarize(this.kept);
    return { files: this.files, directories: this.directories, symlinks: this.symlinks, bytes: this.bytes, tree_sha256: this.hash.digest('hex') };
  }
}

/** The digest version an artifact of the given files format version carries. */
export function digestVersionOf(formatVersion: number): 1 | 2 {
  return formatVersion >= 2 ? 2 : 1;
}

export interface WalkEntry {
  /** relative path, '/'-separated, no leading './' */
  rel: string;
  abs: string;
  stat: Stats;
  kind: 'd' | 'f' | 'l' | 'other';
}

function kindOf(st: Stats): WalkEntry['kind'] {
  if (st.isDirectory()) return 'd';
  if (st.isFile()) return 'f';
  if (st.isSymbolicLink()) return 'l';
  return 'other';
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/** A settled result, kept until it is wanted; unwrap() throws the failure. */
export class Settled<T> {
  private constructor(
    private readonly ok: boolean,
    private readonly value: T | undefined,
    private readonly error: unknown,
  ) {}

  static of<T>(p: Promise<T>): Promise<Settled<T>> {
    return p.then(
      (v) => new Settled<T>(true, v, undefined),
      (e: unknown) => new Settled<T>(false, undefined, e),
    );
  }

  unwrap(): T {
    if (!this.ok) throw this.error;
    return this.value as T;
  }
}

/**
 * Runs fn over items with up to `ahead` calls in flight and yields the
 * results in the items' order: the thread pool works on the next entries
 * while the caller handles this one. A caller that stops early leaves at
 * most `ahead` calls running, whose failures are already caught.
 */
export async function* inOrder<T, R>(items: T[], ahead: number, fn: (item: T) => Promise<R>): AsyncGenerator<[T, Settled<R>]> {
  const running: Promise<Settled<R>>[] = [];
  let next = 0;
  for (let i = 0; i < items.length; i++) {
    while (next < items.length && next < i + ahead) running.push(Settled.of(fn(items[next++]!)));
    yield [items[i]!, await running.shift()!];
  }
}

/** lstat calls in flight while a directory is walked. */
const STAT_AHEAD = 32;

/**
 * Walks root depth-first in sorted order and calls onEntry for every entry
 * the filter takes (without a filter: all). A directory the filter does not
 * take itself is still entered when something below it may be taken, and it
 * is reported just before the first such entry, so a tar always has a
 * directory before its contents. Excluded directories are not entered.
 */
export async function walkTree(
  root: string,
  filter: PathFilter | null,
  onEntry: (e: WalkEntry) => Promise<void>,
  warn: (msg: string) => void,
  signal?: AbortSignal,
): Promise<void> {
  type Pending = { entry: WalkEntry; emitted: boolean };
  const flush = async (pending: Pending[]) => {
    for (const p of pending) {
      if (!p.emitted) {
        p.emitted = true;
        await onEntry(p.entry);
      }
    }
  };

  const visit = async (dirAbs: string, dirRel: string, pending: Pending[], inherited: boolean[]): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dirAbs);
    } catch (err) {
      if (isNotFound(err) && dirRel !== '') {
        warn(`directory ${dirRel} disappeared during the backup; skipped`);
        return;
      }
      throw new AppError('engine_failed', `Cannot read the directory ${dirAbs}: ${(err as Error).message}`, undefined, { cause: err });
    }
    names.sort(byteCompare);
    const todo: { name: string; rel: string; abs: string }[] = [];
    for (const name of names) {
      const rel = dirRel === '' ? name : `${dirRel}/${name}`;
      if (!filter?.excluded(rel)) todo.push({ name, rel, abs: join(dirAbs, name) });
    }
    for await (const [{ name, rel, abs }, stat] of inOrder(todo, STAT_AHEAD, (t) => lstat(t.abs))) {
      if (signal?.aborted) throw new AppError('cancelled');
      let st: Stats;
      try {
        st = stat.unwrap();
      } catch (err) {
        if (!isNotFound(err)) throw new AppError('engine_failed', `Cannot stat ${abs}: ${(err as Error).message}`, undefined, { cause: err });
        // Node decodes names as UTF-8; a name that is not valid UTF-8 cannot be opened by its decoded form.
        warn(name.includes('\uFFFD') ? `${rel}: the name is not valid UTF-8; skipped` : `${rel} disappeared during the backup; skipped`);
        continue;
      }
      const entry: WalkEntry = { rel, abs, stat: st, kind: kindOf(st) };
      const taken = filter ? filter.taken(rel, inherited) : null;
      const isTaken = taken === null || taken.every(Boolean);
      if (entry.kind === 'd') {
        if (isTaken) {
          await flush(pending);
          await onEntry(entry);
          await visit(abs, rel, [], taken ?? []);
        } else if (filter!.mayContain(rel, taken!)) {
          await visit(abs, rel, [...pending, { entry, emitted: false }], taken!);
        }
      } else if (isTaken) {
        // A socket or device is skipped by the caller: it alone does not bring its directories in.
        if (entry.kind !== 'other') await flush(pending);
        await onEntry(entry);
      }
    }
  };
  await visit(root, '', [], filter ? filter.rootInherited() : []);
}
