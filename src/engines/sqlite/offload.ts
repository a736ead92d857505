// Runs a task from tasks.ts in a worker thread, so long synchronous SQLite
// calls do not block the event loop.
//
// Workers are long-lived and reused: starting one (and, under tsx, loading
// TypeScript in it) costs far more than a small task. A small pool runs one
// task at a time per worker; more tasks wait in a queue. An idle worker does
// not keep the process alive and exits after IDLE_MS.
//
// Cancelling is cooperative (control.ts): the abort asks the worker to stop,
// and the worker checks between steps and once more, atomically, just before
// its point of no return (COMMIT). If the worker got there first, the cancel
// comes too late: the task is left to finish and its result is reported as
// it is (a caller sees success although its signal aborted). Only when the
// cancel won and the worker does not stop within CANCEL_GRACE_MS (a long
// SQLite call) is it terminated; that is safe because it can no longer pass
// its point of no return, and its connections close with it, so SQLite rolls
// back any open transaction. The next task gets a new worker.
//
// A task settles only once its database connections are closed, so callers
// may remove files and other processes may write: tasks close them before
// they return (tasks.ts, in finally blocks), and a terminated or crashed
// worker settles its task on exit, when the thread and its connections are gone.
import type { Worker } from 'node:worker_threads';
import { startModuleWorker } from '../../platform/workers.ts';
import { AppError, type ErrorCode, ERRORS } from '../../errors/index.ts';
import { CANCELLING, CELLS, PAST_NO_RETURN, RELEASE, RUNNING, STATE, sqliteTestHooks, type PausePoint, type WorkerMessage, type WorkerReply, type WorkerRequest } from './control.ts';
import type { Tasks } from './tasks.ts';

/** How long a cancelled worker gets to stop by itself before it is terminated. */
const CANCEL_GRACE_MS = 1000;
/** Workers running tasks at once; further tasks queue. */
const MAX_WORKERS = 2;
/** An idle worker exits after this long. */
const IDLE_MS = 30_000;

type Result<N extends keyof Tasks> = Awaited<ReturnType<Tasks[N]>>;

interface Job {
  request: Omit<WorkerRequest, 'cells'>;
  cells: Int32Array;
  signal: AbortSignal;
  hooks: ((point: PausePoint) => void | Promise<void>) | undefined;
  onAbort: () => void;
  /** Set when the cancel won: the task is reported cancelled unless it still succeeds. */
  cancelled: boolean;
  kill: NodeJS.Timeout | undefined;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  job: Job | undefined;
  idle: NodeJS.Timeout | undefined;
  /** Error event of the current job's worker, reported once it has exited. */
  error: Error | undefined;
  /** Being terminated: takes no further task. */
  retired: boolean;
}

const slots = new Set<Slot>();
const queue: Job[] = [];

/** FOR TESTS: a view of the pool, and a way to empty it. */
export const sqliteWorkerPool = {
  /** Workers started since the process began. */
  started: 0,
  /** Workers alive and taking tasks. */
  live: () => slots.size,
  /** Terminates every worker, idle or busy (a busy one's task fails as after a crash); resolves once they have exited. */
  async terminateAll(): Promise<void> {
    const exits = [...slots].map((s) => new Promise((resolve) => s.worker.once('exit', resolve)));
    for (const s of [...slots]) retire(s);
    await Promise.all(exits);
  },
};

function startWorker(): Slot {
  const worker = startModuleWorker(import.meta.url, './worker');
  sqliteWorkerPool.started++;
  const slot: Slot = { worker, job: undefined, idle: undefined, error: undefined, retired: false };
  slots.add(slot);
  worker.on('message', (m: WorkerMessage) => {
    const job = slot.job;
    if (!job) return;
    if (m.kind === 'reply') {
      // The task closed its connections before replying (tasks.ts): settle now.
      slot.job = undefined;
      settle(job, m.reply);
      if (!slot.retired) release(slot);
      return;
    }
    // A test holds the worker at a pause point until its hook settles.
    void Promise.resolve()
      .then(() => job.hooks?.(m.point))
      .catch(() => {})
      .finally(() => {
        Atomics.store(job.cells, RELEASE, 1);
        Atomics.notify(job.cells, RELEASE);
      });
  });
  worker.on('error', (err) => {
    slot.error ??= err;
  });
  // Terminated, crashed, or exited when idle: the thread and its connections
  // are gone, so its task (if any) settles now and the next task gets a new worker.
  worker.on('exit', () => {
    slots.delete(slot);
    clearTimeout(slot.idle);
    const job = slot.job;
    slot.job = undefined;
    if (job) settle(job, slot.error ? { ok: false, message: slot.error.message } : undefined);
    pump();
  });
  return slot;
}

