// Cooperative cancellation between the main thread (offload.ts) and a task
// running in a worker (worker.ts, tasks.ts). Both share one small
// SharedArrayBuffer. Its STATE cell moves exactly once, by compare-exchange,
// from RUNNING to either
//   CANCELLING: the main thread asked to stop first; the worker stops at its
//     next checkpoint and can no longer pass its point of no return; or
//   PAST_NO_RETURN: the worker is about to make its work visible (COMMIT);
//     from then on the main thread ignores cancellation and waits for the
//     worker's answer.
// Whoever wins the exchange decides, so a cancel can only stop work that has
// not become visible, and a task reported cancelled changed nothing.
import { AppError } from '../../errors/index.ts';

/** Index of the state cell. */
export const STATE = 0;
/** Index of the cell a test pause waits on (see testPause). */
export const RELEASE = 1;
export const CELLS = 2;

export const RUNNING = 0;
export const CANCELLING = 1;
export const PAST_NO_RETURN = 2;

/** Places where a task can be held by a test (sqliteTestHooks.pause). */
export type PausePoint =
  /** replaceTables: inside the transaction, everything written, just before the point of no return */
  | 'before-commit'
  /** replaceTables: just after COMMIT, before foreign_key_check and the reply */
  | 'after-commit'
  /** full restore (main thread): verified file in place beside the target, just before the point of no return */
  | 'before-rename'
  /** full restore (main thread): just after the rename */
  | 'after-rename';

/**
 * FOR TESTS ONLY. When pause is set, the sqlite engine calls it at each
 * PausePoint and does not go on until the returned promise settles: a worker
 * blocks (Atomics.wait) until then. Lets a test cancel exactly inside a given
 * window. Left unset in production, where it costs one property read.
 */
export const sqliteTestHooks: { pause?: (point: PausePoint) => void | Promise<void> } = {};

/** Main-thread side of a pause point (full restore). */
export async function testPause(point: PausePoint): Promise<void> {
  if (sqliteTestHooks.pause) await sqliteTestHooks.pause(point);
}

/** What a task gets to cooperate with cancellation. */
export interface TaskControl {
  /** Throws AppError cancelled when the main thread asked to stop. Call between steps. */
  checkpoint(): void;
  /**
   * Claims the point of no return, just before the work becomes visible
   * (inside the transaction, before COMMIT). Throws AppError cancelled when a
   * cancel came first; once it returns, the task is no longer cancelled.
   */
  pointOfNoReturn(): void;
  /** Holds the worker at a PausePoint while a test's hook runs; a no-op otherwise. */
  testPause(point: PausePoint): void;
}

/** For calling a task directly (not in a worker): nothing ever cancels it. */
export const uncancellable: TaskControl = { checkpoint() {}, pointOfNoReturn() {}, testPause() {} };

export type WorkerReply =
  | { ok: true; result: unknown }
  | { ok: false; code?: string; message: string; details?: Record<string, unknown> };

/** One task for a worker (worker.ts), with its own cells. */
export interface WorkerRequest {
  task: string;
  args: unknown;
  cells: SharedArrayBuffer;
  /** A test pause hook is set: testPause holds the worker (sqliteTestHooks.pause). */
  pauses: boolean;
}

export type WorkerMessage = { kind: 'reply'; reply: WorkerReply } | { kind: 'paused'; point: PausePoint };

/** Worker side: a TaskControl over the shared cells. */
export function workerControl(cells: Int32Array, pauses: boolean, post: (m: WorkerMessage) => void): TaskControl {
  return {
    checkpoint() {
      if (Atomics.load(cells, STATE) === CANCELLING) throw new AppError('cancelled');
    },
    pointOfNoReturn() {
      const prev = Atomics.compareExchange(cells, STATE, RUNNING, PAST_NO_RETURN);
      if (prev === CANCELLING) throw new AppError('cancelled');
    },
    testPause(point) {
      if (!pauses) return;
      Atomics.store(cells, RELEASE, 0);
      post({ kind: 'paused', point });
      // The main thread stores 1 and notifies once the test's hook settled
      // (or terminates the worker, which interrupts the wait).
      Atomics.wait(cells, RELEASE, 0);
    },
  };
}
