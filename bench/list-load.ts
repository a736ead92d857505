// The list endpoint under load, on its own: a fresh server (bin/backvault.js),
// 1,000 tiny `files` backups seeded through the API, then autocannon -c 10
// -d 10 on GET /api/v1/backups?per_page=50.
//   node --import tsx bench/list-load.ts [--backups 1000] [--seconds 10] [--connections 10]
import autocannon from 'autocannon';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Backvault } from './lib/server.ts';

const { values } = parseArgs({
  options: {
    backups: { type: 'string', default: '1000' },
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '10' },
    keep: { type: 'boolean', default: false },
  },
});
const total = Number(values.backups);
const seconds = Number(values.seconds);
const connections = Number(values.connections);
const log = (m: string) => process.stderr.write(`${m}\n`);

const dir = await mkdtemp(join(tmpdir(), 'bv-list-load-'));
const bv = new Backvault(join(dir, 'backvault'));
await bv.start();
try {
  const tiny = join(dir, 'tiny');
  await mkdir(tiny, { recursive: true });
  await writeFile(join(tiny, 'notes.txt'), 'a tiny resource for seeding the catalog\n');
  const instances = Array.from({ length: 20 }, (_, i) => `api-${i}`);
  for (const i of instances) await bv.ensureInstance(i, [{ name: 'notes', type: 'files', connection: tiny }]);
  const t0 = performance.now();
  let n = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (n < total) {
        const i = instances[n++ % instances.length]!;
        await bv.api('POST', `/instances/${i}/backups`, { type: 'full', label: 'seed' });
      }
    }),
  );
  for (;;) {
    const done = await bv.api('GET', '/backups?status=success&per_page=1');
    const failed = await bv.api('GET', '/backups?status=error&per_page=1');
    if (failed.pagination.total > 0) throw new Error(`${failed.pagination.total} seed backups failed`);
    if (done.pagination.total >= total) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  log(`seeded ${total} backups in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const url = `${bv.url}/api/v1/backups?per_page=50`;
  const headers = { authorization: `Bearer ${bv.key}` };
  await autocannon({ url, connections, duration: 2, headers }); // warm-up (JIT, page cache)
  const loadBefore = loadavg();
  const r = await autocannon({ url, connections, duration: seconds, headers });
  const loadAfter = loadavg();
  const result = {
    url: '/api/v1/backups?per_page=50',
    backups: total,
    connections,
    seconds,
    p50: r.latency.p50,
    p90: r.latency.p90,
    p99: r.latency.p99,
    max: r.latency.max,
    rps: r.requests.average,
    requests: r.requests.total,
    non2xx: r.non2xx,
    errors: r.errors,
    loadavg1: { before: Number(loadBefore[0]!.toFixed(2)), after: Number(loadAfter[0]!.toFixed(2)) },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (r.non2xx > 0 || r.errors > 0) process.exitCode = 1;
} finally {
  await bv.stop();
  if (!values.keep) await rm(dir, { recursive: true, force: true });
}