function settle(job: Job, reply: WorkerReply | undefined): void {
  clearTimeout(job.kill);
  job.signal.removeEventListener('abort', job.onAbort);
  if (reply?.ok) job.resolve(reply.result);
  else if (job.cancelled) job.reject(new AppError('cancelled'));
  else if (!reply) {
    const committing = Atomics.load(job.cells, STATE) === PAST_NO_RETURN;
    job.reject(new AppError('engine_failed', `The SQLite worker stopped without an answer${committing ? ' while committing; its changes may have been applied' : ''}.`));
  } else if (reply.code && reply.code in ERRORS) job.reject(new AppError(reply.code as ErrorCode, reply.message, reply.details));
  else job.reject(new AppError('engine_failed', `SQLite failed: ${reply.message}`));
}

/** The slot's task is done: give it the next queued task, or let it idle. */
function release(slot: Slot): void {
  const next = queue.shift();
  if (next) {
    dispatch(slot, next);
    return;
  }
  // Idle: it must not keep the process alive, and goes after IDLE_MS.
  slot.worker.unref();
  slot.idle = setTimeout(() => retire(slot), IDLE_MS);
  slot.idle.unref();
}

function dispatch(slot: Slot, job: Job): void {
  clearTimeout(slot.idle);
  slot.idle = undefined;
  slot.job = job;
  slot.error = undefined;
  // While it runs a task, the worker keeps the process alive, as the task's promise would.
  slot.worker.ref();
  const msg: WorkerRequest = { ...job.request, cells: job.cells.buffer as SharedArrayBuffer };
  slot.worker.postMessage(msg);
}

/** Terminates a worker; its exit settles its task, if any, and starts the next. */
function retire(slot: Slot): void {
  slot.retired = true;
  slots.delete(slot);
  void slot.worker.terminate();
}

/** Starts queued tasks on idle workers, or on new ones up to MAX_WORKERS. */
function pump(): void {
  while (queue.length > 0) {
    let slot: Slot | undefined;
    for (const s of slots) if (!s.job) slot = s;
    if (!slot && slots.size < MAX_WORKERS) slot = startWorker();
    if (!slot) return;
    dispatch(slot, queue.shift()!);
  }
}

export function runTask<N extends keyof Tasks>(task: N, args: Parameters<Tasks[N]>[0], signal: AbortSignal): Promise<Result<N>> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new AppError('cancelled'));
      return;
    }
    const hooks = sqliteTestHooks.pause;
    const job: Job = {
      request: { task, args, pauses: hooks !== undefined },
      cells: new Int32Array(new SharedArrayBuffer(CELLS * Int32Array.BYTES_PER_ELEMENT)),
      signal,
      hooks,
      cancelled: false,
      kill: undefined,
      resolve: resolve as (v: unknown) => void,
      reject,
      onAbort: () => {
        const queued = queue.indexOf(job);
        if (queued >= 0) {
          // Not started: nothing to stop.
          queue.splice(queued, 1);
          reject(new AppError('cancelled'));
          return;
        }
        // Past its point of no return the worker finishes; the cancel is ignored.
        if (Atomics.compareExchange(job.cells, STATE, RUNNING, CANCELLING) !== RUNNING) return;
        job.cancelled = true;
        // Its worker is the one whose job this is when the grace ends; it is replaced on exit.
        job.kill = setTimeout(() => {
          for (const s of slots) if (s.job === job) retire(s);
        }, CANCEL_GRACE_MS);
      },
    };
    signal.addEventListener('abort', job.onAbort, { once: true });
    queue.push(job);
    pump();
  });
}
