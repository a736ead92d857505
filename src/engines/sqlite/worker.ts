// Worker-thread entry: runs one task from tasks.ts and posts its result, or
// its error as plain data (class instances do not survive postMessage).
import { parentPort, workerData } from 'node:worker_threads';
import { isAppError } from '../../errors/index.ts';
import { tasks, type Tasks } from './tasks.ts';

export type WorkerReply =
  | { ok: true; result: unknown }
  | { ok: false; code?: string; message: string; details?: Record<string, unknown> };

const { task, args } = workerData as { task: keyof Tasks; args: unknown };

let reply: WorkerReply;
try {
  const fn = tasks[task] as (a: unknown) => unknown;
  reply = { ok: true, result: await fn(args) };
} catch (err) {
  reply = isAppError(err)
    ? { ok: false, code: err.code, message: err.message, details: err.details }
    : { ok: false, message: err instanceof Error ? err.message : String(err) };
}
parentPort!.postMessage(reply);
