// Times the files engine alone (no server, no storage) on the benchmark's
// tree (bench/lib/datasets.ts writeTree: many small files and a few large
// ones), against tar in the same run:
//   backup:  engine -> null sink            vs  tar -cf - dir | cat > /dev/null
//            engine -> zstd -3 -> file      vs  tar -cf - dir | zstd -3 > file
//   restore: engine (includes its syncfs)   vs  tar -xf file -C new (and + sync -f new)
//            engine <- stored .zst file     vs  zstd -d < file | tar -xf - -C new
//            (the stored bytes with their sha256, checked and decompressed
//            in the restore worker, as the service hands them to the engine)
// Restored trees are kept until the end (lib/deleted-inodes.ts): it needs
// about (2 + 5 x runs) times the tree's size free.
// Each pair alternates which side goes first; prints medians (wall and the
// engine's CPU: the whole process's, all threads, and the main thread's
// alone, which the engine's workers spare) as JSON and a table, and the
// process's peak RSS. The compression is the service's own
// (src/platform/streams.ts compressor), as the backup pipeline uses it.
// Usage: node --import tsx bench/files-engine.ts [--size-mb 120] [--runs 3] [--engine DIR] [--work DIR] [--keep] [--only backup|restore]
//   --engine DIR: import DIR/index.ts instead of src/engines/files (to time an older copy in the same way)
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { ObjectCounts } from '../src/domain/types.ts';
import type { Engine, RestoreRequest } from '../src/engines/engine.ts';
import { compressor } from '../src/platform/streams.ts';
import { mainThreadCpu } from './lib/cpu.ts';
import { writeTree } from './lib/datasets.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { q, sh } from './lib/sh.ts';

const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '120' },
    runs: { type: 'string', default: '3' },
    engine: { type: 'string' },
    work: { type: 'string', default: join(tmpdir(), 'bv-files-engine-bench') },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
  },
});
const sizeMb = Number(opt['size-mb']);
const runs = Number(opt.runs);
const work = resolve(opt.work!);
const engineDir = opt.engine ? resolve(opt.engine) : new URL('../src/engines/files/', import.meta.url).pathname;
const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
const { filesEngine: engine } = (await import(pathToFileURL(join(engineDir, `index.${ext}`)).href)) as { filesEngine: Engine };

const signal = new AbortController().signal;
const src = join(work, 'src');
const tarFile = join(work, 'ref.tar');
const tarZst = join(work, 'ref.tar.zst');
const bvTar = join(work, 'bv.tar');
const bvZst = join(work, 'bv.tar.zst');
/** every restored tree, kept until the end */
const restored = join(work, 'restored');

interface Sample {
  ms: number;
  cpuMs?: number;
  mainCpuMs?: number;
}
const samples: Record<string, Sample[]> = {};
const push = (k: string, s: Sample): void => {
  (samples[k] ??= []).push(s);
};

/** The main thread's CPU time in ms. */
const mainThreadCpuMs = (): number => mainThreadCpu() * 1000;

/** Wall and this process's CPU time (user + system; all threads, and the main thread alone) of fn. */
async function timed(fn: () => Promise<unknown>): Promise<Sample> {
  const c0 = process.cpuUsage();
  const m0 = mainThreadCpuMs();
  const t0 = performance.now();
  await fn();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { ms, cpuMs: (c.user + c.system) / 1000, mainCpuMs: mainThreadCpuMs() - m0 };
}

async function refTimed(cmd: string): Promise<Sample> {
  return { ms: (await sh(cmd)).ms };
}

function nullSink(): Writable {
  return new Writable({
    write(_c, _e, cb) {
      cb();
    },
  });
}

let counts: ObjectCounts | null = null;
async function engineDump(stages: NodeJS.WritableStream[]): Promise<ObjectCounts> {
  const out = await engine.dump({ resource: { name: 'w', type: 'files', connection: src, options: {} }, selection: null, exclude: [], useReplica: false, workDir: join(work, 'dumpwork'), signal });
  await (pipeline as (...s: unknown[]) => Promise<void>)(out.stream, ...stages);
  const info = await out.info;
  if (counts && info.counts.tree_sha256 !== counts.tree_sha256) throw new Error('two dumps of the same tree differ');
  return info.counts;
}

/** The stored .zst's size and sha256, as its manifest would give them; made once, outside the timed restores. */
let zstSpec: RestoreRequest['decode'];
async function storedSpec(file: string): Promise<NonNullable<RestoreRequest['decode']>> {
  const bytes = await readFile(file);
  return { compression: 'zstd', sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, label: 'bench artifact' };
}

/**
 * Restores from a tar, or from a stored .zst the way the service hands it to
 * this engine: the stored bytes as they are, with their size and sha256
 * (RestoreRequest.decode), checked and decompressed in the restore worker.
 */
async function engineRestore(target: string, file: string, compressed: boolean): Promise<void> {
  const input = createReadStream(file, { highWaterMark: 1 << 20 });
  const decode = compressed ? zstSpec : undefined;
  if (compressed && !decode) throw new Error('the stored .zst was not described before the restores');
  const report = await engine.restore({ target: { name: 'w', type: 'files', connection: target, options: {} }, input, expected: counts!, mode: 'new_target', partial: false, decode, workDir: join(work, 'restorework'), signal });
  if (report.counts.tree_sha256 !== counts!.tree_sha256) throw new Error('restored tree differs');
}

