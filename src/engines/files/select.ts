// Which paths of a tree a files resource and a backup take: path globs
// (picomatch, relative to the resource's directory, dotfiles included).
// A path is taken when it, or a directory above it, matches every given
// list (the resource's `include` option, the backup's selection), and
// neither it nor a directory above it matches an exclusion.
import picomatch from 'picomatch';
import { AppError, type ErrorCode } from '../../errors/index.ts';

const GLOB_OPTIONS = { dot: true } as const;

/** Normalizes one glob, or explains why it can never match a path in the tree. */
function normalizeGlob(glob: unknown): { glob: string } | { problem: string } {
  if (typeof glob !== 'string' || glob.trim() === '') return { problem: 'is not a non-empty string' };
  if (glob.includes('\0')) return { problem: 'holds a NUL byte' };
  if (glob.startsWith('/')) return { problem: 'is absolute; paths are relative to the directory' };
  if (glob.startsWith('!')) return { problem: 'is negated; list it under exclude instead' };
  let g = glob;
  while (g.startsWith('./')) g = g.slice(2);
  while (g.length > 1 && g.endsWith('/')) g = g.slice(0, -1);
  if (g.split('/').includes('..')) return { problem: 'leaves the directory with ..' };
  return { glob: g };
}

/** Checks a list of globs; throws AppError(code) naming the bad ones. */
export function checkGlobs(list: unknown, what: string, code: ErrorCode): string[] {
  if (!Array.isArray(list)) throw new AppError(code, `${what} must be a list of path globs relative to the directory.`);
  const out: string[] = [];
  const bad: string[] = [];
  for (const g of list) {
    const r = normalizeGlob(g);
    if ('problem' in r) bad.push(`${JSON.stringify(g)} ${r.problem}`);
    else out.push(r.glob);
  }
  if (bad.length > 0) throw new AppError(code, `${what}: ${bad.join('; ')}.`, { invalid: bad });
  return out;
}

class GlobSet {
  private readonly match: (p: string) => boolean;
  /** each glob's literal leading directories: only under (or above) them can it match */
  private readonly bases: string[];

  constructor(globs: string[]) {
    this.match = picomatch(globs, GLOB_OPTIONS);
    this.bases = globs.map((g) => picomatch.scan(g).base);
  }

  matches(rel: string): boolean {
    return this.match(rel);
  }

  /** Whether something under directory rel may match (a cheap test on literal prefixes). */
  mayContain(rel: string): boolean {
    return this.bases.some((b) => b === '' || b === rel || b.startsWith(`${rel}/`) || rel.startsWith(`${b}/`));
  }
}

export class PathFilter {
  private readonly sets: GlobSet[];
  private readonly exclude: ((p: string) => boolean) | null;
  private readonly excludeSet: GlobSet | null;
  /** which globs matched nothing, to warn about them */
  private readonly unused: Map<string, (p: string) => boolean>;

  /**
   * Each list in `takes` is null (everything) or globs; a path must be taken
   * by all of them. Both are kept as given: a worker thread builds its own
   * filter from them.
   */
  constructor(
    readonly takes: (string[] | null)[],
    readonly excludes: string[],
  ) {
    const exclude = excludes;
    const lists = takes.filter((t): t is string[] => t !== null);
    this.sets = lists.map((g) => new GlobSet(g));
    this.exclude = exclude.length > 0 ? picomatch(exclude, GLOB_OPTIONS) : null;
    this.excludeSet = exclude.length > 0 ? new GlobSet(exclude) : null;
    this.unused = new Map(lists.flat().map((g) => [g, picomatch(g, GLOB_OPTIONS)]));
  }

  /** Excluded paths are left out and, for directories, not entered. */
  excluded(rel: string): boolean {
    return this.exclude !== null && this.exclude(rel);
  }

  /** Whether an exclusion may match something below directory rel (a cheap test on literal prefixes). */
  mayExcludeBelow(rel: string): boolean {
    return this.excludeSet !== null && this.excludeSet.mayContain(rel);
  }

  rootInherited(): boolean[] {
    return this.sets.map(() => false);
  }

  /** Per list: whether rel is taken, given whether its parent already was. */
  taken(rel: string, inherited: boolean[]): boolean[] {
    return this.sets.map((s, i) => {
      if (inherited[i]) return true;
      if (!s.matches(rel)) return false;
      for (const [g, m] of this.unused) if (m(rel)) this.unused.delete(g);
      return true;
    });
  }

  mayContain(rel: string, taken: boolean[]): boolean {
    return this.sets.every((s, i) => taken[i] || s.mayContain(rel));
  }

  /** Globs that matched no path so far. */
  unmatched(): string[] {
    return [...this.unused.keys()];
  }
}
