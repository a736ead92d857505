// Times the files engine alone: dump a tree of many small files, then restore
// it into a new directory, N times; prints the median restore time. No server,
// no storage: it isolates the engine's own write path.
// Usage: node --import tsx bench/files-restore.ts [files=5000] [size=8000] [runs=3] [engine dir]
// (an engine dir other than src/engines/files times an older copy the same way; bench/files-engine.ts
// times backup and restore of the benchmark's tree against tar)
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { pathToFileURL } from 'node:url';
import type { Engine } from '../src/engines/engine.ts';

const [files = 5000, size = 8000, runs = 3] = process.argv.slice(2, 5).map(Number);
const engineDir = process.argv[5] ? resolve(process.argv[5]) : new URL('../src/engines/files/', import.meta.url).pathname;
const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
const { filesEngine } = (await import(pathToFileURL(join(engineDir, `index.${ext}`)).href)) as { filesEngine: Engine };
const root = mkdtempSync(join(tmpdir(), 'bv-files-bench-'));
const src = join(root, 'src');
mkdirSync(src);
const perDir = 100;
for (let d = 0; d * perDir < files; d++) {
  mkdirSync(join(src, `d${d}`));
  for (let f = 0; f < perDir && d * perDir + f < files; f++) writeFileSync(join(src, `d${d}`, `f${f}`), randomBytes(size));
}
const signal = new AbortController().signal;
const out = await filesEngine.dump({ resource: { name: 'w', type: 'files', connection: src, options: {} }, selection: null, exclude: [], useReplica: false, workDir: join(root, 'dump'), signal });
const chunks: Buffer[] = [];
for await (const c of out.stream) chunks.push(c as Buffer);
const { counts } = await out.info;
const artifact = Buffer.concat(chunks);
const times: number[] = [];
for (let i = 0; i < runs; i++) {
  const input = new PassThrough();
  input.end(artifact);
  const target = join(root, `dst${i}`);
  const t0 = performance.now();
  await filesEngine.restore({ target: { name: 'w', type: 'files', connection: target, options: {} }, input, expected: counts, mode: 'new_target', partial: false, workDir: join(root, `w${i}`), signal });
  times.push(performance.now() - t0);
  rmSync(target, { recursive: true, force: true });
}
rmSync(root, { recursive: true, force: true });
times.sort((a, b) => a - b);
console.log(JSON.stringify({ files, size, runs, median_ms: Math.round(times[Math.floor(times.length / 2)]!), times_ms: times.map(Math.round), loadavg: loadavg().map((x) => +x.toFixed(2)) }));
