// Reads a byte range of an open file as a stream whose chunks are lent
// (recycle.ts): a consumer that copies a chunk and keeps nothing of it (a
// codec stage) gives its memory back, and the next read goes into it.
//
// Why not fs.createReadStream: it reads into a new buffer every time. With
// its 64 KiB default a restore's input is thousands of small chunks, each
// passed through every stream stage; with larger reads each buffer is above
// the bin's MALLOC_MMAP_THRESHOLD_, so every read maps fresh memory and
// faults it in page by page. Lending gives large reads without either cost:
// a cold 1 GB files restore through the server went from 6.90 s (8.94 s of
// server CPU) to 6.11 s (7.70 s) (bench/server-ab.ts, four runs each).
//
// A consumer that gives nothing back (an HTTP response, the decryption of
// an encrypted destination) would make every 512 KiB read a fresh mapping:
// once UNRETURNED_MAX chunks are out and none came back, the reader takes
// it that none will and reads as fs.createReadStream does, into a new
// 64 KiB buffer each time (below the threshold, so malloc reuses memory).
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { lend } from './recycle.ts';

/** Bytes per read: the codec's input batch (codec.ts BATCH_BYTES), so a chunk fills one. */
export const LEND_CHUNK = 512 * 1024;
/** Bytes per read once the consumer is known not to give chunks back (fs.createReadStream's default). */
export const PLAIN_CHUNK = 64 * 1024;
/**
 * Lent chunks not given back at which the consumer is taken to give none.
 * One that does holds up to about seven: under backpressure each stream
 * stage holds one chunk on each side (this reader, the service's byte
 * counter and pass-through, the codec stage waiting for its worker); twice
 * that leaves room for another stage. A consumer that gives none back
 * costs 8 MiB of fresh buffers before the switch.
 */
export const UNRETURNED_MAX = 16;
/** Buffers given back and kept for the next reads; more come back only when a consumer holds several at once. */
const KEEP = 4;

export class LendingFileReader extends Readable {
  private position: number;
  /** bytes still to read; Infinity: to the end of the file */
  private remaining: number;
  private readonly free: ArrayBuffer[] = [];
  private reading = false;
  /** lent chunks not given back yet */
  private out = 0;
  /** whether chunks are still lent (see UNRETURNED_MAX) */
  lending = true;

  /** Reads fh from start to end (inclusive; to the end of the file without it), then closes fh; closes it too when destroyed. */
  constructor(
    private readonly fh: FileHandle,
    start = 0,
    end?: number,
  ) {
    // One chunk read ahead while the consumer works on the last.
    super({ highWaterMark: LEND_CHUNK });
    this.position = start;
    this.remaining = end === undefined ? Infinity : end - start + 1;
  }

  override _read(): void {
    if (this.reading) return;
    if (this.remaining <= 0) {
      this.push(null);
      return;
    }
    this.reading = true;
    if (this.lending && this.out >= UNRETURNED_MAX) {
      this.lending = false;
      this.free.length = 0;
    }
    const lending = this.lending;
    const size = lending ? LEND_CHUNK : PLAIN_CHUNK;
    // Not zero-filled: only the bytes read are ever seen.
    const memory = (lending ? this.free.pop() : undefined) ?? (Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer);
    const want = Math.min(size, this.remaining);
    this.fh.read(new Uint8Array(memory, 0, want), 0, want, this.position).then(
      ({ bytesRead }) => {
        this.reading = false;
        if (this.destroyed) return;
        if (bytesRead === 0) {
          // The end of the file (before `end`, if the file is shorter: the consumer's checksum tells).
          this.push(null);
          return;
        }
        this.position += bytesRead;
        this.remaining -= bytesRead;
        const chunk = Buffer.from(memory, 0, bytesRead);
        if (lending) {
          this.out++;
          lend(chunk, (back) => {
            this.out--;
            if (this.lending && !this.destroyed && this.free.length < KEEP && back.byteLength === LEND_CHUNK) this.free.push(back);
          });
        }
        this.push(chunk);
      },
      (err: Error) => {
        this.reading = false;
        this.destroy(err);
      },
    );
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.free.length = 0;
    // A failing close is reported, unless the stream already failed for another reason.
    this.fh.close().then(
      () => cb(err),
      (closeErr: Error) => cb(err ?? closeErr),
    );
  }
}
