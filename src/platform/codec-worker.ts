// The codec worker thread (see codec.ts): zstd compression with a sha256 of
// the output, and zstd decompression with a sha256 of the input, for any
// number of interleaved streams. Messages for one stream arrive and are
// answered in order.
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import binding from 'zstd-napi/binding.js';
import type { CodecReply, CodecRequest } from './codec.ts';

const { CCtx, DCtx, CParameter, EndDirective } = binding;

/** Output buffers are filled up to this size before they travel to the main thread. */
const OUT_SIZE = 256 * 1024;
/** The most output one request produces before it waits for the main thread to pull. */
const OUT_BUDGET = 1024 * 1024;
const EMPTY = Buffer.alloc(0);

interface Stream {
  mode: 'compress' | 'decompress';
  cctx?: InstanceType<typeof CCtx>;
  dctx?: InstanceType<typeof DCtx>;
  hash: Hash;
  inBytes: number;
  outBytes: number;
  /** decompress: the last return of decompressStream; 0 once a frame ended cleanly */
  pending: number;
  /** input batches not consumed yet, in order */
  queue: Buffer[];
}

const streams = new Map<number, Stream>();
const port = parentPort!;

class Output {
  readonly buffers: ArrayBuffer[] = [];
  readonly lengths: number[] = [];
  private current = Buffer.allocUnsafeSlow(OUT_SIZE);
  private used = 0;
  /** bytes written so far */
  total = 0;

  /** The free part of the current buffer, a fresh one when it is full. */
  space(): Buffer {
    if (this.used === this.current.length) this.rotate();
    return this.current.subarray(this.used);
  }

  wrote(n: number, s: Stream): void {
    if (n === 0) return;
    if (s.mode === 'compress') s.hash.update(this.current.subarray(this.used, this.used + n));
    this.used += n;
    this.total += n;
    s.outBytes += n;
  }

  private rotate(): void {
    this.buffers.push(this.current.buffer as ArrayBuffer);
    this.lengths.push(this.used);
    this.current = Buffer.allocUnsafeSlow(OUT_SIZE);
    this.used = 0;
  }

  finish(): void {
    if (this.used > 0) this.rotate();
  }
}

/**
 * Works through the stream's queued input until it is consumed or the output
 * holds OUT_BUDGET bytes, and returns how many batches it finished. The
 * budget bounds memory whatever the ratio: a few KB of hostile zstd can
 * expand to gigabytes.
 */
function work(s: Stream, out: Output): number {
  let finished = 0;
  while (s.queue.length > 0 && out.total < OUT_BUDGET) {
    const input = s.queue[0]!;
    const space = out.space();
    let done: boolean;
    if (s.mode === 'compress') {
      const [, produced, consumed] = s.cctx!.compressStream2(space, input, EndDirective.continue);
      out.wrote(produced, s);
      s.queue[0] = input.subarray(consumed);
      done = consumed === input.length;
    } else {
      const [ret, produced, consumed] = s.dctx!.decompressStream(space, input);
      out.wrote(produced, s);
      s.queue[0] = input.subarray(consumed);
      s.pending = ret;
      // Done once the input is consumed and zstd holds no more output: the
      // call did not fill the buffer, or the frame just ended.
      done = consumed === input.length && (produced < space.length || ret === 0);
    }
    if (done) {
      s.queue.shift();
      finished++;
    }
  }
  return finished;
}

function finishCompression(s: Stream, out: Output): void {
  for (;;) {
    const [ret, produced] = s.cctx!.compressStream2(out.space(), EMPTY, EndDirective.end);
    out.wrote(produced, s);
    if (ret === 0) return;
  }
}

function handle(m: CodecRequest): CodecReply | undefined {
  if (m.op === 'open') {
    const s: Stream = { mode: m.mode, hash: createHash('sha256'), inBytes: 0, outBytes: 0, pending: 0, queue: [] };
    if (m.mode === 'compress') {
      s.cctx = new CCtx();
      s.cctx.setParameter(CParameter.compressionLevel, m.level);
      s.cctx.setParameter(CParameter.checksumFlag, 1);
    } else {
      s.dctx = new DCtx();
    }
    streams.set(m.id, s);
    return undefined;
  }
  if (m.op === 'close') {
    streams.delete(m.id);
    return undefined;
  }
  const s = streams.get(m.id);
  if (!s) return undefined; // closed by the main thread meanwhile
  const out = new Output();
  if (m.op === 'data' || m.op === 'pull') {
    if (m.op === 'data') {
      const input = Buffer.from(m.buffer, 0, m.length);
      s.inBytes += m.length;
      if (s.mode === 'decompress') s.hash.update(input);
      s.queue.push(input);
    }
    const consumed = work(s, out);
    out.finish();
    return { id: m.id, buffers: out.buffers, lengths: out.lengths, consumed, more: s.queue.length > 0 };
  }
  // end: every batch was consumed before the main thread sent it
  if (s.mode === 'compress') finishCompression(s, out);
  out.finish();
  streams.delete(m.id);
  return { id: m.id, buffers: out.buffers, lengths: out.lengths, consumed: 0, more: false, end: { sha256: s.hash.digest('hex'), inBytes: s.inBytes, outBytes: s.outBytes, truncated: s.mode === 'decompress' && s.pending !== 0 } };
}

port.on('message', (m: CodecRequest) => {
  let reply: CodecReply | undefined;
  try {
    reply = handle(m);
  } catch (err) {
    streams.delete(m.id);
    reply = { id: m.id, buffers: [], lengths: [], consumed: 0, more: false, error: err instanceof Error ? err.message : String(err) };
  }
  if (reply) port.postMessage(reply, reply.buffers);
});
