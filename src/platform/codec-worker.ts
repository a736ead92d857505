// The codec worker thread (see codec.ts): zstd compression with a sha256 of
// the output, zstd decompression checked against its manifest entry (decoder.ts), and sha256 alone
// (gzip and uncompressed artifacts), for any number of interleaved streams.
// Messages for one stream arrive and are answered in order.
//
// Compression cuts the input into SEGMENT-sized pieces and compresses each in
// one call into a frame of its own; the frames, one after the other, are a
// standard zstd stream (`zstd -d` and every streaming decoder read them).
// Why not one frame fed through compressStream2 as the input comes: zstd's
// streaming mode copies the input into a ring buffer of window + block size,
// and once that wraps, every block is matched in "extDict" mode (the window is
// in two pieces), which costs ~15% more instructions than matching in one
// contiguous buffer (zstd's own CLI avoids it the same way, with -T1 jobs).
// A whole segment in one call is compressed from our buffer, without that copy.
// 4 MiB segments lose nothing in ratio against one frame on dump-like data
// (the frame restarts the window every 4 MiB; the 2 MiB window of level 3 sees
// as far back in most of it), and bound the memory: a segment, its output,
// and zstd's tables sized for it.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { type MessagePort, parentPort } from 'node:worker_threads';
import binding from 'zstd-napi/binding.js';
import { isAppError } from '../errors/index.ts';
import type { CodecReply, CodecRequest } from './codec.ts';
import { type DecodedMessage, type DecodedReturn, type DecodeSpec, VerifyingDecoder } from './decoder.ts';
import { SpanHasher } from './span-hash.ts';

const { CCtx, DCtx, CParameter, EndDirective, ResetDirective } = binding;

/**
 * Output buffers are filled up to this size before they travel to the main
 * thread, which cannot give them back (they fan out to every destination).
 * Compressed output: under the server's MALLOC_MMAP_THRESHOLD_ (128 KiB),
 * malloc serves them from memory freed before, already mapped; a larger
 * buffer is a fresh mapping, faulted in page by page, and that costs more
 * than the copy into it: bench/output-buffers.ts compressed a 538 MB tar in
 * 2.0 s into one kept buffer, 2.1 s copied out into fresh 64 or 120 KiB
 * buffers, 2.8 s into fresh 256 KiB ones and 3.0 s into a fresh buffer per
 * frame. Decompressed output stays above the threshold: it is three times
 * the bytes, and the arenas keep what they served (ad hoc, a 538 MB tar
 * decompressed three times left the process at 129 MiB idle with 120 KiB
 * outputs, 97 MiB with 256 KiB ones; compressed twice, 117 against 104),
 * while a restore's time goes to the database, not to these page faults.
 */
const COMPRESSED_OUT = 120 * 1024;
const DECOMPRESSED_OUT = 256 * 1024;
/** The most output one request produces before it waits for the main thread to pull. */
const OUT_BUDGET = 1024 * 1024;
/**
 * decodeTo: decoded pieces out at once, and their size; the consumer hands
 * them back. Each piece is two messages between the threads, which cost more
 * than the bytes here: 1 MiB pieces took a 500 MB restore (bench/files-ab.ts) from 4.9 s
 * (256 KiB) and 4.4-5.1 s (512 KiB) to 4.4 s, with 4 MiB out as before.
 */
const PIECES = 4;
const PIECE_SIZE = 1024 * 1024;
/** Input compressed into one frame. */
const SEGMENT = 4 * 1024 * 1024;
/** Room for a compressed segment whatever the data (above ZSTD_compressBound(SEGMENT)), so it takes one call. */
const FRAME_ROOM = SEGMENT + (SEGMENT >> 7) + 4096;
const EMPTY = Buffer.alloc(0);

interface Stream {
  id: number;
  mode: 'compress' | 'decompress' | 'hash' | 'decodeFile' | 'decodeTo';
  /** decompress, decodeFile, decodeTo: the stored bytes' checker and decompressor */
  decoder?: VerifyingDecoder;
  /** decodeFile: the file it writes to (-1 once closed) */
  fd?: number;
  /** decompress, decodeTo: the batch the decoder is working through */
  feeding?: Buffer;
  /** decodeTo: where the pieces go, the buffers handed back, how many are out, whether the stored bytes passed and the verdict went */
  to?: MessagePort;
  free?: Buffer[];
  out?: number;
  checked?: boolean;
  verdictSent?: boolean;
  /** decodeTo: hashes what the consumer notes on the pieces it hands back; the digests ride on the next piece or the verdict */
  spans?: SpanHasher;
  digests?: string[];
  cctx?: InstanceType<typeof CCtx>;
  /** compress: of the output; hash: of the input (a decoding stream's decoder hashes its input itself) */
  hash?: Hash;
  inBytes: number;
  outBytes: number;
  /** input batches not consumed yet, in order */
  queue: Buffer[];
  /** compress: the segment being filled, and how much of it is */
  segment?: Buffer;
  segmentUsed: number;
  /** compress: where each frame is written before it is copied out */
  frames?: Buffer;
  /** compress: at least one frame was written */
  framed: boolean;
  /** the main thread sent end: once everything is sent, the reply carries the end */
  ending: boolean;
  /** compress: the last frame was written */
  closed: boolean;
}

