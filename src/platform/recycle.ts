// Buffers handed back to the thread that made them, instead of left to the
// garbage collector. A worker that sends a batch to the main thread transfers
// its memory and must allocate the next one afresh: with the bin's
// MALLOC_MMAP_THRESHOLD_ every such buffer is a new mapping, faulted in and
// zeroed page by page (bench/malloc-threshold.ts measured that cost at about a
// third of the files dump worker's CPU). A buffer the producer lends here can
// be given back by the one consumer that knows it holds the last reference:
// a stage that copies its input and keeps nothing of it (codec.ts).
//
// The contract is narrow on purpose. Giving back detaches the memory from
// this thread, so a stage may call recycled() only for a chunk it has copied
// and that no one else received: never for a chunk it also pushes on
// (a pass-through), and only when its input is not shared with another
// consumer. A chunk that was never lent is ignored. The same holds for
// adopt(), by which such a stage takes the memory itself instead of copying
// it (the codec transfers a files dump batch to its worker and compresses it
// there in place) and gives it back later.

const lent = new WeakMap<ArrayBuffer, { length: number; giveBack: (buffer: ArrayBuffer) => void; taken?: () => void }>();

/**
 * Registers chunk (a view from offset 0 of its own ArrayBuffer) as returnable
 * through giveBack; returns it. `taken`, if given, is called when a consumer
 * takes the chunk (recycled() or adopt()): from then on it will be given back.
 */
export function lend(chunk: Buffer, giveBack: (buffer: ArrayBuffer) => void, taken?: () => void): Buffer {
  if (chunk.byteOffset === 0) lent.set(chunk.buffer as ArrayBuffer, { length: chunk.length, giveBack, ...(taken ? { taken } : {}) });
  return chunk;
}

/**
 * The caller copied chunk and holds no reference to it: if it is a lent
 * chunk, whole (a stream that split it, by read(n) say, still holds the
 * rest, so a part is never given back), its memory goes back to its lender.
 * Returns whether it did.
 */
export function recycled(chunk: Buffer): boolean {
  const giveBack = adopt(chunk);
  giveBack?.(chunk.buffer as ArrayBuffer);
  return giveBack !== undefined;
}

/**
 * The caller takes chunk's memory (it may transfer it to another thread)
 * and holds the only reference to it: if it is a lent chunk, whole, returns
 * the function that gives its ArrayBuffer (or the one it was transferred
 * into and back) to the lender, to be called once the caller is done;
 * undefined otherwise, and the caller must copy instead.
 */
export function adopt(chunk: Buffer): ((buffer: ArrayBuffer) => void) | undefined {
  const buffer = chunk.buffer as ArrayBuffer;
  const loan = lent.get(buffer);
  if (!loan || chunk.byteOffset !== 0 || chunk.length !== loan.length) return undefined;
  lent.delete(buffer);
  loan.taken?.();
  return loan.giveBack;
}
