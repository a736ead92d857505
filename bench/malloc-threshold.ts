// The price of the bin's MALLOC_MMAP_THRESHOLD_=131072: every buffer above
// 128 KiB is its own mmap, so the files dump's 256 KiB batches and the codec's
// 256 KiB outputs are fresh pages each time (a page fault and a zeroed page
// per 4 KiB), which keeps freed memory out of the arenas and RSS low. This
// runs files backups and restores through the API on servers started with
// other thresholds and prints, per setting, the median wall time, the CPU of
// the busiest threads (from /proc/<pid>/task/*/stat) and the server's RSS
// (at start, peak, and idle after the workers left).
// Usage: node --import tsx bench/malloc-threshold.ts [--size-mb 120] [--runs 3] [--thresholds 131072,266240,4194304] [--work DIR]
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { writeTree } from './lib/datasets.ts';
import { removeTree } from './lib/deleted-inodes.ts';
import { Backvault, Sampler } from './lib/server.ts';
import { sh } from './lib/sh.ts';

const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '120' },
    runs: { type: 'string', default: '3' },
    thresholds: { type: 'string', default: '131072,266240,4194304' },
    work: { type: 'string', default: join(tmpdir(), 'bv-malloc-bench') },
  },
});
const work = resolve(opt.work!);
const runs = Number(opt.runs);

/** CPU ms per thread of pid (utime + stime, 100 Hz ticks). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      out.set(t, (Number(f[11]) + Number(f[12])) * 10);
    } catch {
      // the thread left meanwhile
    }
  }
  return out;
}

/** The three busiest threads' CPU ms between two readings. */
function busiest(a: Map<string, number>, z: Map<string, number>): number[] {
  return [...z].map(([t, v]) => v - (a.get(t) ?? 0)).sort((x, y) => y - x).slice(0, 3);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const dropCache = () => sh('sync; echo 3 > /proc/sys/vm/drop_caches');

await mkdir(work, { recursive: true });
const tree = join(work, 'tree');
const stats = await writeTree(tree, Number(opt['size-mb']) * 1e6, 11);
console.error(`tree: ${stats.files} files, ${(stats.bytes / 1e6).toFixed(0)} MB`);
const rows: string[] = [];
for (const threshold of opt.thresholds!.split(',')) {
  // Another setting than the shebang's can only come through the environment of a server that node starts itself.
  const bv = new Backvault(join(work, `server-${threshold}`), { nodeArgs: ['--max-semi-space-size=2'], env: { MALLOC_MMAP_THRESHOLD_: threshold } });
  await bv.start();
  await bv.ensureInstance('www', [{ name: 'site', type: 'files', connection: tree }]);
  const b: { ms: number; cpu: number[]; peak: number }[] = [];
  const r: { ms: number; cpu: number[]; peak: number }[] = [];
  const start = (await Sampler.status(bv.pid)).rssKb;
  /** Runs op from a cold page cache while sampling the server. */
  const measure = async <T extends { ms: number }>(op: () => Promise<T>): Promise<T & { cpu: number[]; peak: number }> => {
    await dropCache();
    const s = new Sampler(bv.pid);
    await s.start();
    const c0 = threadCpu(bv.pid);
    const out = await op();
    const cpu = busiest(c0, threadCpu(bv.pid));
    await s.stop();
    return { ...out, cpu, peak: s.peakRssKb };
  };
  for (let i = 0; i < runs; i++) {
    const backup = await measure(() => bv.backup('www'));
    b.push(backup);
    r.push(await measure(() => bv.restore('www', backup.doc.id, { site: { connection: join(work, `restored-${threshold}-${i}`) } })));
  }
  // The files workers leave 5 s after their last job.
  await new Promise((res) => setTimeout(res, 6000));
  const idle = (await Sampler.status(bv.pid)).rssKb;
  await bv.stop();
  const fmt = (xs: typeof b) =>
    `${(median(xs.map((x) => x.ms)) / 1000).toFixed(2)} s, busiest threads ${[0, 1, 2].map((k) => median(xs.map((x) => x.cpu[k] ?? 0))).join('/')} ms CPU, peak ${Math.round(Math.max(...xs.map((x) => x.peak)) / 1024)} MiB`;
  rows.push(`| ${threshold} | ${fmt(b)} | ${fmt(r)} | ${Math.round(start / 1024)} MiB | ${Math.round(idle / 1024)} MiB |`);
  console.error(rows[rows.length - 1]);
}
console.log(['| MALLOC_MMAP_THRESHOLD_ | files backup (median) | files restore (median) | RSS at start | RSS idle after |', '| --- | --- | --- | --- | --- |', ...rows].join('\n'));
await removeTree(work);
