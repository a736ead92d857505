import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { AppError, isErrorCode } from '../errors/index.ts';
import { readAll, runStorageContract } from './contract.ts';
import { LocalStorage } from './local.ts';
import { isRetryableStorageError, storageFailure, withRetries, type RetryOptions } from './retry.ts';
import type { ByteRange, PutOptions, Storage, StoredObject } from './storage.ts';

type Op = 'put' | 'get' | 'stat' | 'list' | 'delete';

/**
 * Test fake: an in-memory Storage that fails on purpose. failNext(op, err)
 * queues errors that the next calls of op throw, one per call (undefined: no
 * failure); the nth failing list throws after failListAfter[n] keys (default 0).
 */
class FlakyMemoryStorage implements Storage {
  readonly description = 'flaky-memory';
  readonly objects = new Map<string, Buffer>();
  readonly calls: Record<Op, number> = { put: 0, get: 0, stat: 0, list: 0, delete: 0 };
  private readonly failures: Record<Op, unknown[]> = { put: [], get: [], stat: [], list: [], delete: [] };
  failListAfter: number[] = [];
  /** put reads the body before failing, as real backends do. */
  putConsumes = true;

  failNext(op: Op, ...errors: unknown[]): void {
    this.failures[op].push(...errors);
  }

  private take(op: Op): unknown {
    this.calls[op]++;
    return this.failures[op].shift();
  }

  async put(key: string, body: Readable, _options?: PutOptions): Promise<{ size: number }> {
    const err = this.take('put');
    if (err !== undefined) {
      if (this.putConsumes) await readAll(body);
      throw err;
    }
    const data = await readAll(body);
    this.objects.set(key, data);
    return { size: data.length };
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const err = this.take('get');
    if (err !== undefined) throw err;
    const data = this.objects.get(key);
    if (!data) throw new AppError('storage_not_found', `no ${key}`);
    return Readable.from([range ? data.subarray(range.start, range.end === undefined ? undefined : range.end + 1) : data]);
  }

  async stat(key: string): Promise<StoredObject | null> {
    const err = this.take('stat');
    if (err !== undefined) throw err;
    const data = this.objects.get(key);
    return data ? { key, size: data.length, modified: new Date(0) } : null;
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    const err = this.take('list');
    const after = err === undefined ? 0 : (this.failListAfter.shift() ?? 0);
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort();
    let n = 0;
    for (const key of keys) {
      if (err !== undefined && n === after) throw err;
      n++;
      yield { key, size: this.objects.get(key)!.length, modified: new Date(0) };
    }
    if (err !== undefined) throw err;
  }

  async delete(key: string): Promise<void> {
    const err = this.take('delete');
    if (err !== undefined) throw err;
    this.objects.delete(key);
  }
}

const transient = (n = 1) => storageFailure(`temporary failure ${n}`, { retryable: true });

function setup(options: RetryOptions = {}) {
  const fake = new FlakyMemoryStorage();
  const delays: number[] = [];
  const storage = withRetries(fake, {
    sleep: async (ms) => {
      delays.push(ms);
    },
    random: () => 0.5,
    ...options,
  });
  return { fake, storage, delays };
}

async function keysOf(storage: Storage, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of storage.list(prefix)) out.push(o.key);
  return out;
}

