import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import tarStream from 'tar-stream';
import { AppError, type ErrorCode } from '../errors/index.ts';
import type { ManifestResource } from '../domain/manifest.ts';
import { readExchangeArchive, type ReadArchiveOptions } from './reader.ts';
import { writeExchangeArchive } from './writer.ts';
import { chunked, collect, makeBackup, makeManifest, resourceFor, sha256 } from './testkit.ts';

interface Entry {
  name: string;
  data?: Buffer;
  type?: tarStream.Header['type'];
  linkname?: string;
}

/** Builds a tar with tar-stream's packer, which writes whatever names it is given. */
async function packTar(entries: Entry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const out = collect(pack as unknown as Readable);
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const header: tarStream.Header = {
        name: e.name,
        type: e.type ?? 'file',
        size: e.data?.length ?? 0,
        mode: 0o644,
        mtime: new Date(0),
        linkname: e.linkname ?? '',
        uid: 0,
        gid: 0,
        uname: '',
        gname: '',
        devmajor: 0,
        devminor: 0,
      };
      pack.entry(header, e.data ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  return out;
}

interface Seen {
  name: string;
  sha256?: string;
  error?: unknown;
}

/** An onArtifact that reads each artifact to its end and records what it saw. */
function recorder(): { seen: Seen[]; onArtifact: ReadArchiveOptions['onArtifact'] } {
  const seen: Seen[] = [];
  return {
    seen,
    async onArtifact(resource: ManifestResource, data: Readable) {
      const s: Seen = { name: resource.name };
      seen.push(s);
      try {
        s.sha256 = sha256(await collect(data));
      } catch (err) {
        s.error = err;
        throw err;
      }
    },
  };
}

const LIMITS = { maxManifestBytes: 1024 * 1024, maxTotalBytes: 1024 ** 3 };

/** Two small artifacts and the entries of a valid archive holding them. */
function fixture() {
  const a = randomBytes(3000);
  const b = randomBytes(700);
  const ra = resourceFor({ name: 'alpha' }, a);
  const rb = resourceFor({ name: 'beta', compression: 'gzip' }, b);
  const { manifest, manifestBytes } = makeManifest([ra, rb]);
  const entry = (r: ManifestResource, data: Buffer): Entry => ({ name: `resources/${r.name}/${r.artifact}`, data });
  return {
    manifest,
    manifestBytes,
    ra,
    rb,
    a,
    b,
    manifestEntry: { name: 'manifest.json', data: manifestBytes } as Entry,
    ea: entry(ra, a),
    eb: entry(rb, b),
  };
}

async function expectRefused(
  tar: Buffer | Readable,
  code: ErrorCode,
  opts: { message?: RegExp; seen?: string[]; limits?: Partial<typeof LIMITS>; onArtifact?: ReadArchiveOptions['onArtifact'] } = {},
): Promise<AppError> {
  const input = Buffer.isBuffer(tar) ? chunked(tar) : tar;
  const rec = recorder();
  let caught: unknown;
  try {
    await readExchangeArchive(input, { ...LIMITS, ...opts.limits, onArtifact: opts.onArtifact ?? rec.onArtifact });
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof AppError, `expected AppError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (opts.message) assert.match(caught.message, opts.message);
  if (opts.seen) assert.deepEqual(rec.seen.map((s) => s.name), opts.seen, 'onArtifact calls');
  assert.ok(input.destroyed, 'the input is destroyed');
  return caught;
}

describe('exchange archive reader', () => {
  it('reads what the writer wrote', async () => {
    const b = await makeBackup([{ name: 'empty', size: 0 }, { name: 'db', size: 100_000 }, { name: 'odd', size: 513 }]);
    try {
      const rec = recorder();
      const manifest = await readExchangeArchive(writeExchangeArchive(b.manifestBytes, b.manifest, b.open), { ...LIMITS, onArtifact: rec.onArtifact });
      assert.deepEqual(manifest, b.manifest);
      assert.deepEqual(
        rec.seen,
        b.manifest.resources.map((r) => ({ name: r.name, sha256: r.sha256 })),
      );
    } finally {
      await b.cleanup();
    }
  });

  it('waits for onArtifact before reading on', async () => {
    const f = fixture();
    const tar = await packTar([f.manifestEntry, f.ea, f.eb]);
    const log: string[] = [];
    await readExchangeArchive(chunked(tar), {
      ...LIMITS,
      async onArtifact(r, data) {
        log.push(`start ${r.name}`);
        await collect(data);
        await new Promise((resolve) => setTimeout(resolve, 20));
        log.push(`end ${r.name}`);
      },
    });
    assert.deepEqual(log, ['start alpha', 'end alpha', 'start beta', 'end beta']);
  });

  it('accepts an archive made by GNU tar from a directory, with its directory entries', async () => {
    const b = await makeBackup([{ name: 'db', size: 5000 }, { name: 'files', size: 0, compression: 'none' }]);
    try {
      const src = join(b.dir, 'src');
      for (const r of b.manifest.resources) {
        await mkdir(join(src, 'resources', r.name), { recursive: true });
        await writeFile(join(src, 'resources', r.name, r.artifact), b.artifacts.get(r.name)!);
      }
      await writeFile(join(src, 'manifest.json'), b.manifestBytes);
      for (const [file, args] of [
        ['plain.tar', ['manifest.json', 'resources']],
        ['dotted.tar', ['./manifest.json', './resources']],
        ['posix.tar', ['--format=posix', 'manifest.json', 'resources']],
      ] as const) {
        const r = spawnSync('tar', ['-cf', join(b.dir, file), ...args], { cwd: src });
        assert.equal(r.status, 0, r.stderr.toString());
        const listing = spawnSync('tar', ['-tf', join(b.dir, file)], { encoding: 'utf8' }).stdout;
        assert.match(listing, /resources\/\n/, 'GNU tar wrote directory entries');
        const rec = recorder();
        const manifest = await readExchangeArchive(createReadStream(join(b.dir, file)), { ...LIMITS, onArtifact: rec.onArtifact });
        assert.deepEqual(manifest, b.manifest, file);
        assert.deepEqual(rec.seen.map((s) => [s.name, s.sha256]).sort(), b.manifest.resources.map((r) => [r.name, r.sha256]).sort(), file);
      }
    } finally {
      await b.cleanup();
    }
  });

  it('refuses input that is not a tar', async () => {
    await expectRefused(randomBytes(10_000), 'invalid_archive', { message: /not a tar archive/, seen: [] });
    await expectRefused(Buffer.from('{"format":"backvault/1"}'), 'invalid_archive', { seen: [] });
  });

  it('refuses empty input', async () => {
    await expectRefused(Buffer.alloc(0), 'invalid_archive', { message: /empty/ });
    await expectRefused(Buffer.alloc(1024), 'invalid_archive', { message: /empty/ });
  });

  it('refuses an archive whose first entry is not manifest.json', async () => {
    const f = fixture();
    await expectRefused(await packTar([f.ea, f.manifestEntry, f.eb]), 'invalid_archive', { message: /first entry must be manifest\.json/, seen: [] });
    await expectRefused(await packTar([{ name: 'resources/', type: 'directory' }, f.manifestEntry, f.ea, f.eb]), 'invalid_archive', { seen: [] });
    await expectRefused(await packTar([{ name: 'manifest.json', type: 'directory' }, f.ea]), 'invalid_archive', { seen: [] });
  });

  it('refuses a manifest that is not JSON', async () => {
    const f = fixture();
    await expectRefused(await packTar([{ name: 'manifest.json', data: Buffer.from('{"format": ') }, f.ea]), 'invalid_archive', { message: /not valid JSON/, seen: [] });
  });

  it('refuses a manifest that fails the schema', async () => {
    const f = fixture();
    const bad = { ...f.manifest, format: 'backvault/9' };
    const err = await expectRefused(await packTar([{ name: 'manifest.json', data: Buffer.from(JSON.stringify(bad)) }, f.ea, f.eb]), 'invalid_archive', {
      message: /not a valid Backvault manifest/,
      seen: [],
    });
    assert.ok(Array.isArray(err.details?.problems));
    const twice = { ...f.manifest, resources: [f.ra, f.ra] };
    await expectRefused(await packTar([{ name: 'manifest.json', data: Buffer.from(JSON.stringify(twice)) }, f.ea]), 'invalid_archive', { message: /twice/ });
  });

  it('refuses an oversized manifest', async () => {
    const f = fixture();
    await expectRefused(await packTar([f.manifestEntry, f.ea, f.eb]), 'invalid_archive', { message: /manifest\.json is \d+ bytes, more than/, limits: { maxManifestBytes: 100 }, seen: [] });
  });

  it('refuses paths that escape, naming the entry, before handing anything on', async () => {
    const f = fixture();
    for (const name of ['../evil', '/abs', '/etc/cron.d/x', 'resources/x/../../evil', 'resources/alpha/..', './../evil', '..\\evil']) {
      await expectRefused(await packTar([f.manifestEntry, f.ea, { name, data: Buffer.from('x') }, f.eb]), 'unsafe_path', {
        message: new RegExp(JSON.stringify(name).replace(/[.\\/]/g, (c) => `\\${c}`)),
        seen: ['alpha'],
      });
    }
    // Even in the first position, the unsafe path is what is reported.
    await expectRefused(await packTar([{ name: '../manifest.json', data: f.manifestBytes }]), 'unsafe_path', { seen: [] });
  });

  it('refuses links, devices and fifos', async () => {
    const f = fixture();
    const cases: Entry[] = [
      { name: `resources/beta/${f.rb.artifact}`, type: 'symlink', linkname: '/etc/passwd' },
      { name: `resources/beta/${f.rb.artifact}`, type: 'link', linkname: `resources/alpha/${f.ra.artifact}` },
      { name: 'resources/beta/dev', type: 'character-device' },
      { name: 'resources/beta/blk', type: 'block-device' },
      { name: 'resources/beta/pipe', type: 'fifo' },
    ];
    for (const e of cases) {
      await expectRefused(await packTar([f.manifestEntry, f.ea, e, f.eb]), 'unsafe_path', { message: new RegExp(e.type!), seen: ['alpha'] });
    }
  });

  it('refuses an artifact with a flipped byte as checksum_mismatch, naming the resource', async () => {
    const f = fixture();
    const flipped = Buffer.from(f.a);
    flipped[1234] = flipped[1234]! ^ 0x10;
    const rec = recorder();
    const tar = await packTar([f.manifestEntry, { ...f.ea, data: flipped }, f.eb]);
    const input = chunked(tar);
    await assert.rejects(readExchangeArchive(input, { ...LIMITS, onArtifact: rec.onArtifact }), (err) => {
      assert.ok(err instanceof AppError);
      assert.equal(err.code, 'checksum_mismatch');
      assert.match(err.message, /alpha/);
      return true;
    });
    assert.deepEqual(rec.seen.map((s) => s.name), ['alpha'], 'beta is never handed on');
    assert.ok(rec.seen[0]!.error instanceof AppError, 'the consumer saw its stream fail');
    assert.ok(input.destroyed);
  });

  it('refuses an artifact shorter or longer than its manifest size', async () => {
    const f = fixture();
    for (const data of [f.a.subarray(0, 2999), Buffer.concat([f.a, Buffer.from('x')]), Buffer.alloc(0)]) {
      await expectRefused(await packTar([f.manifestEntry, { ...f.ea, data }, f.eb]), 'checksum_mismatch', { message: /alpha.*3000/, seen: [] });
    }
    for (const data of [f.b.subarray(0, 699), Buffer.concat([f.b, Buffer.alloc(1000)])]) {
      await expectRefused(await packTar([f.manifestEntry, f.ea, { ...f.eb, data }]), 'checksum_mismatch', { message: /beta.*700/, seen: ['alpha'] });
    }
  });

  it('refuses entries the manifest does not list', async () => {
    const f = fixture();
    for (const name of ['notes.txt', 'resources/alpha/other.zst', 'resources/gamma/db.sqlite.zst', 'manifest.json', 'resources//alpha/x', 'resources/alpha']) {
      await expectRefused(await packTar([f.manifestEntry, f.ea, { name, data: Buffer.from('x') }, f.eb]), 'invalid_archive', {
        message: new RegExp(`${JSON.stringify(name).replace(/[.\\/]/g, (c) => `\\${c}`)}.*does not list`),
        seen: ['alpha'],
      });
    }
    await expectRefused(await packTar([f.manifestEntry, f.ea, { name: 'resources/gamma/', type: 'directory' }, f.eb]), 'invalid_archive', { seen: ['alpha'] });
    await expectRefused(await packTar([f.manifestEntry, f.ea, { name: 'resources/beta/db.sqlite.gz', type: 'contiguous-file', data: f.b }]), 'invalid_archive', {
      seen: ['alpha'],
    });
  });

  it('refuses a missing artifact, naming it', async () => {
    const f = fixture();
    await expectRefused(await packTar([f.manifestEntry, f.eb]), 'invalid_archive', { message: /lacks.*resources\/alpha\/db\.sqlite\.zst/, seen: ['beta'] });
    await expectRefused(await packTar([f.manifestEntry]), 'invalid_archive', { message: /alpha.*beta/, seen: [] });
  });

  it('refuses a duplicate artifact', async () => {
    const f = fixture();
    await expectRefused(await packTar([f.manifestEntry, f.ea, f.ea, f.eb]), 'invalid_archive', { message: /twice/, seen: ['alpha'] });
  });

  it('refuses input larger than maxTotalBytes with payload_too_large', async () => {
    const f = fixture();
    const tar = await packTar([f.manifestEntry, f.ea, f.eb]);
    await expectRefused(tar, 'payload_too_large', { limits: { maxTotalBytes: tar.length - 1 } });
    await expectRefused(tar, 'payload_too_large', { limits: { maxTotalBytes: 2000 }, seen: [] });
    // exactly the limit is fine
    await readExchangeArchive(chunked(tar), { ...LIMITS, maxTotalBytes: tar.length, onArtifact: recorder().onArtifact });
  });

  it('refuses a truncated archive', async () => {
    const f = fixture();
    const tar = await packTar([f.manifestEntry, f.ea, f.eb]);
    const inArtifact = 512 + 1024 + 512 + 100; // 100 bytes into alpha's data
    await expectRefused(tar.subarray(0, inArtifact), 'invalid_archive', { message: /truncated/ });
    await expectRefused(tar.subarray(0, 700), 'invalid_archive', { message: /truncated/, seen: [] });
    await expectRefused(tar.subarray(0, 300), 'invalid_archive', { seen: [] });
  });

  it('reports an input stream failure as invalid_archive without its text', async () => {
    const f = fixture();
    const tar = await packTar([f.manifestEntry, f.ea, f.eb]);
    let sent = false;
    const input = new Readable({
      read() {
        if (!sent) {
          sent = true;
          this.push(tar.subarray(0, 2048));
        } else this.destroy(new Error('socket hang up https://user:secret@example.com/x.tar'));
      },
    });
    const err = await expectRefused(input, 'invalid_archive', { message: /failed before its end/ });
    assert.doesNotMatch(err.message, /secret/);
  });

  it('passes on what onArtifact throws, and stops there', async () => {
    const f = fixture();
    const tar = await packTar([f.manifestEntry, f.ea, f.eb]);
    const seen: string[] = [];
    await expectRefused(tar, 'storage_failed', {
      onArtifact: async (r, data) => {
        seen.push(r.name);
        data.resume();
        throw new AppError('storage_failed', 'disk full');
      },
    });
    assert.deepEqual(seen, ['alpha']);
    await expectRefused(tar, 'internal', {
      onArtifact: async () => {
        throw new TypeError('bug');
      },
    });
  });

  it('refuses an onArtifact that returns without reading its data', async () => {
    const f = fixture();
    await expectRefused(await packTar([f.manifestEntry, f.ea, f.eb]), 'internal', { onArtifact: async () => undefined, message: /before reading/ });
  });
});
