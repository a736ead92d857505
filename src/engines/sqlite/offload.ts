// Runs a task from tasks.ts in a worker thread, so long synchronous SQLite
// calls do not block the event loop. Cancelling terminates the worker: the
// worker's connections close with it, and SQLite rolls back any open
// transaction, so a cancelled task changes nothing.
import { Worker } from 'node:worker_threads';
import { AppError, type ErrorCode, ERRORS } from '../../errors/index.ts';
import type { Tasks } from './tasks.ts';
import type { WorkerReply } from './worker.ts';

// Workers do not inherit the main thread's TypeScript loader, so a small
// CommonJS bootstrap registers tsx in the worker before importing worker.ts.
// Both locations are resolved here, so the worker's cwd does not matter.
const BOOTSTRAP = `
const { workerData } = require('node:worker_threads');
import(workerData.tsx).then((m) => { m.register(); return import(workerData.entry); });
`;
const TSX_API = import.meta.resolve('tsx/esm/api');
const ENTRY = new URL('./worker.ts', import.meta.url).href;

export function runTask<N extends keyof Tasks>(
  task: N,
  args: Parameters<Tasks[N]>[0],
  signal: AbortSignal,
): Promise<Awaited<ReturnType<Tasks[N]>>> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new AppError('cancelled'));
      return;
    }
    const worker = new Worker(BOOTSTRAP, { eval: true, workerData: { tsx: TSX_API, entry: ENTRY, task, args } });
    let reply: WorkerReply | undefined;
    let cancelled = false;
    const onAbort = () => {
      cancelled = true;
      void worker.terminate();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: WorkerReply) => {
      reply = m;
    });
    worker.on('error', (err) => {
      reply ??= { ok: false, message: err.message };
    });
    // Settle only on exit: by then the worker's database connections are
    // closed, so callers may remove files and other processes may write.
    worker.on('exit', () => {
      signal.removeEventListener('abort', onAbort);
      if (cancelled && !reply?.ok) reject(new AppError('cancelled'));
      else if (!reply) reject(new AppError('engine_failed', 'The SQLite worker stopped without an answer.'));
      else if (reply.ok) resolve(reply.result as Awaited<ReturnType<Tasks[N]>>);
      else if (reply.code && reply.code in ERRORS) reject(new AppError(reply.code as ErrorCode, reply.message, reply.details));
      else reject(new AppError('engine_failed', `SQLite failed: ${reply.message}`));
    });
  });
}
