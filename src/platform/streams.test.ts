import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable, Writable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { decompress as zstdDecompress } from 'zstd-napi';
import type { Compression } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';
import { compressForStorage, verifyAndDecompress } from './streams.ts';

function text(bytes: number): Buffer {
  const parts: string[] = [];
  for (let i = 0, n = 0; n < bytes; i++) {
    const line = `${i}\tcustomer ${i % 977}\t{"total": ${(i * 37) % 10_000}, "items": ${i % 7}}\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

async function run(data: Buffer, stages: Transform[]): Promise<Buffer> {
  const got: Buffer[] = [];
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += 100_000) pieces.push(data.subarray(i, i + 100_000));
  await pipeline([Readable.from(pieces), ...stages, new Writable({ write: (c: Buffer, _e, cb) => (got.push(c), cb()) })]);
  return Buffer.concat(got);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const plain: Record<Compression, (b: Buffer) => Buffer> = { zstd: (b) => zstdDecompress(b), gzip: (b) => gunzipSync(b), none: (b) => b };

describe('storage streams', () => {
  for (const compression of ['zstd', 'gzip', 'none'] as const) {
    it(`${compression}: stores with the size and sha256 of the stored bytes, and restores only what matches`, async () => {
      const data = text(5_000_000);
      const store = compressForStorage(compression);
      const stored = await run(data, store.stages);
      const entry = { compression, ...store.stored() };
      assert.equal(entry.size, stored.length);
      assert.equal(entry.sha256, sha(stored));
      assert.deepEqual(plain[compression](stored), data);
      assert.deepEqual(await run(stored, verifyAndDecompress(entry, 'artifact z')), data);

      const damaged = Buffer.from(stored);
      damaged[damaged.length >> 1]! ^= 0x10;
      await assert.rejects(run(damaged, verifyAndDecompress(entry, 'artifact z')), (err: unknown) => err instanceof AppError && err.code === 'checksum_mismatch' && /artifact z/.test(err.message));
    });
  }
});
