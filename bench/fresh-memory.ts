// What memory touched for the first time costs on this machine, the figure
// behind the bench README's note and platform/lending-reader.ts: allocating
// and filling a new 1 MiB buffer, under the bin's MALLOC_MMAP_THRESHOLD_
// (every such buffer a new mapping, faulted in page by page) and without it
// (malloc reuses freed memory), against copying 1 MiB between two buffers
// already in use. Each case runs in a child process with its own malloc
// settings; prints ms per MiB, the median of three passes of 500.
// Usage: node --import tsx bench/fresh-memory.ts
import { execFileSync } from 'node:child_process';

const PASSES = 3;
const N = 500;
const child = `
const N = ${N};
const src = Buffer.allocUnsafeSlow(1 << 20).fill(1);
const dst = Buffer.allocUnsafeSlow(1 << 20).fill(2);
const out = {};
let t = performance.now();
for (let i = 0; i < N; i++) Buffer.allocUnsafeSlow(1 << 20).fill(i);
out.fresh = (performance.now() - t) / N;
t = performance.now();
for (let i = 0; i < N; i++) src.copy(dst);
out.copy = (performance.now() - t) / N;
console.log(JSON.stringify(out));
`;

function run(env: Record<string, string>): { fresh: number; copy: number } {
  const passes = Array.from({ length: PASSES }, () => JSON.parse(execFileSync(process.execPath, ['-e', child], { env: { ...process.env, ...env }, encoding: 'utf8' })) as { fresh: number; copy: number });
  const median = (k: 'fresh' | 'copy') => passes.map((p) => p[k]).sort((a, b) => a - b)[1]!;
  return { fresh: median('fresh'), copy: median('copy') };
}

const withThreshold = run({ MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' });
const without = run({});
console.log(`new 1 MiB buffer, allocated and filled, under the bin's malloc settings: ${withThreshold.fresh.toFixed(3)} ms`);
console.log(`new 1 MiB buffer, allocated and filled, default malloc:              ${without.fresh.toFixed(3)} ms`);
console.log(`1 MiB copied between two buffers in use:                             ${withThreshold.copy.toFixed(3)} ms`);