const streams = new Map<number, Stream>();
const port = parentPort!;

// Contexts and segment buffers are kept for the next stream instead of left
// to the garbage collector: this thread allocates almost nothing on its JS
// heap, so a collection comes rarely, and every finished stream would hold
// its zstd context (native memory V8 does not see) and 8 MiB of buffers
// until then.
const KEEP = 2;
const spareCCtx: InstanceType<typeof CCtx>[] = [];
const spareDCtx: InstanceType<typeof DCtx>[] = [];
const spareSegments: Buffer[] = [];
const spareFrames: Buffer[] = [];
const keep = <T>(list: T[], item: T | undefined) => {
  if (item !== undefined && list.length < KEEP) list.push(item);
};

/** Input batches finished during the current request, sent back for the main thread to fill again. */
let finishedInput: ArrayBuffer[] = [];
/** Lent input (codec.ts sendLoan) finished during the current request, for the main thread to give back to its lender. */
let finishedLoans: ArrayBuffer[] = [];
/** The memory of lent input batches now in a queue. */
const loaned = new WeakSet<ArrayBuffer>();
function inputDone(input: Buffer): void {
  const buffer = input.buffer as ArrayBuffer;
  if (loaned.delete(buffer)) finishedLoans.push(buffer);
  else finishedInput.push(buffer);
}

function release(s: Stream): void {
  // Input not consumed goes back too: a lent batch to its lender.
  for (const input of s.queue) inputDone(input);
  s.queue = [];
  closeFile(s);
  s.to?.close();
  s.to = undefined;
  keep(spareCCtx, s.cctx);
  keep(spareDCtx, s.decoder?.context ?? undefined);
  keep(spareSegments, s.segment);
  keep(spareFrames, s.frames);
  s.cctx = s.decoder = s.segment = s.frames = undefined;
}

class Output {
  constructor(private readonly size = DECOMPRESSED_OUT) {}

  readonly buffers: ArrayBuffer[] = [];
  readonly lengths: number[] = [];
  /** made when first needed: a hash, decodeFile or decodeTo stream writes nothing here */
  private current: Buffer | undefined;
  private used = 0;
  /** bytes written so far */
  total = 0;

  /** The free part of the current buffer, a fresh one when it is full. */
  space(): Buffer {
    if (this.current && this.used === this.current.length) this.rotate();
    this.current ??= Buffer.allocUnsafeSlow(this.size);
    return this.current.subarray(this.used);
  }

  wrote(n: number, s: Stream): void {
    this.used += n;
    this.total += n;
    s.outBytes += n;
  }

  /** Copies all of src, whatever the budget. */
  copyAll(src: Buffer, s: Stream): void {
    for (let taken = 0; taken < src.length; ) {
      const space = this.space();
      const n = src.copy(space, 0, taken);
      this.wrote(n, s);
      taken += n;
    }
  }

  private rotate(): void {
    this.buffers.push(this.current!.buffer as ArrayBuffer);
    this.lengths.push(this.used);
    this.current = undefined;
    this.used = 0;
  }

  finish(): void {
    if (this.used > 0) this.rotate();
  }
}

/** Compresses the filled part of the segment into one frame. */
function compressSegment(s: Stream): Buffer {
  const frame = compressFrame(s, s.segment ? s.segment.subarray(0, s.segmentUsed) : EMPTY);
  s.segmentUsed = 0;
  return frame;
}

/** Compresses input (at most SEGMENT bytes) into one frame, hashed; valid until the next frame. */
function compressFrame(s: Stream, input: Buffer): Buffer {
  const frame = (s.frames ??= spareFrames.pop() ?? Buffer.allocUnsafeSlow(FRAME_ROOM));
  let used = 0;
  for (;;) {
    const [ret, produced, consumed] = s.cctx!.compressStream2(frame.subarray(used), input, EndDirective.end);
    used += produced;
    input = input.subarray(consumed);
    if (ret === 0) break;
    if (used === frame.length) throw new Error('a compressed segment did not fit its buffer');
  }
  s.hash!.update(frame.subarray(0, used));
  s.framed = true;
  return frame.subarray(0, used);
}

