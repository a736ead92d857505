// Starts a worker thread on a sibling module, whether this code runs as
// compiled JavaScript (dist/, plain node) or as TypeScript under tsx (tests,
// a checkout that was never built). Workers do not inherit the main thread's
// loader, so under tsx a small CommonJS bootstrap registers tsx in the worker
// before importing the module; compiled code starts the .js file directly.
// Locations are resolved here, so the worker's cwd does not matter.
import { Worker, type WorkerOptions } from 'node:worker_threads';

const BOOTSTRAP = `
const { workerData } = require('node:worker_threads');
import(workerData.__tsx).then((m) => { m.register(); return import(workerData.__entry); });
`;

/**
 * How to start a worker on module `name` (relative, without extension) next
 * to the caller whose import.meta.url is `callerUrl`.
 */
export function moduleWorkerStart(callerUrl: string, name: string, options: WorkerOptions = {}): { script: string | URL; options: WorkerOptions } {
  if (!new URL(callerUrl).pathname.endsWith('.ts')) return { script: new URL(`${name}.js`, callerUrl), options };
  const entry = new URL(`${name}.ts`, callerUrl).href;
  const workerData = { ...(options.workerData as object | undefined), __tsx: import.meta.resolve('tsx/esm/api'), __entry: entry };
  return { script: BOOTSTRAP, options: { ...options, eval: true, workerData } };
}

export function startModuleWorker(callerUrl: string, name: string, options: WorkerOptions = {}): Worker {
  const start = moduleWorkerStart(callerUrl, name, options);
  return new Worker(start.script, start.options);
}

/**
 * How long an idle worker thread of the codec, files dump and files restore
 * pools waits for its next job before it leaves (config
 * `worker_idle_seconds`; tests shorten it). A waiting worker costs ~10 MiB
 * of the server's memory; a new one costs its start and runs its first job
 * on cold compiled code and fresh memory. bench/worker-warmth.ts measures
 * the difference through the API.
 */
export const workerIdle = { ms: 5_000 };