/** Runs a and b, alternating which goes first. */
async function pair(i: number, a: () => Promise<void>, b: () => Promise<void>): Promise<void> {
  if (i % 2 === 0) {
    await a();
    await b();
  } else {
    await b();
    await a();
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)]!;
};

await mkdir(restored, { recursive: true });
const t0 = performance.now();
const tree = await writeTree(src, sizeMb * 1e6, 11);
await sh('sync');
console.error(`tree: ${tree.files} files (${tree.small} small, ${tree.large} large), ${(tree.bytes / 1e6).toFixed(1)} MB, written in ${((performance.now() - t0) / 1000).toFixed(1)} s; engine ${engineDir}`);

// Warm the page cache for both sides, and make the artifacts the restores read.
counts = await engineDump([createWriteStream(bvTar)]);
await sh(`tar -cf ${q(tarFile)} -C ${q(src)} .`);

const load0 = loadavg()[0]!;
for (let i = 0; i < runs; i++) {
  if (opt.only !== 'restore') {
    await pair(
      i,
      async () => push('backup_null_engine', await timed(() => engineDump([nullSink()]))),
      // Through cat: GNU tar writing straight to /dev/null skips reading the files.
      async () => push('backup_null_tar', await refTimed(`tar -cf - -C ${q(src)} . | cat > /dev/null`)),
    );
    await pair(
      i,
      async () => push('backup_zstd_engine', await timed(() => engineDump([compressor('zstd'), createWriteStream(bvZst)]))),
      async () => push('backup_zstd_tar', await refTimed(`tar -cf - -C ${q(src)} . | zstd -3 -q > ${q(tarZst)}`)),
    );
  }
  if (opt.only !== 'backup') {
    if (i === 0 || opt.only === 'restore') {
      await engineDump([compressor('zstd'), createWriteStream(bvZst)]);
      await sh(`tar -cf - -C ${q(src)} . | zstd -3 -q > ${q(tarZst)}`);
    }
    // Every backup pass rewrites the .zst: described again before it is restored.
    zstSpec = await storedSpec(bvZst);
    // Every restore writes a fresh directory, and none is removed before the
    // end: creating files among thousands of just-freed inodes costs ext4
    // (without a journal) far more kernel time, whichever side goes after a
    // removal (lib/deleted-inodes.ts). The guard waits only if a tree was
    // removed within ext4's window all the same.
    const restoreTimed = async (key: string, fn: (target: string) => Promise<Sample>) => {
      await awaitDeletionsAged();
      push(key, await fn(join(restored, `${key}-${i}`)));
    };
    await pair(
      i,
      () => restoreTimed('restore_tar_engine', (t) => timed(() => engineRestore(t, bvTar, false))),
      () => restoreTimed('restore_tar_tar', (t) => refTimed(`mkdir ${q(t)} && tar -xf ${q(tarFile)} -C ${q(t)}`)),
    );
    await restoreTimed('restore_tar_tar_sync', (t) => refTimed(`mkdir ${q(t)} && tar -xf ${q(tarFile)} -C ${q(t)} && sync -f ${q(t)}`));
    await pair(
      i,
      () => restoreTimed('restore_zstd_engine', (t) => timed(() => engineRestore(t, bvZst, true))),
      () => restoreTimed('restore_zstd_tar', (t) => refTimed(`mkdir ${q(t)} && zstd -dq < ${q(tarZst)} | tar -xf - -C ${q(t)}`)),
    );
  }
}

const result = {
  tree: { ...tree, tar_bytes: (await stat(tarFile)).size },
  runs,
  engine: engineDir,
  loadavg_start: +load0.toFixed(2),
  loadavg_end: loadavg().map((x) => +x.toFixed(2)),
  peak_rss_mib: Math.round(Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN) / 1024),
  medians: Object.fromEntries(
    Object.entries(samples).map(([k, s]) => [
      k,
      {
        ms: Math.round(median(s.map((x) => x.ms))),
        ...(s[0]!.cpuMs !== undefined ? { cpu_ms: Math.round(median(s.map((x) => x.cpuMs!))), main_cpu_ms: Math.round(median(s.map((x) => x.mainCpuMs!))) } : {}),
        all_ms: s.map((x) => Math.round(x.ms)),
      },
    ]),
  ),
};
console.log(JSON.stringify(result));
const row = (label: string, e: string, r: string) => {
  const a = result.medians[e];
  const b = result.medians[r];
  if (!a || !b) return;
  console.error(`${label.padEnd(34)} engine ${(a.ms / 1000).toFixed(2)} s (cpu ${((a.cpu_ms ?? 0) / 1000).toFixed(2)} s, main thread ${((a.main_cpu_ms ?? 0) / 1000).toFixed(2)} s)  tar ${(b.ms / 1000).toFixed(2)} s  ${(a.ms / b.ms).toFixed(2)}x`);
};
row('backup, null sink', 'backup_null_engine', 'backup_null_tar');
row('backup, zstd -3', 'backup_zstd_engine', 'backup_zstd_tar');
row('restore from tar', 'restore_tar_engine', 'restore_tar_tar');
row('restore from tar (tar + sync -f)', 'restore_tar_engine', 'restore_tar_tar_sync');
row('restore from tar.zst', 'restore_zstd_engine', 'restore_zstd_tar');
if (!opt.keep) await removeTree(work);