/**
 * Moves queued input into segments and compresses each when full, until the
 * input is consumed; returns how many batches it finished since its last
 * interim reply. Each frame goes to the main thread as soon as it is made,
 * while the next one compresses. The input in flight (codec.ts) bounds the
 * output a request makes: no more than about as many bytes.
 */
function compressWork(s: Stream, out: Output): number {
  let finished = 0;
  const sendFrame = (frame: Buffer) => {
    out.copyAll(frame, s);
    if (s.queue.length > 0) {
      interim(s, out, finished);
      finished = 0;
    }
  };
  for (;;) {
    const input = s.queue[0];
    if (!input) {
      // The rest of the segment (for empty input, an empty frame) once the main thread sent the end.
      if (!s.ending || s.closed) return finished;
      s.closed = true;
      if (s.segmentUsed > 0 || !s.framed) out.copyAll(compressSegment(s), s);
      return finished;
    }
    // A lent batch (a files dump's, SEGMENT bytes but the last) meeting an
    // empty segment is compressed where it is, as the segment would have
    // been: the same frames, without copying 4 MiB.
    if (s.segmentUsed === 0 && input.byteOffset === 0 && input.length <= SEGMENT && loaned.has(input.buffer as ArrayBuffer)) {
      const frame = compressFrame(s, input);
      inputDone(s.queue.shift()!);
      finished++;
      sendFrame(frame);
      continue;
    }
    s.segment ??= spareSegments.pop() ?? Buffer.allocUnsafeSlow(SEGMENT);
    const n = input.copy(s.segment, s.segmentUsed);
    s.segmentUsed += n;
    if (n === input.length) {
      inputDone(s.queue.shift()!);
      finished++;
    } else {
      s.queue[0] = input.subarray(n);
    }
    if (s.segmentUsed === SEGMENT) sendFrame(compressSegment(s));
  }
}

/**
 * Checks and decompresses queued batches (decoder.ts) until they are
 * consumed or the output holds OUT_BUDGET bytes, and returns how many
 * batches it finished. The budget bounds memory whatever the ratio: a few KB
 * of hostile zstd can expand to gigabytes. After the last batch, the
 * decoder's end() throws checksum_mismatch unless the stored bytes were
 * exactly the manifest's, so the main thread hears of the end only then.
 */
function decompressWork(s: Stream, out: Output): number {
  const decoder = s.decoder!;
  let finished = 0;
  while (out.total < OUT_BUDGET) {
    finished += feedDecoder(s);
    if (!s.feeding) break;
    out.wrote(decoder.decodeInto(out.space()), s);
  }
  if (s.ending && !s.feeding && s.queue.length === 0) decoder.end();
  return finished;
}

/**
 * decompress, decodeTo: finishes the batch the decoder is done with and
 * feeds it the next queued one, until it has bytes to decode (s.feeding) or
 * the queue is empty; returns how many batches it finished.
 */
function feedDecoder(s: Stream): number {
  let finished = 0;
  for (;;) {
    if (s.feeding && s.decoder!.idle) {
      inputDone(s.feeding);
      s.feeding = undefined;
      finished++;
    }
    if (s.feeding) return finished;
    const next = s.queue.shift();
    if (!next) return finished;
    s.decoder!.feed(next);
    s.feeding = next;
  }
}

/** Closes a decodeFile stream's file once; a failing close (a write that did not land) throws. */
function closeFile(s: Stream): void {
  if (s.fd === undefined || s.fd < 0) return;
  const fd = s.fd;
  s.fd = -1;
  closeSync(fd);
}

/** Checks and decompresses every queued batch straight into the stream's file; nothing goes back but the batches. */
function decodeFileWork(s: Stream): number {
  const n = s.queue.length;
  const fd = s.fd!;
  for (const input of s.queue) {
    s.decoder!.push(input, (piece) => {
      for (let off = 0; off < piece.length; ) off += writeSync(fd, piece, off, piece.length - off);
      s.outBytes += piece.length;
    });
    inputDone(input);
  }
  s.queue = [];
  if (s.ending) {
    // Checked before the file is reported written: damage or a cut fails here.
    s.decoder!.end();
    closeFile(s);
  }
  return n;
}

