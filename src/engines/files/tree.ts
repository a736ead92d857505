// What a file tree holds, described the same way at dump and at restore:
// "d/f/l" lines whose sha256 is the tree's fingerprint (tree_sha256). The
// walk (walk-sync.ts) never follows symlinks, so nothing outside the tree is
// ever read.
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
import type { ObjectCounts } from '../../domain/types.ts';

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
