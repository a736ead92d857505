import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { compress as zstdCompress } from 'zstd-napi';
import { isErrorCode } from '../errors/index.ts';
import { SYNC_DECODABLE, VerifyingDecoder, type DecodeSpec } from './decoder.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Text-like bytes (they compress) with some random runs. */
function sample(bytes: number): Buffer {
  const parts: Buffer[] = [];
  for (let n = 0; n < bytes; n += 1100) parts.push(Buffer.from(`row ${n} backvault restore `.repeat(30)), randomBytes(100));
  return Buffer.concat(parts).subarray(0, bytes);
}

/** Feeds stored in pieces of `size`; returns what came out and the largest piece. */
function decode(spec: DecodeSpec, stored: Buffer, size: number): { out: Buffer; largest: number; decoder: VerifyingDecoder } {
  const d = new VerifyingDecoder(spec);
  const got: Buffer[] = [];
  let largest = 0;
  for (let i = 0; i < stored.length; i += size) {
    d.push(stored.subarray(i, i + size), (piece) => {
      largest = Math.max(largest, piece.length);
      got.push(Buffer.from(piece)); // a piece is valid only during the call
    });
  }
  return { out: Buffer.concat(got), largest, decoder: d };
}

const label = 'artifact resources/x/y';
const mismatch = (pattern: RegExp) => (e: unknown) => isErrorCode(e, 'checksum_mismatch') && pattern.test((e as Error).message) && (e as Error).message.includes(label);

describe('verifying decoder', () => {
  it('decodes several zstd frames (as the codec writes them) and uncompressed bytes, checked at the end', () => {
    assert.deepEqual(SYNC_DECODABLE, ['zstd', 'none']);
    const data = sample(3_000_000);
    // Two frames back to back, like the codec's 4 MiB segments.
    const stored = Buffer.concat([zstdCompress(data.subarray(0, 1_000_000)), zstdCompress(data.subarray(1_000_000))]);
    // One byte at a time too (a smaller input: that is a call per byte).
    const small = zstdCompress(data.subarray(0, 200_000));
    const bytewise = decode({ compression: 'zstd', sha256: sha(small), size: small.length, label }, small, 1);
    assert.ok(bytewise.out.equals(data.subarray(0, 200_000)));
    bytewise.decoder.end();
    for (const size of [4099, 1 << 20]) {
      const { out, largest, decoder } = decode({ compression: 'zstd', sha256: sha(stored), size: stored.length, label }, stored, size);
      assert.ok(out.equals(data));
      assert.ok(largest <= 256 * 1024, `pieces are bounded: ${largest}`);
      decoder.end();
    }
    const plain = decode({ compression: 'none', sha256: sha(data), size: data.length, label }, data, 65536);
    assert.ok(plain.out.equals(data));
    plain.decoder.end();
  });

  it('refuses damaged, cut, longer and foreign stored bytes with checksum_mismatch naming the artifact', () => {
    const data = sample(500_000);
    const stored = zstdCompress(data);
    const spec = { compression: 'zstd' as const, sha256: sha(stored), size: stored.length, label };
    // Cut inside the frame: too short, and the frame never ended.
    const cut = stored.subarray(0, stored.length - 10);
    assert.throws(() => decode({ ...spec, size: cut.length, sha256: sha(cut) }, cut, 4096).decoder.end(), mismatch(/ends in the middle of a zstd frame/));
    assert.throws(() => decode(spec, cut, 4096).decoder.end(), mismatch(/has \d+ bytes, its manifest says/));
    // More bytes than the manifest: refused as soon as they arrive.
    assert.throws(() => decode(spec, Buffer.concat([stored, Buffer.alloc(1)]), 4096), mismatch(/larger than its manifest says/));
    // Not zstd at all.
    const junk = randomBytes(10_000);
    assert.throws(() => decode({ ...spec, sha256: sha(junk), size: junk.length }, junk, 4096), mismatch(/not valid zstd data/));
    // The same size, another sha256 (uncompressed, so the bytes decode fine).
    const flipped = Buffer.from(data);
    flipped[1000]! ^= 1;
    assert.throws(() => decode({ compression: 'none', sha256: sha(data), size: data.length, label }, flipped, 4096).decoder.end(), mismatch(/does not match its sha256/));
  });

  it('after skip() the rest is only hashed: a sound artifact passes end(), a damaged one does not', () => {
    const data = sample(400_000);
    const stored = zstdCompress(data);
    const spec = { compression: 'zstd' as const, sha256: sha(stored), size: stored.length, label };
    for (const damaged of [false, true]) {
      const bytes = Buffer.from(stored);
      if (damaged) bytes[bytes.length - 50]! ^= 0xff;
      const d = new VerifyingDecoder(spec);
      d.push(bytes.subarray(0, 1000), () => {});
      // The consumer gave up here; the rest is checked without decoding (so the frame is never seen to end).
      d.skip(bytes.subarray(1000));
      if (damaged) assert.throws(() => d.end(), mismatch(/does not match its sha256/));
      else d.end();
    }
    const d = new VerifyingDecoder(spec);
    assert.throws(() => d.skip(Buffer.alloc(stored.length + 1)), mismatch(/larger than its manifest says/));
  });

  it('memory stays one piece at a time whatever the ratio (a bomb of zeros)', () => {
    const zeros = zstdCompress(Buffer.alloc(64 * 1024 * 1024));
    assert.ok(zeros.length < 100_000);
    let total = 0;
    let largest = 0;
    const d = new VerifyingDecoder({ compression: 'zstd', sha256: sha(zeros), size: zeros.length, label });
    d.push(zeros, (p) => {
      total += p.length;
      largest = Math.max(largest, p.length);
    });
    d.end();
    assert.equal(total, 64 * 1024 * 1024);
    assert.ok(largest <= 256 * 1024);
  });

  it('feed() and decodeInto() stop between pieces and go on later, into buffers of any size', () => {
    const data = sample(2_000_000);
    const stored = Buffer.concat([zstdCompress(data.subarray(0, 700_000)), zstdCompress(data.subarray(700_000))]);
    for (const compression of ['zstd', 'none'] as const) {
      const bytes = compression === 'zstd' ? stored : data;
      const d = new VerifyingDecoder({ compression, sha256: sha(bytes), size: bytes.length, label });
      const got: Buffer[] = [];
      for (let i = 0; i < bytes.length; i += 100_000) {
        d.feed(bytes.subarray(i, i + 100_000));
        assert.throws(() => d.feed(Buffer.alloc(1)), /before the previous bytes were decoded/);
        // One small piece per turn, as a consumer without a free buffer would take them.
        while (!d.idle) {
          const out = Buffer.alloc(1000 + (got.length % 7) * 5000);
          const n = d.decodeInto(out);
          got.push(out.subarray(0, n));
        }
      }
      assert.ok(Buffer.concat(got).equals(data), compression);
      d.end();
    }
  });

  it('refuses a compression it cannot decode synchronously', () => {
    assert.throws(() => new VerifyingDecoder({ compression: 'gzip', sha256: '', size: 0, label }), /cannot decode gzip/);
  });
});
