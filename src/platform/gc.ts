// Collects dead stream buffers before they pile up. Chunks that cross a
// thread (postMessage transfers) or come from a pipe are ArrayBuffers whose
// memory lies outside V8's heap; they die within a tick, but V8 frees them
// only when it collects, and the threads that stream allocate so little on
// their heap that a collection comes only when ~64 MB of such buffers have
// accumulated (V8's external-memory trigger). Every stream then kept up to
// 64 MB of garbage per thread, the difference between under and over the
// server's 200 MB target.
//
// So whoever passes such buffers on counts their bytes here, and every
// EVERY bytes a young-generation collection (a scavenge: well under a
// millisecond with the bin's 2 MB semi-space) frees the dead ones. The
// collector is exposed only by the bin's flag `--expose-gc-as=backvaultGc`;
// without it (tests, `node bin/backvault.js`) this does nothing.
//
// Why 4 MiB: V8 also counts external memory allocated since the last full
// collection against the old generation's limit, and over a heap as small as
// the main thread's (~10 MB) that limit leaves only ~8-10 MB of room. With a
// scavenge every 16 MiB, each interval ended in a full mark-compact (16-19
// per 217 MB of MariaDB dump); at 4 MiB, 4-5, and the main thread's CPU fell
// ~10% (bench/mysql-engine.ts, which counts the collections).
const EVERY = 4 * 1024 * 1024;

/** Bytes passed on since the last full collection that make one worth it once the work is done. */
const SETTLE_AFTER = 64 * 1024 * 1024;

type Collect = (options: { type: 'minor' | 'major'; execution?: 'sync' | 'async' }) => unknown;
const collect = (globalThis as { backvaultGc?: Collect }).backvaultGc;
let since = 0;
let sinceMajor = 0;

/** Counts bytes of short-lived buffers this thread handled; collects the dead ones every EVERY bytes. */
export function noteBufferBytes(bytes: number): void {
  if (collect === undefined) return;
  since += bytes;
  sinceMajor += bytes;
  if (since < EVERY) return;
  since = 0;
  collect({ type: 'minor' });
}

/**
 * Called when the server has no job running: after a large job, one full
 * collection (scheduled, not run inside this call) frees what the young
 * collections could not (buffers that lived long enough to be promoted), so
 * the next job starts from the idle footprint instead of the last one's peak.
 * Small jobs (less than SETTLE_AFTER of data) trigger nothing.
 */
export function settleAfterWork(): void {
  if (collect === undefined || sinceMajor < SETTLE_AFTER) return;
  sinceMajor = 0;
  collect({ type: 'major', execution: 'async' });
}
