// Times the sqlite engine alone: N consecutive backups (dump, read the stream,
// await its info) of a small SQLite database; prints the median time per task
// and the process CPU (all threads, so the worker's too) per task. No server,
// no storage: it isolates what each task costs around the SQLite work itself,
// e.g. starting a worker thread.
// Usage: node --import tsx bench/sqlite-engine.ts [tasks=20] [rows=100]
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { sqliteEngine } from '../src/engines/sqlite/index.ts';

const [tasks = 20, rows = 100] = process.argv.slice(2).map(Number);
const root = mkdtempSync(join(tmpdir(), 'bv-sqlite-bench-'));
const path = join(root, 'app.db');
const db = new Database(path);
db.exec('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)');
const insert = db.prepare('INSERT INTO items (name) VALUES (?)');
db.transaction(() => {
  for (let i = 0; i < rows; i++) insert.run(`item ${i}`);
})();
db.close();

const signal = new AbortController().signal;
const resource = { name: 'app', type: 'sqlite' as const, connection: path, options: {} };
const times: number[] = [];
const cpus: number[] = [];
for (let i = 0; i < tasks; i++) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const out = await sqliteEngine.dump({ resource, selection: null, exclude: [], useReplica: false, workDir: join(root, 'work'), signal });
  for await (const _ of out.stream);
  const info = await out.info;
  if (info.counts.tables?.items !== rows) throw new Error(`unexpected counts ${JSON.stringify(info.counts)}`);
  times.push(performance.now() - t0);
  const c = process.cpuUsage(c0);
  cpus.push((c.user + c.system) / 1000);
}
rmSync(root, { recursive: true, force: true });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round = (x: number) => +x.toFixed(1);
console.log(
  JSON.stringify({
    tasks,
    rows,
    median_ms: round(median(times)),
    first_ms: round(times[0]!),
    median_cpu_ms: round(median(cpus)),
    total_ms: Math.round(times.reduce((a, b) => a + b, 0)),
    total_cpu_ms: Math.round(cpus.reduce((a, b) => a + b, 0)),
    loadavg: loadavg().map((x) => +x.toFixed(2)),
  }),
);
