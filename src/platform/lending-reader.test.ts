import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, describe, it } from 'node:test';
import { LEND_CHUNK, LendingFileReader, PLAIN_CHUNK, UNRETURNED_MAX } from './lending-reader.ts';
import { recycled } from './recycle.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-lending-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A file of n random bytes. */
function fileOf(name: string, n: number): { path: string; bytes: Buffer } {
  const path = join(dir, name);
  const bytes = randomBytes(n);
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** Pipes reader into a sink that hands each chunk to onChunk. */
function consume(reader: LendingFileReader, onChunk: (chunk: Buffer) => void): Promise<void> {
  return pipeline(
    reader,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        onChunk(chunk);
        cb();
      },
    }),
  );
}

/** The descriptors this process has open. */
const openFds = () => readdirSync('/proc/self/fd').length;

describe('LendingFileReader', () => {
  it('reads the whole file, or a byte range, in chunks of at most LEND_CHUNK', async () => {
    const { path, bytes } = fileOf('f', 3 * LEND_CHUNK + 123);
    for (const [start, end] of [
      [0, undefined],
      [0, bytes.length - 1],
      [5, LEND_CHUNK + 9],
      [LEND_CHUNK, LEND_CHUNK],
      [bytes.length - 1, bytes.length - 1],
    ] as const) {
      const chunks: Buffer[] = [];
      for await (const c of new LendingFileReader(await open(path, 'r'), start, end)) chunks.push(Buffer.from(c as Buffer));
      assert.ok(chunks.every((c) => c.length <= LEND_CHUNK));
      assert.deepEqual(Buffer.concat(chunks), bytes.subarray(start, end === undefined ? undefined : end + 1), `${start}-${end}`);
    }
  });

  it('reads into the memory a consumer gave back, and never into a chunk that was not', async () => {
    const { path, bytes } = fileOf('g', 8 * LEND_CHUNK + 7);
    // A consumer that copies each chunk and gives it back, as the codec's stages do.
    const memories = new Set<ArrayBuffer>();
    const copies: Buffer[] = [];
    const giving = new LendingFileReader(await open(path, 'r'));
    await consume(giving, (chunk) => {
      memories.add(chunk.buffer as ArrayBuffer);
      copies.push(Buffer.from(chunk));
      assert.equal(recycled(chunk), true, 'every whole chunk is lent');
    });
    assert.deepEqual(Buffer.concat(copies), bytes);
    // Given back after each copy: a couple of buffers served all nine reads (one read ahead).
    assert.ok(memories.size <= 3, `${memories.size} buffers for 9 reads`);
    assert.equal(giving.lending, true);
  });

  it('reads as fs.createReadStream does once a consumer gives nothing back, and never into a chunk it holds', async () => {
    const { path, bytes } = fileOf('k', (UNRETURNED_MAX + 2) * LEND_CHUNK);
    const kept: Buffer[] = [];
    const reader = new LendingFileReader(await open(path, 'r'));
    await consume(reader, (chunk) => kept.push(chunk));
    assert.equal(new Set(kept.map((c) => c.buffer)).size, kept.length, 'a new buffer for every read');
    assert.deepEqual(Buffer.concat(kept), bytes);
    // UNRETURNED_MAX lent chunks, then the rest in plain ones.
    assert.equal(reader.lending, false);
    assert.deepEqual(
      kept.slice(0, UNRETURNED_MAX).map((c) => c.length),
      Array(UNRETURNED_MAX).fill(LEND_CHUNK),
    );
    assert.equal(kept.length, UNRETURNED_MAX + (2 * LEND_CHUNK) / PLAIN_CHUNK);
    assert.ok(kept.slice(UNRETURNED_MAX).every((c) => c.length === PLAIN_CHUNK && recycled(c) === false), 'plain chunks are not lent');
  });

  it('closes the file at the end, and when destroyed half-way', async () => {
    const { path } = fileOf('h', 4 * LEND_CHUNK);
    const before = openFds();
    const whole = new LendingFileReader(await open(path, 'r'));
    for await (const _ of whole) void _;
    if (!whole.closed) await once(whole, 'close');
    assert.equal(openFds(), before, 'closed after the end');

    const half = new LendingFileReader(await open(path, 'r'));
    await once(half, 'readable');
    assert.ok(half.read());
    half.destroy();
    if (!half.closed) await once(half, 'close');
    assert.equal(half.destroyed, true);
    assert.equal(openFds(), before, 'closed after a destroy');
  });

  it('fails with the read error and closes the file', async () => {
    const { path } = fileOf('i', 1000);
    const fh = await open(path, 'w'); // opened for writing only: reading fails with EBADF
    const before = openFds();
    const reader = new LendingFileReader(fh);
    await assert.rejects(
      (async () => {
        for await (const _ of reader) void _;
      })(),
      (err: NodeJS.ErrnoException) => err.code === 'EBADF',
    );
    if (!reader.closed) await once(reader, 'close');
    assert.equal(openFds(), before - 1);
  });
});
