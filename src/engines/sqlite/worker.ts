// Worker-thread entry: runs the tasks from tasks.ts that offload.ts sends,
// one at a time, and posts each result, or its error as plain data (class
// instances do not survive postMessage). The worker lives on between tasks.
// Each task cooperates with cancellation through its own shared cells
// (control.ts), and closes its database connections before its reply.
import { parentPort } from 'node:worker_threads';
import { isAppError } from '../../errors/index.ts';
import { workerControl, type WorkerMessage, type WorkerReply, type WorkerRequest } from './control.ts';
import { tasks, type Tasks } from './tasks.ts';

export type { WorkerReply };

const post = (m: WorkerMessage) => parentPort!.postMessage(m);

async function run({ task, args, cells, pauses }: WorkerRequest): Promise<WorkerReply> {
  const ctl = workerControl(new Int32Array(cells), pauses, post);
  try {
    ctl.checkpoint(); // cancelled while it waited for the worker
    const fn = tasks[task as keyof Tasks] as (a: unknown, c: typeof ctl) => unknown;
    return { ok: true, result: await fn(args, ctl) };
  } catch (err) {
    return isAppError(err)
      ? { ok: false, code: err.code, message: err.message, details: err.details }
      : { ok: false, message: err instanceof Error ? err.message : String(err) };
  }
}

// offload.ts sends the next task only after this one's reply; the chain keeps
// them in order regardless.
let last: Promise<void> = Promise.resolve();
parentPort!.on('message', (req: WorkerRequest) => {
  last = last.then(async () => post({ kind: 'reply', reply: await run(req) }));
});
