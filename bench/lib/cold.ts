// Every timed operation of the benches starts the same way: the disks quiet
// and the page cache empty (root only).
import { readFile, writeFile } from 'node:fs/promises';
import { sh } from './sh.ts';

/**
 * Waits until the disks are quiet: sync, then until /proc/diskstats stops
 * changing for a second (at most 2 minutes). The root file system here is
 * ext4 mounted with `discard`: deleting a 1 GB tree or dropping a database
 * sends its TRIMs at the next journal commit, and whatever runs then paid for
 * them (kernel time per openat rose from ~0.1 to ~0.8 ms). Without this, the
 * second of a pair was measured with the first one's clean-up and files
 * ratios swung between 0.4x and 4x from one repetition to the next.
 * Then empties the page cache (dropPageCache). Called just before every
 * timed operation, Backvault's and the references'.
 */
export async function settleDisk(): Promise<void> {
  await sh('sync');
  await dropPageCache();
  const deadline = Date.now() + 120_000;
  let last = await readFile('/proc/diskstats', 'utf8');
  let quietSince = Date.now();
  while (Date.now() < deadline && Date.now() - quietSince < 1000) {
    await new Promise((r) => setTimeout(r, 250));
    const now = await readFile('/proc/diskstats', 'utf8');
    if (now !== last) {
      last = now;
      quietSince = Date.now();
    }
  }
}

/**
 * Empties the kernel's page cache (root only: the bench refuses to run
 * without it), so every operation starts cold, on both sides. With a warm
 * cache the first reader of a pair read the tree from disk and the second
 * from memory, and the second restore of a pair paid for reclaiming the
 * first one's pages in kernel time (the same restore took 13 s of CPU first
 * and 37 s second). Dropping it before the files operations only made the
 * next database operation the cold one instead. A backup service reads cold
 * data in practice anyway.
 */
export async function dropPageCache(): Promise<void> {
  await writeFile('/proc/sys/vm/drop_caches', '3\n').catch((e: Error) => {
    throw new Error(`cannot drop the page cache (the files benchmarks need root): ${e.message}`);
  });
}
