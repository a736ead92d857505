// The Redis artifact, format "BVREDIS1": a self-describing binary stream of
// DUMP payloads. All integers are big-endian, unsigned unless said otherwise.
//
//   header
//     8 bytes   magic "BVREDIS1"
//     u8        flags: bit 0 set = partial (a selection or exclusions applied)
//     u8 + n    length and ASCII text of the source server's redis_version
//     u16       number of logical databases D
//     D x u16   the database numbers, ascending: every database the dump
//               scanned, also those that held no key (a full restore empties
//               exactly these)
//   records, one per key, grouped by database
//     u8        tag 0x52 "R"
//     u16       database number (one of the header's)
//     u32 + n   key length and key bytes (binary)
//     i64       absolute expiry in ms since the Unix epoch, by the source
//               server's clock (PTTL at dump time + TIME), or -1 for none
//     u32 + n   payload length and the DUMP payload (binary; it carries its
//               RDB version and a CRC64, and restores only into a server
//               whose RDB version is the same or newer)
//   trailer
//     u8        tag 0x45 "E"
//     u64       number of records
//     32 bytes  SHA-256 of every byte before these 32 (header, records, tag, count)
//   nothing may follow.
//
// A reader checks all of it, so a damaged or truncated stream is noticed
// before anything is written anywhere. By hand: each record's payload can be
// fed to RESTORE key <expiry> <payload> ABSTTL (0 and no ABSTTL for -1).
import { createHash, type Hash } from 'node:crypto';
import { AppError } from '../../errors/index.ts';

export const MAGIC = Buffer.from('BVREDIS1', 'ascii');
const TAG_RECORD = 0x52;
const TAG_END = 0x45;

export interface StreamHeader {
  partial: boolean;
  serverVersion: string;
  databases: number[];
}

export interface KeyRecord {
  db: number;
  /** null when the reader skips data (validation only) */
  key: Buffer | null;
  /** absolute expiry in ms since the epoch, or -1 */
  expiry: number;
  /** null when the reader skips data (validation only) */
  payload: Buffer | null;
  payloadLength: number;
}

export function encodeHeader(h: StreamHeader): Buffer {
  const version = Buffer.from(h.serverVersion.slice(0, 255), 'ascii');
  const out = Buffer.alloc(MAGIC.length + 1 + 1 + version.length + 2 + 2 * h.databases.length);
  let o = MAGIC.copy(out, 0);
  o = out.writeUInt8(h.partial ? 1 : 0, o);
  o = out.writeUInt8(version.length, o);
  o += version.copy(out, o);
  o = out.writeUInt16BE(h.databases.length, o);
  for (const db of h.databases) o = out.writeUInt16BE(db, o);
  return out;
}

export const RECORD_OVERHEAD = 1 + 2 + 4 + 8 + 4;

/** Writes one record at offset o of out (sized by the caller: RECORD_OVERHEAD + key + payload); returns the next offset. */
export function writeRecord(out: Buffer, o: number, db: number, key: Buffer, expiry: number, payload: Buffer): number {
  o = out.writeUInt8(TAG_RECORD, o);
  o = out.writeUInt16BE(db, o);
  o = out.writeUInt32BE(key.length, o);
  o += key.copy(out, o);
  // Two halves instead of a BigInt per key; -1 (no expiry) is all ones either way.
  o = out.writeInt32BE(Math.floor(expiry / 0x1_0000_0000), o);
  o = out.writeUInt32BE(expiry >>> 0, o);
  o = out.writeUInt32BE(payload.length, o);
  return o + payload.copy(out, o);
}

/** Tag and count; the digest follows and covers these too. */
export function encodeTrailerHead(count: number): Buffer {
  const out = Buffer.alloc(1 + 8);
  out.writeUInt8(TAG_END, 0);
  out.writeBigUInt64BE(BigInt(count), 1);
  return out;
}

function damaged(why: string): AppError {
  return new AppError('checksum_mismatch', `The Redis artifact is damaged: ${why}. Nothing was written to the target.`);
}

