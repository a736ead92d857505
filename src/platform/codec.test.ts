import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { compress as zstdCompress, decompress as zstdDecompress } from 'zstd-napi';
import { AppError, isErrorCode } from '../errors/index.ts';
import { MessageChannel } from 'node:worker_threads';
import { codecPool, DecodeToPort, Sha256PassThrough, VerifiedPassThrough, VerifiedZstdDecompress, ZstdCompressHash } from './codec.ts';
import { workerIdle } from './workers.ts';
import type { DecodedMessage } from './decoder.ts';
import { lend } from './recycle.ts';
import { decompressor } from './streams.ts';

/** Text-like data that compresses a few times, in chunks of varied size. */
function sample(bytes: number, seed = 1): Buffer {
  const words = ['backup', 'restore', 'postgres', 'λ', '🙂', 'row', '42', '\n', 'vault'];
  const parts: string[] = [];
  let x = seed;
  let n = 0;
  while (n < bytes) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const w = x % 7 === 0 ? randomBytes(6).toString('hex') : words[x % words.length]!;
    parts.push(w, ' ');
    n += Buffer.byteLength(w) + 1;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

function chunks(data: Buffer): Readable {
  const out: Buffer[] = [];
  for (let i = 0, size = 1; i < data.length; i += size, size = (size * 7 + 13) % 300_000 || 1) out.push(data.subarray(i, i + size));
  return Readable.from(out);
}

async function collect(source: Readable, ...stages: NodeJS.ReadWriteStream[]): Promise<Buffer> {
  const got: Buffer[] = [];
  await pipeline([source, ...stages, new Writable({ write: (c: Buffer, _e, cb) => (got.push(c), cb()) })]);
  return Buffer.concat(got);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('codec worker streams', () => {
  it('compresses into standard zstd and reports the size and sha256 of what it produced', async () => {
    const data = sample(3_000_000);
    const z = new ZstdCompressHash(3);
    const stored = await collect(chunks(data), z);
    assert.ok(stored.length < data.length / 2, `compressed ${data.length} to ${stored.length}`);
    assert.equal(z.bytes, stored.length);
    assert.equal(z.sha256, sha(stored));
    assert.deepEqual(zstdDecompress(stored), data);
  });

  it('compresses input of several segments, compressible or not, into frames every zstd decoder reads', async () => {
    // 4 MiB segments: 9.5 MB makes three frames; random bytes make frames
    // larger than one reply may carry, so the end needs pulls too (and with
    // exactly two segments, the end arrives while the last frame is being sent).
    for (const data of [sample(9_500_000, 5), randomBytes(9_500_000), randomBytes(8 * 1024 * 1024)]) {
      const z = new ZstdCompressHash(3);
      const stored = await collect(chunks(data), z);
      assert.equal(z.bytes, stored.length);
      assert.equal(z.sha256, sha(stored));
      assert.deepEqual(zstdDecompress(stored), data);
      assert.deepEqual(await collect(chunks(stored), decompressor('zstd', 'artifact')), data);
      assert.deepEqual(await collect(chunks(stored), new VerifiedZstdDecompress(z.sha256, z.bytes, 'artifact')), data);
    }
  });

  it('compresses lent segments in place into the same frames as copied input, and gives each back once to its lender', async () => {
    const data = Buffer.concat([sample(9_000_000, 9), randomBytes(2_000_000)]);
    const copied = new ZstdCompressHash(3);
    const expected = await collect(chunks(data), copied);
    // A files dump's batches: 4 MiB (the worker's segment), the last shorter; each a fresh buffer of its own, lent.
    const SEG = 4 * 1024 * 1024;
    const given: ArrayBuffer[] = [];
    const lentChunks: Buffer[] = [];
    for (let i = 0; i < data.length; i += SEG) {
      const own = Buffer.allocUnsafeSlow(SEG);
      const n = data.copy(own, 0, i, i + SEG);
      lentChunks.push(lend(own.subarray(0, n), (b) => given.push(b)));
    }
    const z = new ZstdCompressHash(3);
    const stored = await collect(Readable.from(lentChunks), z);
    assert.ok(stored.equals(expected), 'the same bytes as compressing copies');
    assert.equal(z.sha256, copied.sha256);
    assert.equal(given.length, lentChunks.length, 'every lent batch came back');
    assert.ok(given.every((b) => b.byteLength === SEG));
    // Taken, not copied: the sender's views were detached.
    assert.ok(lentChunks.every((c) => c.length === 0 || c.buffer.byteLength === 0));
  });

  it('copies lent chunks it cannot take whole, and gives none of them back', async () => {
    const data = sample(6_000_000, 11);
    const given: ArrayBuffer[] = [];
    const own = Buffer.from(data);
    lend(own, (b) => given.push(b));
    // Split before it reaches the stage: neither part is the whole loan.
    const z = new ZstdCompressHash(3);
    const stored = await collect(Readable.from([own.subarray(0, 1000), own.subarray(1000)]), z);
    assert.deepEqual(zstdDecompress(stored), data);
    assert.equal(given.length, 0);
    assert.equal(own.length, data.length, 'still attached');
  });

  it('compresses an empty stream into a valid empty frame', async () => {
    const z = new ZstdCompressHash(3);
    const stored = await collect(Readable.from([]), z);
    assert.equal(zstdDecompress(stored).length, 0);
    assert.equal(z.sha256, sha(stored));
  });

  it('decompresses stored bytes that match their manifest entry', async () => {
    const data = sample(2_000_000, 7);
    const stored = zstdCompress(data);
    const out = await collect(chunks(stored), new VerifiedZstdDecompress(sha(stored), stored.length, 'artifact x'));
    assert.deepEqual(out, data);
  });

  it('refuses a changed byte, a short or long artifact and a truncated frame with checksum_mismatch', async () => {
    const data = sample(500_000, 3);
    const stored = zstdCompress(data);
    const flipped = Buffer.from(stored);
    flipped[Math.floor(flipped.length / 2)]! ^= 0x40;
    const cases: Array<[string, Buffer, string, number, RegExp]> = [
      ['changed byte', flipped, sha(stored), stored.length, /artifact x/],
      ['shorter', stored.subarray(0, stored.length - 10), sha(stored), stored.length, /has \d+ bytes, its manifest says/],
      ['longer', Buffer.concat([stored, Buffer.from('trailing')]), sha(stored), stored.length, /larger than its manifest says/],
      ['truncated frame, matching manifest', stored.subarray(0, 1000), sha(stored.subarray(0, 1000)), 1000, /middle of a zstd frame/],
      ['not zstd at all', Buffer.from('plain text, not zstd'), sha(Buffer.from('plain text, not zstd')), 20, /not valid zstd data/],
    ];
    for (const [name, bytes, digest, size, message] of cases) {
      await assert.rejects(
        collect(chunks(bytes), new VerifiedZstdDecompress(digest, size, 'artifact x')),
        (err: unknown) => err instanceof AppError && err.code === 'checksum_mismatch' && message.test(err.message),
        name,
      );
    }
  });

  it('keeps many interleaved streams apart', async () => {
    const inputs = Array.from({ length: 12 }, (_, i) => sample(200_000 + i * 50_000, i + 10));
    const results = await Promise.all(
      inputs.map(async (data) => {
        const z = new ZstdCompressHash(3);
        const stored = await collect(chunks(data), z);
        return collect(chunks(stored), new VerifiedZstdDecompress(z.sha256, z.bytes, 'artifact'));
      }),
    );
    results.forEach((out, i) => assert.deepEqual(out, inputs[i]));
  });

  it('stops reading its input while its consumer does not read (memory stays bounded)', async () => {
    // 400 MB of zeros compress to almost nothing: without backpressure the
    // decompressor would pour all of it into memory at once.
    const total = 400 * 1024 * 1024;
    const stored = zstdCompress(Buffer.alloc(total));
    let fed = 0;
    const source = new Readable({
      read() {
        const n = Math.min(4096, stored.length - fed);
        this.push(n > 0 ? stored.subarray(fed, fed + n) : null);
        fed += n;
      },
    });
    let released: (() => void) | undefined;
    let received = 0;
    const stuck = new Writable({
      highWaterMark: 1024 * 1024,
      write(c: Buffer, _e, cb) {
        received += c.length;
        released = cb; // holds every write until the test lets go
      },
    });
    const d = new VerifiedZstdDecompress(sha(stored), stored.length, 'artifact');
    const done = pipeline(source, d, stuck);
    // Wait for the first output to reach the consumer, then for anything
    // else the worker would still send.
    for (let i = 0; i < 200 && received === 0; i++) await sleep(25);
    assert.ok(received > 0);
    await sleep(300);
    const buffered = received + d.readableLength + stuck.writableLength;
    assert.ok(buffered < 32 * 1024 * 1024, `${buffered} bytes decompressed while the consumer read nothing`);
    // Now drain it all, releasing each write as it comes.
    stuck._write = (c: Buffer, _e, cb) => {
      received += c.length;
      cb();
    };
    released?.();
    await done;
    assert.equal(received, total);
  });

  it('hashes bytes that pass through unchanged, and checks them against a manifest entry', async () => {
    for (const data of [Buffer.alloc(0), sample(1_500_000, 4)]) {
      const h = new Sha256PassThrough();
      assert.deepEqual(await collect(chunks(data), h), data);
      assert.equal(h.bytes, data.length);
      assert.equal(h.sha256, sha(data));
      assert.deepEqual(await collect(chunks(data), new VerifiedPassThrough(sha(data), data.length, 'artifact y')), data);
    }
    const data = sample(700_000, 8);
    const flipped = Buffer.from(data);
    flipped[123_456]! ^= 1;
    const cases: Array<[string, Buffer, RegExp]> = [
      ['changed byte', flipped, /artifact y does not match its sha256/],
      ['shorter', data.subarray(0, data.length - 1), /has \d+ bytes, its manifest says/],
      ['longer', Buffer.concat([data, Buffer.from('x')]), /larger than its manifest says/],
    ];
    for (const [name, bytes, message] of cases) {
      await assert.rejects(
        collect(chunks(bytes), new VerifiedPassThrough(sha(data), data.length, 'artifact y')),
        (err: unknown) => err instanceof AppError && err.code === 'checksum_mismatch' && message.test(err.message),
        name,
      );
    }
  });

  it('hashing stops reading its input while its consumer does not read', async () => {
    const piece = sample(64 * 1024, 2);
    let fed = 0;
    const source = new Readable({
      read() {
        fed += piece.length;
        this.push(fed <= 200 * 1024 * 1024 ? piece : null);
      },
    });
    let release: (() => void) | undefined;
    const stuck = new Writable({
      highWaterMark: 1024 * 1024,
      write(_c: Buffer, _e, cb) {
        release = cb; // holds the first write until the test lets go
      },
    });
    const h = new Sha256PassThrough();
    const done = pipeline(source, h, stuck);
    await sleep(500);
    assert.ok(fed < 16 * 1024 * 1024, `${fed} bytes read while the consumer read nothing`);
    stuck._write = (_c: Buffer, _e, cb) => cb();
    release?.();
    await done;
    assert.equal(h.bytes, 200 * 1024 * 1024);
  });

  it('decodes to another thread over a port: a fixed number of pieces out until they come back, the verdict last', async () => {
    // 64 MiB of zeros stored in a few KB: the consumer, not the ratio, decides how much is decoded ahead.
    const data = Buffer.alloc(64 * 1024 * 1024);
    const stored = zstdCompress(data);
    const spec = { compression: 'zstd' as const, sha256: sha(stored), size: stored.length, label: 'artifact a/b.zst' };
    const { port1, port2 } = new MessageChannel();
    const held: ArrayBuffer[] = [];
    const got: Buffer[] = [];
    let verdict: DecodedMessage | undefined;
    port2.on('message', (m: DecodedMessage) => {
      if ('piece' in m) {
        got.push(Buffer.from(Buffer.from(m.piece, 0, m.length)));
        held.push(m.piece);
      } else verdict = m;
    });
    const nothing = new Writable({ write: (_c, _e, cb) => cb() });
    const done = pipeline(Readable.from([stored]), new DecodeToPort(spec, port1), nothing);
    await sleep(300);
    assert.equal(held.length, 4, 'four pieces out, then the codec waits');
    assert.equal(verdict, undefined);
    // Handing the pieces back lets it go on to the end.
    const giveBack = () => {
      for (const b of held.splice(0)) port2.postMessage({ back: b }, [b]);
    };
    const pump = setInterval(giveBack, 5);
    await done;
    await sleep(50);
    clearInterval(pump);
    port2.close();
    assert.deepEqual(verdict, { end: true });
    assert.ok(Buffer.concat(got).equals(data));
    assert.ok(Math.max(...got.map((g) => g.length)) <= 1024 * 1024);

    // Damaged: the consumer and the stream both hear checksum_mismatch.
    const bad = Buffer.from(stored);
    bad[bad.length >> 1]! ^= 0xff;
    const ch = new MessageChannel();
    const verdicts: DecodedMessage[] = [];
    ch.port2.on('message', (m: DecodedMessage) => {
      if ('piece' in m) ch.port2.postMessage({ back: m.piece }, [m.piece]);
      else verdicts.push(m);
    });
    await assert.rejects(pipeline(Readable.from([bad]), new DecodeToPort(spec, ch.port1), new Writable({ write: (_c, _e, cb) => cb() })), (e) => isErrorCode(e, 'checksum_mismatch'));
    await sleep(50);
    ch.port2.close();
    assert.equal(verdicts.length, 1);
    assert.ok('error' in verdicts[0]! && verdicts[0].code === 'checksum_mismatch', JSON.stringify(verdicts));
  });

  it('a destroyed stream frees its place and later streams work', async () => {
    const z = new ZstdCompressHash(3);
    z.write(sample(2_000_000));
    z.destroy();
    await sleep(50);
    const data = sample(100_000, 99);
    const again = new ZstdCompressHash(3);
    assert.deepEqual(zstdDecompress(await collect(chunks(data), again)), data);
  });

  it('lets a worker without streams go after a while, and the next stream starts a new one', async () => {
    const idleMs = workerIdle.ms;
    workerIdle.ms = 200;
    try {
      const data = sample(300_000, 5);
      const z = new ZstdCompressHash(3);
      assert.deepEqual(zstdDecompress(await collect(chunks(data), z)), data);
      assert.ok(codecPool.live() >= 1);
      // Another stream within the idle time keeps the worker: none is started for it.
      const started = codecPool.started;
      const h = new Sha256PassThrough();
      assert.ok((await collect(chunks(data), h)).equals(data));
      assert.equal(h.sha256, createHash('sha256').update(data).digest('hex'));
      assert.equal(codecPool.started, started);
      for (let waited = 0; codecPool.live() > 0; waited += 50) {
        assert.ok(waited < 10_000, 'the idle workers left');
        await sleep(50);
      }
      const again = new ZstdCompressHash(3);
      assert.deepEqual(zstdDecompress(await collect(chunks(data), again)), data);
      assert.equal(codecPool.started, started + 1);
    } finally {
      workerIdle.ms = idleMs;
    }
  });
});
