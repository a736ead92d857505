import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import tarStream from 'tar-stream';
import { BLOCK, paddingFor, splitUstarPath, ustarHeader } from './ustar.ts';

/** Decodes the first header of buf with tar-stream's parser. */
async function firstHeader(buf: Buffer): Promise<tarStream.Header> {
  const extract = tarStream.extract();
  const got = new Promise<tarStream.Header>((resolve, reject) => {
    extract.on('entry', (header) => {
      resolve(header);
      extract.destroy();
    });
    extract.on('error', reject);
  });
  extract.write(buf);
  return got;
}

async function gnuList(buf: Buffer): Promise<{ stdout: string; status: number | null }> {
  const dir = await mkdtemp(join(tmpdir(), 'backvault-ustar-'));
  try {
    await writeFile(join(dir, 'x.tar'), buf);
    const r = spawnSync('tar', ['--numeric-owner', '-tvf', join(dir, 'x.tar')], { encoding: 'utf8', env: { ...process.env, TZ: 'UTC' } });
    return { stdout: r.stdout, status: r.status };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function archiveOf(path: string, data: Buffer, mtime = 1714979289): Buffer {
  return Buffer.concat([ustarHeader({ path, size: data.length, mtime }), data, Buffer.alloc(paddingFor(data.length)), Buffer.alloc(2 * BLOCK)]);
}

describe('ustar header', () => {
  it('is read back by tar-stream with the fields written', async () => {
    const h = await firstHeader(archiveOf('resources/db/db.sqlite.zst', Buffer.from('hello')));
    assert.equal(h.name, 'resources/db/db.sqlite.zst');
    assert.equal(h.size, 5);
    assert.equal(h.mode, 0o644);
    assert.equal(h.uid, 0);
    assert.equal(h.gid, 0);
    assert.equal(h.type, 'file');
    assert.equal(h.mtime.toISOString(), '2024-05-06T07:08:09.000Z');
    assert.equal(h.uname, '');
  });

  it('is read by GNU tar', async () => {
    const { stdout, status } = await gnuList(archiveOf('manifest.json', Buffer.from('{}')));
    assert.equal(status, 0);
    assert.match(stdout, /^-rw-r--r-- 0\/0 +2 2024-05-06 07:08 manifest\.json\n$/);
  });

  it('puts long paths into the prefix field', async () => {
    const path = `resources/${'a'.repeat(63)}/${'b'.repeat(63)}`;
    assert.deepEqual(splitUstarPath(path), { prefix: `resources/${'a'.repeat(63)}`, name: 'b'.repeat(63) });
    const buf = archiveOf(path, Buffer.from('x'));
    assert.equal((await firstHeader(buf)).name, path);
    const { stdout, status } = await gnuList(buf);
    assert.equal(status, 0);
    assert.ok(stdout.trim().endsWith(` ${path}`), stdout);
  });

  it('encodes sizes over 8 GiB in base-256', async () => {
    const size = 10 * 1024 ** 3 + 3;
    const header = ustarHeader({ path: 'resources/big/db.zst', size, mtime: 0 });
    assert.equal(header[124], 0x80);
    assert.equal((await firstHeader(header)).size, size);
    // GNU tar lists the entry, then fails on the missing data: the size is what matters.
    const { stdout } = await gnuList(header);
    assert.match(stdout, new RegExp(` ${size} `));
    assert.equal(ustarHeader({ path: 'a', size: 0o77777777777, mtime: 0 }).subarray(124, 136).toString('latin1'), '77777777777\0');
  });

  it('refuses paths it cannot encode safely', () => {
    for (const bad of ['', '/abs', 'a/../b', 'a//b', 'ünicode', 'sp ace', 'x'.repeat(101), `${'p'.repeat(156)}/name`]) {
      assert.throws(() => ustarHeader({ path: bad, size: 0, mtime: 0 }), /ustar:/, bad);
    }
  });

  it('pads to whole blocks', () => {
    assert.deepEqual([0, 1, 511, 512, 513, 1024].map(paddingFor), [0, 511, 1, 0, 511, 0]);
  });
});
