import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { crc32, deflateRawSync } from 'node:zlib';
import { AppError, type ErrorCode } from '../errors/index.ts';
import type { ManifestResource } from '../domain/manifest.ts';
import type { ReadArchiveOptions } from './reader.ts';
import { readZipArchive } from './zip-reader.ts';
import { writeExchangeZip } from './zip-writer.ts';
import { chunked, collect, makeBackup, makeManifest, resourceFor, sha256 } from './testkit.ts';
import { tempDir } from '../../test/helpers.ts';

interface ZipEntry {
  name: string;
  data?: Buffer;
  /** 0 stored (default), 8 deflate, or anything else to claim another method */
  method?: number;
  /** unix mode incl. file type; made by unix when given */
  mode?: number;
  encrypted?: boolean;
  /** the uncompressed size written in the headers, when it should lie */
  claimedSize?: number;
}

/** A zip written by hand, so any name, type or method can be tested (yazl refuses hostile ones). */
function buildZip(entries: ZipEntry[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    const method = e.method ?? 0;
    const stored = method === 8 ? deflateRawSync(data) : data;
    const name = Buffer.from(e.name);
    const crc = crc32(data) >>> 0;
    const size = e.claimedSize ?? data.length;
    const flags = 0x800 | (e.encrypted ? 1 : 0);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(method === 0 ? size : stored.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(name.length, 26);
    parts.push(local, name, stored);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(e.mode !== undefined ? (3 << 8) | 20 : 20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(flags, 8);
    c.writeUInt16LE(method, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(method === 0 ? size : stored.length, 20);
    c.writeUInt32LE(size, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt32LE(e.mode !== undefined ? (e.mode << 16) >>> 0 : 0, 38);
    c.writeUInt32LE(offset, 42);
    central.push(c, name);
    offset += 30 + name.length + stored.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

interface Seen {
  name: string;
  sha256?: string;
}

function recorder(): { seen: Seen[]; onArtifact: ReadArchiveOptions['onArtifact'] } {
  const seen: Seen[] = [];
  return {
    seen,
    async onArtifact(resource: ManifestResource, data: Readable) {
      const s: Seen = { name: resource.name };
      seen.push(s);
      s.sha256 = sha256(await collect(data));
    },
  };
}

const LIMITS = { maxManifestBytes: 1024 * 1024, maxTotalBytes: 1024 ** 3 };

function fixture() {
  const a = randomBytes(3000);
  const b = randomBytes(700);
  const ra = resourceFor({ name: 'alpha' }, a);
  const rb = resourceFor({ name: 'beta', compression: 'gzip' }, b);
  const { manifest, manifestBytes } = makeManifest([ra, rb]);
  return {
    manifest,
    manifestBytes,
    a,
    b,
    m: { name: 'manifest.json', data: manifestBytes } as ZipEntry,
    ea: { name: `resources/${ra.name}/${ra.artifact}`, data: a } as ZipEntry,
    eb: { name: `resources/${rb.name}/${rb.artifact}`, data: b } as ZipEntry,
  };
}

async function expectRefused(
  zip: Buffer | Readable,
  code: ErrorCode,
  opts: { message?: RegExp; limits?: Partial<typeof LIMITS>; onArtifact?: ReadArchiveOptions['onArtifact']; seen?: string[]; tempDir?: string } = {},
): Promise<AppError> {
  const input = Buffer.isBuffer(zip) ? chunked(zip) : zip;
  const rec = recorder();
  let caught: unknown;
  try {
    await readZipArchive(input, { ...LIMITS, ...opts.limits, onArtifact: opts.onArtifact ?? rec.onArtifact, ...(opts.tempDir ? { tempDir: opts.tempDir } : {}) });
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

describe('exchange zip reader', () => {
  it('reads what the zip writer wrote, and removes its temporary copy', async () => {
    const b = await makeBackup([{ name: 'empty', size: 0 }, { name: 'db', size: 100_000 }, { name: 'odd', size: 513 }]);
    const dir = await tempDir();
    try {
      const zip = await collect(writeExchangeZip(b.manifestBytes, b.manifest, b.open));
      const rec = recorder();
      const manifest = await readZipArchive(chunked(zip, 4096), { ...LIMITS, onArtifact: rec.onArtifact, tempDir: dir.path });
      assert.deepEqual(manifest, b.manifest);
      assert.deepEqual(
        rec.seen,
        b.manifest.resources.map((r) => ({ name: r.name, sha256: r.sha256 })),
      );
      assert.deepEqual(await readdir(dir.path), []);
    } finally {
      await b.cleanup();
      await dir.cleanup();
    }
  });

  it('accepts deflated entries, directory entries and the manifest anywhere', async () => {
    const f = fixture();
    const zip = buildZip([
      { name: 'resources/', mode: 0o40755 },
      { name: 'resources/beta/', mode: 0o40755 },
      { ...f.eb, method: 8 },
      { ...f.ea, method: 8, mode: 0o100644 },
      { ...f.m, method: 8 },
    ]);
    const rec = recorder();
    const manifest = await readZipArchive(chunked(zip), { ...LIMITS, onArtifact: rec.onArtifact });
    assert.deepEqual(manifest, f.manifest);
    assert.deepEqual(rec.seen.map((s) => s.sha256).sort(), [sha256(f.a), sha256(f.b)].sort());
  });

  it('refuses input that is not a zip, and empty input', async () => {
    await expectRefused(Buffer.from('this is not a zip archive at all, just text '.repeat(10)), 'invalid_archive', { message: /not a zip/ });
    await expectRefused(Buffer.alloc(0), 'invalid_archive');
  });

  it('refuses a zip without manifest.json, or with two', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.ea, f.eb]), 'invalid_archive', { message: /no manifest\.json/ });
    await expectRefused(buildZip([f.m, f.ea, f.m, f.eb]), 'invalid_archive', { message: /twice/ });
  });

  it('refuses bad manifests: not JSON, failing the schema, too large, damaged', async () => {
    const f = fixture();
    await expectRefused(buildZip([{ name: 'manifest.json', data: Buffer.from('{nope') }, f.ea, f.eb]), 'invalid_archive', { message: /not valid JSON/ });
    await expectRefused(buildZip([{ name: 'manifest.json', data: Buffer.from('{"format":"other"}') }]), 'invalid_archive', { message: /not a valid Backvault manifest/ });
    await expectRefused(buildZip([f.m, f.ea, f.eb]), 'invalid_archive', { limits: { maxManifestBytes: 100 }, message: /more than the 100 bytes/ });
    const zip = buildZip([f.m, f.ea, f.eb]);
    const at = zip.indexOf(Buffer.from('"format"'));
    zip[at + 2] = zip[at + 2]! ^ 0x01;
    await expectRefused(zip, 'invalid_archive', { message: /CRC-32/ });
  });

  it('refuses paths that escape before handing anything on', async () => {
    const f = fixture();
    for (const name of ['../evil', 'resources/../../evil', '/etc/passwd', 'C:/windows/x', '..\\..\\evil', '\\abs']) {
      await expectRefused(buildZip([f.m, f.ea, { name, data: Buffer.from('x') }, f.eb]), 'unsafe_path', { seen: [] });
    }
  });

  it('refuses symlinks and special files', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.m, { ...f.ea, mode: 0o120777 }, f.eb]), 'unsafe_path', { message: /symlink/, seen: [] });
    await expectRefused(buildZip([f.m, f.ea, f.eb, { name: 'resources/fifo', mode: 0o010644 }]), 'unsafe_path', { message: /special file/ });
  });

  it('refuses entries the manifest does not list, duplicates and missing artifacts, before reading any', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.m, f.ea, f.eb, { name: 'extra.txt', data: Buffer.from('x') }]), 'invalid_archive', { message: /extra\.txt/, seen: [] });
    await expectRefused(buildZip([f.m, f.ea, f.eb, { name: 'other/', mode: 0o40755 }]), 'invalid_archive', { seen: [] });
    await expectRefused(buildZip([f.m, f.ea, f.ea, f.eb]), 'invalid_archive', { message: /twice/, seen: [] });
    await expectRefused(buildZip([f.m, f.ea]), 'invalid_archive', { message: /lacks artifacts.*beta/, seen: [] });
  });

  it('refuses artifacts whose size or bytes differ from the manifest', async () => {
    const f = fixture();
    const flipped = Buffer.from(f.a);
    flipped[10] = flipped[10]! ^ 0xff;
    await expectRefused(buildZip([f.m, { ...f.ea, data: flipped }, f.eb]), 'checksum_mismatch', { message: /alpha/ });
    await expectRefused(buildZip([f.m, { ...f.ea, data: f.a.subarray(1) }, f.eb]), 'checksum_mismatch', { seen: [] });
    // A deflated entry whose header lies about its size is caught while it streams.
    await expectRefused(buildZip([f.m, { ...f.ea, data: Buffer.concat([f.a, Buffer.from('tail')]), method: 8, claimedSize: f.a.length }, f.eb]), 'invalid_archive');
  });

  it('refuses encrypted entries and unknown compression methods', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.m, { ...f.ea, encrypted: true, method: 8 }, f.eb]), 'invalid_archive', { message: /encrypted/ });
    await expectRefused(buildZip([f.m, { ...f.ea, method: 12 }, f.eb]), 'invalid_archive', { message: /compression method 12/ });
  });

  it('refuses input larger than maxTotalBytes, and deflated artifacts that unpack past it', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.m, f.ea, f.eb]), 'payload_too_large', { limits: { maxTotalBytes: 2000 } });
    const zeros = Buffer.alloc(200_000);
    const r = resourceFor({ name: 'bomb' }, zeros);
    const { manifestBytes } = makeManifest([r]);
    const zip = buildZip([{ name: 'manifest.json', data: manifestBytes }, { name: `resources/bomb/${r.artifact}`, data: zeros, method: 8 }]);
    assert.ok(zip.length < 50_000);
    await expectRefused(zip, 'payload_too_large', { limits: { maxTotalBytes: 100_000 }, seen: [] });
  });

  it('reports an input stream failure as invalid_archive without its text', async () => {
    const input = new Readable({
      read() {
        this.destroy(new Error('connection to https://secret.example/token=abc reset'));
      },
    });
    const err = await expectRefused(input, 'invalid_archive');
    assert.doesNotMatch(err.message, /secret/);
  });

  it('passes on what onArtifact throws, and stops there', async () => {
    const f = fixture();
    const calls: string[] = [];
    await expectRefused(buildZip([f.m, f.ea, f.eb]), 'storage_failed', {
      onArtifact: async (r, data) => {
        calls.push(r.name);
        data.resume();
        throw new AppError('storage_failed', 'disk full');
      },
    });
    assert.equal(calls.length, 1);
  });

  it('refuses an onArtifact that returns without reading its data', async () => {
    const f = fixture();
    await expectRefused(buildZip([f.m, f.ea, f.eb]), 'internal', { onArtifact: async () => undefined });
  });

  it('leaves no temporary file behind when it refuses', async () => {
    const dir = await tempDir();
    try {
      await expectRefused(Buffer.from('nope'), 'invalid_archive', { tempDir: dir.path });
      const f = fixture();
      await expectRefused(buildZip([f.m, f.ea]), 'invalid_archive', { tempDir: join(dir.path, 'made') });
      assert.deepEqual(await readdir(dir.path), ['made']);
      assert.deepEqual(await readdir(join(dir.path, 'made')), []);
    } finally {
      await dir.cleanup();
    }
  });
});
