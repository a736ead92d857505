// What the codec worker's output buffers cost (codec-worker.ts OUT_SIZE):
// compresses one tar of the bench's files tree in 4 MiB frames, as the codec
// worker does, with zstd-napi on this thread, writing each frame
//   - kept: into one buffer, reused (the floor: zstd alone);
//   - fresh-frame: into a fresh buffer per frame;
//   - copy-N: into one kept buffer, then copied out into fresh N-byte buffers
//     (what travels to the main thread).
// Buffers stay referenced for a while, as the main thread holds them, then
// are dropped. Run it under the bin's malloc settings, where every buffer
// above 128 KiB is a mapping of its own, faulted in page by page:
//   MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 node --max-semi-space-size=2 \
//     --import tsx bench/output-buffers.ts [--size-mb 500] [--runs 3] [--work DIR]
// Prints per variant the median wall time and this process's user and system CPU.
import { mkdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import binding from 'zstd-napi/binding.js';
import { writeTree } from './lib/datasets.ts';
import { removeTree } from './lib/deleted-inodes.ts';
import { sh } from './lib/sh.ts';

const { CCtx, CParameter, EndDirective } = binding;
const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '500' },
    runs: { type: 'string', default: '3' },
    work: { type: 'string', default: join(tmpdir(), 'bv-output-buffers') },
  },
});
const work = resolve(opt.work!);
await removeTree(work);
await mkdir(work, { recursive: true });
await writeTree(join(work, 'src'), Number(opt['size-mb']) * 1e6, 11);
await sh(`tar -cf ${join(work, 'tree.tar')} -C ${work} src`);
const data = await readFile(join(work, 'tree.tar'));
await removeTree(work);
console.error(`input: a tar of ${(data.length / 1e6).toFixed(0)} MB`);

const SEGMENT = 4 * 1024 * 1024;
const ROOM = SEGMENT + (SEGMENT >> 7) + 4096;
const held: Buffer[] = [];
const hold = (b: Buffer) => {
  held.push(b);
  if (held.length > 32) held.shift();
};

function run(variant: string): { ms: number; user: number; sys: number } {
  const cctx = new CCtx();
  cctx.setParameter(CParameter.compressionLevel, 3);
  cctx.setParameter(CParameter.checksumFlag, 1);
  const kept = Buffer.allocUnsafeSlow(ROOM);
  const piece = variant.startsWith('copy-') ? Number(variant.slice(5)) : 0;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < data.length; i += SEGMENT) {
    const frame = variant === 'fresh-frame' ? Buffer.allocUnsafeSlow(ROOM) : kept;
    const [ret, produced] = cctx.compressStream2(frame, data.subarray(i, i + SEGMENT), EndDirective.end);
    if (ret !== 0) throw new Error('a frame did not fit');
    if (variant === 'fresh-frame') hold(frame.subarray(0, produced));
    for (let at = 0; piece && at < produced; at += piece) {
      const out = Buffer.allocUnsafeSlow(piece);
      frame.copy(out, 0, at, Math.min(produced, at + piece));
      hold(out);
    }
  }
  const c = process.cpuUsage(c0);
  held.length = 0;
  return { ms: performance.now() - t0, user: c.user / 1000, sys: c.system / 1000 };
}

const variants = ['kept', 'fresh-frame', 'copy-65536', 'copy-122880', 'copy-262144'];
const results = new Map<string, { ms: number; user: number; sys: number }[]>();
run('kept'); // warm-up
for (let r = 0; r < Number(opt.runs); r++) for (const v of variants) (results.get(v) ?? results.set(v, []).get(v)!).push(run(v));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const [v, xs] of results) {
  console.log(`${v.padEnd(12)} wall ${median(xs.map((x) => x.ms)).toFixed(0)} ms, user ${median(xs.map((x) => x.user)).toFixed(0)} ms, sys ${median(xs.map((x) => x.sys)).toFixed(0)} ms`);
}
