// Keeps a mass removal from being measured into the next file-creating
// operation.
//
// On ext4 without a journal (this machine's root file system), allocating an
// inode skips every free inode of the group whose inode-table block is in the
// buffer cache and says it was deleted recently: within 60 s, or 360 s while
// that block is dirty (fs/ext4/ialloc.c, recently_deleted(): RECENTCY_MIN 60
// plus RECENTCY_DIRTY 300), and a block is dirty again as soon as a new inode
// in it is written. It checks the candidates one at a time, so creating files
// among many just-freed inodes can cost far more kernel time. How much is
// hard to predict: in one ad hoc case (session 5, after several trees had
// been removed within minutes) `perf record -a` of a files restore had 20% of
// all samples in find_inode_bit/recently_deleted, and it took 9.3 s (6.8 s
// system) against 3.4-3.7 s (1.4-1.5 s) without removals before; and
// bench/recent-deletes.ts, which times `tar -x` right after removing one tree
// of the same size, found 1.9x and 4.2x the quiet time in one session and no
// difference in another (figures in bench/RESULTS-full.md). So the benches do
// not try to size the effect; they remove the confound: every restore writes
// a fresh directory, trees are removed at the end, and before each files
// restore this guard waits out the window after any tree that was removed
// all the same.
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sh } from './sh.ts';

/** ext4's longest window (60 s + 300 s while the inode-table block is dirty), and a margin. */
export const RECENT_DELETE_MS = 370_000;

/**
 * When the last tree was removed, by this process or an earlier bench
 * script (one bench's final clean-up must not land in the next one's
 * restores). A removal made by hand is not known: wait 6 minutes after it.
 */
const MARK = join(tmpdir(), 'backvault-bench-last-removal');

/** Removes a tree (if it is there) and notes when, for awaitDeletionsAged. */
export async function removeTree(path: string): Promise<void> {
  const existed = await stat(path).then(
    () => true,
    () => false,
  );
  await rm(path, { recursive: true, force: true });
  if (existed) await writeFile(MARK, String(Date.now()));
}

async function lastRemovalAt(): Promise<number> {
  try {
    return Number(await readFile(MARK, 'utf8')) || 0;
  } catch {
    return 0;
  }
}

/** Syncs, then waits until the last removeTree is older than ext4's recently-deleted window; returns the ms waited. */
export async function awaitDeletionsAged(): Promise<number> {
  await sh('sync');
  const wait = Math.max(0, (await lastRemovalAt()) + RECENT_DELETE_MS - Date.now());
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  return wait;
}
