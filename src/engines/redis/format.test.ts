import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { isErrorCode } from '../../errors/index.ts';
import { encodeHeader, encodeTrailerHead, RECORD_OVERHEAD, RecordReader, writeRecord, type KeyRecord } from './format.ts';

function build(records: { db: number; key: Buffer; expiry: number; payload: Buffer }[], opts: { count?: number } = {}): Buffer {
  const parts: Buffer[] = [encodeHeader({ partial: true, serverVersion: '7.0.15', databases: [3, 10] })];
  for (const r of records) {
    const rec = Buffer.alloc(RECORD_OVERHEAD + r.key.length + r.payload.length);
    assert.equal(writeRecord(rec, 0, r.db, r.key, r.expiry, r.payload), rec.length);
    parts.push(rec);
  }
  parts.push(encodeTrailerHead(opts.count ?? records.length));
  const body = Buffer.concat(parts);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/** Feeds the bytes in chunks of the given size. */
async function* chunked(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

async function readAll(buf: Buffer, keepData: boolean, chunk = 7, checkHeader = false): Promise<{ records: KeyRecord[]; count: number }> {
  const reader = new RecordReader(chunked(buf, chunk), { keepData });
  const header = await reader.readHeader();
  if (checkHeader) assert.deepEqual(header, { partial: true, serverVersion: '7.0.15', databases: [3, 10] });
  const records: KeyRecord[] = [];
  for (;;) {
    const item = await reader.next();
    if (item.kind === 'end') return { records, count: item.count };
    records.push(item.record);
  }
}

const sample = [
  { db: 3, key: Buffer.from([0, 1, 2, 0xff]), expiry: -1, payload: Buffer.alloc(300, 0xab) },
  { db: 10, key: Buffer.from('user:1'), expiry: 1_900_000_000_123, payload: Buffer.from([0]) },
  { db: 10, key: Buffer.alloc(0), expiry: 0, payload: Buffer.alloc(0) },
];

describe('BVREDIS1 format', () => {
  it('round-trips records, whatever the chunking, with or without payloads', async () => {
    const buf = build(sample);
    for (const size of [1, 3, 64, buf.length]) {
      const { records, count } = await readAll(buf, true, size, true);
      assert.equal(count, 3);
      assert.deepEqual(
        records.map((r) => ({ db: r.db, key: r.key, expiry: r.expiry, payload: r.payload })),
        sample,
      );
      const skipped = await readAll(buf, false, size);
      assert.deepEqual(skipped.records.map((r) => [r.key, r.payload, r.payloadLength]), sample.map((s) => [null, null, s.payload.length]));
    }
  });

  it('refuses every truncation', async () => {
    const buf = build(sample);
    for (let n = 0; n < buf.length; n++) {
      await assert.rejects(readAll(buf.subarray(0, n), false), (err) => isErrorCode(err, 'checksum_mismatch'), `truncated to ${n}`);
    }
  });

  it('refuses any flipped byte', async () => {
    const buf = build(sample);
    for (let i = 0; i < buf.length; i++) {
      const bad = Buffer.from(buf);
      bad[i] = (bad[i] as number) ^ 0x20;
      await assert.rejects(readAll(bad, false), (err) => isErrorCode(err, 'checksum_mismatch'), `byte ${i} flipped`);
    }
  });

  it('refuses bytes after the trailer and a wrong count', async () => {
    await assert.rejects(readAll(Buffer.concat([build(sample), Buffer.from([0])]), false), /bytes follow its trailer/);
    await assert.rejects(readAll(build(sample, { count: 2 }), false), /counts 2 keys but it holds 3/);
    await assert.rejects(readAll(Buffer.from('not a redis artifact at all'), false), /not a Backvault Redis artifact/);
  });
});
