// Why the bench keeps restored trees until the end (lib/deleted-inodes.ts):
// the same `tar -x` of a tree into a fresh directory, timed
//   quiet:          no tree removed in the last 370 s
//   just removed:   right after a tree of the same size was removed (and synced)
//   window passed:  the same, once 370 s have passed since that removal
// with tar's system time (GNU time), repeated; prints each run and the
// medians. On ext4 without a journal the second can be much slower (the
// inode allocator skips recently freed inodes one by one), though not in
// every run; on other file systems the three should agree, and then the
// bench's guard only costs a wait that never comes.
// Usage: node --import tsx bench/recent-deletes.ts [--size-mb 120] [--runs 2] [--work DIR]
// Takes about runs x 7 minutes (the window is waited out twice per run).
import { mkdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeTree } from './lib/datasets.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { q, sh } from './lib/sh.ts';

const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '120' },
    runs: { type: 'string', default: '2' },
    work: { type: 'string', default: join(tmpdir(), 'bv-recent-deletes') },
  },
});
const work = resolve(opt.work!);
await mkdir(work, { recursive: true });
const tree = await writeTree(join(work, 'tree'), Number(opt['size-mb']) * 1e6, 11);
const tarFile = join(work, 'tree.tar');
await sh(`tar -cf ${q(tarFile)} -C ${q(join(work, 'tree'))} .`);
const fs = (await sh(`findmnt -no FSTYPE,OPTIONS -T ${q(work)}`)).stdout.trim();
console.error(`tree: ${tree.files} files, ${(tree.bytes / 1e6).toFixed(0)} MB; file system ${fs}`);

let n = 0;
/** Extracts the tar into a fresh directory; wall ms and tar's system-time ms. */
async function extract(): Promise<{ ms: number; sysMs: number }> {
  const dir = join(work, `x${n++}`);
  const timeFile = join(work, 'time.txt');
  const r = await sh(`mkdir ${q(dir)} && /usr/bin/time -f %S -o ${q(timeFile)} tar -xf ${q(tarFile)} -C ${q(dir)}`);
  return { ms: r.ms, sysMs: Number((await readFile(timeFile, 'utf8')).trim()) * 1000 };
}

const samples: Record<string, { ms: number; sysMs: number }[]> = { quiet: [], 'just removed': [], 'window passed': [] };
for (let i = 0; i < Number(opt.runs); i++) {
  await awaitDeletionsAged();
  samples.quiet!.push(await extract());
  // A tree of the same size to remove: the one just extracted.
  await removeTree(join(work, `x${n - 1}`));
  await sh('sync');
  samples['just removed']!.push(await extract());
  await removeTree(join(work, `x${n - 1}`));
  await awaitDeletionsAged();
  samples['window passed']!.push(await extract());
  console.error(`run ${i + 1}: ${Object.entries(samples).map(([k, v]) => `${k} ${Math.round(v[i]!.ms)} ms (sys ${Math.round(v[i]!.sysMs)})`).join(', ')}`);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(
  [
    `\`tar -x\` of ${tree.files} files (${(tree.bytes / 1e6).toFixed(0)} MB) into a fresh directory on ${fs}, median of ${opt.runs}:`,
    '',
    '| when | wall | tar system time |',
    '| --- | --- | --- |',
    ...Object.entries(samples).map(([k, v]) => `| ${k} | ${(median(v.map((x) => x.ms)) / 1000).toFixed(2)} s | ${(median(v.map((x) => x.sysMs)) / 1000).toFixed(2)} s |`),
  ].join('\n'),
);
await removeTree(work);
