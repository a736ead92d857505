import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { LocalHashes, SpanHasher, SpanRecorder } from './span-hash.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * Cuts `files` into one stream, then into pieces of `pieceSize` (each its own
 * ArrayBuffer, as decoded pieces are), and feeds each body slice to both
 * sides the way the restore worker and the codec worker do.
 */
function roundTrip(files: Buffer[], pieceSize: number): { local: string[]; remote: string[] } {
  const stream = Buffer.concat(files);
  // How many files end at each offset of the stream (an empty file ends where the one before it did).
  const endCount = new Map<number, number>();
  let at = 0;
  for (const f of files) {
    at += f.length;
    endCount.set(at, (endCount.get(at) ?? 0) + 1);
  }
  const local = new LocalHashes();
  const recorder = new SpanRecorder();
  const hasher = new SpanHasher();
  const localDigests: string[] = [];
  const remote: string[] = [];
  const endFiles = (pos: number) => {
    for (let i = 0; i < (endCount.get(pos) ?? 0); i++) {
      localDigests.push(local.end());
      assert.equal(recorder.end(), null);
    }
  };
  endFiles(0);
  for (let off = 0; off < stream.length; off += pieceSize) {
    const piece = Buffer.from(new ArrayBuffer(pieceSize));
    const n = stream.copy(piece, 0, off, off + pieceSize);
    recorder.begin(piece.buffer as ArrayBuffer);
    // Slices end at file ends, as a tar body does.
    let p = 0;
    while (p < n) {
      let q = p + 1;
      while (q < n && !endCount.has(off + q)) q++;
      const slice = piece.subarray(p, q);
      local.update(slice);
      recorder.update(slice);
      endFiles(off + q);
      p = q;
    }
    const notes = recorder.take();
    if (notes) remote.push(...hasher.apply(piece, notes));
  }
  return { local: localDigests, remote };
}

describe('span hashing (the codec worker hashes what the restore worker wrote)', () => {
  it('gives each file the sha256 of its bytes, in order, across pieces and with empty files', () => {
    const files = [randomBytes(10), Buffer.alloc(0), randomBytes(3000), randomBytes(1), Buffer.alloc(0), randomBytes(9000), randomBytes(1024)];
    for (const pieceSize of [1, 7, 1024, 4096, 1 << 16]) {
      const { local, remote } = roundTrip(files, pieceSize);
      assert.deepEqual(local, files.map(sha), `local, pieces of ${pieceSize}`);
      assert.deepEqual(remote, files.map(sha), `remote, pieces of ${pieceSize}`);
    }
  });

  it('refuses a body slice that is not in the piece begun', () => {
    const recorder = new SpanRecorder();
    recorder.begin(new ArrayBuffer(16));
    assert.throws(() => recorder.update(Buffer.alloc(4)), /outside the piece/);
  });

  it('refuses notes that do not fit the piece', () => {
    const piece = Buffer.alloc(100);
    for (const notes of [[0, 101], [-2, 5], [5, 5], [10, 4], [0.5, 3], [1]]) {
      assert.throws(() => new SpanHasher().apply(piece, notes), /hash notes/, JSON.stringify(notes));
    }
  });

  it('has nothing to send back for a piece without bodies', () => {
    const recorder = new SpanRecorder();
    recorder.begin(new ArrayBuffer(8));
    assert.equal(recorder.take(), undefined);
  });
});