/**
 * Pulls exact byte counts from an async source of chunks. Consumed bytes are
 * hashed in bulk (per chunk, not per field: this runs once per key). Memory
 * holds at most one chunk plus the item being read.
 */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** bytes of buf before this are in the hash */
  private hashed = 0;
  private readonly it: AsyncIterator<Buffer>;
  private readonly hash: Hash = createHash('sha256');
  consumed = 0;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  private get avail(): number {
    return this.buf.length - this.pos;
  }

  private finalized = false;

  private flushHash(): void {
    if (this.finalized) return;
    if (this.pos > this.hashed) this.hash.update(this.buf.subarray(this.hashed, this.pos));
    this.hashed = this.pos;
  }

  private async pull(): Promise<Buffer | null> {
    const r = await this.it.next();
    if (r.done) return null;
    return Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
  }

  private replace(buf: Buffer): void {
    this.flushHash();
    this.buf = buf;
    this.pos = 0;
    this.hashed = 0;
  }

  /** The next n bytes when already buffered (the common case: no await per field), else null. */
  takeNow(n: number): Buffer | null {
    if (this.avail < n) return null;
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    this.consumed += n;
    return out;
  }

  /** Whether the next n bytes are already buffered. */
  has(n: number): boolean {
    return this.buf.length - this.pos >= n;
  }

  /** Makes the next n bytes buffered. */
  async ensure(n: number, what: string): Promise<void> {
    if (this.avail >= n) return;
    // Gather the missing chunks and join once: no quadratic copying for big payloads.
    const parts = [this.buf.subarray(this.pos)];
    let have = this.avail;
    while (have < n) {
      const chunk = await this.pull();
      if (chunk === null) throw damaged(`it ends in the middle of ${what} (truncated)`);
      parts.push(chunk);
      have += chunk.length;
    }
    this.replace(Buffer.concat(parts, have));
  }

  // Fixed-size fields, read in place once has() or ensure() said they are buffered: no view per field (this runs per key).
  u8(): number {
    this.consumed += 1;
    return this.buf[this.pos++] as number;
  }

  u16(): number {
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    this.consumed += 2;
    return v;
  }

  u32(): number {
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    this.consumed += 4;
    return v;
  }

  /** A signed 64-bit integer, as a number (exact up to 2^53, far beyond any epoch-ms expiry). */
  i64(): number {
    const v = this.buf.readInt32BE(this.pos) * 0x1_0000_0000 + this.buf.readUInt32BE(this.pos + 4);
    this.pos += 8;
    this.consumed += 8;
    return v;
  }

  async take(n: number, what: string): Promise<Buffer> {
    await this.ensure(n, what);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    this.consumed += n;
    return out;
  }

  /** Consumes n bytes without keeping them when already buffered (no await); false otherwise. */
  skipNow(n: number): boolean {
    if (this.avail < n) return false;
    this.pos += n;
    this.consumed += n;
    return true;
  }

  /** Consumes n bytes without keeping them. */
  async skip(n: number, what: string): Promise<void> {
    if (this.skipNow(n)) return;
    let left = n;
    while (left > 0) {
      if (this.avail === 0) {
        const chunk = await this.pull();
        if (chunk === null) throw damaged(`it ends in the middle of ${what} (truncated)`);
        this.replace(chunk);
        continue;
      }
      const k = Math.min(left, this.avail);
      this.pos += k;
      this.consumed += k;
      left -= k;
    }
  }

  /** SHA-256 of everything consumed so far; the hash takes nothing after this. */
  digest(): Buffer {
    this.flushHash();
    this.finalized = true;
    return this.hash.digest();
  }

  /** True when the source has no byte left; reads it to its end (so a late source error surfaces). */
  async atEnd(): Promise<boolean> {
    while (this.avail === 0) {
      const chunk = await this.pull();
      if (chunk === null) return true;
      this.replace(chunk);
    }
    return false;
  }
}

export type Item = { kind: 'record'; record: KeyRecord } | { kind: 'end'; count: number };

