// A/B of two Backvault servers through the API: an older checkout's (--old,
// e.g. a `git worktree add /tmp/old REV` with node_modules linked in and
// built with `npx tsc -p tsconfig.build.json`) against this one's (run
// `npm run build` first), on the same tree. Each server backs the tree up
// once (files, zstd), then the two take turns (which goes first alternates
// per run) restoring their backup into a fresh directory, each from a cold
// page cache. Prints per side the median wall time (API request to success
// seen) and the server process's CPU (all its threads), and every run.
// Covers what files-ab.ts cannot: the service around the engine (storage
// reads, the restore service's streams, the job). Restored trees are kept
// until the end (lib/deleted-inodes.ts). Needs root (drop_caches).
// Usage: node --import tsx bench/server-ab.ts --old DIR [--size-mb 1000] [--runs 4] [--work DIR]
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { freshWorkTree } from './lib/datasets.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { median } from './lib/report.ts';
import { settleDisk } from './lib/cold.ts';
import { Backvault, Sampler } from './lib/server.ts';

const { values: opt } = parseArgs({
  options: {
    old: { type: 'string' },
    'size-mb': { type: 'string', default: '1000' },
    runs: { type: 'string', default: '4' },
    work: { type: 'string', default: join(tmpdir(), 'bv-server-ab') },
  },
});
if (!opt.old) throw new Error('--old DIR: the root of an older checkout, built (its bench/lib/server.ts starts its bin/backvault.js)');
const work = resolve(opt.work!);
const runs = Number(opt.runs);
const { Backvault: OldBackvault } = (await import(pathToFileURL(join(resolve(opt.old), 'bench/lib/server.ts')).href)) as { Backvault: typeof Backvault };

const { src, restored } = await freshWorkTree(work, Number(opt['size-mb']));

interface Side {
  name: 'old' | 'new';
  bv: Backvault;
  backup: string;
  ms: number[];
  cpu: number[];
}
const sides: Side[] = [];
try {
  for (const [name, Server] of [
    ['old', OldBackvault],
    ['new', Backvault],
  ] as const) {
    const bv = new Server(join(work, `server-${name}`));
    await bv.start();
    await bv.ensureInstance('w', [{ name: 'site', type: 'files', connection: src }]);
    const b = await bv.backup('w');
    sides.push({ name, bv, backup: b.doc.id, ms: [], cpu: [] });
  }
  for (let i = 0; i < runs; i++) {
    for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
      await awaitDeletionsAged();
      await settleDisk();
      const c0 = await Sampler.cpuTicks(s.bv.pid);
      const r = await s.bv.restore('w', s.backup, { site: { connection: join(restored, `${s.name}-${i}`) } });
      s.ms.push(Math.round(r.ms));
      s.cpu.push(((await Sampler.cpuTicks(s.bv.pid)) - c0) / 100);
      console.error(`run ${i + 1} ${s.name}: ${(r.ms / 1000).toFixed(2)} s, server CPU ${s.cpu.at(-1)!.toFixed(2)} s, phases ${JSON.stringify(r.doc.result?.resources?.[0]?.phases ?? {})}`);
    }
  }
} finally {
  for (const s of sides) await s.bv.stop();
}
for (const s of sides) {
  console.log(`files restore ${s.name}: wall ${(median(s.ms) / 1000).toFixed(2)} s, server CPU ${median(s.cpu).toFixed(2)} s (runs ${s.ms.join(', ')} ms)`);
}
await removeTree(work);
