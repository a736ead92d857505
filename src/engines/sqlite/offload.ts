// Runs a task from tasks.ts in a worker thread, so long synchronous SQLite
// calls do not block the event loop.
//
// Cancelling is cooperative (control.ts): the abort asks the worker to stop,
// and the worker checks between steps and once more, atomically, just before
// its point of no return (COMMIT). If the worker got there first, the cancel
// comes too late: the task is left to finish and its result is reported as
// it is (a caller sees success although its signal aborted). Only when the
// cancel won and the worker does not stop within CANCEL_GRACE_MS (a long
// SQLite call) is it terminated; that is safe because it can no longer pass
// its point of no return, and its connections close with it, so SQLite rolls
// back any open transaction.
import { Worker } from 'node:worker_threads';
import { AppError, type ErrorCode, ERRORS } from '../../errors/index.ts';
import { CANCELLING, CELLS, PAST_NO_RETURN, RELEASE, RUNNING, STATE, sqliteTestHooks, type WorkerMessage, type WorkerReply } from './control.ts';
import type { Tasks } from './tasks.ts';

// Workers do not inherit the main thread's TypeScript loader, so a small
// CommonJS bootstrap registers tsx in the worker before importing worker.ts.
// Both locations are resolved here, so the worker's cwd does not matter.
const BOOTSTRAP = `
const { workerData } = require('node:worker_threads');
import(workerData.tsx).then((m) => { m.register(); return import(workerData.entry); });
`;
const TSX_API = import.meta.resolve('tsx/esm/api');
const ENTRY = new URL('./worker.ts', import.meta.url).href;

/** How long a cancelled worker gets to stop by itself before it is terminated. */
const CANCEL_GRACE_MS = 1000;

type Result<N extends keyof Tasks> = Awaited<ReturnType<Tasks[N]>>;

export function runTask<N extends keyof Tasks>(task: N, args: Parameters<Tasks[N]>[0], signal: AbortSignal): Promise<Result<N>> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new AppError('cancelled'));
      return;
    }
    const cells = new Int32Array(new SharedArrayBuffer(CELLS * Int32Array.BYTES_PER_ELEMENT));
    const hooks = sqliteTestHooks.pause;
    const worker = new Worker(BOOTSTRAP, { eval: true, workerData: { tsx: TSX_API, entry: ENTRY, task, args, cells: cells.buffer, pauses: hooks !== undefined } });
    let reply: WorkerReply | undefined;
    let cancelled = false;
    let kill: NodeJS.Timeout | undefined;
    const onAbort = () => {
      // Past its point of no return the worker finishes; the cancel is ignored.
      if (Atomics.compareExchange(cells, STATE, RUNNING, CANCELLING) !== RUNNING) return;
      cancelled = true;
      kill = setTimeout(() => void worker.terminate(), CANCEL_GRACE_MS);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: WorkerMessage) => {
      if (m.kind === 'reply') {
        reply = m.reply;
        return;
      }
      // A test holds the worker at a pause point until its hook settles.
      void Promise.resolve()
        .then(() => hooks?.(m.point))
        .catch(() => {})
        .finally(() => {
          Atomics.store(cells, RELEASE, 1);
          Atomics.notify(cells, RELEASE);
        });
    });
    worker.on('error', (err) => {
      reply ??= { ok: false, message: err.message };
    });
    // Settle only on exit: by then the worker's database connections are
    // closed, so callers may remove files and other processes may write.
    worker.on('exit', () => {
      clearTimeout(kill);
      signal.removeEventListener('abort', onAbort);
      if (reply?.ok) resolve(reply.result as Result<N>);
      else if (cancelled) reject(new AppError('cancelled'));
      else if (!reply) {
        const committing = Atomics.load(cells, STATE) === PAST_NO_RETURN;
        reject(new AppError('engine_failed', `The SQLite worker stopped without an answer${committing ? ' while committing; its changes may have been applied' : ''}.`));
      } else if (reply.code && reply.code in ERRORS) reject(new AppError(reply.code as ErrorCode, reply.message, reply.details));
      else reject(new AppError('engine_failed', `SQLite failed: ${reply.message}`));
    });
  });
}
