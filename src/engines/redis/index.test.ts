// Round trips against the local Redis (127.0.0.1:6379), logical databases
// 10-15 only; each test empties them first and the file empties them at the end.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { compareCounts } from '../../domain/counts.ts';
import type { ResourceSpec } from '../../domain/types.ts';
import { isAppError, isErrorCode } from '../../errors/index.ts';
import type { DumpInfo, RestoreReport, RestoreRequest } from '../engine.ts';
import { tuning } from './dump.ts';
import { encodeHeader, encodeTrailerHead, RECORD_OVERHEAD, writeRecord } from './format.ts';
import { redisGlobMatch } from './glob.ts';
import { redisEngine } from './index.ts';
import { mapDatabases, restoreStats } from './restore.ts';

const HOST = '127.0.0.1';
const PORT = 6379;
const TEST_DBS = [10, 11, 12, 13, 14, 15];
const never = new AbortController().signal;
const url = (db: number, extra = '') => `redis://${HOST}:${PORT}/${db}${extra}`;
const spec = (db: number, options: Record<string, unknown> = {}): ResourceSpec => ({ name: 'cache', type: 'redis', connection: url(db), options });
const b = (s: string) => Buffer.from(s, 'utf8');

const clients = new Map<number, Redis>();
function r(db: number): Redis {
  const c = clients.get(db);
  if (!c) throw new Error(`no client for database ${db}`);
  return c;
}

async function flushTestDbs(): Promise<void> {
  for (const db of TEST_DBS) await r(db).flushdb();
}

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bv-redis-'));
  for (const db of TEST_DBS) {
    const c = new Redis({ host: HOST, port: PORT, db, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    c.on('error', () => {});
    try {
      await c.connect();
    } catch (err) {
      throw new Error(`The redis engine tests need Redis on ${HOST}:${PORT} (databases 10-15): ${(err as Error).message}`);
    }
    clients.set(db, c);
  }
  await flushTestDbs();
});
after(async () => {
  if (clients.size === TEST_DBS.length) await flushTestDbs();
  for (const c of clients.values()) await c.quit();
  await rm(root, { recursive: true, force: true });
});

let n = 0;
const workDir = () => join(root, `w${n++}`);

async function dumpBytes(resource: ResourceSpec, selection: string[] | null = null, exclude: string[] = []): Promise<{ bytes: Buffer; info: DumpInfo }> {
  const out = await redisEngine.dump({ resource, selection, exclude, useReplica: false, workDir: workDir(), signal: never });
  const chunks: Buffer[] = [];
  for await (const c of out.stream) chunks.push(c as Buffer);
  return { bytes: Buffer.concat(chunks), info: await out.info };
}

function restoreBytes(input: Buffer | Readable, target: ResourceSpec, mode: RestoreRequest['mode'], partial: boolean, expected: DumpInfo['counts']): Promise<RestoreReport> {
  const stream = Buffer.isBuffer(input) ? Readable.from([input]) : input;
  return redisEngine.restore({ target, input: stream, expected, mode, partial, workDir: workDir(), signal: never });
}

async function allKeys(c: Redis): Promise<Buffer[]> {
  const out: Buffer[] = [];
  let cursor = '0';
  do {
    const [next, keys] = (await c.callBuffer('SCAN', cursor, 'COUNT', 1000)) as [Buffer, Buffer[]];
    cursor = next.toString();
    out.push(...keys);
  } while (cursor !== '0');
  return out;
}

const hex = (x: Buffer) => x.toString('hex');
function sortedPairs(flat: Buffer[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < flat.length; i += 2) out.push(`${hex(flat[i] as Buffer)}=${hex(flat[i + 1] as Buffer)}`);
  return out.sort();
}

