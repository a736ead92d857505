// Times the mysql engine alone, against the reference pipelines, on the
// bench's shop data set: backup (the engine's dump stream written to a file,
// vs mariadb-dump | zstd -3 and vs mariadb-dump alone) and restore into a new
// database (the engine reading that file, vs zstd -d | mariadb and vs mariadb
// alone). No Backvault server or storage: it isolates the engine's own
// work; "engine backup + storage stages" adds the server's
// zstd/sha256 stages (compressForStorage, codec worker threads) between the
// engine and the file, as a backup through the API does. Per measurement:
// wall, CPU of this process (all threads: what the engine costs the server's
// process), of its main thread alone (the event loop; the rest is codec
// workers and libuv's pool) and of its children (the tools); median of the
// runs, the order alternating between engine and reference. Also the main
// thread's garbage collections (minor = scavenges, major = mark-compacts,
// with their pause time) per measurement: a major one every ~10 MB of dump
// means dead pipe buffers pile up between scavenges (see src/platform/gc.ts).
// Run with the bin's flags to see what the server sees:
//   node --max-semi-space-size=2 --expose-gc-as=backvaultGc --import tsx bench/mysql-engine.ts ...
// Usage: node --import tsx bench/mysql-engine.ts [--size-mb 100] [--runs 3] [--reuse] [--keep] [--backup-only]
//   --reuse: keep using database bench_myeng if it exists (skip generating);
//   --keep:  leave bench_myeng in place at the end (for a later --reuse);
//   --backup-only: skip the restores.
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants as perfConstants, PerformanceObserver } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { mysqlEngine } from '../src/engines/mysql/index.ts';
import { ByteCounter, compressForStorage } from '../src/platform/streams.ts';
import type { ObjectCounts } from '../src/domain/types.ts';
import { dropMy, loadMy } from './lib/datasets.ts';
import { MY, MY_URL, q, sh } from './lib/sh.ts';
import { childCpu, mainThreadCpu } from './lib/cpu.ts';
import { writeTables } from './lib/tables.ts';