/**
 * Decodes queued batches into pieces and sends each to the consumer while it
 * has pieces to spare; after the last batch, sends the verdict on the stored
 * bytes (or their error). Returns the batches it finished.
 */
function decodeToWork(s: Stream): number {
  const decoder = s.decoder!;
  const to = s.to!;
  let finished = 0;
  for (;;) {
    finished += feedDecoder(s);
    if (!s.feeding) break;
    const piece = s.free!.pop() ?? (s.out! < PIECES ? Buffer.allocUnsafeSlow(PIECE_SIZE) : undefined);
    // All pieces are out: the consumer's next hand-back resumes this.
    if (!piece) break;
    const n = decoder.decodeInto(piece);
    if (n === 0) {
      s.free!.push(piece);
      continue;
    }
    s.outBytes += n;
    s.out!++;
    to.postMessage({ piece: piece.buffer as ArrayBuffer, length: n, ...takeDigests(s) } satisfies DecodedMessage, [piece.buffer as ArrayBuffer]);
  }
  if (s.ending && !s.feeding && s.queue.length === 0 && !s.checked) {
    s.checked = true;
    // Throws checksum_mismatch on damage: the consumer hears it from the handler's catch, the main thread as the stream's error.
    decoder.end();
  }
  // Last, once every piece is back: the consumer's notes on them are hashed and their digests sent.
  if (s.checked && s.out === 0 && !s.verdictSent) {
    s.verdictSent = true;
    to.postMessage({ end: true, ...takeDigests(s) } satisfies DecodedMessage);
  }
  return finished;
}

/** The digests made since the last message to the consumer, as a field of the next one (a message costs more than its bytes). */
function takeDigests(s: Stream): { digests?: string[] } {
  if (!s.digests || s.digests.length === 0) return {};
  const digests = s.digests;
  s.digests = [];
  return { digests };
}

/** decodeTo: the consumer handed a piece back, maybe with ranges to hash; decoding goes on if it waited for one. */
function pieceBack(s: Stream, m: DecodedReturn): void {
  s.out!--;
  if (!streams.has(s.id) || s.verdictSent) return;
  if (m.hash) {
    try {
      s.digests!.push(...s.spans!.apply(Buffer.from(m.back), m.hash));
    } catch (err) {
      // Notes that do not fit are a fault of the consumer's: the stream fails, as on any error here.
      answer(s.id, () => {
        throw err;
      });
      return;
    }
  }
  if (m.back.byteLength === PIECE_SIZE && s.free!.length < PIECES) s.free!.push(Buffer.from(m.back));
  answer(s.id, () => {
    const consumed = decodeToWork(s);
    const reply = finishReply(s, new Output(), consumed);
    // Most hand-backs finish no batch: the main thread hears only of those that do, and of the end.
    return consumed > 0 || reply.end ? reply : undefined;
  });
}

function work(s: Stream, out: Output): number {
  if (s.mode === 'compress') return compressWork(s, out);
  if (s.mode === 'decompress') return decompressWork(s, out);
  if (s.mode === 'decodeFile') return decodeFileWork(s);
  if (s.mode === 'decodeTo') return decodeToWork(s);
  const n = s.queue.length;
  for (const input of s.queue) {
    s.hash!.update(input);
    inputDone(input);
  }
  s.queue = [];
  return n;
}

/** A kept zstd context for a decoder of spec, reset to defaults as a new one would start; undefined when there is none or it needs none. */
function spareContext(spec: DecodeSpec): InstanceType<typeof DCtx> | undefined {
  if (spec.compression !== 'zstd') return undefined;
  const spare = spareDCtx.pop();
  spare?.reset(ResetDirective.sessionAndParameters);
  return spare;
}

function open(m: Extract<CodecRequest, { op: 'open' }>): Stream {
  const s: Stream = { id: m.id, mode: m.mode, inBytes: 0, outBytes: 0, queue: [], segmentUsed: 0, framed: false, ending: false, closed: false };
  if (m.mode === 'compress' || m.mode === 'hash') s.hash = createHash('sha256');
  if (m.mode === 'compress') {
    const spare = spareCCtx.pop();
    // A kept context starts over with default parameters, as a new one would.
    spare?.reset(ResetDirective.sessionAndParameters);
    s.cctx = spare ?? new CCtx();
    s.cctx.setParameter(CParameter.compressionLevel, m.level);
    s.cctx.setParameter(CParameter.checksumFlag, 1);
  } else if (m.mode === 'decompress') {
    s.decoder = new VerifyingDecoder(m.spec, spareContext(m.spec));
  } else if (m.mode === 'decodeFile') {
    s.decoder = new VerifyingDecoder(m.spec, spareContext(m.spec));
    // A new file only, private to its owner; the caller removes it whatever happens.
    s.fd = openSync(m.path, 'wx', 0o600);
  } else if (m.mode === 'decodeTo') {
    s.decoder = new VerifyingDecoder(m.spec, spareContext(m.spec));
    s.to = m.port;
    s.free = [];
    s.out = 0;
    s.spans = new SpanHasher();
    s.digests = [];
    m.port.on('message', (back: DecodedReturn) => pieceBack(s, back));
  }
  return s;
}

