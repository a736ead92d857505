// CPU cost of storing and restoring an artifact through the codec
// (src/platform/codec.ts: zstd + sha256 of the stored bytes in worker threads;
// streams.ts for gzip and none) against the command-line tools doing the same
// work, on the same input, in the same run, the order alternating per run:
//
//   compress:   zstd -3 -c < in > out; sha256sum out     vs  compressForStorage('zstd')
//   restore:    sha256sum out; zstd -d -c < out > back    vs  verifyAndDecompress(zstd)
//   gzip, none: gzip -6 / cat, then sha256sum            vs  compressForStorage('gzip' | 'none')
//
// CPU is user+sys: of the children (cutime+cstime) for the tools, of this whole
// process (process.cpuUsage(), which counts every thread: main, codec workers,
// libuv pool) for ours, so it includes reading the input and writing the output,
// as the CLI's does. The "copy" row is that I/O alone (read -> write, no codec):
// what ours cannot go below. "zstd-napi, no worker" calls the same native
// binding synchronously on this thread with 512 KiB inputs, without hashing:
// the library alone, to tell its cost from the plumbing's.
//
// Input: the bench's shop tables (lib/tables.ts, fixed seed) in COPY format,
// concatenated: what a plain pg_dump's data is; compresses ~3.5x at -3.
// "main thread s" is the part of ours that ran on the event loop.
// Usage: npx tsx bench/codec.ts [--size 250] [--runs 3] [--input FILE] [--level 3] [--work DIR] [--keep] [--skip-other] [--baseline DIR]
//   --input:      use this file instead of generating one;
//   --skip-other: only zstd (skip the gzip and none rows);
//   --baseline:   a directory holding an older copy of src/platform (streams.ts,
//                 codec.ts, codec-worker.ts, workers.ts, with ../errors and
//                 node_modules reachable from it), measured too, in turn, rows
//                 marked [baseline].
import { spawn } from 'node:child_process';
import { closeSync, createReadStream, createWriteStream, openSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import binding from 'zstd-napi/binding.js';
import type { Compression } from '../src/domain/types.ts';
import { compressForStorage, verifyAndDecompress } from '../src/platform/streams.ts';
import { childCpu, mainThreadCpu } from './lib/cpu.ts';
import { writeTables } from './lib/tables.ts';

const { values: opts } = parseArgs({
  options: {
    size: { type: 'string', default: '250' },
    runs: { type: 'string', default: '3' },
    input: { type: 'string' },
    level: { type: 'string', default: '3' },
    work: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'skip-other': { type: 'boolean', default: false },
    baseline: { type: 'string' },
  },
});
const sizeMb = Number(opts.size);
const runs = Number(opts.runs);
const level = Number(opts.level);
if (!(sizeMb > 0) || !(runs > 0) || !Number.isInteger(level)) throw new Error('--size, --runs and --level must be positive numbers');
if (level !== 3) console.error('note: compressForStorage always uses level 3; --level only changes the CLI and the no-worker rows');

const log = (s: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${s}`);
const work = opts.work ?? (await mkdtemp(join(tmpdir(), 'bv-codec-')));
await mkdir(work, { recursive: true });


function selfCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Runs a command without a shell, stdin/stdout from/to files (or captured), and returns its stdout. */
function run(cmd: string, args: string[], io: { stdin?: string; stdout?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const fds: number[] = [];
    const open = (p: string | undefined, flags: string) => {
      if (p === undefined) return 'pipe' as const;
      const fd = openSync(p, flags);
      fds.push(fd);
      return fd;
    };
    const child = spawn(cmd, args, { stdio: [open(io.stdin ?? '/dev/null', 'r'), open(io.stdout, 'w'), 'pipe'] });
    for (const fd of fds) closeSync(fd);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${Buffer.concat(err).toString('utf8').slice(-1000)}`));
      else resolve(Buffer.concat(out).toString('utf8'));
    });
  });
}

async function sha256sum(file: string): Promise<string> {
  return (await run('sha256sum', [file])).split(' ')[0]!;
}

