import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { isErrorCode } from '../errors/index.ts';
import {
  checkScryptParams,
  formatKeyFile,
  generateKeyFile,
  isKeyExported,
  keySourceOf,
  markKeyExported,
  newScryptParams,
  parseKeyFile,
} from './keys.ts';

const base = { dir: '/data', encryption: false, encryption_key_file: null, encryption_passphrase: null };

describe('master key material', () => {
  it('picks the key source from the settings', () => {
    assert.equal(keySourceOf(base), null);
    assert.deepEqual(keySourceOf({ ...base, encryption: true }), { kind: 'generated', path: '/data/master.key' });
    assert.deepEqual(keySourceOf({ ...base, encryption_key_file: 'k.key' }), { kind: 'key_file', path: resolve('k.key') });
    assert.deepEqual(keySourceOf({ ...base, encryption_passphrase: 'p' }), { kind: 'passphrase', passphrase: 'p' });
    assert.throws(() => keySourceOf({ ...base, encryption_key_file: 'k', encryption_passphrase: 'p' }), (err) => isErrorCode(err, 'encryption_key_invalid'));
  });

  it('reads hex, base64, raw and commented key files, and never quotes a bad one', () => {
    const key = randomBytes(32);
    assert.deepEqual(parseKeyFile(Buffer.from(`${key.toString('hex')}\n`), 'f'), key);
    assert.deepEqual(parseKeyFile(Buffer.from(key.toString('hex').toUpperCase()), 'f'), key);
    assert.deepEqual(parseKeyFile(Buffer.from(`${key.toString('base64')}\n`), 'f'), key);
    assert.deepEqual(parseKeyFile(Buffer.from(formatKeyFile(key, 'abc')), 'f'), key);
    const raw = Buffer.concat([Buffer.from([0]), randomBytes(31)]);
    assert.deepEqual(parseKeyFile(raw, 'f'), raw);
    const short = 'ab'.repeat(31);
    assert.throws(() => parseKeyFile(Buffer.from(short), '/k'), (err) => {
      assert.ok(isErrorCode(err, 'encryption_key_invalid'));
      assert.ok(!err.message.includes(short));
      assert.match(err.message, /\/k does not hold a 256-bit key/);
      return true;
    });
  });

  it('generates a private key file once and records its export by key id', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bv-keys-'));
    try {
      const path = join(dir, 'sub', 'master.key');
      const key = await generateKeyFile(path, () => 'id1');
      assert.equal((await stat(path)).mode & 0o777, 0o600);
      assert.deepEqual(parseKeyFile(await readFile(path), path), key);
      assert.match(await readFile(path, 'utf8'), /^# Backvault master key id1\./);
      await assert.rejects(generateKeyFile(path, () => 'id2'), /never replaced/);
      assert.equal(await isKeyExported(dir, 'id1'), false);
      await markKeyExported(dir, 'id1', 'export', new Date());
      assert.equal(await isKeyExported(dir, 'id1'), true);
      assert.equal(await isKeyExported(dir, 'other'), false, 'an export of another key does not count');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('bounds scrypt parameters read from untrusted places', () => {
    assert.ok(checkScryptParams(newScryptParams()));
    assert.ok(!checkScryptParams({ ...newScryptParams(), log2n: 30 }));
    assert.ok(!checkScryptParams({ ...newScryptParams(), salt: '' }));
    assert.ok(!checkScryptParams(null));
  });
});