function handle(m: CodecRequest): CodecReply | undefined {
  if (m.op === 'open') {
    // A failure here (a decodeFile stream's file cannot be made) is answered as the stream's error.
    streams.set(m.id, open(m));
    return undefined;
  }
  if (m.op === 'close') {
    const s = streams.get(m.id);
    streams.delete(m.id);
    if (s) release(s);
    return undefined;
  }
  const s = streams.get(m.id);
  if (!s) return undefined; // closed by the main thread meanwhile
  if (m.op === 'data') {
    const input = Buffer.from(m.buffer, 0, m.length);
    if (m.loan) loaned.add(m.buffer);
    s.inBytes += m.length;
    s.queue.push(input);
  } else if (m.op === 'end') {
    s.ending = true;
  }
  const out = new Output(s.mode === 'compress' ? COMPRESSED_OUT : DECOMPRESSED_OUT);
  const consumed = work(s, out);
  return finishReply(s, out, consumed);
}

/** The reply after some work on s: its output, the batches it finished, and its end once nothing is left. */
function finishReply(s: Stream, out: Output, consumed: number): CodecReply {
  out.finish();
  const more = s.queue.length > 0 || (s.mode === 'decompress' && s.feeding !== undefined) || (s.mode === 'compress' && s.ending && !s.closed);
  // decodeTo goes on by itself as pieces come back; the main thread never pulls.
  const pullable = more && s.mode !== 'decodeTo';
  const reply: CodecReply = { id: s.id, buffers: out.buffers, lengths: out.lengths, consumed, more: pullable };
  const done = s.mode === 'decodeTo' ? s.verdictSent === true : s.ending && !more;
  if (done) {
    streams.delete(s.id);
    release(s);
    reply.end = { ...(s.hash ? { sha256: s.hash.digest('hex') } : {}), inBytes: s.inBytes, outBytes: s.outBytes };
  }
  return reply;
}

/** Runs one piece of work for stream id and answers the main thread: its reply, or its error (the stream is then dropped). */
function answer(id: number, run: () => CodecReply | undefined): void {
  let reply: CodecReply | undefined;
  try {
    reply = run();
  } catch (err) {
    const s = streams.get(id);
    streams.delete(id);
    if (s) {
      // A decodeTo consumer waits for a verdict: this is it.
      const error = err instanceof Error ? err.message : String(err);
      s.to?.postMessage({ error, ...(isAppError(err) ? { code: err.code } : {}) } satisfies DecodedMessage);
      try {
        release(s);
      } catch {
        // the stream already failed; its file is removed by the caller
      }
    }
    reply = { id, buffers: [], lengths: [], consumed: 0, more: false, error: err instanceof Error ? err.message : String(err), ...(isAppError(err) ? { code: err.code } : {}) };
  }
  post(id, reply);
}

/** A reply in the middle of a request's work: the output and finished batches so far go now. */
function interim(s: Stream, out: Output, consumed: number): void {
  out.finish();
  post(s.id, { id: s.id, buffers: out.buffers.splice(0), lengths: out.lengths.splice(0), consumed, more: false });
}

/** Posts reply (if any) with the input finished since the last post. */
function post(id: number, reply: CodecReply | undefined): void {
  // Finished input goes back even with an error or no reply (after close), so none is left to the garbage collector.
  const returned = finishedInput;
  const loans = finishedLoans;
  finishedInput = [];
  finishedLoans = [];
  if (reply) {
    reply.returned = returned;
    reply.loans = loans;
    port.postMessage(reply, [...reply.buffers, ...returned, ...loans]);
  } else if (returned.length > 0 || loans.length > 0) {
    port.postMessage({ id, buffers: [], lengths: [], consumed: 0, more: false, returned, loans, orphan: true } satisfies CodecReply, [...returned, ...loans]);
  }
}

port.on('message', (m: CodecRequest) => answer(m.id, () => handle(m)));