async function makeInput(): Promise<string> {
  if (opts.input) return opts.input;
  const file = join(work, 'input.copy');
  log(`generating ~${sizeMb} MB of shop tables (seed 7)`);
  const tables = await writeTables(work, sizeMb * 1024 * 1024, 7);
  const ws = createWriteStream(file);
  for (const t of tables) {
    await pipeline(createReadStream(t.file), ws, { end: false });
    await rm(t.file);
  }
  ws.end();
  await new Promise<void>((resolve, reject) => ws.on('finish', resolve).on('error', reject));
  return file;
}

interface Row {
  name: string;
  cpu: number[];
  /** of which the main thread's (ours only) */
  main: number[];
  outBytes: number;
}

const rows = new Map<string, Row>();
function record(name: string, cpu: number, outBytes: number, main?: number): void {
  const r = rows.get(name) ?? { name, cpu: [], main: [], outBytes };
  r.cpu.push(cpu);
  if (main !== undefined) r.main.push(main);
  r.outBytes = outBytes;
  rows.set(name, r);
}

async function measureChildren(name: string, fn: () => Promise<number>): Promise<void> {
  const c0 = childCpu();
  const s0 = selfCpu();
  const bytes = await fn();
  const own = selfCpu() - s0;
  // this process only waits for the tools: a few ms of its own CPU, left out
  if (own > 0.2) log(`note: ${name} used ${own.toFixed(2)} s of this process's CPU`);
  record(name, childCpu() - c0, bytes);
}

async function measureSelf(name: string, fn: () => Promise<number>): Promise<void> {
  const s0 = selfCpu();
  const m0 = mainThreadCpu();
  const bytes = await fn();
  record(name, selfCpu() - s0, bytes, mainThreadCpu() - m0);
}

type StreamsModule = Pick<typeof import('../src/platform/streams.ts'), 'compressForStorage' | 'verifyAndDecompress'>;
interface Impl {
  tag: string;
  mod: StreamsModule;
}
const impls: Impl[] = [{ tag: '', mod: { compressForStorage, verifyAndDecompress } }];
if (opts.baseline) impls.push({ tag: ' [baseline]', mod: (await import(pathToFileURL(resolve(opts.baseline, 'streams.ts')).href)) as StreamsModule });

/** A storing path: input file -> compressForStorage(c) -> output file. */
async function store(impl: Impl, c: Compression, input: string, output: string): Promise<{ size: number; sha256: string }> {
  const stored = impl.mod.compressForStorage(c);
  await pipeline([createReadStream(input), ...stored.stages, createWriteStream(output)]);
  return stored.stored();
}

async function restore(impl: Impl, c: Compression, stored: string, entry: { sha256: string; size: number }, output: string): Promise<void> {
  await pipeline([createReadStream(stored), ...impl.mod.verifyAndDecompress({ compression: c, ...entry }, 'bench artifact'), createWriteStream(output)]);
}

/** Runs the steps in an order that turns by one each run. */
async function rotated(run: number, steps: (() => Promise<void>)[]): Promise<void> {
  for (let k = 0; k < steps.length; k++) await steps[(k + run) % steps.length]!();
}

/** zstd-napi on this thread, no worker, no hash: the library's own cost (plus reading the file). */
async function napiDirect(input: string, output: string): Promise<number> {
  const cctx = new binding.CCtx();
  cctx.setParameter(binding.CParameter.compressionLevel, level);
  cctx.setParameter(binding.CParameter.checksumFlag, 1);
  const out = Buffer.allocUnsafe(1 << 20);
  const ws = createWriteStream(output);
  let total = 0;
  const flushOut = async (n: number) => {
    if (n === 0) return;
    total += n;
    if (!ws.write(Buffer.from(out.subarray(0, n)))) await new Promise<void>((r) => ws.once('drain', () => r()));
  };
  for await (const chunk of createReadStream(input, { highWaterMark: 512 * 1024 }) as AsyncIterable<Buffer>) {
    let rest = chunk;
    while (rest.length > 0) {
      const [, produced, consumed] = cctx.compressStream2(out, rest, binding.EndDirective.continue);
      rest = rest.subarray(consumed);
      await flushOut(produced);
    }
  }
  for (;;) {
    const [ret, produced] = cctx.compressStream2(out, Buffer.alloc(0), binding.EndDirective.end);
    await flushOut(produced);
    if (ret === 0) break;
  }
  ws.end();
  await new Promise<void>((resolve, reject) => ws.on('finish', resolve).on('error', reject));
  return total;
}

