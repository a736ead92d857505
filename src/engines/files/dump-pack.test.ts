import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { AppError, isErrorCode } from '../../errors/index.ts';
import { type BatchSink, packTree } from './dump-pack.ts';

// packTree runs here in the test's own thread (in production, in the dump
// worker), so the descriptors of its read-ahead window show in /proc/self/fd.

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bv-dump-pack-'));
  for (let d = 0; d < 4; d++) {
    await mkdir(join(root, `d${d}`));
    // 15 MB in all: several batches (BATCH, 4 MiB) go out while the walk is under way.
    for (let i = 0; i < 60; i++) await writeFile(join(root, `d${d}`, `f${i}`), Buffer.alloc(64_000 + i, d + i));
  }
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const openFds = () => readdirSync('/proc/self/fd').length;
const spec = () => ({ root, takes: [], excludes: [] });

it('closes the read-ahead window when the dump is cancelled midway', { skip: process.platform !== 'linux' }, () => {
  const before = openFds();
  let batches = 0;
  const sink: BatchSink = {
    check() {
      if (batches >= 2) throw new AppError('cancelled');
    },
    send() {
      batches++;
    },
  };
  assert.throws(() => packTree(spec(), sink), (e) => isErrorCode(e, 'cancelled'));
  assert.equal(openFds(), before);
});

it('packs every file of the window, in walk order, and leaves no descriptor open', { skip: process.platform !== 'linux' }, () => {
  const before = openFds();
  const parts: Buffer[] = [];
  const sink: BatchSink = { check() {}, send: (buffer, length) => parts.push(Buffer.from(buffer, 0, length)) };
  const info = packTree(spec(), sink);
  assert.equal(info.counts.files, 240);
  assert.equal(openFds(), before);
  // Names in the archive come in walk order: d0/ then its files in byte order, then d1/ ...
  const tarBytes = Buffer.concat(parts);
  const names: string[] = [];
  for (let off = 0; off + 512 <= tarBytes.length; ) {
    const name = tarBytes.subarray(off, off + 100).toString('utf8').replace(/\0.*$/s, '');
    if (name === '') break;
    const size = parseInt(tarBytes.subarray(off + 124, off + 136).toString('ascii').trim() || '0', 8);
    names.push(name);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  const expected = [0, 1, 2, 3].flatMap((d) => [`d${d}/`, ...Array.from({ length: 60 }, (_, i) => `d${d}/f${i}`).sort()]);
  assert.deepEqual(names, expected);
});

it('keeps the files ahead of the one being packed open, so their reads are already under way', { skip: process.platform !== 'linux' }, () => {
  const before = openFds();
  let most = 0;
  const sink: BatchSink = { check() {}, send: () => void (most = Math.max(most, openFds() - before)) };
  packTree(spec(), sink);
  // Without the read-ahead window only the file being read is open.
  assert.ok(most >= 16, `at most ${most} descriptors open while packing`);
});
