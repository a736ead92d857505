// A/B of two versions of the files engine and its platform code in one
// process: an older checkout (--old, e.g. a `git worktree add /tmp/old REV`
// with node_modules linked in) against this one, on the same tree, taking
// turns (which goes first alternates per run), each backup compressed by its
// own version's codec (src/platform/streams.ts compressor) into a file, each
// restore from one stored .zst (its sha256 and size given, as the service
// hands them) into a fresh directory. Restored trees are kept until the end
// (lib/deleted-inodes.ts). Run it under the bin's settings to measure what
// the server does, e.g.
//   MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 node --max-semi-space-size=2 \
//     --import tsx bench/files-ab.ts --old /tmp/old [--size-mb 500] [--runs 4] [--only backup|restore] [--cold] [--work DIR]
// Prints per side the median wall time and process CPU, and every run.
// Warm page cache unless --cold (which drops it before each operation, as root).
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { ObjectCounts } from '../src/domain/types.ts';
import type { Engine } from '../src/engines/engine.ts';
import type { compressor as Compressor } from '../src/platform/streams.ts';
import { writeTree } from './lib/datasets.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { sh } from './lib/sh.ts';

const { values: opt } = parseArgs({
  options: {
    old: { type: 'string' },
    'size-mb': { type: 'string', default: '500' },
    runs: { type: 'string', default: '4' },
    only: { type: 'string' },
    cold: { type: 'boolean', default: false },
    work: { type: 'string', default: join(tmpdir(), 'bv-files-ab') },
  },
});
if (!opt.old) throw new Error('--old DIR: the root of an older checkout (its src/ is imported)');
const work = resolve(opt.work!);
const runs = Number(opt.runs);

interface Side {
  engine: Engine;
  compressor: typeof Compressor;
}
const load = async (root: string): Promise<Side> => ({
  engine: ((await import(pathToFileURL(join(root, 'src/engines/files/index.ts')).href)) as { filesEngine: Engine }).filesEngine,
  compressor: ((await import(pathToFileURL(join(root, 'src/platform/streams.ts')).href)) as { compressor: typeof Compressor }).compressor,
});
const sides: Record<'old' | 'new', Side> = { old: await load(resolve(opt.old)), new: await load(resolve(import.meta.dirname, '..')) };

const src = join(work, 'src');
const restored = join(work, 'restored');
await removeTree(work);
await mkdir(restored, { recursive: true });
const tree = await writeTree(src, Number(opt['size-mb']) * 1e6, 11);
console.error(`tree: ${tree.files} files, ${(tree.bytes / 1e6).toFixed(0)} MB`);
const signal = new AbortController().signal;

let counts: ObjectCounts | undefined;
async function backup(side: Side, file: string): Promise<void> {
  const out = await side.engine.dump({ resource: { name: 'w', type: 'files', connection: src, options: {} }, selection: null, exclude: [], useReplica: false, workDir: join(work, 'dumpwork'), signal });
  await pipeline(out.stream, side.compressor('zstd'), createWriteStream(file));
  const got = (await out.info).counts;
  if (counts && got.tree_sha256 !== counts.tree_sha256) throw new Error('two dumps of the same tree differ');
  counts = got;
}

/** Wall ms and this process's CPU ms (all threads) of fn. */
async function timed(fn: () => Promise<void>): Promise<{ ms: number; cpu: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const c = process.cpuUsage(c0);
  return { ms: Math.round(performance.now() - t0), cpu: Math.round((c.user + c.system) / 1000) };
}

const before = async () => {
  await sh('sync');
  if (opt.cold) await sh('echo 3 > /proc/sys/vm/drop_caches');
};

// The stored artifact both restores read, made once and described as its manifest would.
const stored = join(work, 'stored.tar.zst');
await backup(sides.new, stored);
const bytes = await readFile(stored);
const decode = { compression: 'zstd' as const, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, label: 'bench artifact' };

const results: Record<string, { ms: number; cpu: number }[]> = {};
/** per side, each restore's phases (extract, sync, swap...) as the engine reports them */
const phases: Record<string, Record<string, number[]>> = {};
let n = 0;
for (let i = 0; i < runs; i++) {
  const order = i % 2 === 0 ? (['old', 'new'] as const) : (['new', 'old'] as const);
  for (const name of order) {
    if (opt.only === 'restore') break;
    await before();
    (results[`backup ${name}`] ??= []).push(await timed(() => backup(sides[name], join(work, `backup-${name}.zst`))));
  }
  for (const name of order) {
    if (opt.only === 'backup') break;
    await awaitDeletionsAged();
    await before();
    const target = join(restored, `r${n++}`);
    (results[`restore ${name}`] ??= []).push(
      await timed(async () => {
        const input = createReadStream(stored, { highWaterMark: 1 << 20 });
        const r = await sides[name].engine.restore({ target: { name: 'w', type: 'files', connection: target, options: {} }, input, expected: counts!, mode: 'new_target', partial: false, decode, workDir: join(work, 'restorework'), signal });
        if (r.counts.tree_sha256 !== counts!.tree_sha256) throw new Error('the restored tree differs');
        const steps = (phases[`restore ${name}`] ??= {});
        for (const [phase, ms] of Object.entries(r.phases ?? {})) (steps[phase] ??= []).push(ms);
      }),
    );
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const [key, v] of Object.entries(results)) {
  console.log(`${key}: wall ${median(v.map((x) => x.ms))} ms, cpu ${median(v.map((x) => x.cpu))} ms (runs ${v.map((x) => x.ms).join(', ')} ms)`);
  const steps = Object.entries(phases[key] ?? {}).map(([phase, ms]) => `${phase} ${median(ms)}`);
  if (steps.length > 0) console.log(`  phases (median ms): ${steps.join(', ')}`);
}
await removeTree(work);
