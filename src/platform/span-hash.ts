// Hashing a consumer's byte ranges in the worker that made the bytes. A
// decodeTo consumer (the files restore worker) writes each file's bytes
// straight from the decoded pieces, and needs each file's sha256; hashing
// them there made it the slowest thread of a restore while the codec worker
// that decoded them waited. So the consumer notes which ranges of a piece
// belong to which file (SpanRecorder) and hands the notes back with the
// piece; the codec worker hashes those ranges before it reuses the buffer
// (SpanHasher) and sends the digests back, in file order.
//
// The notes are a flat list of numbers: pairs [start, end) of byte offsets in
// the piece, each added to the current file's hash, and the pair FILE_END,
// which finishes that hash (its hex digest is the next one sent back). A file
// may span pieces: its hash lives on in the hasher between them.
import { createHash, type Hash } from 'node:crypto';

/** The pair that ends the current file's hash. */
const FILE_END = -1;

/** Where the sha256 of each body of a sequence is computed (extract-sync.ts uses one per restore). */
export interface BodyHashes {
  /** a slice of the current body, only valid during the call */
  update(chunk: Buffer): void;
  /** the current body ended: its hex digest now, or null when it comes later, in order */
  end(): string | null;
}

/** Hashes each body where it is extracted. */
export class LocalHashes implements BodyHashes {
  private hash: Hash | null = null;

  update(chunk: Buffer): void {
    (this.hash ??= createHash('sha256')).update(chunk);
  }

  end(): string {
    const hash = this.hash ?? createHash('sha256');
    this.hash = null;
    return hash.digest('hex');
  }
}

/**
 * Notes where each body lies in the piece being extracted, for a SpanHasher
 * on the other side: begin() with the piece, then take() the notes to send
 * back with it. Every slice must lie in that piece.
 */
export class SpanRecorder implements BodyHashes {
  private piece: ArrayBuffer | null = null;
  private spans: number[] = [];

  begin(piece: ArrayBuffer): void {
    this.piece = piece;
  }

  update(chunk: Buffer): void {
    if (chunk.buffer !== this.piece) throw new Error('a body slice outside the piece being extracted cannot be hashed by its decoder');
    if (chunk.length === 0) return;
    this.spans.push(chunk.byteOffset, chunk.byteOffset + chunk.length);
  }

  end(): null {
    this.spans.push(FILE_END, FILE_END);
    return null;
  }

  /** The notes for the piece begun last (undefined if none), to send back with it. */
  take(): number[] | undefined {
    this.piece = null;
    if (this.spans.length === 0) return undefined;
    const spans = this.spans;
    this.spans = [];
    return spans;
  }
}

/** Applies a SpanRecorder's notes to the pieces they were taken on, in the order they were taken. */
export class SpanHasher {
  private hash: Hash | null = null;

  /** Hashes the noted ranges of piece; returns the digests of the files that ended in it, in order. Throws on notes that do not fit the piece. */
  apply(piece: Buffer, spans: readonly number[]): string[] {
    if (spans.length % 2 !== 0) throw new Error('hash notes come in pairs');
    const digests: string[] = [];
    for (let i = 0; i < spans.length; i += 2) {
      const start = spans[i]!;
      const end = spans[i + 1]!;
      if (start === FILE_END && end === FILE_END) {
        digests.push((this.hash ?? createHash('sha256')).digest('hex'));
        this.hash = null;
      } else if (Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end && end <= piece.length) {
        (this.hash ??= createHash('sha256')).update(piece.subarray(start, end));
      } else {
        throw new Error(`hash notes out of the piece: [${start}, ${end}) of ${piece.length} bytes`);
      }
    }
    return digests;
  }
}
