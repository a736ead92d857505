// The list endpoint under load, on its own: a fresh server (bin/backvault.js),
// 1,000 tiny `files` backups seeded through the API, then autocannon -c 10
// -d 10 on GET /api/v1/backups?per_page=50 (and other pages), several runs.
//   node --import tsx bench/list-load.ts [--backups 1000] [--seconds 10] [--connections 10]
//     [--pages 1,20] [--runs 3] [--churn-ms N] [--cpu-prof] [--save-seed DIR] [--seed DIR]
// Seeding takes about a minute: --save-seed DIR keeps the seeded data
// directory (server stopped) so later runs start from a copy of it with --seed
// DIR, which also lets two trees be compared on the same catalog.
// --churn-ms N writes to the catalog during each run (an instance's
// description, through the API) every N ms, 0 = back to back, as running
// backups do with their progress: lists must then be computed again.
// Besides latency, each run reports the server's CPU time per request
// (/proc/PID/stat), which a busy shared machine disturbs less than wall time.
import autocannon from 'autocannon';
import Database from 'better-sqlite3';
import { cp, mkdtemp, readdir, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Backvault, Sampler } from './lib/server.ts';
import { summarize } from './lib/profile.ts';

const { values } = parseArgs({
  options: {
    backups: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '10' },
    pages: { type: 'string', default: '1' },
    runs: { type: 'string', default: '1' },
    'churn-ms': { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    seed: { type: 'string' },
    'save-seed': { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const total = Number(values.backups);
const seconds = Number(values.seconds);
const connections = Number(values.connections);
const pages = values.pages.split(',').map(Number);
const runs = Number(values.runs);
const churnMs = values['churn-ms'] === undefined ? null : Number(values['churn-ms']);
const log = (m: string) => process.stderr.write(`${m}\n`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const dir = await mkdtemp(join(tmpdir(), 'bv-list-load-'));
const dataDir = join(dir, 'backvault');
const profDir = join(dir, 'prof');
if (values.seed !== undefined) {
  await cp(resolve(values.seed), dataDir, { recursive: true });
  // The server prints an admin key only on a catalog without keys: forget the seeding run's key.
  const catalog = new Database(join(dataDir, 'catalog.db'));
  catalog.prepare('delete from api_keys').run();
  catalog.close();
}
const bv = new Backvault(dataDir, values['cpu-prof'] ? { cpuProfDir: profDir } : {});
await bv.start();
const windows: { label: string; startUs: number; endUs: number }[] = [];
try {
  if (values.seed === undefined) {
    const instances = Array.from({ length: 20 }, (_, i) => `api-${i}`);
    const t0 = performance.now();
    await bv.seedBackups(instances, total, join(dir, 'tiny'));
    log(`seeded ${total} backups in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } else {
    const all = await bv.api('GET', '/backups?per_page=1');
    log(`seed copied from ${values.seed}: ${all.pagination.total} backups`);
  }

  const headers = { authorization: `Bearer ${bv.key}` };
  const results: Record<string, unknown>[] = [];
  for (let run = 1; run <= runs; run++) {
    for (const page of pages) {
      const path = `/api/v1/backups?per_page=50${page === 1 ? '' : `&page=${page}`}`;
      const url = `${bv.url}${path}`;
      await autocannon({ url, connections, duration: 2, headers }); // warm-up (JIT, page cache)
      const loadBefore = loadavg();
      const cpu0 = await Sampler.cpuTicks(bv.pid);
      const startUs = Number(process.hrtime.bigint() / 1000n);
      let writes = 0;
      let churning = churnMs !== null;
      const churn = (async () => {
        while (churning) {
          await bv.api('PATCH', '/instances/api-0', { description: `churn ${writes++}` });
          if (churnMs) await new Promise((r) => setTimeout(r, churnMs));
        }
      })();
      const r = await autocannon({ url, connections, duration: seconds, headers });
      churning = false;
      await churn;
      windows.push({ label: `run ${run} ${path}`, startUs, endUs: Number(process.hrtime.bigint() / 1000n) });
      const cpuMs = ((await Sampler.cpuTicks(bv.pid)) - cpu0) * 10;
      const loadAfter = loadavg();
      const result = {
        run,
        url: path,
        backups: total,
        connections,
        seconds,
        p50: r.latency.p50,
        p90: r.latency.p90,
        p99: r.latency.p99,
        max: r.latency.max,
        rps: r.requests.average,
        requests: r.requests.total,
        // server process CPU (all threads) per request
        cpu_ms_per_request: Number((cpuMs / Math.max(1, r.requests.total)).toFixed(3)),
        ...(churnMs === null ? {} : { churn_ms: churnMs, catalog_writes: writes }),
        non2xx: r.non2xx,
        errors: r.errors,
        loadavg1: { before: Number(loadBefore[0]!.toFixed(2)), after: Number(loadAfter[0]!.toFixed(2)) },
      };
      results.push(result);
      process.stdout.write(`${JSON.stringify(result)}\n`);
      if (r.non2xx > 0 || r.errors > 0) process.exitCode = 1;
    }
  }
  if (runs > 1) {
    for (const page of pages) {
      const mine = results.filter((x) => (x.url as string).endsWith(page === 1 ? '50' : `page=${page}`));
      const m = (k: string) => median(mine.map((x) => x[k] as number));
      process.stdout.write(`${JSON.stringify({ median_of: mine.length, url: mine[0]!.url, p50: m('p50'), p99: m('p99'), rps: m('rps'), cpu_ms_per_request: m('cpu_ms_per_request') })}\n`);
    }
  }
} finally {
  await bv.stop();
  if (values['cpu-prof']) {
    const [file] = (await readdir(profDir)).filter((f) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(f)); // the main thread's
    for (const w of await summarize(join(profDir, file!), windows, 15)) {
      log(`\n${w.label}: busy ${(w.busyShare * 100).toFixed(1)}%, gc ${(w.gcShare * 100).toFixed(1)}%`);
      for (const t of w.top) log(`  ${(t.share * 100).toFixed(1).padStart(5)}%  ${t.fn}`);
    }
  }
  if (values['save-seed'] !== undefined) {
    await rm(resolve(values['save-seed']), { recursive: true, force: true });
    await cp(dataDir, resolve(values['save-seed']), { recursive: true });
    log(`seeded data directory saved to ${values['save-seed']}`);
  }
  if (!values.keep) await rm(dir, { recursive: true, force: true });
  else log(`kept ${dir}`);
}
