// Backvault against the pipelines its users would otherwise put together,
// on the same data, in the same run, alternating. See bench/README.md.
//
//   npm run bench                  quick: ~120 MB of dump text, 2 repetitions
//   npm run bench -- --full        ~1 GB, 1.2 M Redis keys, 3 repetitions
//   options: --size-mb N --redis-keys N --reps N --work DIR --out FILE --skip-api --skip-profile --keep
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import autocannon from 'autocannon';
import { Backvault, Sampler } from './lib/server.ts';
import { settleDisk } from './lib/cold.ts';
import { awaitDeletionsAged, removeTree } from './lib/deleted-inodes.ts';
import { MY, MY_URL, PG, PG_URL, q, sh } from './lib/sh.ts';
import { dropMy, dropPg, loadMy, loadPg, loadRedis, writeTree, type RedisStats, type TreeStats } from './lib/datasets.ts';
import { writeTables, type TableFile } from './lib/tables.ts';
import { summarize } from './lib/profile.ts';
import { FILES_REF_SYNCED, writeReport, type Results, type OpSample, type SizeResult, type ApiResult, type ServerProfile } from './lib/report.ts';

const BENCH = resolve(import.meta.dirname);

function args() {
  const a = process.argv.slice(2);
  const flag = (n: string) => a.includes(`--${n}`);
  const val = (n: string) => {
    const i = a.indexOf(`--${n}`);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const full = flag('full');
  const sizeMb = Number(val('size-mb') ?? (full ? 1000 : 120));
  return {
    mode: full ? 'full' : 'quick',
    sizeMb,
    smallMb: Number(val('small-mb') ?? Math.round(sizeMb / 4)),
    redisKeys: Number(val('redis-keys') ?? (full ? 1_200_000 : 200_000)),
    reps: Number(val('reps') ?? (full ? 3 : 2)),
    smallReps: Number(val('small-reps') ?? (full ? 2 : 1)),
    work: resolve(val('work') ?? join(tmpdir(), 'backvault-bench')),
    out: resolve(val('out') ?? join(BENCH, full ? 'RESULTS-full.md' : 'RESULTS.md')),
    skipApi: flag('skip-api'),
    skipProfile: flag('skip-profile'),
    keep: flag('keep'),
    apiBackups: Number(val('api-backups') ?? 1000),
    apiSeconds: Number(val('api-seconds') ?? (full ? 30 : 10)),
  };
}

const opt = args();
const t0 = Date.now();
function log(msg: string): void {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${msg}\n`);
}

/** node names profiles CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; thread 0 is the main thread (the event loop). */
const isMainThreadProfile = (f: string) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(f);

const monoUs = () => Number(process.hrtime.bigint() / 1000n);

async function machine(): Promise<Record<string, string>> {
  const v = async (cmd: string) => (await sh(cmd).catch((e: Error) => ({ stdout: `n/a (${e.message.split('\n')[0]})` }))).stdout.trim();
  return {
    nproc: await v('nproc'),
    cpu: await v("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'"),
    free: await v('free -h'),
    kernel: await v('uname -r'),
    node: process.version,
    postgres: await v(`${PG} -d postgres -Atc 'select version()'`),
    pg_dump: await v('pg_dump --version'),
    mariadb: await v(`${MY} -N -e 'select version()'`),
    mariadb_dump: await v('mariadb-dump --version'),
    redis: await v("redis-cli info server | grep -E '^redis_version' | tr -d '\\r'"),
    zstd: await v('zstd --version'),
    restic: await v('restic version'),
    tar: await v('tar --version | head -1'),
    loadavg_start: await v('cat /proc/loadavg'),
  };
}

async function loadavg(): Promise<number> {
  return Number((await sh('cut -d" " -f1 /proc/loadavg')).stdout.trim());
}

async function fileSize(p: string): Promise<number> {
  return (await stat(p)).size;
}

async function duBytes(p: string): Promise<number> {
  return Number((await sh(`du -sb ${q(p)} | cut -f1`)).stdout.trim());
}

/** Runs a Backvault operation while sampling the server's memory and CPU. */
async function measured<T extends { ms: number }>(bv: Backvault, fn: () => Promise<T>): Promise<T & { rssKb: number; rssStartKb: number; cpuS: number; load: number }> {
  await settleDisk();
  const s = new Sampler(bv.pid);
  await s.start();
  try {
    const r = await fn();
    await s.stop();
    return { ...r, rssKb: s.peakRssKb, rssStartKb: s.startRssKb, cpuS: s.cpuSeconds, load: await loadavg() };
  } finally {
    await s.stop().catch(() => {});
  }
}

async function refTimed(cmd: string, opts: { env?: Record<string, string> } = {}): Promise<OpSample> {
  await settleDisk();
  const r = await sh(cmd, opts.env ? { env: opts.env } : {});
  return { ms: r.ms, load: await loadavg() };
}

type Ops = Record<string, Record<string, OpSample[]>>;

/** The steps a restore of one resource reports in its result, as the server timed them. */
function phasesOf(doc: { result?: { resources?: { phases?: Record<string, number> }[] } }): Record<string, number> | undefined {
  return doc.result?.resources?.[0]?.phases;
}

function push(ops: Ops, op: string, variant: string, s: OpSample): void {
  ((ops[op] ??= {})[variant] ??= []).push(s);
  const extra = [s.bytes !== undefined ? `${(s.bytes / 1e6).toFixed(1)} MB` : '', s.rssKb !== undefined ? `rss ${(s.rssKb / 1024).toFixed(0)} MB` : '', s.cpuS !== undefined ? `cpu ${s.cpuS.toFixed(1)} s` : '', s.phases ? Object.entries(s.phases).map(([k, v]) => `${k} ${v} ms`).join(' ') : '']
    .filter(Boolean)
    .join(', ');
  log(`  ${op} / ${variant}: ${(s.ms / 1000).toFixed(2)} s${extra ? ` (${extra})` : ''}`);
}

async function redisDelay(value?: string): Promise<string> {
  if (value !== undefined) {
    await sh(`redis-cli CONFIG SET repl-diskless-sync-delay ${value}`);
    return value;
  }
  return (await sh('redis-cli CONFIG GET repl-diskless-sync-delay')).stdout.trim().split('\n')[1]!.trim();
}

interface Data {
  tables: TableFile[];
  pgDumpBytes: number;
  myDumpBytes: number;
  redis: RedisStats;
  tree: TreeStats;
  treeDir: string;
}

const PGDB = 'bench_pg';
const MYDB = 'bench_my';

async function prepare(label: string, mb: number, dir: string): Promise<Data> {
  log(`${label}: generating ${mb} MB of table data`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const tables = await writeTables(dir, mb * 1e6, 42);
  log(`${label}: loading PostgreSQL ${PGDB} and MariaDB ${MYDB}`);
  await Promise.all([loadPg(PGDB, tables), loadMy(MYDB, tables)]);
  const pgDumpBytes = Number((await sh(`pg_dump -h 127.0.0.1 -U postgres -Fp ${PGDB} | wc -c`)).stdout.trim());
  const myDumpBytes = Number((await sh(`mariadb-dump -h 127.0.0.1 -u root --single-transaction ${MYDB} | wc -c`)).stdout.trim());
  // the table files are not needed any more
  for (const t of tables) await rm(t.file, { force: true });
  const keys = Math.round(opt.redisKeys * (mb / opt.sizeMb));
  log(`${label}: loading ${keys} Redis keys into db 9; writing a ${mb} MB file tree`);
  const redis = await loadRedis(9, keys, dir, 7);
  const treeDir = join(dir, 'tree');
  const tree = await writeTree(treeDir, mb * 1e6, 11);
  log(`${label}: pg dump ${(pgDumpBytes / 1e6).toFixed(0)} MB, mariadb dump ${(myDumpBytes / 1e6).toFixed(0)} MB, ${redis.keys} keys, ${tree.files} files ${(tree.bytes / 1e6).toFixed(0)} MB`);
  return { tables, pgDumpBytes, myDumpBytes, redis, tree, treeDir };
}

async function setupInstances(bv: Backvault, data: Data): Promise<void> {
  await bv.ensureInstance('pg', [{ name: 'db', type: 'postgres', connection: PG_URL(PGDB) }]);
  await bv.ensureInstance('my', [{ name: 'db', type: 'mysql', connection: MY_URL(MYDB) }]);
  await bv.ensureInstance('kv', [{ name: 'cache', type: 'redis', connection: 'redis://127.0.0.1:6379/9' }]);
  await bv.ensureInstance('www', [{ name: 'site', type: 'files', connection: data.treeDir }]);
}

/** One repetition of every operation; odd repetitions run Backvault first, even ones the reference first. */
async function repetition(bv: Backvault, data: Data, dir: string, rep: number, ops: Ops): Promise<void> {
  const bvFirst = rep % 2 === 1;
  const pair = async (a: () => Promise<void>, b: () => Promise<void>) => {
    for (const run of bvFirst ? [a, b] : [b, a]) await run();
  };
  const refDir = join(dir, 'ref');
  await rm(refDir, { recursive: true, force: true });
  await mkdir(refDir, { recursive: true });
  const ids: Record<string, string> = {};

  // PostgreSQL backup
  const pgRef = join(refDir, 'pg.pgdump.zst');
  await pair(
    async () => {
      const r = await measured(bv, () => bv.backup('pg'));
      ids.pg = r.doc.id;
      push(ops, 'pg_backup', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, bytes: r.doc.size, load: r.load });
    },
    async () => {
      const r = await refTimed(`pg_dump -h 127.0.0.1 -U postgres -Fc -Z0 ${PGDB} | zstd -3 -q > ${q(pgRef)}`);
      push(ops, 'pg_backup', 'reference', { ...r, bytes: await fileSize(pgRef) });
    },
  );
  // restic, as users run it today: plain dump into a fresh repository (format 2, compression auto)
  {
    const repo = join(refDir, 'restic');
    const env = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: repo, RESTIC_CACHE_DIR: join(refDir, 'restic-cache') };
    await sh('restic init -q', { env });
    const timeFile = join(refDir, 'restic.time');
    const r = await refTimed(`pg_dump -h 127.0.0.1 -U postgres -Fp ${PGDB} | /usr/bin/time -f %M -o ${q(timeFile)} restic backup -q --stdin --stdin-filename ${PGDB}.sql`, { env });
    const rss = Number((await sh(`tail -1 ${q(timeFile)}`)).stdout.trim());
    push(ops, 'pg_backup', 'restic', { ...r, bytes: await duBytes(repo), rssKb: rss });
    await rm(repo, { recursive: true, force: true });
  }

  // PostgreSQL restore into a new database
  await pair(
    async () => {
      await dropPg('bench_pg_rbv');
      const r = await measured(bv, () => bv.restore('pg', ids.pg!, { db: { connection: PG_URL('bench_pg_rbv') } }));
      push(ops, 'pg_restore', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, load: r.load, phases: phasesOf(r.doc) });
      await dropPg('bench_pg_rbv');
    },
    async () => {
      await dropPg('bench_pg_rref');
      const r = await refTimed(`${PG} -d postgres -c 'CREATE DATABASE bench_pg_rref' && zstd -dq < ${q(pgRef)} | pg_restore -h 127.0.0.1 -U postgres --exit-on-error -d bench_pg_rref`);
      push(ops, 'pg_restore', 'reference', r);
      await dropPg('bench_pg_rref');
      const tmp = join(refDir, 'pg.pgdump');
      const r2 = await refTimed(
        `${PG} -d postgres -c 'CREATE DATABASE bench_pg_rref' && zstd -dq ${q(pgRef)} -o ${q(tmp)} && pg_restore -h 127.0.0.1 -U postgres --exit-on-error -j2 -d bench_pg_rref ${q(tmp)} && rm -f ${q(tmp)}`,
      );
      push(ops, 'pg_restore', 'reference -j2 (zstd -d to file, then pg_restore -j2)', r2);
      await dropPg('bench_pg_rref');
    },
  );

  // MariaDB backup and restore
  const myRef = join(refDir, 'my.sql.zst');
  await pair(
    async () => {
      const r = await measured(bv, () => bv.backup('my'));
      ids.my = r.doc.id;
      push(ops, 'mysql_backup', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, bytes: r.doc.size, load: r.load });
    },
    async () => {
      const r = await refTimed(`mariadb-dump -h 127.0.0.1 -u root --single-transaction ${MYDB} | zstd -3 -q > ${q(myRef)}`);
      push(ops, 'mysql_backup', 'reference', { ...r, bytes: await fileSize(myRef) });
    },
  );
  await pair(
    async () => {
      await dropMy('bench_my_rbv');
      const r = await measured(bv, () => bv.restore('my', ids.my!, { db: { connection: MY_URL('bench_my_rbv') } }));
      push(ops, 'mysql_restore', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, load: r.load, phases: phasesOf(r.doc) });
      await dropMy('bench_my_rbv');
    },
    async () => {
      await dropMy('bench_my_rref');
      const r = await refTimed(`${MY} -e 'CREATE DATABASE bench_my_rref' && zstd -dq < ${q(myRef)} | ${MY} bench_my_rref`);
      push(ops, 'mysql_restore', 'reference', r);
      await dropMy('bench_my_rref');
    },
  );

  // Redis backup (the reference snapshots the whole server; Backvault dumps db 9 key by key)
  const rdb = join(refDir, 'dump.rdb');
  await pair(
    async () => {
      const r = await measured(bv, () => bv.backup('kv'));
      ids.kv = r.doc.id;
      push(ops, 'redis_backup', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, bytes: r.doc.size, load: r.load });
    },
    async () => {
      const before = await redisDelay();
      await redisDelay('0');
      try {
        const r = await refTimed(`redis-cli --rdb ${q(rdb)} > /dev/null`);
        push(ops, 'redis_backup', 'reference', { ...r, bytes: await fileSize(rdb) });
      } finally {
        await redisDelay(before);
      }
    },
  );
  // Redis restore into db 8 (no reference: Redis has no tool that loads an RDB into a running server's logical database)
  {
    await sh('redis-cli -n 8 FLUSHDB');
    const r = await measured(bv, () => bv.restore('kv', ids.kv!, { cache: { connection: 'redis://127.0.0.1:6379/8' } }));
    push(ops, 'redis_restore', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, load: r.load, phases: phasesOf(r.doc) });
    await sh('redis-cli -n 8 FLUSHDB');
  }

  // Files backup and restore
  const tarRef = join(refDir, 'files.tar.zst');
  await pair(
    async () => {
      const r = await measured(bv, () => bv.backup('www'));
      ids.www = r.doc.id;
      push(ops, 'files_backup', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, bytes: r.doc.size, load: r.load });
    },
    async () => {
      const r = await refTimed(`tar -cf - -C ${q(data.treeDir)} . | zstd -3 -q > ${q(tarRef)}`);
      push(ops, 'files_backup', 'reference', { ...r, bytes: await fileSize(tarRef) });
    },
  );
  // Each restore writes a fresh directory under restored/, kept until the
  // bench ends: removing a tree between the two sides made the second one
  // create its files among just-freed inodes, which costs ext4 (without a
  // journal) several times the kernel time (lib/deleted-inodes.ts). The
  // guard waits only if a tree was removed within that window all the same.
  const restored = join(dir, 'restored');
  await mkdir(restored, { recursive: true });
  await pair(
    async () => {
      const target = join(restored, `backvault-${rep}`);
      await awaitDeletionsAged();
      const r = await measured(bv, () => bv.restore('www', ids.www!, { site: { connection: target } }));
      push(ops, 'files_restore', 'backvault', { ms: r.ms, rssKb: r.rssKb, rssStartKb: r.rssStartKb, cpuS: r.cpuS, load: r.load, phases: phasesOf(r.doc) });
    },
    async () => {
      const target = join(restored, `reference-${rep}`);
      await awaitDeletionsAged();
      const r = await refTimed(`mkdir -p ${q(target)} && zstd -dq < ${q(tarRef)} | tar -xf - -C ${q(target)}`);
      push(ops, 'files_restore', 'reference', r);
      // Backvault's restore ends with the files on disk (one syncfs before the swap); tar's leaves them to writeback.
      const synced = await sh(`sync -f ${q(target)}`);
      push(ops, 'files_restore', FILES_REF_SYNCED, { ms: r.ms + synced.ms, load: r.load });
    },
  );

  // Keep the disk small: this repetition's backups are measured.
  for (const id of Object.values(ids)) await bv.api('DELETE', `/backups/${id}`).catch(() => {});
  await rm(refDir, { recursive: true, force: true });
}

/** GET list latency while a PostgreSQL backup runs: does the backup's work block the event loop? */
async function listDuringBackup(bv: Backvault, expectMs: number): Promise<{ idle: ApiResult['latency']; during: ApiResult['latency']; backupMs: number }> {
  const headers = { authorization: `Bearer ${bv.key}` };
  const url = `${bv.url}/api/v1/backups?per_page=50`;
  const idle = await autocannon({ url, connections: 2, duration: 3, headers });
  // the load runs for a little less than the backup is expected to take, so every request falls inside it
  const backup = bv.backup('pg');
  const during = await autocannon({ url, connections: 2, duration: Math.max(1, Math.floor((expectMs * 0.8) / 1000)), headers });
  const { ms: backupMs } = await backup;
  const pick = (r: Awaited<ReturnType<typeof autocannon>>) => ({ p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max, rps: r.requests.average });
  return { idle: pick(idle), during: pick(during), backupMs };
}

async function phase(label: string, mb: number, reps: number): Promise<SizeResult> {
  const dir = join(opt.work, label);
  const data = await prepare(label, mb, join(dir, 'data'));
  const bv = new Backvault(join(dir, 'backvault'));
  await bv.start();
  log(`${label}: Backvault pid ${bv.pid} at ${bv.url}`);
  const ops: Ops = {};
  const loads: number[] = [];
  try {
    await setupInstances(bv, data);
    for (let rep = 1; rep <= reps; rep++) {
      log(`${label}: repetition ${rep}/${reps}`);
      loads.push(await loadavg());
      await repetition(bv, data, dir, rep, ops);
    }
    let listLatency;
    if (label === 'large') {
      log(`${label}: list latency while a PostgreSQL backup runs`);
      const pgMs = (ops.pg_backup?.backvault ?? []).map((x) => x.ms).sort((a, b) => a - b);
      listLatency = await listDuringBackup(bv, pgMs[Math.floor(pgMs.length / 2)] ?? 5000);
    }
    const hwm = (await Sampler.status(bv.pid)).hwmKb;
    let profile: ServerProfile | undefined;
    await bv.stop();
    if (label === 'large' && !opt.skipProfile) profile = await profileRun(data, dir);
    return {
      label,
      mb,
      reps,
      data: { pgDumpBytes: data.pgDumpBytes, myDumpBytes: data.myDumpBytes, tables: data.tables.map((t) => ({ table: t.table, rows: t.rows, bytes: t.bytes })), redis: data.redis, tree: data.tree },
      ops,
      hwmKb: hwm,
      loads,
      listLatency,
      profile,
    };
  } finally {
    await bv.stop().catch(() => {});
  }
}

/** A server under node --cpu-prof runs each kind of operation once; the profile is cut into one window per operation. */
async function profileRun(data: Data, dir: string): Promise<ServerProfile> {
  log('profile: one of each operation under node --cpu-prof');
  const profDir = join(dir, 'cpuprof');
  await rm(profDir, { recursive: true, force: true });
  await mkdir(profDir, { recursive: true });
  const bv = new Backvault(join(dir, 'backvault-prof'), { cpuProfDir: profDir });
  await bv.start();
  const windows: { label: string; startUs: number; endUs: number }[] = [];
  const win = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
    await settleDisk();
    const startUs = monoUs();
    const r = await fn();
    windows.push({ label, startUs, endUs: monoUs() });
    return r;
  };
  try {
    await setupInstances(bv, data);
    const pg = await win('pg_backup', () => bv.backup('pg'));
    await dropPg('bench_pg_rbv');
    await win('pg_restore', () => bv.restore('pg', pg.doc.id, { db: { connection: PG_URL('bench_pg_rbv') } }));
    await dropPg('bench_pg_rbv');
    const my = await win('mysql_backup', () => bv.backup('my'));
    await dropMy('bench_my_rbv');
    await win('mysql_restore', () => bv.restore('my', my.doc.id, { db: { connection: MY_URL('bench_my_rbv') } }));
    await dropMy('bench_my_rbv');
    const kv = await win('redis_backup', () => bv.backup('kv'));
    await sh('redis-cli -n 8 FLUSHDB');
    await win('redis_restore', () => bv.restore('kv', kv.doc.id, { cache: { connection: 'redis://127.0.0.1:6379/8' } }));
    await sh('redis-cli -n 8 FLUSHDB');
    const www = await win('files_backup', () => bv.backup('www'));
    await awaitDeletionsAged();
    await win('files_restore', () => bv.restore('www', www.doc.id, { site: { connection: join(dir, 'restored', 'profile') } }));
  } finally {
    await bv.stop();
  }
  const files = (await readdir(profDir)).filter((f) => f.endsWith('.cpuprofile'));
  const main = files.find(isMainThreadProfile);
  if (!main) throw new Error('no .cpuprofile written');
  // Worker threads (codec, files dump and restore, SQLite) write their own profiles when they exit.
  const workers = files.filter((f) => f !== main).map((f) => join(profDir, f));
  return { main: await summarize(join(profDir, main), windows, 8), workers: await summarize(workers, windows, 8), workerProfiles: workers.length };
}

async function apiPhase(): Promise<ApiResult> {
  const dir = join(opt.work, 'api');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  // Under the CPU profiler (a few % of overhead) so a missed latency target comes with its profile.
  const profDir = join(dir, 'cpuprof');
  const bv = new Backvault(join(dir, 'backvault'), { cpuProfDir: profDir });
  await bv.start();
  const windows: { label: string; startUs: number; endUs: number }[] = [];
  let result: Omit<ApiResult, 'profile'>;
  try {
    const instances = Array.from({ length: 20 }, (_, i) => `api-${i}`);
    log(`api: seeding ${opt.apiBackups} backups (tiny files resources, through POST /instances/{i}/backups)`);
    const seedStart = performance.now();
    await bv.seedBackups(instances, opt.apiBackups, join(dir, 'tiny'));
    const seedMs = performance.now() - seedStart;
    log(`api: ${opt.apiBackups} backups in ${(seedMs / 1000).toFixed(1)} s; autocannon GET /api/v1/backups?per_page=50 for ${opt.apiSeconds} s`);
    const headers = { authorization: `Bearer ${bv.key}` };
    let w0 = monoUs();
    const list = await autocannon({ url: `${bv.url}/api/v1/backups?per_page=50`, connections: 10, duration: opt.apiSeconds, headers });
    windows.push({ label: 'GET /backups?per_page=50, 10 connections', startUs: w0, endUs: monoUs() });
    const single = await autocannon({ url: `${bv.url}/api/v1/backups?per_page=50`, connections: 1, duration: Math.max(3, Math.round(opt.apiSeconds / 2)), headers });
    const one = await autocannon({ url: `${bv.url}/api/v1/backups?per_page=50&page=20`, connections: 10, duration: Math.max(3, Math.round(opt.apiSeconds / 2)), headers });
    // The same list while the catalog never stops changing, so answers are
    // recomputed instead of reused (the worst case for the answer cache).
    let churning = true;
    let writes = 0;
    const churn = (async () => {
      while (churning) await bv.api('PATCH', '/instances/api-0', { description: `churn ${writes++}` });
    })();
    w0 = monoUs();
    const churned = await autocannon({ url: `${bv.url}/api/v1/backups?per_page=50`, connections: 10, duration: Math.max(3, Math.round(opt.apiSeconds / 2)), headers });
    windows.push({ label: 'GET /backups?per_page=50, 10 connections, catalog changing', startUs: w0, endUs: monoUs() });
    churning = false;
    await churn;

    log('api: 100 concurrent POST /instances/{i}/backups');
    const before = (await bv.api('GET', '/backups?per_page=1')).pagination.total as number;
    const created: string[] = [];
    const statuses: number[] = [];
    let k = 0;
    const postStart = performance.now();
    w0 = monoUs();
    const post = await autocannon({
      url: bv.url,
      connections: 100,
      amount: 100,
      requests: [
        {
          method: 'POST',
          headers: { ...headers, 'content-type': 'application/json' },
          body: JSON.stringify({ type: 'full', label: 'concurrent' }),
          setupRequest: (req) => ({ ...req, path: `/api/v1/instances/${instances[k++ % instances.length]}/backups` }),
          onResponse: (status, body) => {
            statuses.push(status);
            if (status === 202) created.push((JSON.parse(body) as { id: string }).id);
          },
        },
      ],
    });
    const acceptedMs = performance.now() - postStart;
    windows.push({ label: '100 concurrent POST /instances/{i}/backups (until all accepted)', startUs: w0, endUs: monoUs() });
    const outcomes: Record<string, number> = {};
    for (const id of created) {
      let doc;
      try {
        doc = await bv.waitFor('backups', id);
      } catch {
        doc = await bv.api('GET', `/backups/${id}`);
      }
      outcomes[doc.status] = (outcomes[doc.status] ?? 0) + 1;
    }
    const allDoneMs = performance.now() - postStart;
    const after = (await bv.api('GET', '/backups?per_page=1')).pagination.total as number;
    const hist = (r: Awaited<ReturnType<typeof autocannon>>) => ({ p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max, rps: r.requests.average });
    result = {
      seeded: opt.apiBackups,
      seedMs,
      catalogTotal: before,
      list: { ...hist(list), requests: list.requests.total, non2xx: list.non2xx, errors: list.errors },
      listSingle: { ...hist(single), requests: single.requests.total, non2xx: single.non2xx, errors: single.errors },
      listPage20: { ...hist(one), requests: one.requests.total, non2xx: one.non2xx, errors: one.errors },
      listChurn: { ...hist(churned), requests: churned.requests.total, non2xx: churned.non2xx, errors: churned.errors, writes },
      posts: {
        ...hist(post),
        sent: post.requests.total,
        statuses: statuses.reduce<Record<string, number>>((m, s) => ((m[s] = (m[s] ?? 0) + 1), m), {}),
        created: created.length,
        outcomes,
        catalogGrowth: after - before,
        acceptedMs,
        allDoneMs,
      },
      latency: { p50: list.latency.p50, p90: list.latency.p90, p99: list.latency.p99, max: list.latency.max, rps: list.requests.average },
    };
  } finally {
    await bv.stop();
  }
  const file = (await readdir(profDir)).find(isMainThreadProfile);
  return { ...result, profile: file ? await summarize(join(profDir, file), windows, 12) : undefined };
}

async function main(): Promise<void> {
  log(`mode ${opt.mode}: ${opt.sizeMb} MB (small ${opt.smallMb} MB), ${opt.redisKeys} Redis keys, ${opt.reps} repetitions; work dir ${opt.work}`);
  await mkdir(opt.work, { recursive: true });
  const results: Results = { mode: opt.mode, options: { ...opt }, started: new Date().toISOString(), machine: await machine(), sizes: [] };
  let failed = false;
  try {
    results.sizes.push(await phase('small', opt.smallMb, opt.smallReps));
    results.sizes.push(await phase('large', opt.sizeMb, opt.reps));
    if (!opt.skipApi) results.api = await apiPhase();
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    results.finished = new Date().toISOString();
    results.machine.loadavg_end = (await sh('cat /proc/loadavg')).stdout.trim();
    results.seconds = (Date.now() - t0) / 1000;
    await writeFile(opt.out.replace(/\.md$/, '.json'), JSON.stringify(results, null, 2));
    if (results.sizes.length > 0) await writeReport(opt.out, results);
    log(`wrote ${opt.out} in ${results.seconds.toFixed(0)} s`);
    await dropPg(PGDB).catch(() => {});
    await dropMy(MYDB).catch(() => {});
    await sh('redis-cli -n 9 FLUSHDB; redis-cli -n 8 FLUSHDB').catch(() => {});
    // After a failure the work dir stays: the servers' logs are there.
    if (!opt.keep && !failed) await removeTree(opt.work);
    if (failed) log(`failed; server logs are under ${opt.work}`);
  }
}

await main();
