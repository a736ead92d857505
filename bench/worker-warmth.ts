// What a job pays for new worker threads: files backups or restores through
// two servers on the same tree, taking turns (which goes first alternates per
// run), one started with worker_idle_seconds=1, so every job finds its
// workers gone and starts new ones (the codec worker; the files dump or
// restore worker), the other with worker_idle_seconds=600, so every job after
// its warm-up finds them waiting. Each operation starts from a cold page
// cache, after the same pause on both sides, longer than the first server's
// idle time. Prints per side the median wall time (API request to success
// seen) and server CPU (all its threads), and every run. Needs root
// (drop_caches). Restored trees are kept until the end (lib/deleted-inodes.ts).
// Usage: node --import tsx bench/worker-warmth.ts [--size-mb 250] [--runs 6] [--only backup|restore] [--work DIR]
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { settleDisk } from './lib/cold.ts';
import { freshWorkTree } from './lib/datasets.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { median } from './lib/report.ts';
import { Backvault, Sampler } from './lib/server.ts';

const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '250' },
    runs: { type: 'string', default: '6' },
    only: { type: 'string' },
    work: { type: 'string', default: join(tmpdir(), 'bv-worker-warmth') },
  },
});
const work = resolve(opt.work!);
const runs = Number(opt.runs);
const kinds = opt.only ? [opt.only] : ['backup', 'restore'];
if (kinds.some((k) => k !== 'backup' && k !== 'restore')) throw new Error('--only backup|restore');
const { src, restored } = await freshWorkTree(work, Number(opt['size-mb']));

interface Side {
  name: 'new workers' | 'kept workers';
  bv: Backvault;
  backup: string;
  ms: Record<string, number[]>;
  cpu: Record<string, number[]>;
}
const sides: Side[] = [];
try {
  for (const [name, idle] of [
    ['new workers', '1'],
    ['kept workers', '600'],
  ] as const) {
    const bv = new Backvault(join(work, `server-${idle}`), { env: { BACKVAULT_WORKER_IDLE_SECONDS: idle } });
    await bv.start();
    await bv.ensureInstance('w', [{ name: 'site', type: 'files', connection: src }]);
    // The warm-up: a backup, and a restore of it (the kept side's workers have run once, as in a server that has worked before).
    const b = await bv.backup('w');
    await bv.restore('w', b.doc.id, { site: { connection: join(restored, `${idle}-warm-up`) } });
    sides.push({ name, bv, backup: b.doc.id, ms: { backup: [], restore: [] }, cpu: { backup: [], restore: [] } });
  }
  for (let i = 0; i < runs; i++) {
    for (const kind of kinds) {
      for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
        await awaitDeletionsAged();
        await settleDisk();
        // Past the first server's idle time, whatever settleDisk took.
        await sleep(1500);
        const c0 = await Sampler.cpuTicks(s.bv.pid);
        const r = kind === 'backup' ? await s.bv.backup('w') : await s.bv.restore('w', s.backup, { site: { connection: join(restored, `${s.name.replace(' ', '-')}-${i}`) } });
        s.ms[kind]!.push(Math.round(r.ms));
        s.cpu[kind]!.push(((await Sampler.cpuTicks(s.bv.pid)) - c0) / 100);
        console.error(`run ${i + 1} ${kind}, ${s.name}: ${(r.ms / 1000).toFixed(2)} s, server CPU ${s.cpu[kind]!.at(-1)!.toFixed(2)} s`);
      }
    }
  }
} finally {
  for (const s of sides) await s.bv.stop();
}
for (const kind of kinds) {
  for (const s of sides) {
    console.log(`files ${kind}, ${s.name}: wall ${(median(s.ms[kind]!) / 1000).toFixed(2)} s, server CPU ${median(s.cpu[kind]!).toFixed(2)} s (runs ${s.ms[kind]!.join(', ')} ms)`);
  }
}
await removeTree(work);