describe('withRetries', () => {
  it('retries stat, delete and get after transient failures', async () => {
    const { fake, storage, delays } = setup();
    fake.objects.set('a', Buffer.from('abc'));
    fake.failNext('stat', transient(1), transient(2));
    assert.equal((await storage.stat('a'))?.size, 3);
    assert.equal(fake.calls.stat, 3);
    fake.failNext('get', transient());
    assert.equal((await readAll(await storage.get('a', { start: 1 }))).toString(), 'bc');
    assert.equal(fake.calls.get, 2);
    fake.failNext('delete', transient());
    await storage.delete('a');
    assert.equal(fake.calls.delete, 2);
    assert.equal(fake.objects.size, 0);
    assert.equal(delays.length, 4);
  });

  it('backs off exponentially with jitter, capped at maxDelayMs', async () => {
    for (const [random, expected] of [
      [0, [100, 200, 400, 800, 1000, 1000]],
      [0.999999, [200, 400, 800, 1600, 2000, 2000]],
    ] as const) {
      const { fake, storage, delays } = setup({ attempts: 7, baseDelayMs: 200, maxDelayMs: 2000, random: () => random });
      fake.failNext('stat', ...Array.from({ length: 6 }, (_, i) => transient(i)));
      assert.equal(await storage.stat('x'), null);
      assert.deepEqual(delays, expected);
    }
    // Real randomness stays within [half, whole] of the exponential delay.
    const { fake, storage, delays } = setup({ random: Math.random, attempts: 4, baseDelayMs: 100 });
    fake.failNext('stat', transient(), transient(), transient());
    await storage.stat('x');
    for (const [i, d] of delays.entries()) {
      const exp = 100 * 2 ** i;
      assert.ok(d >= exp / 2 && d <= exp, `delay ${d} of try ${i + 2}`);
    }
  });

  it('gives up after the given number of attempts with the last error', async () => {
    const { fake, storage, delays } = setup({ attempts: 3 });
    const last = transient(3);
    fake.failNext('stat', transient(1), transient(2), last, transient(4));
    await assert.rejects(storage.stat('a'), (err) => err === last);
    assert.equal(fake.calls.stat, 3);
    assert.equal(delays.length, 2);
  });

  it('fails at once on errors retrying cannot fix', async () => {
    const permanent: unknown[] = [
      new AppError('storage_not_found', 'gone'),
      new AppError('cancelled', 'stop'),
      storageFailure('access denied', { retryable: false }),
      storageFailure('no such bucket', { retryable: false }),
      new Error('unsafe storage key: "../x"'),
      new RangeError('bad range'),
    ];
    for (const err of permanent) {
      const { fake, storage, delays } = setup();
      fake.failNext('get', err);
      await assert.rejects(storage.get('a'), (e) => e === err);
      assert.equal(fake.calls.get, 1);
      assert.deepEqual(delays, []);
    }
  });

  it('classifies errors by default', () => {
    assert.equal(isRetryableStorageError(transient()), true);
    assert.equal(isRetryableStorageError(new AppError('storage_failed', 'unmarked, e.g. from local storage')), true);
    assert.equal(isRetryableStorageError(storageFailure('denied', { retryable: false })), false);
    assert.equal(isRetryableStorageError(new AppError('storage_not_found')), false);
    assert.equal(isRetryableStorageError(new AppError('cancelled')), false);
    assert.equal(isRetryableStorageError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })), true);
    assert.equal(isRetryableStorageError(new Error('plain')), false);
    // The marks never show in what the API would serialize.
    assert.deepEqual(Object.keys(storageFailure('x', { retryable: true, bodyUntouched: true })).filter((k) => k === 'retryable' || k === 'bodyUntouched'), []);
  });

  it('uses a custom isRetryable', async () => {
    const { fake, storage } = setup({ isRetryable: () => false });
    fake.failNext('stat', transient());
    await assert.rejects(storage.stat('a'));
    assert.equal(fake.calls.stat, 1);
  });

  it('restarts a failed list and yields each key once, in order', async () => {
    const { fake, storage, delays } = setup({ attempts: 2 });
    for (const k of ['p/1', 'p/2', 'p/3', 'p/4', 'q/1']) fake.objects.set(k, Buffer.from(k));
    // Each restart gets further, so progress resets the failure count: two
    // failures with attempts=2 still succeed.
    fake.failListAfter = [1, 3];
    fake.failNext('list', transient(1), transient(2));
    assert.deepEqual(await keysOf(storage, 'p/'), ['p/1', 'p/2', 'p/3', 'p/4']);
    assert.equal(fake.calls.list, 3);
    assert.equal(delays.length, 2);
  });

  it('gives up listing after attempts failures without progress', async () => {
    const { fake, storage } = setup({ attempts: 3 });
    fake.objects.set('a', Buffer.from('a'));
    fake.failNext('list', transient(1), transient(2), transient(3));
    await assert.rejects(keysOf(storage, ''), /temporary failure 3/);
    assert.equal(fake.calls.list, 3);
  });

  it('does not retry a put whose body was consumed', async () => {
    const { fake, storage, delays } = setup();
    fake.failNext('put', transient());
    await assert.rejects(storage.put('k', Readable.from([Buffer.from('data')])), /temporary failure/);
    assert.equal(fake.calls.put, 1);
    assert.deepEqual(delays, []);
    assert.equal(fake.objects.size, 0);
    // Even a backend claiming bodyUntouched is not believed when the body was read.
    fake.failNext('put', storageFailure('lying', { retryable: true, bodyUntouched: true }));
    await assert.rejects(storage.put('k', Readable.from([Buffer.from('data')])), /lying/);
    assert.equal(fake.calls.put, 2);
  });

  it('retries a put when the backend reports the body untouched', async () => {
    const { fake, storage, delays } = setup();
    fake.putConsumes = false;
    fake.failNext('put', storageFailure('not started', { retryable: true, bodyUntouched: true }));
    assert.deepEqual(await storage.put('k', Readable.from([Buffer.from('data')])), { size: 4 });
    assert.equal(fake.calls.put, 2);
    assert.equal(delays.length, 1);
    assert.equal(fake.objects.get('k')?.toString(), 'data');
    // ...but not after the caller aborted.
    const c = new AbortController();
    c.abort();
    fake.failNext('put', storageFailure('not started', { retryable: true, bodyUntouched: true }));
    await assert.rejects(storage.put('k2', Readable.from([Buffer.from('x')]), { signal: c.signal }));
    assert.equal(fake.calls.put, 3);
  });

  it('passes presignGet through only when the backend has it', async () => {
    const { storage } = setup();
    assert.equal(storage.presignGet, undefined);
    const fake = new FlakyMemoryStorage();
    let tries = 0;
    const presigning: Storage = Object.assign(fake, {
      presignGet: async (key: string, s: number) => {
        if (++tries === 1) throw transient();
        return `https://example.test/${key}?e=${s}`;
      },
    });
    const wrapped = withRetries(presigning, { sleep: async () => undefined });
    assert.equal(await wrapped.presignGet?.('a/b', 60), 'https://example.test/a/b?e=60');
    assert.equal(tries, 2);
    assert.equal(wrapped.description, 'flaky-memory');
  });

  it('passes not-found through unchanged', async () => {
    const { storage } = setup();
    await assert.rejects(storage.get('missing'), (err) => isErrorCode(err, 'storage_not_found'));
  });
});

// The wrapper must be transparent: a wrapped backend still passes the contract.
runStorageContract('withRetries(local)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'backvault-retry-'));
  return {
    storage: withRetries(new LocalStorage(join(dir, 'storage')), { sleep: async () => undefined }),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});
