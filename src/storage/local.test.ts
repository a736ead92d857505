import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { runStorageContract, readAll } from './contract.ts';
import { LocalStorage } from './local.ts';

async function tempRoot(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'backvault-local-'));
}

runStorageContract('local', async () => {
  const dir = await tempRoot();
  const storage = new LocalStorage(join(dir, 'storage'));
  return {
    storage,
    async cleanup() {
      // Every contract test must leave no temp file behind.
      assert.deepEqual(await readdir(join(dir, 'storage', '.tmp')), []);
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe('LocalStorage', () => {
  const withDir = (fn: (dir: string) => Promise<void>) => async () => {
    const dir = await tempRoot();
    try {
      await fn(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };

  it('creates its root and .tmp', withDir(async (dir) => {
    const root = join(dir, 'a', 'b');
    const s = new LocalStorage(root);
    assert.ok((await stat(join(root, '.tmp'))).isDirectory());
    assert.equal(s.description, `local:${root}`);
  }));

  it('stores keys as files under the root', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await s.put('backups/x/manifest.json', Readable.from([Buffer.from('{}')]));
    assert.equal((await stat(join(dir, 'backups', 'x', 'manifest.json'))).size, 2);
  }));

  it('leaves no temp file after a failed put', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    const body = new Readable({
      read() {
        this.push(Buffer.alloc(64 * 1024));
        setImmediate(() => this.destroy(new Error('source died')));
      },
    });
    await assert.rejects(s.put('k/v', body), /source died/);
    assert.deepEqual(await readdir(join(dir, '.tmp')), []);
    assert.deepEqual(await readdir(dir), ['.tmp']);
  }));

  it('never lists .tmp, even while a put is running', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    const controller = new AbortController();
    let pulled!: () => void;
    const started = new Promise<void>((resolve) => (pulled = resolve));
    let sent = false;
    const body = new Readable({
      read() {
        if (!sent) {
          sent = true;
          this.push(Buffer.alloc(1024));
        } else pulled();
      },
    });
    const put = s.put('p/k', body, { signal: controller.signal });
    await started;
    assert.equal((await readdir(join(dir, '.tmp'))).length, 1, 'the put writes into .tmp');
    const keys: string[] = [];
    for await (const o of s.list('')) keys.push(o.key);
    assert.deepEqual(keys, []);
    controller.abort();
    await assert.rejects(put, (err: { code?: string }) => err.code === 'cancelled');
    assert.deepEqual(await readdir(join(dir, '.tmp')), []);
  }));

  it('refuses keys inside .tmp', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await assert.rejects(s.put('.tmp/x', Readable.from([Buffer.from('x')])));
    await assert.rejects(s.get('.tmp/x'));
    await assert.rejects(s.delete('.tmp'));
  }));

  it('cleanupTemp removes leftovers of crashed puts and nothing else', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await s.put('keep/me', Readable.from([Buffer.from('data')]));
    await writeFile(join(dir, '.tmp', '0123abcd-me'), 'half written');
    await mkdir(join(dir, '.tmp', 'odd-dir'));
    await writeFile(join(dir, '.tmp', 'odd-dir', 'f'), 'x');
    assert.equal(await s.cleanupTemp(), 2);
    assert.deepEqual(await readdir(join(dir, '.tmp')), []);
    assert.equal((await readAll(await s.get('keep/me'))).toString(), 'data');
    assert.equal(await s.cleanupTemp(), 0);
  }));

  it('delete removes parent directories left empty, never the root', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await s.put('backups/b1/resources/db/db.sqlite.zst', Readable.from([Buffer.from('1')]));
    await s.put('backups/b1/manifest.json', Readable.from([Buffer.from('2')]));
    await s.delete('backups/b1/resources/db/db.sqlite.zst');
    assert.deepEqual(await readdir(join(dir, 'backups', 'b1')), ['manifest.json']);
    await s.delete('backups/b1/manifest.json');
    assert.deepEqual((await readdir(dir)).sort(), ['.tmp']);
  }));

  it('a key that names a directory of other keys is not an object', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await s.put('a/b', Readable.from([Buffer.from('x')]));
    await assert.rejects(s.get('a'), (err: { code?: string }) => err.code === 'storage_not_found');
    assert.equal(await s.stat('a'), null);
    await s.delete('a');
    assert.equal((await readAll(await s.get('a/b'))).toString(), 'x');
  }));

  it('a write failure rejects with storage_failed and leaves nothing', withDir(async (dir) => {
    const s = new LocalStorage(dir);
    await s.put('a', Readable.from([Buffer.from('a file')]));
    // "a" is a file, so "a/b" cannot be created: the local limitation noted in local.ts.
    await assert.rejects(s.put('a/b', Readable.from([Buffer.from('x')])), (err: { code?: string }) => err.code === 'storage_failed');
    assert.deepEqual(await readdir(join(dir, '.tmp')), []);
    await rm(join(dir, '.tmp'), { recursive: true });
    await writeFile(join(dir, '.tmp'), 'not a directory');
    await assert.rejects(s.put('k', Readable.from([Buffer.from('x')])), (err: { code?: string }) => err.code === 'storage_failed');
    assert.equal(await s.stat('k'), null);
  }));
});
