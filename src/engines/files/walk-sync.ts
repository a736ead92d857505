// The dump's walk of a tree, with synchronous calls: it runs in the dump
// worker thread (dump-worker.ts), where a blocking lstat costs one system
// call instead of a trip through libuv's thread pool. Its order is the one
// the v2 tree digest (tree.ts) and the archive use: depth first, siblings in
// byte order, a directory before its contents. Symlinks are never followed.
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { AppError } from '../../errors/index.ts';
import type { PathFilter } from './select.ts';
import { byteCompare } from './tree.ts';

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

// UTF-16 code unit order is UTF-8 byte order unless a surrogate or a code
// point from U+E000 up is involved; the plain sort spares a Buffer per comparison.
const OUT_OF_ORDER = /[\uD800-\uFFFF]/;

/** Sorts names in the byte order of their UTF-8 encodings (byteCompare). */
export function sortNames(names: string[]): void {
  if (names.some((n) => OUT_OF_ORDER.test(n))) names.sort(byteCompare);
  else names.sort();
}

/**
 * Walks root and calls onEntry for every entry the filter takes. A directory
 * the filter does not take itself is still entered when something below it
 * may be taken, and is reported just before the first such entry, so a tar
 * always has a directory before its contents. Excluded directories are not
 * entered. check() runs before each entry (cancellation).
 */
export function walkSync(root: string, filter: PathFilter, onEntry: (e: WalkEntry) => void, warn: (msg: string) => void, check: () => void): void {
  type Pending = { entry: WalkEntry; emitted: boolean };
  const flush = (pending: Pending[]) => {
    for (const p of pending) {
      if (!p.emitted) {
        p.emitted = true;
        onEntry(p.entry);
      }
    }
  };

  const visit = (dirAbs: string, dirRel: string, pending: Pending[], inherited: boolean[]): void => {
    let names: string[];
    try {
      names = readdirSync(dirAbs);
    } catch (err) {
      if (isNotFound(err) && dirRel !== '') {
        warn(`directory ${dirRel} disappeared during the backup; skipped`);
        return;
      }
      throw new AppError('engine_failed', `Cannot read the directory ${dirAbs}: ${(err as Error).message}`, undefined, { cause: err });
    }
    sortNames(names);
    const base = dirAbs === '/' ? '' : dirAbs;
    for (const name of names) {
      const rel = dirRel === '' ? name : `${dirRel}/${name}`;
      if (filter.excluded(rel)) continue;
      check();
      // readdir never yields "." or "..", and names hold no "/": plain concatenation is join().
      const abs = `${base}/${name}`;
      let st: Stats;
      try {
        st = lstatSync(abs);
      } catch (err) {
        if (!isNotFound(err)) throw new AppError('engine_failed', `Cannot stat ${abs}: ${(err as Error).message}`, undefined, { cause: err });
        // Node decodes names as UTF-8; a name that is not valid UTF-8 cannot be opened by its decoded form.
        warn(name.includes('\uFFFD') ? `${rel}: the name is not valid UTF-8; skipped` : `${rel} disappeared during the backup; skipped`);
        continue;
      }
      const entry: WalkEntry = { rel, abs, stat: st, kind: kindOf(st) };
      const taken = filter.taken(rel, inherited);
      const isTaken = taken.every(Boolean);
      if (entry.kind === 'd') {
        if (isTaken) {
          flush(pending);
          onEntry(entry);
          visit(abs, rel, [], taken);
        } else if (filter.mayContain(rel, taken)) {
          visit(abs, rel, [...pending, { entry, emitted: false }], taken);
        }
      } else if (isTaken) {
        // A socket or device is skipped by the caller: it alone does not bring its directories in.
        if (entry.kind !== 'other') flush(pending);
        onEntry(entry);
      }
    }
  };
  visit(root, '', [], filter.rootInherited());
}
