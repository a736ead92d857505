import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { AppError, isErrorCode } from '../errors/index.ts';
import { markKeyExported, type KeySource } from '../platform/keys.ts';
import { readAll, runStorageContract } from './contract.ts';
import {
  decryptExport,
  EncryptedStorage,
  encryptedExportSize,
  encryptExport,
  MASTER_RECORD_KEY,
  openKeyring,
  plainSize,
  readMasterRecord,
  rotateMasterKey,
  sealedSize,
  withEncryption,
} from './encrypted.ts';
import { LocalStorage } from './local.ts';
import type { Storage } from './storage.ts';

const CHUNK = 64 * 1024;
const SEALED = CHUNK + 16;
const HEADER = 48;
/** scrypt at its lowest accepted cost, so export tests stay quick */
const FAST = { scryptLog2N: 14 };

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'bv-enc-'));
}

async function keyFile(dir: string, name = 'master.key'): Promise<KeySource> {
  const path = join(dir, name);
  await writeFile(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return { kind: 'key_file', path };
}

interface Fixture {
  dir: string;
  root: string;
  inner: LocalStorage;
  storage: EncryptedStorage;
  source: KeySource;
  cleanup(): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const dir = await tempDir();
  const root = join(dir, 'storage');
  const inner = new LocalStorage(root);
  const source = await keyFile(dir);
  const storage = new EncryptedStorage(inner, await openKeyring(inner, source));
  return { dir, root, inner, storage, source, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

const withFixture = (fn: (f: Fixture) => Promise<void>) => async () => {
  const f = await fixture();
  try {
    await fn(f);
  } finally {
    await f.cleanup();
  }
};

async function innerKeys(s: Storage, prefix = ''): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of s.list(prefix)) keys.push(o.key);
  return keys;
}

function put(s: Storage, key: string, data: Buffer | string) {
  return s.put(key, Readable.from([Buffer.from(data)]));
}

async function content(s: Storage, key: string): Promise<Buffer> {
  return readAll(await s.get(key));
}

/** Asserts that reading key fails with checksum_mismatch naming it (whether get or the stream fails). */
async function assertDamaged(s: Storage, key: string, pattern: RegExp = /./, range?: { start: number; end?: number }): Promise<void> {
  await assert.rejects(
    (async () => readAll(await s.get(key, range)))(),
    (err) => {
      assert.ok(isErrorCode(err, 'checksum_mismatch'), `expected checksum_mismatch, got ${String(err)}`);
      assert.ok(err.message.includes(key), `the message names ${key}: ${err.message}`);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

runStorageContract('encrypted over local', async () => {
  const f = await fixture();
  return {
    storage: f.storage,
    async cleanup() {
      // Every object below is encrypted; nothing but the wrapper's own objects is plaintext.
      for (const key of await innerKeys(f.inner)) {
        const bytes = await readFile(join(f.root, key));
        if (key.startsWith('encryption/') || key.endsWith('/.key')) continue;
        assert.equal(bytes.subarray(0, 4).toString('latin1'), 'BVEN', `${key} is encrypted`);
      }
      assert.deepEqual(await readdir(join(f.root, '.tmp')), []);
      await f.cleanup();
    },
  };
});

describe('encrypted storage', () => {
  it('computes plaintext sizes from stored sizes and back', () => {
    for (const n of [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5, 10 * CHUNK + 12345]) {
      const stored = sealedSize(n);
      assert.equal(plainSize(stored), n, `size ${n}`);
    }
    assert.equal(sealedSize(0), HEADER + 16);
    assert.equal(plainSize(HEADER + 15), null);
    assert.equal(plainSize(HEADER + SEALED + 16), null, 'a tag-only chunk after a full one is never written');
    assert.equal(plainSize(HEADER + SEALED + 3), null);
  });

  it('stores ciphertext, reports plaintext sizes, and reads any byte range', withFixture(async ({ storage, root }) => {
    const data = randomBytes(3 * CHUNK + 1000);
    assert.deepEqual(await put(storage, 'backups/b1/resources/db/x.zst', data), { size: data.length });
    const raw = await readFile(join(root, 'backups/b1/resources/db/x.zst'));
    assert.equal(raw.length, sealedSize(data.length));
    assert.equal(raw.indexOf(data.subarray(0, 64)), -1, 'the plaintext does not appear in storage');
    assert.equal((await storage.stat('backups/b1/resources/db/x.zst'))?.size, data.length);
    assert.deepEqual(await content(storage, 'backups/b1/resources/db/x.zst'), data);
    const ranges: Array<[number, number | undefined]> = [
      [0, 0], [0, CHUNK - 1], [CHUNK - 1, CHUNK], [CHUNK, 2 * CHUNK - 1], [5, 3 * CHUNK + 10], [3 * CHUNK, undefined],
      [data.length - 1, undefined], [100, data.length + 5000], [2 * CHUNK + 7, 2 * CHUNK + 7],
    ];
    for (let i = 0; i < 20; i++) {
      const start = Math.floor(Math.random() * data.length);
      ranges.push([start, start + Math.floor(Math.random() * 2 * CHUNK)]);
    }
    for (const [start, end] of ranges) {
      const got = await readAll(await storage.get('backups/b1/resources/db/x.zst', end === undefined ? { start } : { start, end }));
      assert.deepEqual(got, data.subarray(start, end === undefined ? undefined : end + 1), `range ${start}-${end}`);
    }
    await assert.rejects(storage.get('backups/b1/resources/db/x.zst', { start: data.length }), RangeError);
  }));

  it('keeps a data key per backup next to it, hidden, and removes it with the last object', withFixture(async ({ storage, inner }) => {
    await put(storage, 'backups/b1/manifest.json', '{}');
    await put(storage, 'backups/b1/resources/r/a.zst', 'aaa');
    await put(storage, 'backups/b2/manifest.json', '{}');
    assert.deepEqual(await innerKeys(inner, 'backups/'), [
      'backups/b1/.key', 'backups/b1/manifest.json', 'backups/b1/resources/r/a.zst', 'backups/b2/.key', 'backups/b2/manifest.json',
    ]);
    assert.deepEqual(await innerKeys(storage, 'backups/'), ['backups/b1/manifest.json', 'backups/b1/resources/r/a.zst', 'backups/b2/manifest.json']);
    assert.deepEqual(await innerKeys(storage, ''), await innerKeys(storage, 'backups/'), 'encryption/ is hidden too');
    const k1 = JSON.parse((await content(inner, 'backups/b1/.key')).toString()) as { key_id: string };
    const k2 = JSON.parse((await content(inner, 'backups/b2/.key')).toString()) as { key_id: string };
    assert.notEqual(k1.key_id, k2.key_id, 'each backup has its own data key');
    await storage.delete('backups/b1/manifest.json');
    assert.ok(await inner.stat('backups/b1/.key'), 'the key stays while an object needs it');
    await storage.delete('backups/b1/resources/r/a.zst');
    assert.deepEqual(await innerKeys(inner, 'backups/'), ['backups/b2/.key', 'backups/b2/manifest.json']);
    // A new backup under a used id gets a new key, and reads fine.
    await put(storage, 'backups/b1/manifest.json', 'again');
    assert.equal((await content(storage, 'backups/b1/manifest.json')).toString(), 'again');
  }));

  it('a failed first write leaves no data key behind', withFixture(async ({ storage, inner }) => {
    const boom = new AppError('checksum_mismatch', 'dump failed');
    const body = new Readable({
      read() {
        this.push(randomBytes(100_000));
        setImmediate(() => this.destroy(boom));
      },
    });
    await assert.rejects(storage.put('backups/b9/resources/r/a.zst', body), (err) => err === boom);
    assert.deepEqual(await innerKeys(inner, 'backups/'), []);
  }));

  it('a body that fails before the data key is ready rejects with its own error', withFixture(async ({ storage, inner }) => {
    const boom = new Error('early');
    const body = new Readable({ read() {} });
    const putting = storage.put('backups/b8/x', body);
    body.destroy(boom);
    await assert.rejects(putting, (err) => err === boom);
    assert.deepEqual(await innerKeys(inner, 'backups/'), []);
  }));

  it('refuses its own reserved keys', withFixture(async ({ storage }) => {
    await put(storage, 'backups/b1/manifest.json', '{}');
    for (const key of ['backups/b1/.key', 'encryption/master.json', 'encryption/store.key']) {
      await assert.rejects(put(storage, key, 'x'), /reserved/);
      await assert.rejects(storage.get(key), /reserved/);
      await assert.rejects(storage.stat(key), /reserved/);
      await assert.rejects(storage.delete(key), /reserved/);
    }
  }));

  describe('tampering with stored files fails with a clear error', () => {
    const key = 'backups/b1/resources/db/x.zst';
    const data = randomBytes(3 * CHUNK + 500);
    const setup = (fn: (f: Fixture, path: string) => Promise<void>) =>
      withFixture(async (f) => {
        await put(f.storage, key, data);
        await put(f.storage, 'backups/b1/manifest.json', '{"m":1}');
        await fn(f, join(f.root, key));
      });

    it('a flipped byte', setup(async ({ storage }, path) => {
      const raw = await readFile(path);
      raw[HEADER + SEALED + 100]! ^= 0x01;
      await writeFile(path, raw);
      await assertDamaged(storage, key, /authentication at chunk 1/);
      await assertDamaged(storage, key, /chunk 1/, { start: CHUNK + 5, end: CHUNK + 10 });
      // Chunks before the damage still read by range: only what is needed is decrypted.
      assert.deepEqual(await readAll(await storage.get(key, { start: 0, end: 99 })), data.subarray(0, 100));
    }));

    it('a flipped header byte', setup(async ({ storage }, path) => {
      const raw = await readFile(path);
      raw[44]! ^= 0x80; // in the nonce prefix
      await writeFile(path, raw);
      await assertDamaged(storage, key, /authentication at chunk 0/);
    }));

    it('truncation at a chunk boundary, inside a chunk, and inside the header', setup(async ({ storage }, path) => {
      await truncate(path, HEADER + 2 * SEALED);
      await assertDamaged(storage, key, /authentication at chunk 1/);
      await truncate(path, HEADER + SEALED + 10);
      await assertDamaged(storage, key);
      await truncate(path, HEADER);
      await assertDamaged(storage, key, /ends early|truncated/);
      await truncate(path, 20);
      await assertDamaged(storage, key, /header/);
    }));

    it('two chunks swapped', setup(async ({ storage }, path) => {
      const raw = await readFile(path);
      const a = Buffer.from(raw.subarray(HEADER, HEADER + SEALED));
      raw.copy(raw, HEADER, HEADER + SEALED, HEADER + 2 * SEALED);
      a.copy(raw, HEADER + SEALED);
      await writeFile(path, raw);
      await assertDamaged(storage, key, /authentication at chunk 0/);
    }));

    it('an appended chunk', setup(async ({ storage }, path) => {
      const raw = await readFile(path);
      await writeFile(path, Buffer.concat([raw, raw.subarray(HEADER, HEADER + SEALED)]));
      await assertDamaged(storage, key);
    }));

    it('an artifact swapped between two backups', setup(async ({ storage, root }, path) => {
      await put(storage, 'backups/b2/resources/db/x.zst', randomBytes(1000));
      await rename(path, join(root, 'x.tmp'));
      await rename(join(root, 'backups/b2/resources/db/x.zst'), path);
      await rename(join(root, 'x.tmp'), join(root, 'backups/b2/resources/db/x.zst'));
      await assertDamaged(storage, key, /encrypted with data key [0-9a-f]+, but backups\/b1 uses [0-9a-f]+: it was copied or moved from another backup/);
      await assertDamaged(storage, 'backups/b2/resources/db/x.zst', /another backup/);
    }));

    it('an object moved to another key in the same backup', setup(async ({ storage, root }, path) => {
      await rename(path, join(root, 'backups/b1/resources/db/y.zst'));
      await assertDamaged(storage, 'backups/b1/resources/db/y.zst', /authentication at chunk 0/);
      await rename(join(root, 'backups/b1/manifest.json'), path);
      await assertDamaged(storage, key, /authentication/);
    }));

    it('a dropped key object', setup(async ({ storage, root }) => {
      await rm(join(root, 'backups/b1/.key'));
      // A fresh wrapper: nothing cached from the writes above.
      const fresh = new EncryptedStorage(new LocalStorage(root), await openKeyring(new LocalStorage(root), (await fixtureSource(root))!));
      await assertDamaged(fresh, key, /data key backups\/b1\/\.key is missing/);
      await assertDamaged(fresh, 'backups/b1/manifest.json', /missing/);
    }));

    it('a whole backup moved under another id, key object included', setup(async ({ storage, root }) => {
      await rename(join(root, 'backups/b1'), join(root, 'backups/b3'));
      const fresh = new EncryptedStorage(new LocalStorage(root), await openKeyring(new LocalStorage(root), (await fixtureSource(root))!));
      await assertDamaged(fresh, 'backups/b3/manifest.json', /data key backups\/b3\/\.key belongs to backups\/b1\/, not backups\/b3\/, so backups\/b3\/manifest.json cannot be decrypted/);
      void storage;
    }));

    it('an object replaced by plaintext', setup(async ({ storage }, path) => {
      await writeFile(path, Buffer.alloc(5000, 0x41));
      await assertDamaged(storage, key, /no Backvault encryption header/);
    }));
  });

  it('refuses a wrong master key at open, and a storage already holding unencrypted backups', async () => {
    const dir = await tempDir();
    try {
      const inner = new LocalStorage(join(dir, 'storage'));
      await openKeyring(inner, await keyFile(dir, 'a.key'));
      const record = await readMasterRecord(inner);
      await assert.rejects(openKeyring(inner, await keyFile(dir, 'b.key')), (err) => {
        assert.ok(isErrorCode(err, 'encryption_key_invalid'));
        assert.match(err.message, new RegExp(`Wrong master key: this storage is encrypted with master key ${record!.master_key_id}, but the key in .*b\\.key is [0-9a-f]{32}`));
        return true;
      });
      const plain = new LocalStorage(join(dir, 'plain'));
      await put(plain, 'backups/old/manifest.json', '{}');
      await assert.rejects(openKeyring(plain, await keyFile(dir, 'c.key')), /already holds unencrypted backups/);
      assert.equal(await readMasterRecord(plain), null);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('derives the master key from a passphrase with the salt kept in storage', async () => {
    const dir = await tempDir();
    try {
      const inner = new LocalStorage(join(dir, 'storage'));
      const a = await openKeyring(inner, { kind: 'passphrase', passphrase: 'correct horse battery staple' });
      const record = await readMasterRecord(inner);
      assert.equal(record?.kdf?.name, 'scrypt');
      assert.equal(record?.master_key_id, a.masterKeyId);
      const s = new EncryptedStorage(inner, a);
      await put(s, 'backups/p/manifest.json', 'hello');
      const b = await openKeyring(inner, { kind: 'passphrase', passphrase: 'correct horse battery staple' });
      assert.equal((await content(new EncryptedStorage(inner, b), 'backups/p/manifest.json')).toString(), 'hello');
      await assert.rejects(openKeyring(inner, { kind: 'passphrase', passphrase: 'wrong horse' }), /Wrong master key/);
      await assert.rejects(openKeyring(inner, await keyFile(dir)), /Wrong master key/);
      const raw = await readFile(join(dir, 'storage', MASTER_RECORD_KEY), 'utf8');
      assert.ok(!raw.includes('horse'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rotation re-wraps data keys only, resumes after a crash, and the new key reads everything', async () => {
    const dir = await tempDir();
    try {
      const root = join(dir, 'storage');
      const inner = new LocalStorage(root);
      const oldKey = await keyFile(dir, 'old.key');
      const s = new EncryptedStorage(inner, await openKeyring(inner, oldKey));
      const written = new Map<string, Buffer>();
      for (const id of ['b1', 'b2', 'b3']) {
        for (const name of ['manifest.json', 'resources/db/x.zst']) {
          const data = randomBytes(70_000 + name.length);
          await put(s, `backups/${id}/${name}`, data);
          written.set(`backups/${id}/${name}`, data);
        }
      }
      await put(s, 'other/thing', 'store-wide');
      const hashes = async () => {
        const out = new Map<string, string>();
        for (const key of await innerKeys(inner)) out.set(key, createHash('sha256').update(await readFile(join(root, key))).digest('hex'));
        return out;
      };
      const before = await hashes();

      // The first run crashes after one key object.
      const newKey = await keyFile(dir, 'new.key');
      let puts = 0;
      const crashing: Storage = {
        description: 'crashing',
        put: (k, b, o) => {
          if (!k.startsWith('encryption/') && ++puts === 2) return Promise.reject(new Error('power cut'));
          return inner.put(k, b, o);
        },
        get: (k, r) => inner.get(k, r),
        stat: (k) => inner.stat(k),
        list: (p) => inner.list(p),
        delete: (k) => inner.delete(k),
      };
      await assert.rejects(rotateMasterKey(crashing, oldKey, newKey), /power cut/);
      await assert.rejects(openKeyring(inner, oldKey), /rotation .* was interrupted/);
      await assert.rejects(rotateMasterKey(inner, oldKey, await keyFile(dir, 'third.key')), /interrupted rotation .* must be finished first/);
      const r = await rotateMasterKey(inner, oldKey, newKey);
      assert.deepEqual([r.rewrapped, r.alreadyDone], [3, 1]);

      const after = await hashes();
      for (const [key, hash] of before) {
        if (key.endsWith('.key') || key.startsWith('encryption/')) assert.notEqual(after.get(key), hash, `${key} was re-wrapped`);
        else assert.equal(after.get(key), hash, `${key} is unchanged`);
      }
      assert.deepEqual([...after.keys()], [...before.keys()]);
      await assert.rejects(openKeyring(inner, oldKey), /Wrong master key/);
      const n = new EncryptedStorage(inner, await openKeyring(inner, newKey));
      for (const [key, data] of written) assert.deepEqual(await content(n, key), data, key);
      assert.equal((await content(n, 'other/thing')).toString(), 'store-wide');

      // And on to a passphrase.
      const r2 = await rotateMasterKey(inner, newKey, { kind: 'passphrase', passphrase: 'a long new passphrase' });
      assert.equal(r2.rewrapped, 4);
      const p = new EncryptedStorage(inner, await openKeyring(inner, { kind: 'passphrase', passphrase: 'a long new passphrase' }));
      assert.deepEqual(await content(p, 'backups/b2/manifest.json'), written.get('backups/b2/manifest.json'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  describe('withEncryption', () => {
    const settings = (dir: string, over: Record<string, unknown> = {}) => ({
      dir, storage: null, encryption: false, encryption_key_file: null, encryption_passphrase: null, ...over,
    });

    it('generates a key (mode 0600) on first start and reuses it', async () => {
      const dir = await tempDir();
      try {
        const inner = new LocalStorage(join(dir, 'storage'));
        const s = await withEncryption(settings(dir, { encryption: true }), inner);
        assert.ok(s instanceof EncryptedStorage);
        const info = await stat(join(dir, 'master.key'));
        assert.equal(info.mode & 0o777, 0o600);
        await put(s, 'backups/g/manifest.json', 'x');
        const again = await withEncryption(settings(dir, { encryption: true }), inner);
        assert.equal((await content(again, 'backups/g/manifest.json')).toString(), 'x');
        // A new data directory on the same storage: no silent new key.
        const other = await tempDir();
        await assert.rejects(withEncryption(settings(other, { encryption: true }), inner), /master\.key does not exist and no key file or passphrase is configured/);
        await assert.rejects(stat(join(other, 'master.key')));
        await rm(other, { recursive: true, force: true });
        // Encryption switched off over an encrypted storage: refused, not read as plaintext.
        await assert.rejects(withEncryption(settings(dir), inner), (err) => isErrorCode(err, 'encryption_key_invalid') && /encryption is not configured/.test(err.message));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('with a generated key and remote storage, refuses writes until the key is exported', async () => {
      const dir = await tempDir();
      try {
        const inner = new LocalStorage(join(dir, 'storage'));
        const s = await withEncryption(settings(dir, { encryption: true, storage: 's3://bucket/prefix' }), inner);
        await assert.rejects(put(s, 'backups/r/manifest.json', 'x'), (err) => isErrorCode(err, 'key_not_exported') && /backvault key export --dir/.test(err.message));
        assert.deepEqual(await innerKeys(inner, 'backups/'), []);
        await markKeyExported(dir, (s as EncryptedStorage).masterKeyId, 'export', new Date());
        await put(s, 'backups/r/manifest.json', 'x');
        // A key file the user gave needs no export.
        const t = await withEncryption(settings(dir, { storage: 's3://bucket/other', encryption_key_file: (await keyFile(dir, 'given.key') as { path: string }).path }), new LocalStorage(join(dir, 's2')));
        await put(t, 'backups/r/manifest.json', 'x');
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });

  describe('encrypted export', () => {
    it('round trips with the computed size', async () => {
      for (const n of [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77]) {
        const data = randomBytes(n);
        const sealed = await readAll(encryptExport(Readable.from([data]), 'pass phrase', FAST));
        assert.equal(sealed.length, encryptedExportSize(n));
        assert.equal(sealed.subarray(0, 4).toString('latin1'), 'BVEX');
        assert.deepEqual(await readAll(decryptExport(Readable.from([sealed]), 'pass phrase')), data);
      }
    });

    it('a wrong passphrase, damage, truncation and a non-archive fail clearly', async () => {
      const data = randomBytes(2 * CHUNK + 10);
      const sealed = await readAll(encryptExport(Readable.from([data]), 'right', FAST));
      await assert.rejects(readAll(decryptExport(Readable.from([sealed]), 'wrong')), (err) => isErrorCode(err, 'invalid_request') && /passphrase does not open/.test(err.message));
      const flipped = Buffer.from(sealed);
      flipped[70 + SEALED]! ^= 1;
      await assert.rejects(readAll(decryptExport(Readable.from([flipped]), 'right')), (err) => isErrorCode(err, 'checksum_mismatch') && /encrypted archive fails authentication at chunk 1/.test(err.message));
      await assert.rejects(readAll(decryptExport(Readable.from([sealed.subarray(0, 64 + 2 * SEALED)]), 'right')), (err) => isErrorCode(err, 'checksum_mismatch'));
      await assert.rejects(readAll(decryptExport(Readable.from([Buffer.from('ustar'.padEnd(600, '\0'))]), 'right')), (err) => isErrorCode(err, 'invalid_archive'));
      assert.throws(() => encryptExport(Readable.from([data]), ''), /empty/);
    });
  });
});

/** The key file fixture() wrote beside a storage root. */
async function fixtureSource(root: string): Promise<KeySource | null> {
  return { kind: 'key_file', path: join(root, '..', 'master.key') };
}
