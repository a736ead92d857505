import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import { isErrorCode } from '../errors/index.ts';
import { compressor } from '../platform/streams.ts';
import type { ManifestResource } from '../domain/manifest.ts';
import { exchangeArchiveSize, writeExchangeArchive, type OpenArtifact } from './writer.ts';
import { collect, makeBackup, type ArtifactSpec } from './testkit.ts';

const pad512 = (n: number): number => Math.ceil(n / 512) * 512;

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, TZ: 'UTC' } });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

async function zstdOf(data: Buffer): Promise<Buffer> {
  return collect(Readable.from([data]).pipe(compressor('zstd')));
}

describe('exchange archive writer', () => {
  it('is listed and extracted by GNU tar, byte-exact, restorable with zstd and sha256sum', async () => {
    const raw = Buffer.from('CREATE TABLE t(x);\n'.repeat(5000));
    const specs: ArtifactSpec[] = [
      { name: 'empty', size: 0 },
      { name: 'r511', size: 511 },
      { name: 'r512', size: 512 },
      { name: 'r513', size: 513 },
      { name: 'big', size: 3 * 1024 * 1024 + 7, compression: 'none' },
      { name: 'sql', data: await zstdOf(raw), rawSize: raw.length },
    ];
    const b = await makeBackup(specs);
    try {
      const file = join(b.dir, 'backup.tar');
      await pipeline(writeExchangeArchive(b.manifestBytes, b.manifest, b.open), createWriteStream(file));
      assert.equal((await readFile(file)).length, exchangeArchiveSize(b.manifestBytes, b.manifest));

      const lines = run('tar', ['--numeric-owner', '-tvf', file], b.dir).trim().split('\n');
      const expected = [
        ['manifest.json', b.manifestBytes.length],
        ...b.manifest.resources.map((r) => [`resources/${r.name}/${r.artifact}`, r.size]),
      ];
      assert.equal(lines.length, expected.length);
      for (const [i, line] of lines.entries()) {
        const [name, size] = expected[i]!;
        assert.match(line, new RegExp(`^-rw-r--r-- 0/0 +${size} 2024-05-06 07:08 ${String(name).replace(/\./g, '\\.')}$`));
      }

      const out = join(b.dir, 'out');
      await mkdir(out);
      run('tar', ['-xf', file], out);
      assert.deepEqual(await readFile(join(out, 'manifest.json')), b.manifestBytes);
      for (const r of b.manifest.resources) {
        assert.deepEqual(await readFile(join(out, 'resources', r.name, r.artifact)), b.artifacts.get(r.name), r.name);
      }
      // What a user without Backvault does: check, then decompress.
      const sums = b.manifest.resources.map((r) => `${r.sha256}  resources/${r.name}/${r.artifact}\n`).join('');
      await writeFile(join(out, 'SHA256SUMS'), sums);
      run('sha256sum', ['-c', '--quiet', 'SHA256SUMS'], out);
      run('zstd', ['-d', '-q', 'resources/sql/db.sqlite.zst', '-o', 'sql.txt'], out);
      assert.deepEqual(await readFile(join(out, 'sql.txt')), raw);
    } finally {
      await b.cleanup();
    }
  });

  it('knows its exact size without reading artifacts', async () => {
    const cases: { sizes: number[]; manifestLength?: number }[] = [
      { sizes: [] },
      { sizes: [0] },
      { sizes: [1] },
      { sizes: [511] },
      { sizes: [512] },
      { sizes: [513] },
      { sizes: [0, 512, 513, 1024] },
      { sizes: [5 * 1024 * 1024 + 1] },
      { sizes: [10], manifestLength: 767 },
      { sizes: [10], manifestLength: 768 },
      { sizes: [10], manifestLength: 769 },
    ];
    for (const c of cases) {
      const b = await makeBackup(c.sizes.map((size, i) => ({ name: `r${i}`, size })), c.manifestLength);
      try {
        const expected = 512 + pad512(b.manifestBytes.length) + c.sizes.reduce((n, s) => n + 512 + pad512(s), 0) + 1024;
        const size = exchangeArchiveSize(b.manifestBytes, b.manifest);
        assert.equal(size, expected, JSON.stringify(c));
        const bytes = await collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open));
        assert.equal(bytes.length, size, JSON.stringify(c));
        if (c.manifestLength) assert.equal(b.manifestBytes.length, c.manifestLength);
      } finally {
        await b.cleanup();
      }
    }
  });

  it('is deterministic', async () => {
    const b = await makeBackup([{ name: 'a', size: 1000 }, { name: 'b', size: 70_000 }]);
    try {
      const one = await collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open));
      const two = await collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open));
      assert.ok(one.equals(two));
    } finally {
      await b.cleanup();
    }
  });

  it('produces exactly the requested byte range, opening only what it needs', async () => {
    const sizes = [0, 511, 512, 513, 70_000, 1024 * 1024 + 3];
    const b = await makeBackup(sizes.map((size, i) => ({ name: `r${i}`, size })));
    try {
      const full = await collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open));
      const total = full.length;
      // Where headers, data and padding start and end, computed independently of the writer.
      const bounds: number[] = [0, 512];
      let pos = 512 + b.manifestBytes.length;
      bounds.push(pos, pad512(pos));
      pos = pad512(pos);
      const dataStart = new Map<string, number>();
      for (const r of b.manifest.resources) {
        bounds.push(pos, pos + 512);
        dataStart.set(r.name, pos + 512);
        pos += 512 + r.size;
        bounds.push(pos, pad512(pos));
        pos = pad512(pos);
      }
      bounds.push(pos, pos + 512, total - 1);
      assert.equal(pos + 1024, total);

      const ranges: [number, number][] = [[0, total - 1], [total - 1, total - 1]];
      for (const x of bounds) {
        for (const d1 of [-1, 0, 1]) {
          for (const d2 of [-1, 0, 1, 700]) {
            const s = x + d1;
            const e = x + d2;
            if (s >= 0 && e >= s && e < total) ranges.push([s, e]);
          }
        }
      }
      let seed = 12345;
      const rand = (n: number): number => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      for (let i = 0; i < 300; i++) {
        const s = rand(total);
        const e = Math.min(total - 1, s + (i % 3 === 0 ? rand(total) : rand(4096)));
        ranges.push([s, e]);
      }
      for (const [start, end] of ranges) {
        const got = await collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open, { start, end }));
        assert.ok(got.equals(full.subarray(start, end + 1)), `range ${start}-${end}`);
      }

      // Which artifacts, and which of their bytes, a range makes it open.
      const calls: [string, { start: number; end?: number } | undefined][] = [];
      const recording: OpenArtifact = (r, range) => {
        calls.push([r.name, range]);
        return b.open(r, range);
      };
      const bigStart = dataStart.get('r5')!;
      await collect(writeExchangeArchive(b.manifestBytes, b.manifest, recording, { start: bigStart + 100, end: bigStart + 200_000 }));
      assert.deepEqual(calls, [['r5', { start: 100, end: 200_000 }]]);
      calls.length = 0;
      await collect(writeExchangeArchive(b.manifestBytes, b.manifest, recording, { start: 0, end: dataStart.get('r1')! - 1 }));
      assert.deepEqual(calls, [], 'headers and the manifest need no artifact');
      calls.length = 0;
      const r3 = dataStart.get('r3')!;
      await collect(writeExchangeArchive(b.manifestBytes, b.manifest, recording, { start: r3 - 1, end: r3 + 513 }));
      assert.deepEqual(calls, [['r3', undefined]], 'a whole artifact is opened without a range');
      calls.length = 0;
      await collect(writeExchangeArchive(b.manifestBytes, b.manifest, recording, { start: r3 + 10, end: total - 1 }));
      assert.deepEqual(calls, [['r3', { start: 10, end: 512 }], ['r4', undefined], ['r5', undefined]]);
    } finally {
      await b.cleanup();
    }
  });

  it('refuses a range outside the archive', async () => {
    const b = await makeBackup([{ name: 'a', size: 10 }]);
    try {
      const size = exchangeArchiveSize(b.manifestBytes, b.manifest);
      for (const range of [{ start: -1, end: 3 }, { start: 5, end: 4 }, { start: 0, end: size }, { start: size, end: size }]) {
        assert.throws(() => writeExchangeArchive(b.manifestBytes, b.manifest, b.open, range), RangeError);
      }
    } finally {
      await b.cleanup();
    }
  });

  it('fails the stream when an artifact in storage differs from the manifest', async () => {
    const b = await makeBackup([{ name: 'a', size: 5000 }, { name: 'b', size: 100 }]);
    try {
      const data = b.artifacts.get('a')!;
      const serve = (bytes: Buffer): OpenArtifact => async (r: ManifestResource, range) => {
        if (r.name !== 'a') return b.open(r, range);
        return Readable.from([range ? bytes.subarray(range.start, (range.end ?? bytes.length - 1) + 1) : bytes]);
      };
      const flipped = Buffer.from(data);
      flipped[4000] = flipped[4000]! ^ 1;
      const cases: [string, Buffer][] = [
        ['flipped', flipped],
        ['shorter', data.subarray(0, 4999)],
        ['longer', Buffer.concat([data, randomBytes(10)])],
      ];
      for (const [what, bytes] of cases) {
        await assert.rejects(collect(writeExchangeArchive(b.manifestBytes, b.manifest, serve(bytes))), (err) => isErrorCode(err, 'checksum_mismatch'), what);
      }
      // A storage error (the artifact is gone) reaches the reader of the stream.
      await b.storage.delete(`backups/${b.manifest.backup_id}/resources/b/db.sqlite.zst`);
      await assert.rejects(collect(writeExchangeArchive(b.manifestBytes, b.manifest, b.open)), (err) => isErrorCode(err, 'storage_not_found'));
    } finally {
      await b.cleanup();
    }
  });

  it('stops reading storage at once when the consumer goes away, even from a stalled read', async () => {
    const b = await makeBackup([{ name: 'a', size: 4 * 1024 * 1024 }]);
    try {
      // Storage that sends one chunk and then stalls, like a hung network read.
      let opened: Readable | undefined;
      const open: OpenArtifact = async () => {
        let sent = false;
        opened = new Readable({
          read() {
            if (!sent) this.push(Buffer.alloc(1000));
            sent = true;
          },
        });
        return opened;
      };
      const stream = writeExchangeArchive(b.manifestBytes, b.manifest, open);
      const closed = new Promise((resolve) => stream.once('close', resolve));
      let got = 0;
      for await (const chunk of stream) {
        got += (chunk as Buffer).length;
        if (got > 512 + b.manifestBytes.length + 1000) break;
      }
      await closed;
      assert.ok(opened?.destroyed, 'the artifact stream is closed');
    } finally {
      await b.cleanup();
    }
  });
});