const input = await makeInput();
// Starts a codec worker (under tsx it compiles its module) before anything is measured.
for (const impl of impls) {
  const warm = join(work, 'warm');
  await pipeline(Readable.from([Buffer.alloc(1 << 20, 'warm up ')]), createWriteStream(warm));
  const e = await store(impl, 'zstd', warm, warm + '.zst');
  await restore(impl, 'zstd', warm + '.zst', e, warm + '.back');
  await Promise.all([warm, warm + '.zst', warm + '.back'].map((f) => rm(f)));
}
const inBytes = statSync(input).size;
const ref = join(work, 'ref.zst');
const back = join(work, 'back');
log(`input ${input}: ${(inBytes / 1e6).toFixed(1)} MB; ${runs} runs; load ${loadavg()[0]!.toFixed(2)} on ${cpus().length} cpus`);

const CLI = `zstd -${level} + sha256sum`;
const DCLI = 'sha256sum + zstd -d';
for (let i = 0; i < runs; i++) {
  const outs = impls.map((impl, k) => ({ impl, file: join(work, `ours${k}.zst`), entry: { sha256: '', size: 0 } }));
  await rotated(i, [
    () =>
      measureChildren(CLI, async () => {
        await run('zstd', [`-${level}`, '-q', '-c'], { stdin: input, stdout: ref });
        await sha256sum(ref);
        return statSync(ref).size;
      }),
    ...outs.map((o) => () =>
      measureSelf(`compressForStorage(zstd)${o.impl.tag}`, async () => {
        o.entry = await store(o.impl, 'zstd', input, o.file);
        return o.entry.size;
      }),
    ),
  ]);
  // correctness, outside the measurements: what the worker reported is what was written, and the CLI reads it
  for (const o of outs) {
    if (o.entry.size !== statSync(o.file).size || o.entry.sha256 !== (await sha256sum(o.file))) throw new Error(`ours${o.impl.tag}: reported size/sha256 differ from the file`);
    await run('zstd', ['-t', '-q', o.file]);
  }
  await rotated(i, [
    () =>
      measureChildren(DCLI, async () => {
        await sha256sum(ref);
        await run('zstd', ['-d', '-q', '-c'], { stdin: ref, stdout: back });
        return statSync(back).size;
      }),
    ...outs.map((o) => () =>
      measureSelf(`verifyAndDecompress(zstd)${o.impl.tag}`, async () => {
        await restore(o.impl, 'zstd', o.file, o.entry, back);
        if (statSync(back).size !== inBytes) throw new Error('restored size differs from the input');
        return inBytes;
      }),
    ),
  ]);

  await measureSelf('copy (read -> write, no codec)', async () => {
    await pipeline(createReadStream(input), createWriteStream(back));
    return statSync(back).size;
  });
  await measureSelf(`zstd-napi -${level}, no worker, no hash`, () => napiDirect(input, ref + '.napi'));

  if (!opts['skip-other']) {
    const gzs = impls.map((impl, k) => ({ impl, file: join(work, `ours${k}.gz`), entry: { sha256: '', size: 0 } }));
    const refGz = join(work, 'ref.gz');
    await rotated(i, [
      () =>
        measureChildren('gzip -6 + sha256sum', async () => {
          await run('gzip', ['-6', '-c'], { stdin: input, stdout: refGz });
          await sha256sum(refGz);
          return statSync(refGz).size;
        }),
      ...gzs.map((o) => () =>
        measureSelf(`compressForStorage(gzip)${o.impl.tag}`, async () => {
          o.entry = await store(o.impl, 'gzip', input, o.file);
          return o.entry.size;
        }),
      ),
    ]);
    await rotated(
      i,
      gzs.map((o) => () =>
        measureSelf(`verifyAndDecompress(gzip)${o.impl.tag}`, async () => {
          await restore(o.impl, 'gzip', o.file, o.entry, back);
          return statSync(back).size;
        }),
      ),
    );
    const inputSha = await sha256sum(input);
    await rotated(i, [
      () =>
        measureChildren('cat + sha256sum', async () => {
          await run('cat', [], { stdin: input, stdout: back });
          await sha256sum(back);
          return statSync(back).size;
        }),
      ...impls.map((impl) => () =>
        measureSelf(`compressForStorage(none)${impl.tag}`, async () => {
          const e = await store(impl, 'none', input, back);
          if (e.sha256 !== inputSha) throw new Error(`ours${impl.tag}: wrong sha256 for none`);
          return e.size;
        }),
      ),
    ]);
    await rotated(
      i,
      impls.map((impl) => () =>
        measureSelf(`verifyAndDecompress(none)${impl.tag}`, async () => {
          await restore(impl, 'none', input, { sha256: inputSha, size: inBytes }, back);
          return statSync(back).size;
        }),
      ),
    );
  }
  log(`run ${i + 1}/${runs} done (load ${loadavg()[0]!.toFixed(2)})`);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const gb = inBytes / 1e9;
const cliC = median(rows.get(CLI)!.cpu);
const cliD = median(rows.get(DCLI)!.cpu);
const refOf = (name: string): number | undefined => {
  if (name.includes('gzip') && name.startsWith('compress')) return rows.get('gzip -6 + sha256sum') && median(rows.get('gzip -6 + sha256sum')!.cpu);
  if (name.includes('none')) return rows.get('cat + sha256sum') && median(rows.get('cat + sha256sum')!.cpu);
  if (name.startsWith('verifyAndDecompress(zstd)')) return cliD;
  if (name.includes('zstd')) return cliC;
  return undefined;
};
const refSize = rows.get(CLI)!.outBytes;

console.log(`\ninput ${(inBytes / 1e6).toFixed(1)} MB, ${runs} runs, median CPU (user+sys); zstd ${(await run('zstd', ['-V'])).trim().replace(/^\*+\s*|\s*\*+$/g, '')}; node ${process.version}\n`);
console.log('| what | CPU s | s per GB of input | vs CLI | main thread s | output MB | ratio | runs (s) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
for (const r of rows.values()) {
  const m = median(r.cpu);
  const refCpu = r.name === CLI || r.name === DCLI || r.name.startsWith('gzip') || r.name.startsWith('cat') ? undefined : refOf(r.name);
  const vs = refCpu ? `${(m / refCpu).toFixed(2)}x` : '';
  const ratio = r.name.startsWith('verify') || r.name.includes('copy') || r.name.startsWith('sha256sum') ? '' : (inBytes / r.outBytes).toFixed(2);
  const main = r.main.length > 0 ? median(r.main).toFixed(2) : '';
  console.log(`| ${r.name} | ${m.toFixed(2)} | ${(m / gb).toFixed(2)} | ${vs} | ${main} | ${(r.outBytes / 1e6).toFixed(1)} | ${ratio} | ${r.cpu.map((x) => x.toFixed(2)).join(' ')} |`);
}
for (const impl of impls) console.log(`${impls.length > 1 ? '\n' : '\n'}stored size, ours${impl.tag} / CLI: ${(rows.get(`compressForStorage(zstd)${impl.tag}`)!.outBytes / refSize).toFixed(4)}`);

if (!opts.keep) {
  if (opts.work) {
    for (const f of ['ref.zst', 'ref.zst.napi', 'back', 'ref.gz', ...impls.flatMap((_, k) => [`ours${k}.zst`, `ours${k}.gz`]), ...(opts.input ? [] : ['input.copy'])]) await rm(join(work, f), { force: true });
  } else {
    await rm(work, { recursive: true, force: true });
  }
} else {
  log(`kept ${work}`);
}
