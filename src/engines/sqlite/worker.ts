// Worker-thread entry: runs one task from tasks.ts and posts its result, or
// its error as plain data (class instances do not survive postMessage).
// The task cooperates with cancellation through the shared cells (control.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { isAppError } from '../../errors/index.ts';
import { workerControl, type WorkerMessage, type WorkerReply } from './control.ts';
import { tasks, type Tasks } from './tasks.ts';

export type { WorkerReply };

const { task, args, cells, pauses } = workerData as { task: keyof Tasks; args: unknown; cells: SharedArrayBuffer; pauses: boolean };
const post = (m: WorkerMessage) => parentPort!.postMessage(m);
const ctl = workerControl(new Int32Array(cells), pauses, post);

let reply: WorkerReply;
try {
  ctl.checkpoint(); // cancelled while the worker started
  const fn = tasks[task] as (a: unknown, c: typeof ctl) => unknown;
  reply = { ok: true, result: await fn(args, ctl) };
} catch (err) {
  reply = isAppError(err)
    ? { ok: false, code: err.code, message: err.message, details: err.details }
    : { ok: false, message: err instanceof Error ? err.message : String(err) };
}
post({ kind: 'reply', reply });
