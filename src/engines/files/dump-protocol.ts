// Messages and shared cells between dump.ts (main thread) and dump-worker.ts.
import type { MessagePort } from 'node:worker_threads';
import type { DumpInfo } from '../engine.ts';
import type { DumpSpec } from './dump-pack.ts';

/** Int32 cells of the SharedArrayBuffer each dump gets. */
export const CREDIT = 0; // batches the worker may send; the main thread adds, the worker takes
export const CANCEL = 1; // set to 1 to stop the dump
export const CELLS = 2;

export interface DumpRequest {
  id: number;
  spec: DumpSpec;
  cells: SharedArrayBuffer;
  /** With a worker's first dump: the port on which the main thread gives its batches back (recycle.ts), for the next ones to reuse. */
  returns?: MessagePort;
}

export type DumpReply =
  | { kind: 'data'; id: number; buffer: ArrayBuffer; length: number }
  /** reused: batches of this dump that were given back and refilled; made: batch buffers it allocated */
  | { kind: 'end'; id: number; info: DumpInfo; reused: number; made: number }
  | { kind: 'error'; id: number; code: string; message: string; details?: Record<string, unknown> };