const { values: opts } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '100' },
    runs: { type: 'string', default: '3' },
    reuse: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    'backup-only': { type: 'boolean', default: false },
  },
});
const sizeMb = Number(opts['size-mb']);
const runs = Number(opts.runs);
const SRC = 'bench_myeng';
const RBV = 'bench_myeng_rbv';
const RREF = 'bench_myeng_rref';
const signal = new AbortController().signal;
const work = await mkdtemp(join(tmpdir(), 'bv-myeng-'));
const log = (s: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${s}`);


interface Sample {
  wall: number;
  cpu: number;
  mainCpu: number;
  childCpu: number;
  /** main-thread collections during the measurement: scavenges, mark-compacts, and the ms of all gc pauses (incremental-marking ones too) */
  minorGcs: number;
  majorGcs: number;
  gcMs: number;
}

/** This (main) thread's collections so far, from perf_hooks' gc entries. */
const gcSeen = { minor: 0, major: 0, ms: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind;
    if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) gcSeen.minor++;
    else if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) gcSeen.major++;
    gcSeen.ms += e.duration;
  }
}).observe({ entryTypes: ['gc'] });

async function timed(fn: () => Promise<unknown>): Promise<Sample> {
  const g0 = { ...gcSeen };
  const c0 = process.cpuUsage();
  const k0 = childCpu();
  const m0 = mainThreadCpu();
  const t0 = performance.now();
  await fn();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const mainCpu = mainThreadCpu() - m0;
  const children = childCpu() - k0;
  // gc entries reach the observer a little after the collection.
  await sleep(50);
  return { wall, cpu: (c.user + c.system) / 1e6, mainCpu, childCpu: children, minorGcs: gcSeen.minor - g0.minor, majorGcs: gcSeen.major - g0.major, gcMs: gcSeen.ms - g0.ms };
}

async function exists(db: string): Promise<boolean> {
  const r = await sh(`${MY} -N -e ${q(`SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '${db}'`)}`);
  return Number(r.stdout.trim()) >= 4;
}

if (!(opts.reuse && (await exists(SRC)))) {
  log(`generating about ${sizeMb} MB of shop tables`);
  const files = await writeTables(work, sizeMb * 1e6, 42);
  log(`loading MariaDB ${SRC}`);
  await loadMy(SRC, files);
  await Promise.all(files.map((f) => rm(f.file, { force: true })));
}

const bvFile = join(work, 'engine.sql');
const refFile = join(work, 'ref.sql.zst');
const rawFile = join(work, 'ref.sql');
const bvZstFile = join(work, 'engine.sql.zst');
const DUMP = `mariadb-dump -h 127.0.0.1 -u root --single-transaction ${SRC}`;
let counts: ObjectCounts = {};

const measurements: Record<string, { label: string; run: () => Promise<unknown>; after?: () => Promise<void> }> = {
  backup: {
    label: 'engine backup (dump stream -> file)',
    run: async () => {
      const out = await mysqlEngine.dump({ resource: { name: 'db', type: 'mysql', connection: MY_URL(SRC), options: {} }, selection: null, exclude: [], useReplica: false, workDir: join(work, 'wd'), signal });
      await pipeline(out.stream, createWriteStream(bvFile));
      counts = (await out.info).counts;
    },
  },
  backup_zstd: {
    label: 'engine backup + storage stages (dump stream -> zstd -3 + sha256 -> file)',
    run: async () => {
      const out = await mysqlEngine.dump({ resource: { name: 'db', type: 'mysql', connection: MY_URL(SRC), options: {} }, selection: null, exclude: [], useReplica: false, workDir: join(work, 'wd'), signal });
      const raw = new ByteCounter();
      const compressed = compressForStorage('zstd');
      await pipeline([out.stream, raw, ...compressed.stages, createWriteStream(bvZstFile)]);
      counts = (await out.info).counts;
    },
  },
  ref_backup: { label: `reference: ${DUMP} | zstd -3 > file`, run: () => sh(`${DUMP} | zstd -3 -q -f -o ${q(refFile)}`) },
  ref_backup_raw: { label: `reference: ${DUMP} > file`, run: () => sh(`${DUMP} > ${q(rawFile)}`) },
  restore: {
    label: 'engine restore, new database (file -> engine)',
    run: () => mysqlEngine.restore({ target: { name: 'db', type: 'mysql', connection: MY_URL(RBV), options: {} }, input: createReadStream(bvFile), expected: counts, mode: 'new_target', partial: false, workDir: join(work, 'wd'), signal }),
    after: () => dropMy(RBV),
  },
  ref_restore: {
    label: 'reference: CREATE DATABASE; zstd -d < file | mariadb new',
    run: () => sh(`${MY} -e 'CREATE DATABASE ${RREF}' && zstd -dq < ${q(refFile)} | ${MY} ${RREF}`),
    after: () => dropMy(RREF),
  },
  ref_restore_raw: {
    label: 'reference: CREATE DATABASE; mariadb new < file',
    run: () => sh(`${MY} -e 'CREATE DATABASE ${RREF}' && ${MY} ${RREF} < ${q(rawFile)}`),
    after: () => dropMy(RREF),
  },
};

const samples: Record<string, Sample[]> = Object.fromEntries(Object.keys(measurements).map((k) => [k, []]));
const loads: number[] = [];
try {
  await dropMy(RBV);
  await dropMy(RREF);
  for (let r = 0; r < runs; r++) {
    loads.push(loadavg()[0]!);
    // Backups first (the restores read their files); engine and reference alternate which goes first.
    const order = r % 2 === 0 ? [['backup', 'backup_zstd', 'ref_backup', 'ref_backup_raw'], ['restore', 'ref_restore', 'ref_restore_raw']] : [['ref_backup', 'ref_backup_raw', 'backup_zstd', 'backup'], ['ref_restore', 'ref_restore_raw', 'restore']];
    for (const key of opts['backup-only'] ? order[0]! : order.flat()) {
      const m = measurements[key]!;
      const s = await timed(m.run);
      await m.after?.();
      samples[key]!.push(s);
      log(`run ${r + 1}: ${key} ${s.wall.toFixed(2)} s wall, ${s.cpu.toFixed(2)} s cpu (main thread ${s.mainCpu.toFixed(2)} s; gc ${s.minorGcs} minor, ${s.majorGcs} major, ${s.gcMs.toFixed(0)} ms), ${s.childCpu.toFixed(2)} s children`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const m = (k: string, f: keyof Sample) => median(samples[k]!.map((s) => s[f]));
  console.log(`\nmysql engine, ${(statSync(bvFile).size / 1e6).toFixed(1)} MB dump, rows ${JSON.stringify(counts.tables)}, median of ${runs}; load average (1 min) at each run: ${loads.map((x) => x.toFixed(1)).join(', ')}\n`);
  console.log('| measurement | wall | this process CPU (all threads) | of which main thread | main-thread GC: minor, major, pause | children CPU | runs (wall) |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const [k, def] of Object.entries(measurements)) {
    if (samples[k]!.length === 0) continue;
    console.log(`| ${def.label} | ${m(k, 'wall').toFixed(2)} s | ${m(k, 'cpu').toFixed(2)} s | ${m(k, 'mainCpu').toFixed(2)} s | ${m(k, 'minorGcs')}, ${m(k, 'majorGcs')}, ${m(k, 'gcMs').toFixed(0)} ms | ${m(k, 'childCpu').toFixed(2)} s | ${samples[k]!.map((s) => s.wall.toFixed(2)).join(', ')} |`);
  }
  const ratio = (a: string, b: string) => (m(a, 'wall') / m(b, 'wall')).toFixed(2);
  const cpuRatio = (a: string, b: string) => ((m(a, 'cpu') + m(a, 'childCpu')) / (m(b, 'cpu') + m(b, 'childCpu'))).toFixed(2);
  console.log(`\nbackup ${ratio('backup', 'ref_backup')}x the zstd pipeline (${ratio('backup', 'ref_backup_raw')}x mariadb-dump alone); with the storage stages ${ratio('backup_zstd', 'ref_backup')}x the zstd pipeline's wall, ${cpuRatio('backup_zstd', 'ref_backup')}x its total CPU (process + children)`);
  if (!opts['backup-only']) console.log(`restore ${ratio('restore', 'ref_restore')}x the zstd pipeline (${ratio('restore', 'ref_restore_raw')}x mariadb alone)`);
} finally {
  await dropMy(RBV).catch(() => {});
  await dropMy(RREF).catch(() => {});
  if (!opts.keep) await dropMy(SRC).catch(() => {});
  await rm(work, { recursive: true, force: true });
}
