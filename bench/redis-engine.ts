// Runs the redis engine alone, in-process: backup of N mixed keys (loaded
// into db 9 by the main bench's generator) into a file, then a restore of
// that file into db 8 (new target). For each N it prints wall time, CPU time
// and the peak RSS / heapUsed / external memory seen (sampled every 20 ms),
// each N in a fresh process so the peaks of one size do not hide the next.
// Memory that stays flat across N is the point: the engine must hold one
// batch, not the keyspace.
// Usage: node --import tsx bench/redis-engine.ts [N...]   (default 200000 1000000)
//        options: --runs R (measurements per N, default 1; medians printed)
//                 --slow-mb S (the backup's consumer reads at most S MB/s,
//                 to show that a slow output holds the dump back)
// Touches Redis logical databases 9 and 8 only: flushed before and after.
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { loadRedis } from './lib/datasets.ts';
import { sh } from './lib/sh.ts';
import { redisEngine } from '../src/engines/redis/index.ts';

const SOURCE_DB = 9;
const TARGET_DB = 8;
const URL_BASE = 'redis://127.0.0.1:6379';

interface Phase {
  wall_ms: number;
  cpu_ms: number;
  rss_start_mib: number;
  rss_peak_mib: number;
  heap_peak_mib: number;
  external_peak_mib: number;
}

interface ChildResult {
  keys: number;
  bytes: number;
  backup: Phase;
  restore: Phase;
}

const mib = (n: number) => Math.round((n / 1048576) * 10) / 10;

/** Runs fn while sampling process.memoryUsage(); the peaks include whatever fn left for the collector. */
async function measure(fn: () => Promise<void>): Promise<Phase> {
  const start = process.memoryUsage();
  let rss = start.rss;
  let heap = start.heapUsed;
  let ext = start.external;
  const timer = setInterval(() => {
    const m = process.memoryUsage();
    rss = Math.max(rss, m.rss);
    heap = Math.max(heap, m.heapUsed);
    ext = Math.max(ext, m.external);
  }, 20);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  try {
    await fn();
  } finally {
    clearInterval(timer);
  }
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  const m = process.memoryUsage();
  return {
    wall_ms: Math.round(wall),
    cpu_ms: Math.round((cpu.user + cpu.system) / 1000),
    rss_start_mib: mib(start.rss),
    rss_peak_mib: mib(Math.max(rss, m.rss)),
    heap_peak_mib: mib(Math.max(heap, m.heapUsed)),
    external_peak_mib: mib(Math.max(ext, m.external)),
  };
}

/** A pass-through limited to bytesPerSec: a slow destination, to check the dump waits for it. */
function throttle(bytesPerSec: number): Transform {
  const t0 = performance.now();
  let sent = 0;
  return new Transform({
    highWaterMark: 64 * 1024,
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      const due = (sent / bytesPerSec) * 1000 - (performance.now() - t0);
      setTimeout(() => cb(null, chunk), Math.max(0, due));
    },
  });
}

/** One backup and restore, in this process. */
async function child(slowMb: number): Promise<ChildResult> {
  const dir = mkdtempSync(join(tmpdir(), 'bv-redis-bench-'));
  const signal = new AbortController().signal;
  const file = join(dir, 'keys.bvredis');
  try {
    let keys = 0;
    const backup = await measure(async () => {
      const out = await redisEngine.dump({
        resource: { name: 'cache', type: 'redis', connection: `${URL_BASE}/${SOURCE_DB}`, options: {} },
        selection: null,
        exclude: [],
        useReplica: false,
        workDir: join(dir, 'dump'),
        signal,
      });
      const stages = slowMb > 0 ? [out.stream, throttle(slowMb * 1e6), createWriteStream(file)] : [out.stream, createWriteStream(file)];
      await pipeline(stages);
      keys = (await out.info).counts.keys ?? 0;
    });
    const { size } = statSync(file);
    await sh(`redis-cli -n ${TARGET_DB} FLUSHDB`);
    const restore = await measure(async () => {
      const report = await redisEngine.restore({
        target: { name: 'cache', type: 'redis', connection: `${URL_BASE}/${TARGET_DB}`, options: {} },
        input: createReadStream(file),
        expected: { keys },
        mode: 'new_target',
        partial: false,
        workDir: join(dir, 'restore'),
        signal,
      });
      if (report.counts.keys !== keys) throw new Error(`restored ${report.counts.keys} keys of ${keys}`);
    });
    return { keys, bytes: size, backup, restore };
  } finally {
    await sh(`redis-cli -n ${TARGET_DB} FLUSHDB`).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

function runChild(args: string[]): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--child', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop() as string) as ChildResult) : reject(new Error(`child exited with ${code}`))));
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] as number;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opt = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    argv.splice(i, 2);
    return v;
  };
  const slowMb = Number(opt('slow-mb') ?? 0);
  if (argv[0] === '--child') {
    console.log(JSON.stringify(await child(slowMb)));
    return;
  }
  const runs = Number(opt('runs') ?? 1);
  const sizes = argv.length > 0 ? argv.map(Number) : [200_000, 1_000_000];
  const dir = mkdtempSync(join(tmpdir(), 'bv-redis-bench-load-'));
  const rows: string[] = [];
  try {
    for (const n of sizes) {
      const loaded = await loadRedis(SOURCE_DB, n, dir, 7);
      process.stderr.write(`loaded ${loaded.keys} keys into db ${SOURCE_DB} (load ${loadavg()[0]?.toFixed(2)})\n`);
      const results: ChildResult[] = [];
      for (let r = 0; r < runs; r++) results.push(await runChild(slowMb > 0 ? ['--slow-mb', String(slowMb)] : []));
      for (const phase of ['backup', 'restore'] as const) {
        const m = (k: keyof Phase) => median(results.map((x) => x[phase][k]));
        rows.push(
          `| ${phase} | ${n.toLocaleString('en')} | ${((results[0]?.bytes ?? 0) / 1e6).toFixed(0)} MB | ${(m('wall_ms') / 1000).toFixed(2)} s | ${(m('cpu_ms') / 1000).toFixed(2)} s | ${m('rss_start_mib')} → ${m('rss_peak_mib')} MiB | ${m('heap_peak_mib')} MiB | ${m('external_peak_mib')} MiB |`,
        );
      }
      process.stderr.write(`${JSON.stringify({ n, results })}\n`);
    }
  } finally {
    await sh(`redis-cli -n ${SOURCE_DB} FLUSHDB; redis-cli -n ${TARGET_DB} FLUSHDB`).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\nredis engine, in-process; runs per size: ${runs}${slowMb > 0 ? `; backup output throttled to ${slowMb} MB/s` : ''}; load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  console.log('| phase | keys | artifact | wall | CPU | RSS start → peak | heapUsed peak | external peak |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
}

await main();