/** A key's type and content in a form that does not depend on internal encodings or dict order. */
async function describeKey(c: Redis, key: Buffer): Promise<unknown> {
  const type = await c.type(key);
  switch (type) {
    case 'string':
      return [type, hex((await c.getBuffer(key)) as Buffer)];
    case 'hash':
      return [type, sortedPairs((await c.callBuffer('HGETALL', key)) as Buffer[])];
    case 'list':
      return [type, ((await c.lrangeBuffer(key, 0, -1)) as Buffer[]).map(hex)];
    case 'set':
      return [type, ((await c.smembersBuffer(key)) as Buffer[]).map(hex).sort()];
    case 'zset':
      return [type, ((await c.callBuffer('ZRANGE', key, 0, -1, 'WITHSCORES')) as Buffer[]).map(hex)];
    case 'stream': {
      const entries = await c.callBuffer('XRANGE', key, '-', '+');
      const info = (await c.call('XINFO', 'STREAM', key)) as unknown[];
      const pick = new Map<string, unknown>();
      for (let i = 0; i < info.length; i += 2) pick.set(String(info[i]), info[i + 1]);
      const groups = (await c.call('XINFO', 'GROUPS', key)) as unknown[][];
      const pending = [];
      for (const g of groups) {
        const name = String(g[1]);
        // Idle times tick on; ids, owners and delivery counts must agree.
        const entries = (await c.call('XPENDING', key, name, '-', '+', 1000)) as [string, string, number, number][];
        pending.push([name, entries.map(([id, owner, , deliveries]) => [id, owner, deliveries])]);
        pending.push(JSON.stringify(await c.call('XINFO', 'CONSUMERS', key, name), (_k, v) => (typeof v === 'number' ? 'n' : v)));
      }
      return [
        type,
        JSON.stringify(entries, (_k, v) => (v?.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v)),
        ['length', 'last-generated-id', 'max-deleted-entry-id', 'entries-added', 'recorded-first-entry-id'].map((f) => pick.get(f)),
        groups,
        pending,
      ];
    }
    default:
      return [type, hex((await c.dumpBuffer(key)) as Buffer)];
  }
}

/**
 * Every key: content and expiry. The expiry is absolute (PEXPIRETIME, unix ms,
 * -1 for none), so two snapshots taken seconds apart on a loaded machine still
 * compare exactly what a restore must keep: the moment each key expires.
 */
async function snapshot(c: Redis): Promise<Map<string, { content: unknown; pttl: number }>> {
  const out = new Map<string, { content: unknown; pttl: number }>();
  for (const key of await allKeys(c)) out.set(hex(key), { content: await describeKey(c, key), pttl: Number(await c.call('PEXPIRETIME', key)) });
  return out;
}

function assertSameData(actual: Map<string, { content: unknown; pttl: number }>, expected: Map<string, { content: unknown; pttl: number }>, ttlSlackMs = 1000): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), 'the same keys');
  for (const [key, want] of expected) {
    const got = actual.get(key);
    assert.deepEqual(got?.content, want.content, `content of key ${Buffer.from(key, 'hex').toString('latin1')}`);
    if (want.pttl === -1) assert.equal(got?.pttl, -1, `no TTL on ${key}`);
    else assert.ok(Math.abs((got?.pttl ?? -99) - want.pttl) <= ttlSlackMs, `expiry of ${key}: ${got?.pttl} vs ${want.pttl}`);
  }
}

async function populateEveryType(c: Redis): Promise<void> {
  const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  await c.set('str:plain', 'hello');
  await c.set('str:int', '12345');
  await c.set('str:big', Buffer.alloc(200_000, 'xyz'));
  await c.set(every, Buffer.from(every).reverse());
  await c.set(Buffer.from([0]), Buffer.alloc(0));
  await c.set('bin:value', every);
  await c.hset('hash:small', { a: '1', b: every });
  await c.hset('hash:big', Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`f${i}`, `v${i}`])));
  await c.rpush('list:small', 'a', 'b', every);
  await c.rpush('list:big', ...Array.from({ length: 3000 }, (_, i) => `item-${i}`));
  await c.sadd('set:ints', 1, 2, 3, 99);
  await c.sadd('set:strs', 'x', 'y', every);
  await c.sadd('set:big', ...Array.from({ length: 1000 }, (_, i) => `m${i}`));
  await c.zadd('zset:small', 1, 'one', 2.5, 'two-and-a-half', -3, every);
  await c.zadd('zset:big', ...Array.from({ length: 500 }, (_, i) => [i * 1.5, `z${i}`]).flat());
  for (let i = 0; i < 50; i++) await c.xadd('stream:1', '*', 'n', String(i), 'bin', every);
  await c.xgroup('CREATE', 'stream:1', 'g1', '0');
  await c.xgroup('CREATE', 'stream:1', 'g2', '$');
  await c.xreadgroup('GROUP', 'g1', 'consumer-a', 'COUNT', 10, 'STREAMS', 'stream:1', '>');
  await c.xreadgroup('GROUP', 'g1', 'consumer-b', 'COUNT', 5, 'STREAMS', 'stream:1', '>');
  await c.xadd('stream:empty', 'MAXLEN', '0', '*', 'k', 'v');
  await c.set('ttl:str', 'soon', 'PX', 120_000);
  await c.hset('ttl:hash', 'f', 'v');
  await c.expire('ttl:hash', 3600);
  await c.set(Buffer.from([0xff, 0x00, 0x3a]), every, 'EX', 7200);
}

