// The contract every Storage backend passes: each backend's test file calls
// runStorageContract with a factory for a fresh, empty store.
//
// Semantics pinned here beyond the interface's comments:
// - list(prefix) matches prefix as a plain string prefix of keys: "a/b" lists
//   "a/b-x", "a/b/1" and "a/bc/3"; pass "a/b/" for the keys under "a/b".
//   Order is lexical by UTF-8 bytes (S3's order).
// - get's range end past the last byte is clamped; a start at or past the end
//   of the object rejects.
// - put rejects with the body's own error when the body fails, so a caller
//   sees the root cause (e.g. checksum_mismatch from a verifier).
import assert from 'node:assert/strict';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { AppError, isErrorCode } from '../errors/index.ts';
import { HashCounter } from '../platform/streams.ts';
import type { Storage, StoredObject } from './storage.ts';

export interface StorageFixture {
  storage: Storage;
  cleanup(): Promise<void>;
}

/** A deterministic pseudo-random stream of size bytes (AES-CTR keystream), generated as it is read. */
export function generatedStream(size: number, seed = 1): Readable {
  const key = createHash('sha256').update(`seed ${seed}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const block = Buffer.alloc(1024 * 1024);
  let left = size;
  return new Readable({
    read() {
      if (left === 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, block.length);
      left -= n;
      this.push(cipher.update(block.subarray(0, n)));
    },
  });
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function sha256Of(stream: Readable): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}

async function listKeys(storage: Storage, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const obj of storage.list(prefix)) keys.push(obj.key);
  return keys;
}

async function listAll(storage: Storage, prefix: string): Promise<StoredObject[]> {
  const out: StoredObject[] = [];
  for await (const obj of storage.list(prefix)) out.push(obj);
  return out;
}

/** Sends before bytes, then fails with err. */
function failingBody(before: number, err: Error): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (!sent) {
        sent = true;
        this.push(randomBytes(before));
      } else {
        setImmediate(() => this.destroy(err));
      }
    },
  });
}

export function runStorageContract(name: string, make: () => Promise<StorageFixture>): void {
  // Each test gets its own empty store.
  const withStorage = (fn: (s: Storage) => Promise<void>) => async () => {
    const { storage, cleanup } = await make();
    try {
      await fn(storage);
    } finally {
      await cleanup();
    }
  };

  describe(`storage contract: ${name}`, () => {
    it('round trips an empty object', withStorage(async (s) => {
      assert.deepEqual(await s.put('x/empty', Readable.from([])), { size: 0 });
      assert.equal((await readAll(await s.get('x/empty'))).length, 0);
      assert.equal((await s.stat('x/empty'))?.size, 0);
      assert.deepEqual(
        (await listAll(s, 'x/')).map((o) => [o.key, o.size]),
        [['x/empty', 0]],
      );
    }));

    it('round trips a small object and reports its stat', withStorage(async (s) => {
      const before = Date.now();
      assert.deepEqual(await s.put('backups/b1/manifest.json', Readable.from([Buffer.from('{"a":'), Buffer.from('1}')])), { size: 7 });
      assert.equal((await readAll(await s.get('backups/b1/manifest.json'))).toString(), '{"a":1}');
      const st = await s.stat('backups/b1/manifest.json');
      assert.ok(st);
      assert.equal(st.key, 'backups/b1/manifest.json');
      assert.equal(st.size, 7);
      assert.ok(st.modified instanceof Date);
      assert.ok(Math.abs(st.modified.getTime() - before) < 60_000, 'modified is about now');
      assert.equal(await s.stat('backups/b1/nothing'), null);
      assert.equal(await s.stat('backups/b1'), null, 'a key prefix is not an object');
    }));

    it('round trips a 64 MiB stream without changing a byte', { timeout: 300_000 }, withStorage(async (s) => {
      const size = 64 * 1024 * 1024;
      const counter = new HashCounter();
      const body = generatedStream(size, 7).pipe(counter);
      assert.deepEqual(await s.put('big/blob.zst', body), { size });
      assert.equal(counter.bytes, size);
      assert.deepEqual(await sha256Of(await s.get('big/blob.zst')), { sha256: counter.sha256, size });
      assert.equal((await s.stat('big/blob.zst'))?.size, size);
    }));

    it('overwrites an object whole', withStorage(async (s) => {
      await s.put('k/v', Readable.from([Buffer.from('the first, longer version')]));
      await s.put('k/v', Readable.from([Buffer.from('second')]));
      assert.equal((await readAll(await s.get('k/v'))).toString(), 'second');
      assert.equal((await s.stat('k/v'))?.size, 6);
      assert.deepEqual(await listKeys(s, ''), ['k/v']);
    }));

    it('reads byte ranges', withStorage(async (s) => {
      const data = randomBytes(1000);
      await s.put('r/obj', Readable.from([data]));
      const range = async (start: number, end?: number) =>
        readAll(await s.get('r/obj', end === undefined ? { start } : { start, end }));
      assert.deepEqual(await range(0), data);
      assert.deepEqual(await range(10), data.subarray(10));
      assert.deepEqual(await range(10, 19), data.subarray(10, 20));
      assert.deepEqual(await range(0, 0), data.subarray(0, 1));
      assert.deepEqual(await range(999, 999), data.subarray(999));
      assert.deepEqual(await range(999), data.subarray(999));
      assert.deepEqual(await range(990, 5000), data.subarray(990), 'an end past the last byte is clamped');
      await assert.rejects(s.get('r/obj', { start: 1000 }), 'a start past the end rejects');
      await assert.rejects(
        s.get('r/missing', { start: 0, end: 1 }),
        (err) => isErrorCode(err, 'storage_not_found'),
      );
    }));

    it('lists by string prefix in lexical order', withStorage(async (s) => {
      const keys = ['b', 'a/c', 'a/bc/3', 'a/b/2', 'a/b/1', 'a/b-x', 'a.txt'];
      for (const [i, key] of keys.entries()) await s.put(key, Readable.from([Buffer.alloc(i + 1, 1)]));
      assert.deepEqual(await listKeys(s, ''), ['a.txt', 'a/b-x', 'a/b/1', 'a/b/2', 'a/bc/3', 'a/c', 'b']);
      assert.deepEqual(await listKeys(s, 'a/b'), ['a/b-x', 'a/b/1', 'a/b/2', 'a/bc/3']);
      assert.deepEqual(await listKeys(s, 'a/b/'), ['a/b/1', 'a/b/2']);
      assert.deepEqual(await listKeys(s, 'a/b/1'), ['a/b/1']);
      assert.deepEqual(await listKeys(s, 'a/'), ['a/b-x', 'a/b/1', 'a/b/2', 'a/bc/3', 'a/c']);
      assert.deepEqual(await listKeys(s, 'a'), ['a.txt', 'a/b-x', 'a/b/1', 'a/b/2', 'a/bc/3', 'a/c']);
      assert.deepEqual(await listKeys(s, 'nothing/'), []);
      assert.deepEqual(await listKeys(s, 'a/x'), []);
      const sized = await listAll(s, 'a/b/');
      assert.deepEqual(sized.map((o) => o.size), [5, 4]);
      assert.ok(sized.every((o) => o.modified instanceof Date));
    }));

    it('deletes idempotently and only the key named', withStorage(async (s) => {
      await s.put('d/1', Readable.from([Buffer.from('one')]));
      await s.put('d/2', Readable.from([Buffer.from('two')]));
      await s.delete('d/1');
      assert.equal(await s.stat('d/1'), null);
      await assert.rejects(s.get('d/1'), (err) => isErrorCode(err, 'storage_not_found'));
      await s.delete('d/1');
      await s.delete('never/existed');
      assert.deepEqual(await listKeys(s, ''), ['d/2']);
      await s.delete('d/2');
      assert.deepEqual(await listKeys(s, ''), []);
      await s.put('d/1', Readable.from([Buffer.from('again')]));
      assert.equal((await readAll(await s.get('d/1'))).toString(), 'again');
    }));

    it('rejects get of a missing key with storage_not_found', withStorage(async (s) => {
      await assert.rejects(s.get('no/such/key'), (err) => {
        assert.ok(err instanceof AppError);
        assert.equal(err.code, 'storage_not_found');
        return true;
      });
    }));

    it('a body that errors midway leaves nothing visible and an older object intact', withStorage(async (s) => {
      const boom = new AppError('checksum_mismatch', 'test body failed');
      await assert.rejects(s.put('f/new', failingBody(256 * 1024, boom)), (err) => err === boom);
      assert.equal(await s.stat('f/new'), null);
      await assert.rejects(s.get('f/new'), (err) => isErrorCode(err, 'storage_not_found'));
      assert.deepEqual(await listKeys(s, ''), []);

      await s.put('f/old', Readable.from([Buffer.from('old contents')]));
      await assert.rejects(s.put('f/old', failingBody(3 * 1024 * 1024, new Error('disk source gone'))));
      assert.equal((await readAll(await s.get('f/old'))).toString(), 'old contents');
      assert.deepEqual(await listKeys(s, ''), ['f/old']);
    }));

    it('an aborted put rejects and leaves nothing visible', withStorage(async (s) => {
      // Aborts once the store has taken the first chunk and asks for more.
      const stalling = (controller: AbortController): Readable => {
        let sent = false;
        return new Readable({
          read() {
            if (!sent) {
              sent = true;
              this.push(randomBytes(512 * 1024));
            } else {
              controller.abort();
            }
          },
        });
      };
      const c1 = new AbortController();
      await assert.rejects(s.put('a/new', stalling(c1), { signal: c1.signal }));
      assert.equal(await s.stat('a/new'), null);
      assert.deepEqual(await listKeys(s, ''), []);

      await s.put('a/old', Readable.from([Buffer.from('kept')]));
      const c2 = new AbortController();
      await assert.rejects(s.put('a/old', stalling(c2), { signal: c2.signal }));
      assert.equal((await readAll(await s.get('a/old'))).toString(), 'kept');

      const c3 = new AbortController();
      c3.abort();
      await assert.rejects(s.put('a/pre', Readable.from([Buffer.from('x')]), { signal: c3.signal }));
      assert.deepEqual(await listKeys(s, ''), ['a/old']);
    }));

    it('concurrent puts to one key leave one whole version', withStorage(async (s) => {
      const a = Buffer.alloc(2 * 1024 * 1024, 0x61);
      const b = Buffer.alloc(1024 * 1024, 0x62);
      await Promise.all([s.put('c/k', Readable.from([a])), s.put('c/k', Readable.from([b]))]);
      const got = await readAll(await s.get('c/k'));
      assert.ok(got.equals(a) || got.equals(b));
      assert.deepEqual(await listKeys(s, ''), ['c/k']);
    }));

    it('rejects unsafe keys', withStorage(async (s) => {
      for (const key of ['../x', '/abs', 'a//b', '', 'a/../b', './a', 'a/', 'a\\b']) {
        await assert.rejects(s.put(key, Readable.from([Buffer.from('x')])), `put ${key}`);
        await assert.rejects(s.get(key), `get ${key}`);
        await assert.rejects(s.stat(key), `stat ${key}`);
        await assert.rejects(s.delete(key), `delete ${key}`);
      }
      await assert.rejects(listKeys(s, '../'), 'list ../');
      assert.deepEqual(await listKeys(s, ''), []);
    }));
  });
}