/**
 * Incremental reader of a BVREDIS1 stream: readHeader(), then next() until it
 * returns the end. With keepData false keys and payloads are hashed and
 * skipped: a validation pass in constant memory, whatever a damaged length
 * field claims. The end is returned only after count, digest and end of
 * input were all checked.
 */
export class RecordReader {
  private readonly bytes: ByteReader;
  private readonly keepData: boolean;
  private header: StreamHeader | null = null;
  private dbs = new Set<number>();
  private count = 0;
  private done = false;

  constructor(source: AsyncIterable<Buffer>, opts: { keepData: boolean }) {
    this.bytes = new ByteReader(source);
    this.keepData = opts.keepData;
  }

  async readHeader(): Promise<StreamHeader> {
    const magic = await this.bytes.take(MAGIC.length, 'the header');
    if (!magic.equals(MAGIC)) {
      throw new AppError('checksum_mismatch', 'This is not a Backvault Redis artifact (the BVREDIS1 header is missing). Nothing was written to the target.');
    }
    const flags = (await this.bytes.take(1, 'the header')).readUInt8(0);
    const vlen = (await this.bytes.take(1, 'the header')).readUInt8(0);
    const serverVersion = (await this.bytes.take(vlen, 'the header')).toString('ascii');
    const n = (await this.bytes.take(2, 'the header')).readUInt16BE(0);
    const raw = await this.bytes.take(2 * n, 'the header');
    const databases: number[] = [];
    for (let i = 0; i < n; i++) databases.push(raw.readUInt16BE(2 * i));
    this.dbs = new Set(databases);
    if (this.dbs.size !== n) throw damaged('its header lists a database twice');
    this.header = { partial: (flags & 1) === 1, serverVersion, databases };
    return this.header;
  }

  async next(): Promise<Item> {
    if (!this.header) throw new Error('RecordReader: readHeader() first');
    if (this.done) throw new Error('RecordReader: already at the end');
    const b = this.bytes;
    if (!b.has(1)) await b.ensure(1, 'a record');
    const tag = b.u8();
    if (tag === TAG_END) {
      const count = (await this.bytes.take(8, 'the trailer')).readBigUInt64BE(0);
      const digest = this.bytes.digest();
      const stored = await this.bytes.take(32, 'the trailer');
      if (!digest.equals(stored)) throw damaged('its SHA-256 does not match its content');
      if (count !== BigInt(this.count)) throw damaged(`its trailer counts ${count} keys but it holds ${this.count}`);
      if (!(await this.bytes.atEnd())) throw damaged('bytes follow its trailer');
      this.done = true;
      return { kind: 'end', count: this.count };
    }
    if (tag !== TAG_RECORD) throw damaged(`an unknown record tag 0x${tag.toString(16)} at byte ${this.bytes.consumed - 1}`);
    if (!b.has(2 + 4)) await b.ensure(2 + 4, 'a record');
    const db = b.u16();
    if (!this.dbs.has(db)) throw damaged(`a record names database ${db}, which its header does not list`);
    const keyLen = b.u32();
    let key: Buffer | null = null;
    // A view, like the payload: it keeps its read chunk alive only as long as the record is.
    if (this.keepData) key = b.takeNow(keyLen) ?? (await b.take(keyLen, 'a key'));
    else if (!b.skipNow(keyLen)) await b.skip(keyLen, 'a key');
    if (!b.has(8 + 4)) await b.ensure(8 + 4, 'a record');
    const expiry = b.i64();
    if (expiry < -1) throw damaged(`a record has the invalid expiry ${expiry}`);
    const payloadLength = b.u32();
    let payload: Buffer | null = null;
    if (this.keepData) payload = b.takeNow(payloadLength) ?? (await b.take(payloadLength, 'a value'));
    else if (!b.skipNow(payloadLength)) await b.skip(payloadLength, 'a value');
    this.count++;
    return { kind: 'record', record: { db, key, expiry, payload, payloadLength } };
  }
}
