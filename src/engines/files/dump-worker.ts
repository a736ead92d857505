// The dump worker thread (started by dump.ts): runs one dump at a time with
// packTree. Its event loop does not turn while a dump runs, so credit and
// cancellation come through shared cells (dump-protocol.ts), not messages.
import { type MessagePort, parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { AppError, isAppError } from '../../errors/index.ts';
import { BATCH, type BatchSink, packTree } from './dump-pack.ts';
import { CANCEL, CREDIT, type DumpReply, type DumpRequest } from './dump-protocol.ts';

const port = parentPort!;
/** Batches the main thread is done with come back here (recycle.ts); read synchronously, since the event loop does not turn during a dump. */
let returns: MessagePort | undefined;

port.on('message', (m: DumpRequest) => {
  if (m.returns) returns = m.returns;
  const cells = new Int32Array(m.cells);
  let reused = 0;
  // The packer makes its first batch, and a fresh one whenever reuse() has none.
  let made = 1;
  const sink: BatchSink = {
    reuse() {
      const back = returns && receiveMessageOnPort(returns);
      const buffer = back ? (back.message as ArrayBuffer) : undefined;
      if (buffer?.byteLength !== BATCH) {
        made++;
        return undefined;
      }
      reused++;
      return Buffer.from(buffer);
    },
    check() {
      if (Atomics.load(cells, CANCEL) !== 0) throw new AppError('cancelled');
    },
    send(buffer, length) {
      // The main thread adds credit when its reader wants more or a batch comes back, and once more on cancel, so this wait always ends.
      for (;;) {
        sink.check();
        if (Atomics.load(cells, CREDIT) > 0) break;
        Atomics.wait(cells, CREDIT, 0);
      }
      Atomics.sub(cells, CREDIT, 1);
      port.postMessage({ kind: 'data', id: m.id, buffer, length } satisfies DumpReply, [buffer]);
    },
  };
  let reply: DumpReply;
  try {
    reply = { kind: 'end', id: m.id, info: packTree(m.spec, sink), reused, made };
  } catch (err) {
    reply = isAppError(err)
      ? { kind: 'error', id: m.id, code: err.code, message: err.message, details: err.details }
      : { kind: 'error', id: m.id, code: 'engine_failed', message: `Packing the files failed: ${(err as Error)?.message ?? String(err)}` };
  }
  port.postMessage(reply);
});