describe('redis engine', () => {
  it('checks connections without connecting and never shows the password', () => {
    for (const ok of ['redis://127.0.0.1:6379/0', 'redis://:pw@host/15', 'redis://user:p%40ss@host:7000', 'rediss://h/3', 'redis://[::1]:6379/2', 'redis://h/1?databases=1,2']) {
      redisEngine.checkConnection(ok, {});
    }
    redisEngine.checkConnection('redis://h/0', { databases: [0, 3] });
    const bad: [string, Record<string, unknown>][] = [
      ['', {}],
      ['http://:s3cret@host/0', {}],
      ['redis://:s3cret@host/16', {}],
      ['redis://:s3cret@host/x', {}],
      ['redis://:s3cret@host/1/2', {}],
      ['redis://:s3cret@/1', {}],
      ['redis://:s3cret@host:99999/1', {}],
      ['redis://:s3cret@host/1?password=s3cret', {}],
      ['redis://:s3cret@host/1?databases=1,1', {}],
      ['redis://:s3cret@host/1', { databases: [] }],
      ['redis://:s3cret@host/1', { databases: [16] }],
      ['redis://:s3cret@host/1', { databases: ['abc'] }],
      ['not a url s3cret', {}],
    ];
    for (const [conn, options] of bad) {
      assert.throws(
        () => redisEngine.checkConnection(conn, options),
        (err) => isErrorCode(err, 'invalid_connection') && !err.message.includes('s3cret'),
        conn,
      );
    }
  });

  for (const scripts of [true, false]) {
    it(`keeps every type, binary keys and values and TTLs through a full round trip into another database (${scripts ? 'Lua scripts' : 'MULTI and pipelines'})`, async () => {
      tuning.useScripts = scripts;
      try {
        await roundTripEveryType();
      } finally {
        tuning.useScripts = true;
      }
    });
  }

  async function roundTripEveryType(): Promise<void> {
    await flushTestDbs();
    await populateEveryType(r(10));
    const before = await snapshot(r(10));
    const { bytes, info } = await dumpBytes(spec(10));
    assert.equal(bytes.subarray(0, 8).toString(), 'BVREDIS1');
    assert.equal(info.counts.keys, before.size);
    assert.match(info.serverVersion ?? '', /^\d+\.\d+/);
    const report = await restoreBytes(bytes, spec(11), 'new_target', false, info.counts);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.deepEqual(report.warnings, []);
    assertSameData(await snapshot(r(11)), before);
    // The consumer groups and their pending entries came along.
    const groups = (await r(11).call('XINFO', 'GROUPS', 'stream:1')) as unknown[][];
    assert.deepEqual(groups.map((g) => [g[1], g[5]]), [['g1', 15], ['g2', 0]]);
    // The source is untouched.
    assertSameData(await snapshot(r(10)), before);
  }

  it('takes key patterns and exclusions, once per key, and restores only those keys in place', async () => {
    await flushTestDbs();
    const src = r(10);
    for (let i = 1; i <= 20; i++) await src.set(`user:${i}`, `u${i}`);
    await src.set('user:admin', 'root');
    for (let i = 0; i < 10; i++) await src.set(`session:${i}`, `s${i}`, 'EX', 3600);
    for (let i = 0; i < 10; i++) await src.set(`cache:${i}`, `c${i}`);
    await src.set('other', 'o');
    const selection = ['user:*', 'user:1*', 'session:*'];
    const exclude = ['user:admin', 'session:[0-4]'];
    const expectedKeys = [...Array.from({ length: 20 }, (_, i) => `user:${i + 1}`), ...[5, 6, 7, 8, 9].map((i) => `session:${i}`)].sort();

    const { bytes, info } = await dumpBytes(spec(10), selection, exclude);
    assert.equal(info.counts.keys, expectedKeys.length);
    assert.deepEqual(info.warnings, []);

    const copy = await restoreBytes(bytes, spec(11), 'new_target', true, info.counts);
    assert.deepEqual(compareCounts(info.counts, copy.counts), []);
    assert.deepEqual((await allKeys(r(11))).map((k) => k.toString()).sort(), expectedKeys);
    assert.ok((await r(11).ttl('session:5')) > 3500);

    // Change the source, then restore the partial backup in place.
    await src.set('user:1', 'changed');
    await src.del('user:2');
    await src.set('session:5', 'changed');
    await src.set('user:new', 'added later');
    await src.set('cache:0', 'changed too');
    const inPlace = await restoreBytes(bytes, spec(10), 'in_place', true, info.counts);
    assert.deepEqual(compareCounts(info.counts, inPlace.counts), []);
    assert.equal(await src.get('user:1'), 'u1');
    assert.equal(await src.get('user:2'), 'u2');
    assert.equal(await src.get('session:5'), 's5');
    assert.ok((await src.ttl('session:5')) > 3500);
    // What the backup did not take is left alone.
    assert.equal(await src.get('user:new'), 'added later');
    assert.equal(await src.get('cache:0'), 'changed too');
    assert.equal(await src.get('user:admin'), 'root');
    // Even when a caller asks for a full restore, a partial artifact does not empty the target.
    await src.set('user:1', 'changed again');
    await restoreBytes(bytes, spec(10), 'in_place', false, info.counts);
    assert.equal(await src.get('user:1'), 'u1');
    assert.equal(await src.get('user:new'), 'added later');

    // A pattern that matches nothing is worth a warning.
    const none = await dumpBytes(spec(10), ['nothing:*'], []);
    assert.equal(none.info.counts.keys, 0);
    assert.match(none.info.warnings.join(' '), /nothing:\*/);
    await assert.rejects(dumpBytes(spec(10), [], []), (err) => isErrorCode(err, 'invalid_selection'));
    await assert.rejects(dumpBytes(spec(10), [''], []), (err) => isErrorCode(err, 'invalid_selection'));
  });

  it('makes the target equal to a full backup in place: keys added since are gone', async () => {
    await flushTestDbs();
    const src = r(10);
    for (let i = 0; i < 300; i++) await src.set(`k:${i}`, `v${i}`);
    await src.hset('h', 'a', '1');
    await src.set('t', 'x', 'EX', 1000);
    const before = await snapshot(src);
    const { bytes, info } = await dumpBytes(spec(10));
    for (let i = 0; i < 50; i++) await src.set(`late:${i}`, 'new');
    await src.del('k:1', 'h');
    await src.set('k:2', 'changed');
    await src.persist('t');
    const report = await restoreBytes(bytes, spec(10), 'in_place', false, info.counts);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assertSameData(await snapshot(src), before);
    assert.equal(await src.exists('late:0'), 0);
  });

  it('refuses a damaged or truncated input and leaves the in-place target unchanged', async () => {
    await flushTestDbs();
    const src = r(10);
    for (let i = 0; i < 500; i++) await src.set(`k:${i}`, `value-${i}-${'x'.repeat(100)}`);
    const { bytes, info } = await dumpBytes(spec(10));
    await src.set('added-after-backup', '1');
    await src.set('k:0', 'changed');
    const before = await snapshot(src);

    const flipped = Buffer.from(bytes);
    const mid = Math.floor(bytes.length / 2);
    flipped[mid] = (flipped[mid] as number) ^ 0xff;
    await assert.rejects(restoreBytes(flipped, spec(10), 'in_place', false, info.counts), (err) => {
      assert.ok(isErrorCode(err, 'checksum_mismatch'), String(err));
      assert.match(err.message, /damaged.*Nothing was written/);
      return true;
    });
    assertSameData(await snapshot(src), before);

    await assert.rejects(restoreBytes(bytes.subarray(0, mid), spec(10), 'in_place', false, info.counts), /truncated/);
    await assert.rejects(restoreBytes(bytes.subarray(0, bytes.length - 1), spec(10), 'in_place', false, info.counts), /truncated/);
    assertSameData(await snapshot(src), before);

    // The input errors at its very end, as a failed checksum of the stored artifact does.
    async function* failingAtEnd() {
      yield bytes;
      throw new Error('stored artifact failed its checksum');
    }
    await assert.rejects(restoreBytes(Readable.from(failingAtEnd()), spec(10), 'in_place', false, info.counts), /failed its checksum/);
    // A partial in-place restore waits for the end of its input too.
    await assert.rejects(restoreBytes(Readable.from(failingAtEnd()), spec(10), 'in_place', true, info.counts), /failed its checksum/);
    assertSameData(await snapshot(src), before);

    // The manifest and the artifact disagree: nothing is written either.
    await assert.rejects(restoreBytes(bytes, spec(10), 'in_place', false, { keys: 499 }), (err) => isErrorCode(err, 'verification_failed'));
    assertSameData(await snapshot(src), before);
  });

  it('restores a key the backup holds twice (SCAN can repeat keys) and counts it as the dump did', async () => {
    for (const scripts of [true, false]) {
      tuning.useScripts = scripts;
      try {
        await flushTestDbs();
        await r(10).set('dup', 'old');
        await r(10).set('other', 'x');
        const payloadOld = (await r(10).dumpBuffer('dup')) as Buffer;
        await r(10).set('dup', 'new');
        const payloadNew = (await r(10).dumpBuffer('dup')) as Buffer;
        const payloadOther = (await r(10).dumpBuffer('other')) as Buffer;
        const records: [Buffer, Buffer][] = [[b('dup'), payloadOld], [b('other'), payloadOther], [b('dup'), payloadNew]];
        const parts = [encodeHeader({ partial: false, serverVersion: '7.0.0', databases: [10] })];
        for (const [key, payload] of records) {
          const rec = Buffer.alloc(RECORD_OVERHEAD + key.length + payload.length);
          writeRecord(rec, 0, 10, key, -1, payload);
          parts.push(rec);
        }
        parts.push(encodeTrailerHead(3));
        const body = Buffer.concat(parts);
        const bytes = Buffer.concat([body, createHash('sha256').update(body).digest()]);
        const report = await restoreBytes(bytes, spec(11), 'new_target', false, { keys: 3 });
        assert.deepEqual(report.counts, { keys: 3 });
        assert.match(report.warnings.join(' '), /held 1 key\(s\) twice/);
        assert.equal(await r(11).get('dup'), 'new');
        assert.equal(await r(11).dbsize(), 2);
      } finally {
        tuning.useScripts = true;
      }
    }
  });

  it('dumps from the replica when asked, the databases being the resource\'s', async () => {
    await flushTestDbs();
    await r(12).set('k', 'v');
    // The primary is unreachable: only the replica can have answered.
    const resource: ResourceSpec = { name: 'cache', type: 'redis', connection: 'redis://127.0.0.1:1/12', replica: url(0), options: {} };
    const out = await redisEngine.dump({ resource, selection: null, exclude: [], useReplica: true, workDir: workDir(), signal: never });
    const chunks: Buffer[] = [];
    for await (const c of out.stream) chunks.push(c as Buffer);
    assert.deepEqual((await out.info).counts, { keys: 1 });
  });

  it('cancels a restore into a new target and leaves it empty', async () => {
    await flushTestDbs();
    for (let i = 0; i < 3000; i++) await r(10).set(`k${i}`, 'v');
    const { bytes, info } = await dumpBytes(spec(10));
    const ctl = new AbortController();
    // The input stalls before its end: the restore waits, and is cancelled there.
    let release = () => {};
    const stall = new Promise<void>((res) => {
      release = res;
    });
    async function* stalls() {
      yield bytes.subarray(0, 1000);
      await stall;
      yield bytes.subarray(1000);
    }
    const input = Readable.from(stalls());
    setTimeout(() => ctl.abort(), 100);
    await assert.rejects(
      redisEngine.restore({ target: spec(11), input, expected: info.counts, mode: 'new_target', partial: false, workDir: workDir(), signal: ctl.signal }),
      (err) => isErrorCode(err, 'cancelled'),
    );
    release();
    assert.equal(await r(11).dbsize(), 0);
  });

  it('cleans up after a RESTORE fails half way: a new target is emptied, an in-place one says what happened', async () => {
    await flushTestDbs();
    const saved = { ...tuning };
    tuning.maxBatchKeys = 10;
    try {
      const records: [Buffer, Buffer][] = [];
      for (let i = 0; i < 50; i++) {
        await r(10).set(`k${i}`, `v${i}`);
        records.push([b(`k${i}`), (await r(10).dumpBuffer(`k${i}`)) as Buffer]);
      }
      // A payload whose CRC fails, after 40 good ones: the stream itself is intact.
      const bad = Buffer.from(records[40]?.[1] as Buffer);
      bad[0] = (bad[0] as number) ^ 1;
      records[40] = [b('k40'), bad];
      const parts = [encodeHeader({ partial: false, serverVersion: '7.0.0', databases: [10] })];
      for (const [key, payload] of records) {
        const rec = Buffer.alloc(RECORD_OVERHEAD + key.length + payload.length);
        writeRecord(rec, 0, 10, key, -1, payload);
        parts.push(rec);
      }
      parts.push(encodeTrailerHead(records.length));
      const body = Buffer.concat(parts);
      const bytes = Buffer.concat([body, createHash('sha256').update(body).digest()]);
      await assert.rejects(restoreBytes(bytes, spec(11), 'new_target', false, { keys: 50 }), (err) => {
        assert.ok(isErrorCode(err, 'engine_failed'), String(err));
        assert.match(err.message, /refused to RESTORE a key: .*checksum/);
        return true;
      });
      assert.equal(await r(11).dbsize(), 0);
      await assert.rejects(restoreBytes(bytes, spec(10), 'in_place', false, { keys: 50 }), /emptied and hold only part of the backup/);

      // The first payload is probed before anything is touched: one the server cannot read stops the restore there.
      await r(10).set('keep', 'me');
      const before = await snapshot(r(10));
      const first = Buffer.from(bytes);
      const at = bytes.indexOf(records[0]?.[1] as Buffer);
      first[at] = (first[at] as number) ^ 1;
      const fixed = Buffer.concat([first.subarray(0, first.length - 32), createHash('sha256').update(first.subarray(0, first.length - 32)).digest()]);
      await assert.rejects(restoreBytes(fixed, spec(10), 'in_place', false, { keys: 50 }), /cannot read this backup's DUMP payloads.*Nothing was written/);
      assertSameData(await snapshot(r(10)), before);
    } finally {
      Object.assign(tuning, saved);
    }
  });

  it('refuses a new target that holds data, and leaves it alone', async () => {
    await flushTestDbs();
    await r(10).set('a', '1');
    await r(12).set('precious', 'yes');
    const { bytes, info } = await dumpBytes(spec(10));
    await assert.rejects(restoreBytes(bytes, spec(12), 'new_target', false, info.counts), (err) => isErrorCode(err, 'target_not_empty'));
    assert.deepEqual((await allKeys(r(12))).map(String), ['precious']);
  });

  it('skips keys that expired before the restore, with a warning, and still counts them', async () => {
    await flushTestDbs();
    await r(10).set('short', 'x', 'PX', 300);
    await r(10).set('long', 'y');
    const { bytes, info } = await dumpBytes(spec(10));
    assert.equal(info.counts.keys, 2);
    await new Promise((res) => setTimeout(res, 500));
    const report = await restoreBytes(bytes, spec(11), 'new_target', false, info.counts);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.match(report.warnings.join(' '), /1 key\(s\) had expired/);
    assert.deepEqual((await allKeys(r(11))).map(String), ['long']);
  });

  it('backs up several logical databases and maps them onto a new target', async () => {
    await flushTestDbs();
    await r(10).set('same', 'in ten');
    await r(10).set('only:10', '1');
    await r(11).set('same', 'in eleven');
    const resource = spec(10, { databases: [11, 10] });
    const { bytes, info } = await dumpBytes(resource);
    assert.equal(info.counts.keys, 3);
    const report = await restoreBytes(bytes, spec(13), 'new_target', false, info.counts);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.equal(await r(13).get('same'), 'in ten');
    assert.equal(await r(13).get('only:10'), '1');
    assert.equal(await r(14).get('same'), 'in eleven');
    assert.equal(await r(14).dbsize(), 1);

    // In place, each database gets its own keys back, and only its own.
    await r(11).set('late', '1');
    await r(10).del('only:10');
    const again = await restoreBytes(bytes, resource, 'in_place', false, info.counts);
    assert.deepEqual(compareCounts(info.counts, again.counts), []);
    assert.deepEqual((await allKeys(r(10))).map(String).sort(), ['only:10', 'same']);
    assert.deepEqual((await allKeys(r(11))).map(String), ['same']);

    assert.deepEqual([...mapDatabases([0, 1, 2], 'new_target', { connection: url(5), options: { databases: [0, 1, 2] } })], [[0, 5], [1, 6], [2, 7]]);
    assert.deepEqual([...mapDatabases([0, 4], 'new_target', { connection: url(0, '?databases=9,3'), options: {} })], [[0, 3], [4, 9]]);
    assert.deepEqual([...mapDatabases([2], 'in_place', { connection: url(7), options: {} })], [[2, 7]]);
    assert.deepEqual([...mapDatabases([2], 'in_place', { connection: url(7), options: { databases: [2, 7] } })], [[2, 2]]);
    assert.throws(() => mapDatabases([0, 1], 'in_place', { connection: url(7), options: {} }), (err) => isErrorCode(err, 'invalid_request'));
    assert.throws(() => mapDatabases([0, 1], 'new_target', { connection: url(15), options: {} }), (err) => isErrorCode(err, 'invalid_request'));
  });

  it('streams a few thousand keys in bounded batches and honours backpressure', async () => {
    await flushTestDbs();
    const src = r(10);
    const value = Buffer.alloc(4096, 7);
    for (let i = 0; i < 4000; i += 500) {
      const p = src.pipeline();
      for (let j = i; j < i + 500; j++) p.set(`bulk:${j}`, value);
      await p.exec();
    }
    const saved = { ...tuning };
    tuning.targetBytes = 64 * 1024;
    try {
      const dumpCalls = async () => Number(/cmdstat_dump:calls=(\d+)/.exec(await src.info('commandstats'))?.[1] ?? 0);
      const start = await dumpCalls();
      const out = await redisEngine.dump({ resource: spec(10), selection: null, exclude: [], useReplica: false, workDir: workDir(), signal: never });
      const chunks: Buffer[] = [];
      let maxChunk = 0;
      const it = out.stream[Symbol.asyncIterator]();
      const first = await it.next();
      chunks.push(first.value as Buffer);
      // A consumer that stops reading stops the dump: no more than a few batches are fetched meanwhile.
      await new Promise((res) => setTimeout(res, 300));
      const whilePaused = (await dumpCalls()) - start;
      assert.ok(whilePaused < 200, `${whilePaused} keys were dumped while nobody read`);
      for (let x = await it.next(); !x.done; x = await it.next()) {
        chunks.push(x.value as Buffer);
        maxChunk = Math.max(maxChunk, (x.value as Buffer).length);
      }
      const info = await out.info;
      assert.equal(info.counts.keys, 4000);
      assert.ok(maxChunk <= 2 * tuning.targetBytes, `a dump chunk of ${maxChunk} bytes`);

      restoreStats.maxBatchBytes = 0;
      restoreStats.maxBatchKeys = 0;
      const report = await restoreBytes(Buffer.concat(chunks), spec(11), 'new_target', false, info.counts);
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.ok(restoreStats.maxBatchBytes <= tuning.targetBytes + 4200, `a RESTORE batch of ${restoreStats.maxBatchBytes} bytes`);
      assert.ok(restoreStats.maxBatchKeys > 1);
      assert.equal(await r(11).dbsize(), 4000);
      assert.deepEqual(await r(11).getBuffer('bulk:3999'), value);
    } finally {
      Object.assign(tuning, saved);
    }
  });

  it('stops a dump when cancelled', async () => {
    await flushTestDbs();
    for (let i = 0; i < 2000; i++) await r(10).set(`k${i}`, 'v');
    const ctl = new AbortController();
    const out = await redisEngine.dump({ resource: spec(10), selection: null, exclude: [], useReplica: false, workDir: workDir(), signal: ctl.signal });
    const it = out.stream[Symbol.asyncIterator]();
    await it.next();
    ctl.abort();
    await assert.rejects(
      (async () => {
        for (let x = await it.next(); !x.done; x = await it.next());
      })(),
      (err) => isErrorCode(err, 'cancelled'),
    );
    await assert.rejects(out.info, (err) => isErrorCode(err, 'cancelled'));
  });

  it('reports an unreachable server without the password', async () => {
    const resource: ResourceSpec = { name: 'x', type: 'redis', connection: 'redis://:s3cret@127.0.0.1:1/0', options: {} };
    await assert.rejects(dumpBytes(resource), (err) => isAppError(err) && err.code === 'engine_failed' && !err.message.includes('s3cret') && err.message.includes('127.0.0.1:1'));
  });

  it('lists key prefixes from a sample', async () => {
    await flushTestDbs();
    for (let i = 0; i < 5; i++) await r(10).set(`user:${i}`, '1');
    await r(10).set('session:a', '1');
    await r(10).set('plain', '1');
    await r(10).set('we*ird:1', '1');
    await r(10).set(Buffer.from([0xff, 0x3a, 0x01]), '1');
    const list = await redisEngine.listObjects(spec(10));
    assert.deepEqual(list, [
      { name: '?:*', kind: 'key_prefix', size: 1 },
      { name: 'plain', kind: 'key_prefix', size: 1 },
      { name: 'session:*', kind: 'key_prefix', size: 1 },
      { name: 'user:*', kind: 'key_prefix', size: 5 },
      { name: 'we\\*ird:*', kind: 'key_prefix', size: 1 },
    ]);
    // Each name, used as a selection, takes its keys.
    for (const o of list) {
      const { info } = await dumpBytes(spec(10), [o.name]);
      assert.equal(info.counts.keys, o.size, o.name);
    }
  });

  it('borrows empty databases as scratch targets, one drill at a time, and empties them at cleanup', async () => {
    await flushTestDbs();
    await r(10).set('a', '1');
    await r(10).set('b', '2', 'EX', 100);
    const { bytes, info } = await dumpBytes(spec(10));
    const first = await redisEngine.scratchTarget(spec(10), workDir());
    const second = await redisEngine.scratchTarget(spec(10), workDir());
    try {
      assert.equal(first.connection, url(15));
      assert.equal(second.connection, url(14));
      const report = await restoreBytes(bytes, { ...spec(10), connection: first.connection }, 'new_target', false, info.counts);
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.equal(await r(15).dbsize(), 2);
    } finally {
      await first.cleanup();
      await first.cleanup();
      await second.cleanup();
    }
    assert.equal(await r(15).dbsize(), 0);

    // A resource of several databases borrows as many; options.databases does not steer a new target.
    const many = spec(10, { databases: [10, 11] });
    await r(11).set('c', '3');
    const multi = await dumpBytes(many);
    const scratch = await redisEngine.scratchTarget(many, workDir());
    try {
      assert.equal(scratch.connection, url(15, '?databases=15,14'));
      const report = await restoreBytes(multi.bytes, { ...many, connection: scratch.connection }, 'new_target', false, multi.info.counts);
      assert.deepEqual(compareCounts(multi.info.counts, report.counts), []);
      assert.equal(await r(14).get('a'), '1');
      assert.equal(await r(15).get('c'), '3');
      assert.equal(await r(10).dbsize(), 2);
    } finally {
      await scratch.cleanup();
    }
    assert.equal((await r(14).dbsize()) + (await r(15).dbsize()), 0);
  });

  describe('glob matching agrees with SCAN MATCH of the server', () => {
    const keys: Buffer[] = [
      '', 'a', 'ab', 'abc', 'abd', 'acd', 'aed', 'aXd', 'a*', 'a\\', 'a]b', 'a-b', 'a[b', 'ac', 'user:1:name', 'user::name', 'user:1:mail',
      '*', '[', ']', '^', '-', '\\', 'abcabc', 'axxbyyc', 'é', 'naïve', 'x:y:z',
    ].map(b);
    keys.push(Buffer.from([0]), Buffer.from([0xff]), Buffer.from([0x80, 0x61]), Buffer.from([0x61, 0x00, 0x62]), Buffer.from([0x7f]), Buffer.from([0x41, 0xc3]));
    const patterns: Buffer[] = [
      '*', '', 'a*', '*a', '?', '??', '???', 'a?', 'a[bc]d', 'a[^bc]d', 'a[b-d]*', 'a[d-b]*', '[a-', 'a[', 'a[bc', 'a\\*', 'a\\', '\\a', '*\\*',
      'a[\\]]b', 'a[]]', 'a[]', '[]]', '[^]]', '**a**', 'user:*:name', 'a*b*c', '[\\', '[a-]*', '[-a]*', '*[', '*]', '[*]', '[?]', '\\', '[^a]',
      '*:*', 'na*ve', '[^\\-]',
    ].map(b);
    // Ranges over bytes >= 0x80: the server compares them as signed chars.
    patterns.push(Buffer.from('[\x00-\x7f]*', 'latin1'), Buffer.from([0x5b, 0x80, 0x2d, 0xff, 0x5d, 0x2a]), Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]));
    patterns.push(Buffer.from([0x5b, 0x00, 0x2d, 0x80, 0x5d]), Buffer.from([0x2a, 0x00, 0x2a]), Buffer.from([0x5b, 0x5e, 0xff, 0x5d]));

    it('for every pattern and key', async () => {
      await flushTestDbs();
      for (const k of keys) await r(10).set(k, '1');
      for (const p of patterns) {
        const server = new Set<string>();
        let cursor = '0';
        do {
          const [next, found] = (await r(10).callBuffer('SCAN', cursor, 'MATCH', p, 'COUNT', 1000)) as [Buffer, Buffer[]];
          cursor = next.toString();
          for (const k of found) server.add(hex(k));
        } while (cursor !== '0');
        const ours = new Set(keys.filter((k) => redisGlobMatch(p, k)).map(hex));
        assert.deepEqual([...ours].sort(), [...server].sort(), `pattern ${hex(p)} (${JSON.stringify(p.toString('latin1'))})`);
      }
    });
  });
});
