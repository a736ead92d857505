import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import yauzl from 'yauzl';
import { AppError } from '../errors/index.ts';
import { codecPool } from '../platform/codec.ts';
import { exchangeZipSize, writeExchangeZip } from './zip-writer.ts';
import { collect, makeBackup } from './testkit.ts';

function entriesOf(buf: Buffer): Promise<{ name: string; method: number; size: number }[]> {
  return new Promise((resolve, reject) => {
    yauzl.fromBuffer(buf, { lazyEntries: true }, (err, zip) => {
      if (err) return reject(err);
      const out: { name: string; method: number; size: number }[] = [];
      zip.on('entry', (e: yauzl.Entry) => {
        out.push({ name: e.fileName, method: e.compressionMethod, size: e.uncompressedSize });
        zip.readEntry();
      });
      zip.on('end', () => resolve(out));
      zip.on('error', reject);
      zip.readEntry();
    });
  });
}

describe('exchange zip writer', () => {
  it('writes manifest.json first, then stored artifacts, byte-exact for unzip', async () => {
    const b = await makeBackup([{ name: 'db', size: 50_000 }, { name: 'empty', size: 0 }, { name: 'www', size: 4097, compression: 'gzip' }]);
    try {
      const zip = await collect(writeExchangeZip(b.manifestBytes, b.manifest, b.open));
      const entries = await entriesOf(zip);
      assert.deepEqual(
        entries.map((e) => e.name),
        ['manifest.json', ...b.manifest.resources.map((r) => `resources/${r.name}/${r.artifact}`)],
      );
      assert.ok(entries.every((e) => e.method === 0));
      const file = join(b.dir, 'a.zip');
      await writeFile(file, zip);
      execFileSync('unzip', ['-q', file, '-d', join(b.dir, 'out')]);
      assert.deepEqual(await readFile(join(b.dir, 'out', 'manifest.json')), b.manifestBytes);
      for (const r of b.manifest.resources) {
        assert.deepEqual(await readFile(join(b.dir, 'out', 'resources', r.name, r.artifact)), b.artifacts.get(r.name));
      }
    } finally {
      await b.cleanup();
    }
  });

  it('knows its exact size without reading artifacts', async () => {
    for (const specs of [[], [{ name: 'one', size: 1 }], [{ name: 'a', size: 70_000 }, { name: 'b', size: 0 }, { name: 'c', size: 12345 }]]) {
      const b = await makeBackup(specs);
      try {
        let opened = 0;
        const size = exchangeZipSize(b.manifestBytes.length, b.manifest);
        const zip = await collect(
          writeExchangeZip(b.manifestBytes, b.manifest, (r, range) => {
            opened++;
            return b.open(r, range);
          }),
        );
        assert.equal(zip.length, size, `${specs.length} artifacts`);
        assert.equal(opened, specs.length);
      } finally {
        await b.cleanup();
      }
    }
  });

  it('fails the stream when an artifact in storage differs from the manifest', async () => {
    const b = await makeBackup([{ name: 'db', size: 10_000 }]);
    try {
      const damaged = Buffer.from(b.artifacts.get('db')!);
      damaged[5] = damaged[5]! ^ 0xff;
      const out = writeExchangeZip(b.manifestBytes, b.manifest, async () => Readable.from([damaged]));
      await assert.rejects(collect(out), (err: unknown) => err instanceof AppError && err.code === 'checksum_mismatch');
      const short = writeExchangeZip(b.manifestBytes, b.manifest, async () => Readable.from([damaged.subarray(1)]));
      await assert.rejects(collect(short), (err: unknown) => err instanceof AppError && err.code === 'checksum_mismatch');
      const failing = writeExchangeZip(b.manifestBytes, b.manifest, async () => {
        throw new AppError('storage_not_found');
      });
      await assert.rejects(collect(failing), (err: unknown) => err instanceof AppError && err.code === 'storage_not_found');
    } finally {
      await b.cleanup();
    }
  });

  it('closes the open artifact, and its checksum stream in the codec worker, when the consumer goes away', async () => {
    const b = await makeBackup([{ name: 'db', size: 10 }]);
    try {
      const stalled = new PassThrough();
      stalled.write(Buffer.alloc(3));
      let opened!: () => void;
      const wasOpened = new Promise<void>((r) => (opened = r));
      const out = writeExchangeZip(b.manifestBytes, b.manifest, async () => {
        opened();
        return stalled;
      });
      out.resume();
      await wasOpened;
      await new Promise((r) => setImmediate(r));
      out.destroy();
      await new Promise((r) => setImmediate(r));
      assert.ok(stalled.destroyed, 'the artifact stream is closed');
      assert.equal(codecPool.openStreams(), 0, 'no checksum stream is left open in a codec worker');
    } finally {
      await b.cleanup();
    }
  });
});
