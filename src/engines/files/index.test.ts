import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { appendFile, chmod, chown, lchown, lstat, lutimes, mkdir, mkdtemp, open, readFile, readdir, readlink, rm, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectCounts, ResourceSpec } from '../../domain/types.ts';
import { AppError, isErrorCode } from '../../errors/index.ts';
import type { DumpInfo, RestoreRequest } from '../engine.ts';
import { filesEngine } from './index.ts';
import { Carrier, planCarry } from './carry.ts';
import { extractInto, restoreWorkerPool, swapContents } from './restore.ts';
import { PathFilter } from './select.ts';
import { summarize, type TreeLine } from './tree.ts';
import { compressForStorage } from '../../platform/streams.ts';
import { LendingFileReader } from '../../platform/lending-reader.ts';
import { compress as zstdCompress } from 'zstd-napi';

type TarHeader = Partial<tar.Header> & { name: string };

const run = promisify(execFile);
const never = new AbortController().signal;

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bv-files-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
async function freshDir(): Promise<string> {
  return mkdtemp(join(root, `t${n++}-`));
}

function resource(path: string, options: Record<string, unknown> = {}): ResourceSpec {
  return { name: 'files', type: 'files', connection: path, options };
}

const OUTSIDE_MARKER = 'this text lives outside the tree and must never be read';
const LONG = `${'long-directory-name-'.repeat(4)}/${'x'.repeat(150)}.txt`;
const T2020 = new Date('2020-01-02T03:04:05Z');
const T2021 = new Date('2021-06-07T08:09:10Z');

/** A tree with everything the engine must carry; returns the path of a file outside it. */
async function makeTree(dir: string): Promise<string> {
  const outside = join(dirname(dir), `outside-${n++}.txt`);
  await writeFile(outside, OUTSIDE_MARKER);
  await mkdir(join(dir, 'a/b/c'), { recursive: true });
  await mkdir(join(dir, 'empty-dir'));
  await mkdir(join(dir, 'ünïcødé 日本'));
  await mkdir(join(dir, dirname(LONG)), { recursive: true });
  await writeFile(join(dir, 'a/hello.txt'), 'hello\n');
  await writeFile(join(dir, 'a/b/c/deep.txt'), 'deep\n');
  await writeFile(join(dir, 'empty.txt'), '');
  await writeFile(join(dir, 'ünïcødé 日本/файл.txt'), 'привет 🙂\n');
  await writeFile(join(dir, LONG), 'long path\n');
  await writeFile(join(dir, '.hidden'), 'dotfile\n');
  // A few MB, not all the same byte.
  const big = Buffer.alloc(3 * 1024 * 1024 + 123);
  for (let i = 0; i < big.length; i += 32) createHash('sha256').update(String(i)).digest().copy(big, i);
  await writeFile(join(dir, 'a/big.bin'), big);
  await writeFile(join(dir, 'secret.txt'), 'secret\n', { mode: 0o600 });
  await chmod(join(dir, 'secret.txt'), 0o600);
  await writeFile(join(dir, 'run.sh'), '#!/bin/sh\necho hi\n');
  await chmod(join(dir, 'run.sh'), 0o755);
  await chmod(join(dir, 'a/b'), 0o750);
  await symlink('a/hello.txt', join(dir, 'link-internal'));
  await symlink('a', join(dir, 'link-dir'));
  await symlink(outside, join(dir, 'link-outside'));
  await utimes(join(dir, 'a/hello.txt'), T2020, T2020);
  await utimes(join(dir, 'a/b/c'), T2021, T2021);
  await utimes(join(dir, 'empty-dir'), T2020, T2020);
  return outside;
}

interface Node {
  type: string;
  mode?: number;
  mtime?: number;
  sha?: string;
  link?: string;
}

/** Everything observable about a tree: types, modes, mtimes (seconds), contents, link targets. */
async function treeState(dir: string, rel = '', out: Record<string, Node> = {}): Promise<Record<string, Node>> {
  for (const name of (await readdir(join(dir, rel))).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(dir, r);
    const st = await lstat(p);
    if (st.isSymbolicLink()) out[r] = { type: 'l', link: await readlink(p) };
    else if (st.isDirectory()) {
      out[r] = { type: 'd', mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000) };
      await treeState(dir, r, out);
    } else {
      out[r] = { type: 'f', mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000), sha: createHash('sha256').update(await readFile(p)).digest('hex') };
    }
  }
  return out;
}

async function dumpToFile(
  dir: string,
  opts: { selection?: string[] | null; exclude?: string[]; options?: Record<string, unknown> } = {},
): Promise<{ file: string; info: DumpInfo }> {
  const out = await filesEngine.dump({
    resource: resource(dir, opts.options),
    selection: opts.selection ?? null,
    exclude: opts.exclude ?? [],
    useReplica: false,
    workDir: join(root, 'work'),
    signal: never,
  });
  assert.equal(out.artifactBase, 'files.tar');
  assert.equal(out.format, 'tar archive');
  const file = join(await freshDir(), 'files.tar');
  await pipeline(out.stream, createWriteStream(file));
  return { file, info: await out.info };
}

function restoreReq(target: string, input: Readable | string, expected: ObjectCounts, over: Partial<RestoreRequest> = {}): RestoreRequest {
  return {
    target: resource(target),
    input: typeof input === 'string' ? createReadStream(input) : input,
    expected,
    mode: 'in_place',
    partial: false,
    workDir: join(root, 'work'),
    signal: never,
    ...over,
  };
}

async function tarNames(file: string): Promise<string[]> {
  const names: string[] = [];
  const ex = tar.extract();
  const done = pipeline(createReadStream(file), ex);
  for await (const e of ex) {
    names.push(e.header.name);
    e.resume();
  }
  await done;
  return names;
}

/** buf in pieces of `size` bytes. */
function chunksOf(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

function failingAtEnd(file: string): Readable {
  return Readable.from(
    (async function* () {
      for await (const c of createReadStream(file)) yield c as Buffer;
      throw new AppError('checksum_mismatch', 'test: bad checksum at end');
    })(),
    { objectMode: false },
  );
}

/** Names beside a target that a restore could leave behind. */
async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.includes('.tmp-') || f.includes('backvault'));
}

/** The tree's lines (tree.ts) read from disk, for digests computed here rather than by the engine. */
async function linesOf(dir: string, rel = '', out: TreeLine[] = []): Promise<TreeLine[]> {
  for (const name of await readdir(join(dir, rel))) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(dir, r);
    const st = await lstat(p);
    if (st.isSymbolicLink()) out.push({ kind: 'l', path: r, target: await readlink(p) });
    else if (st.isDirectory()) {
      out.push({ kind: 'd', path: r });
      await linesOf(dir, r, out);
    } else {
      const body = await readFile(p);
      out.push({ kind: 'f', path: r, size: body.length, sha256: createHash('sha256').update(body).digest('hex') });
    }
  }
  return out;
}

/** The input of a restore that gives the archive's first half and then waits, neither ending nor failing (the worker gets full 1 MiB batches only). */
async function stalling(file: string): Promise<PassThrough> {
  return stallingBytes(await readFile(file));
}

/** A tar file as the service stores it with zstd, and the decode spec its manifest entry gives. */
async function storedZstd(file: string, label = 'artifact resources/w/files.tar.zst'): Promise<{ stored: Buffer; decode: NonNullable<RestoreRequest['decode']> }> {
  const stored = zstdCompress(await readFile(file));
  return { stored, decode: { compression: 'zstd', sha256: createHash('sha256').update(stored).digest('hex'), size: stored.length, label } };
}

/** The first half of bytes, then nothing: the restore waits for the rest. */
function stallingBytes(data: Buffer): PassThrough {
  const input = new PassThrough();
  input.write(data.subarray(0, data.length >> 1));
  return input;
}

async function waitFor(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** lstat of every entry below dir: everything a restore must give back (mtime in seconds, as tar keeps it). */
async function statState(dir: string, rel = '', out: Record<string, { mode: number; uid: number; gid: number; mtime: number }> = {}) {
  for (const name of (await readdir(join(dir, rel))).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(dir, r));
    out[r] = { mode: st.mode, uid: st.uid, gid: st.gid, mtime: Math.floor(st.mtimeMs / 1000) };
    if (st.isDirectory()) await statState(dir, r, out);
  }
  return out;
}

/** A tree of `count` files of 4 KiB, 100 to a directory. */
async function manyFiles(dir: string, count: number): Promise<void> {
  for (let d = 0; d * 100 < count; d++) {
    await mkdir(join(dir, `d${d}`), { recursive: true });
    // Random hex: a stored zstd copy is about half the tar, so half of it is well over the codec's first batch.
    await Promise.all(Array.from({ length: Math.min(100, count - d * 100) }, (_, f) => writeFile(join(dir, `d${d}`, `f${f}`), `file ${d}/${f}\n${randomBytes(2048).toString('hex')}`.slice(0, 4096))));
  }
}

describe('files engine', () => {
  it('checks connections, options and selections', async () => {
    assert.throws(() => filesEngine.checkConnection('rel/dir', {}), (e) => isErrorCode(e, 'invalid_connection'));
    assert.throws(() => filesEngine.checkConnection('/', {}), (e) => isErrorCode(e, 'invalid_connection'));
    assert.throws(() => filesEngine.checkConnection('/srv/x', { exclude: 'cache' }), (e) => isErrorCode(e, 'invalid_connection'));
    assert.throws(() => filesEngine.checkConnection('/srv/x', { include: ['../etc'] }), (e) => isErrorCode(e, 'invalid_connection'));
    filesEngine.checkConnection('/srv/x', { include: ['uploads/**'], exclude: ['**/*.tmp'] });
    const dir = await freshDir();
    await assert.rejects(
      filesEngine.dump({ resource: resource(dir), selection: ['/etc/passwd'], exclude: [], useReplica: false, workDir: join(root, 'work'), signal: never }),
      (e) => isErrorCode(e, 'invalid_selection'),
    );
  });

  it('round-trips a tree to a new target, keeping links as links', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const before = await treeState(src);
    const { file, info } = await dumpToFile(src);
    assert.equal(info.counts.symlinks, 3);
    assert.equal(info.counts.files, 9);
    assert.equal(info.counts.directories, 6);
    assert.match(info.counts.tree_sha256 ?? '', /^[0-9a-f]{64}$/);
    // The outside file's bytes were never read into the archive.
    assert.ok(!(await readFile(file)).includes(OUTSIDE_MARKER));
    // Relative names, no "./", the long one intact.
    const names = await tarNames(file);
    assert.ok(names.includes(LONG));
    assert.ok(names.every((x) => !x.startsWith('./') && !x.startsWith('/')));

    const target = join(await freshDir(), 'new/deeper/target');
    const r = await filesEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    assert.deepEqual(await treeState(target), before);
    assert.equal((await lstat(join(target, 'link-outside'))).isSymbolicLink(), true);
    assert.deepEqual(await leftovers(dirname(target)), []);

    // Deterministic: the same tree dumps to the same bytes.
    const again = await dumpToFile(src);
    assert.equal(createHash('sha256').update(await readFile(again.file)).digest('hex'), createHash('sha256').update(await readFile(file)).digest('hex'));
  });

  it('refuses a new target that already holds data, touching nothing', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const full = await dumpToFile(src);
    const part = await dumpToFile(src, { selection: ['a/**'] });

    const base = await freshDir();
    // A live directory someone mistyped as the new target.
    const live = join(base, 'live');
    await mkdir(join(live, 'uploads'), { recursive: true });
    await writeFile(join(live, 'uploads/photo.jpg'), 'jpeg bytes');
    await writeFile(join(live, '.env'), 'TOKEN=1');
    await chmod(live, 0o750);
    // Only an empty directory inside is still data (someone's layout).
    const onlyDir = join(base, 'only-dir');
    await mkdir(join(onlyDir, 'empty'), { recursive: true });
    const aFile = join(base, 'a-file');
    await writeFile(aFile, 'a file where a directory was expected');
    const emptyFile = join(base, 'empty-file');
    await writeFile(emptyFile, '');
    const link = join(base, 'link');
    await symlink(live, link);
    const before = await treeState(base);

    for (const target of [live, onlyDir, aFile, emptyFile, link]) {
      for (const [f, counts, partial] of [
        [full.file, full.info.counts, false],
        [part.file, part.info.counts, true],
      ] as const) {
        await assert.rejects(
          filesEngine.restore(restoreReq(target, f, counts, { mode: 'new_target', partial })),
          (e) => isErrorCode(e, 'target_not_empty') && e.status === 409 && e.message.includes(target) && /choose a new path/i.test(e.message) && /restore in place/.test(e.message),
        );
        assert.deepEqual(await treeState(base), before, target);
      }
    }
    // Refused before reading: the input was never consumed.
    const input = createReadStream(full.file);
    await assert.rejects(filesEngine.restore(restoreReq(live, input, full.info.counts, { mode: 'new_target' })), (e) => isErrorCode(e, 'target_not_empty'));
    assert.equal(input.bytesRead, 0);
    input.destroy();
    assert.deepEqual(await treeState(base), before);
  });

  it('restores a new target into an empty directory, keeping its mode', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const { file, info } = await dumpToFile(src);
    const target = join(await freshDir(), 'empty');
    await mkdir(target);
    await chmod(target, 0o750);
    const r = await filesEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    assert.deepEqual(await treeState(target), await treeState(src));
    assert.equal((await lstat(target)).mode & 0o7777, 0o750);
    assert.deepEqual(await leftovers(dirname(target)), []);
  });

  it('refuses a new target that fills up while the input streams, leaving it as it is', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const { file, info } = await dumpToFile(src);
    const target = join(await freshDir(), 't');
    await mkdir(target);
    const input = Readable.from(
      (async function* () {
        let first = true;
        for await (const c of createReadStream(file, { highWaterMark: 64 * 1024 })) {
          yield c as Buffer;
          if (first) await writeFile(join(target, 'meanwhile.txt'), 'written by someone else');
          first = false;
        }
      })(),
      { objectMode: false },
    );
    await assert.rejects(filesEngine.restore(restoreReq(target, input, info.counts, { mode: 'new_target' })), (e) => isErrorCode(e, 'target_not_empty') && e.message.includes('"meanwhile.txt"'));
    assert.deepEqual(await readdir(target), ['meanwhile.txt']);
    assert.equal(await readFile(join(target, 'meanwhile.txt'), 'utf8'), 'written by someone else');
    assert.deepEqual(await leftovers(dirname(target)), []);
  });

  it('writes an archive GNU tar extracts to the same tree', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const { file } = await dumpToFile(src);
    const out = await freshDir();
    await run('tar', ['-xf', file, '-C', out]);
    assert.deepEqual(await treeState(out), await treeState(src));
  });

  it('skips sockets and fifos with a warning, and does not enter excluded directories', async () => {
    const src = await freshDir();
    await writeFile(join(src, 'f.txt'), 'x');
    await run('mkfifo', [join(src, 'pipe')]);
    await mkdir(join(src, 'cache'));
    await run('mkfifo', [join(src, 'cache/pipe2')]);
    const { file, info } = await dumpToFile(src, { options: { exclude: ['cache'] } });
    assert.deepEqual(await tarNames(file), ['f.txt']);
    assert.equal(info.warnings.length, 1);
    assert.match(info.warnings[0]!, /^pipe is a socket, fifo or device/);
  });

  it('full in-place restore makes the target equal to the backup', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    await chmod(src, 0o711);
    const before = await treeState(src);
    const { file, info } = await dumpToFile(src);
    await writeFile(join(src, 'added-later.txt'), 'new');
    await mkdir(join(src, 'a/new-dir'));
    await writeFile(join(src, 'a/hello.txt'), 'changed');
    await rm(join(src, 'a/b/c/deep.txt'));
    await rm(join(src, 'link-dir'));
    await mkdir(join(src, 'link-dir'));
    const r = await filesEngine.restore(restoreReq(src, file, info.counts));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    assert.deepEqual(await treeState(src), before);
    // The root keeps its own mode (it is not in the archive).
    assert.equal((await lstat(src)).mode & 0o7777, 0o711);
    assert.deepEqual(await leftovers(dirname(src)), []);
  });

  it('takes a partial selection and exclusions by glob', async () => {
    const src = await freshDir();
    await makeTree(src);
    const deep = await dumpToFile(src, { selection: ['a/b/c/deep.txt'] });
    // The directories above a selected file come along, so it can be placed.
    assert.deepEqual(await tarNames(deep.file), ['a/', 'a/b/', 'a/b/c/', 'a/b/c/deep.txt']);
    assert.equal(deep.info.counts.files, 1);
    assert.equal(deep.info.counts.directories, 3);

    const sub = await dumpToFile(src, { selection: ['a'], exclude: ['**/*.bin'] });
    assert.deepEqual(await tarNames(sub.file), ['a/', 'a/b/', 'a/b/c/', 'a/b/c/deep.txt', 'a/hello.txt']);

    const globs = await dumpToFile(src, { selection: ['**/*.txt'], exclude: ['a/b', 'ünïcødé*'] });
    assert.deepEqual((await tarNames(globs.file)).sort(), ['a/', 'a/hello.txt', 'empty.txt', 'long-directory-name-long-directory-name-long-directory-name-long-directory-name-/', LONG, 'secret.txt'].sort());

    const opts = await dumpToFile(src, { options: { include: ['a/**', '.hidden'], exclude: ['a/big.bin'] }, selection: ['a/b/**', '.hidden'] });
    assert.deepEqual(await tarNames(opts.file), ['.hidden', 'a/', 'a/b/', 'a/b/c/', 'a/b/c/deep.txt']);

    const none = await dumpToFile(src, { selection: ['nothing/**'] });
    assert.deepEqual(await tarNames(none.file), []);
    assert.match(none.info.warnings.join('\n'), /"nothing\/\*\*" matched nothing/);
  });

  it('partial in-place restore overlays the backed-up paths and leaves the rest', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const before = await treeState(src);
    const { file, info } = await dumpToFile(src, { selection: ['a/**', 'link-internal'] });
    await writeFile(join(src, 'a/hello.txt'), 'changed');
    await rm(join(src, 'a/b/c/deep.txt'));
    await writeFile(join(src, 'a/new.txt'), 'added after');
    await writeFile(join(src, 'run.sh'), 'changed too, but not in the backup');
    await rm(join(src, 'link-internal'));
    await writeFile(join(src, 'link-internal'), 'a file where the backup has a link');
    await rm(join(src, 'a/b'), { recursive: true });
    await symlink('/tmp', join(src, 'a/b')); // a symlink where the backup has a directory
    const changed = await treeState(src);

    const r = await filesEngine.restore(restoreReq(src, file, info.counts, { partial: true }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    const after = await treeState(src);
    for (const [p, node] of Object.entries(before)) {
      if (p.startsWith('a') || p === 'link-internal') assert.deepEqual(after[p], node, p);
      else assert.deepEqual(after[p], changed[p], p);
    }
    assert.deepEqual(after['a/new.txt'], changed['a/new.txt']);
    assert.deepEqual(await leftovers(dirname(src)), []);
  });

  describe('full in-place restore keeps what the resource options leave out', () => {
    /** The part of a tree state under the given top-level names (or, with invert, outside them). */
    function part(state: Record<string, Node>, under: (p: string) => boolean): Record<string, Node> {
      return Object.fromEntries(Object.entries(state).filter(([p]) => under(p)));
    }

    it('carries excluded directories (nested, with links) over byte for byte; covered additions go', async () => {
      const base = await freshDir();
      const src = join(base, 'src');
      await mkdir(src);
      const outside = await makeTree(src);
      // An outside directory that a followed link would expose or move.
      const outsideDir = join(base, 'outside-dir');
      await mkdir(outsideDir);
      await writeFile(join(outsideDir, 'x.txt'), OUTSIDE_MARKER);
      const options = { exclude: ['**/node_modules', 'cache/**', 'tmp-link'] };
      const inExcluded = (p: string) => p.split('/').includes('node_modules') || p === 'cache' || p.startsWith('cache/') || p === 'tmp-link';

      await mkdir(join(src, 'node_modules/pkg/lib'), { recursive: true });
      await writeFile(join(src, 'node_modules/pkg/lib/index.js'), 'module.exports = 1;\n');
      await mkdir(join(src, 'a/b/node_modules/.bin'), { recursive: true });
      await mkdir(join(src, 'cache'));
      await writeFile(join(src, 'cache/blob'), Buffer.alloc(100_000, 7));
      const { file, info } = await dumpToFile(src, { options });
      assert.ok((await tarNames(file)).every((x) => !inExcluded(x.replace(/\/$/, ''))));
      const covered = part(await treeState(src), (p) => !inExcluded(p));

      // After the backup: the excluded areas change and grow; covered paths change.
      await writeFile(join(src, 'node_modules/pkg/lib/index.js'), 'module.exports = 2;\n');
      await mkdir(join(src, 'node_modules/pkg/deep/deeper'), { recursive: true });
      await writeFile(join(src, 'node_modules/pkg/deep/deeper/data.bin'), Buffer.alloc(70_000, 3), { mode: 0o640 });
      await chmod(join(src, 'node_modules/pkg/deep/deeper/data.bin'), 0o640);
      await utimes(join(src, 'node_modules/pkg/deep'), T2020, T2020);
      await chmod(join(src, 'node_modules/pkg/deep'), 0o750);
      await writeFile(join(src, 'a/b/node_modules/.bin/tool'), '#!/bin/sh\n', { mode: 0o755 });
      await symlink('../../x.txt', join(src, 'a/b/node_modules/.bin/rel-link'));
      await symlink(outsideDir, join(src, 'node_modules/outside-dir-link'));
      await symlink(outside, join(src, 'node_modules/outside-file-link'));
      await symlink(outsideDir, join(src, 'tmp-link')); // an excluded link at the top, pointing at a directory
      await writeFile(join(src, 'cache/new'), 'new cache entry');
      await writeFile(join(src, 'added-later.txt'), 'covered, not in the backup');
      await mkdir(join(src, 'a/new-dir'));
      await writeFile(join(src, 'a/hello.txt'), 'changed');
      const excludedBefore = part(await treeState(src), inExcluded);
      const outsideBefore = await treeState(outsideDir);

      const r = await filesEngine.restore({ ...restoreReq(src, file, info.counts), target: resource(src, options) });
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
      assert.deepEqual(r.warnings, []);
      const after = await treeState(src);
      assert.deepEqual(part(after, inExcluded), excludedBefore);
      assert.deepEqual(part(after, (p) => !inExcluded(p)), covered);
      assert.equal(after['added-later.txt'], undefined);
      assert.equal(after['a/new-dir'], undefined);
      for (const l of ['tmp-link', 'node_modules/outside-dir-link', 'node_modules/outside-file-link', 'a/b/node_modules/.bin/rel-link']) {
        assert.equal((await lstat(join(src, l))).isSymbolicLink(), true, l);
      }
      assert.deepEqual(await treeState(outsideDir), outsideBefore);
      assert.equal(await readFile(outside, 'utf8'), OUTSIDE_MARKER);
      assert.deepEqual(await leftovers(dirname(src)), []);
      // The restored target dumps, with the same options, to the backup's tree.
      const again = await dumpToFile(src, { options });
      assert.deepEqual(compareCounts(info.counts, again.info.counts), []);
    });

    it('keeps paths the include option does not take, and makes their directories where the backup has none', async () => {
      const src = join(await freshDir(), 'src');
      await mkdir(src);
      const options = { include: ['uploads/**', 'data/keep/**', 'x/y/**'] };
      await mkdir(join(src, 'uploads/2024'), { recursive: true });
      await writeFile(join(src, 'uploads/2024/a.jpg'), 'jpeg');
      await mkdir(join(src, 'data/keep'), { recursive: true });
      await writeFile(join(src, 'data/keep/k.txt'), 'kept');
      await writeFile(join(src, 'data/other.txt'), 'not included');
      await writeFile(join(src, 'notes.txt'), 'not included');
      const { file, info } = await dumpToFile(src, { options });
      assert.deepEqual(await tarNames(file), ['data/', 'data/keep/', 'data/keep/k.txt', 'uploads/', 'uploads/2024/', 'uploads/2024/a.jpg']);
      const covered = await treeState(src);

      await writeFile(join(src, 'notes.txt'), 'changed after the backup');
      await writeFile(join(src, 'data/other.txt'), 'changed too');
      await writeFile(join(src, 'uploads/2024/b.jpg'), 'added after the backup');
      await writeFile(join(src, 'data/keep/new.txt'), 'added after the backup');
      // x did not exist at backup time: x/y is covered (goes), x/z is not (stays, in an x made like the old one).
      await mkdir(join(src, 'x/y'), { recursive: true });
      await writeFile(join(src, 'x/y/covered.txt'), 'goes');
      await writeFile(join(src, 'x/z.txt'), 'stays');
      await chmod(join(src, 'x'), 0o705);
      await utimes(join(src, 'x'), T2021, T2021);
      const changed = await treeState(src);

      const r = await filesEngine.restore({ ...restoreReq(src, file, info.counts), target: resource(src, options) });
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
      const after = await treeState(src);
      assert.deepEqual(after, {
        ...part(covered, (p) => p.startsWith('uploads') || p.startsWith('data')),
        'data/other.txt': changed['data/other.txt'],
        'notes.txt': changed['notes.txt'],
        x: changed.x,
        'x/z.txt': changed['x/z.txt'],
      });
      assert.deepEqual(await leftovers(dirname(src)), []);
    });

    it('lets the backup win where it has a path the options now leave out', async () => {
      const src = join(await freshDir(), 'src');
      await mkdir(src);
      await mkdir(join(src, 'cache'));
      await writeFile(join(src, 'cache/old.txt'), 'from the backup');
      await writeFile(join(src, 'f.txt'), 'f');
      const { file, info } = await dumpToFile(src); // no exclusions yet
      await writeFile(join(src, 'cache/old.txt'), 'changed since');
      await writeFile(join(src, 'cache/new.txt'), 'only in the target');
      const r = await filesEngine.restore({ ...restoreReq(src, file, info.counts), target: resource(src, { exclude: ['cache/**'] }) });
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
      assert.equal(await readFile(join(src, 'cache/old.txt'), 'utf8'), 'from the backup');
      assert.equal(await readFile(join(src, 'cache/new.txt'), 'utf8'), 'only in the target');
      assert.equal(r.warnings.length, 1);
      assert.match(r.warnings[0]!, /"cache\/old\.txt"/);
    });

    it('leaves a new target as the backup has it, and carries nothing into one', async () => {
      const src = join(await freshDir(), 'src');
      await mkdir(src);
      await writeFile(join(src, 'f.txt'), 'f');
      const { file, info } = await dumpToFile(src, { options: { exclude: ['cache'] } });
      // A "new" target holding only what the options leave out still holds data: refused, not carried over.
      const busy = join(await freshDir(), 't');
      await mkdir(join(busy, 'cache'), { recursive: true });
      await writeFile(join(busy, 'cache/x'), 'x');
      const state = await treeState(busy);
      await assert.rejects(
        filesEngine.restore({ ...restoreReq(busy, file, info.counts, { mode: 'new_target' }), target: resource(busy, { exclude: ['cache'] }) }),
        (e) => isErrorCode(e, 'target_not_empty'),
      );
      assert.deepEqual(await treeState(busy), state);
      const target = join(await freshDir(), 't');
      await filesEngine.restore({ ...restoreReq(target, file, info.counts, { mode: 'new_target' }), target: resource(target, { exclude: ['cache'] }) });
      assert.deepEqual(await readdir(target), ['f.txt']);
    });

    it('undo puts carried paths back where they were', async () => {
      const target = join(await freshDir(), 't');
      await mkdir(join(target, 'node_modules/p'), { recursive: true });
      await writeFile(join(target, 'node_modules/p/i.js'), 'js');
      await mkdir(join(target, 'm'));
      await writeFile(join(target, 'm/left-out.txt'), 'x');
      await writeFile(join(target, 'm/in.txt'), 'x');
      await utimes(join(target, 'm'), T2020, T2020);
      const state = await treeState(target);
      const staging = await freshDir();
      const filter = new PathFilter([['m/in.txt']], ['node_modules']);
      const plan = await planCarry(target, staging, filter, new Set(), never);
      assert.deepEqual(
        plan.ops.map((o) => `${o.kind} ${o.rel}`),
        ['mkdir m', 'move m/left-out.txt', 'move node_modules'],
      );
      const carrier = new Carrier(target, staging, plan);
      await carrier.run();
      assert.deepEqual((await treeState(staging)).m, state.m);
      assert.deepEqual(await carrier.undo(), []);
      assert.deepEqual(await treeState(target), state);
    });
  });

  describe('refuses hostile archives', () => {
    async function hostileTar(entries: { header: TarHeader; body?: string }[]): Promise<string> {
      const pack = tar.pack();
      for (const e of entries) {
        if (e.body === undefined) pack.entry(e.header);
        else pack.entry(e.header, e.body);
      }
      pack.finalize();
      const file = join(await freshDir(), 'hostile.tar');
      await pipeline(pack, createWriteStream(file));
      return file;
    }

    const outside = () => join(root, 'outside-target');
    const cases: [string, (out: string) => { header: TarHeader; body?: string }[]][] = [
      ['a ../ path', () => [{ header: { name: 'ok.txt' }, body: 'ok' }, { header: { name: '../evil' }, body: 'evil' }]],
      ['a ../ path inside', () => [{ header: { name: 'a/../../evil' }, body: 'evil' }]],
      ['an absolute path', (out) => [{ header: { name: `${out}/abs` }, body: 'abs' }]],
      [
        'an entry below a symlink',
        (out) => [
          { header: { name: 'x', type: 'symlink', linkname: out } },
          { header: { name: 'x/pwned' }, body: 'pwned' },
        ],
      ],
      [
        'an entry below a symlink, as a directory',
        (out) => [
          { header: { name: 'x', type: 'symlink', linkname: out } },
          { header: { name: 'x/sub/', type: 'directory' } },
        ],
      ],
      ['a hard link', () => [{ header: { name: 'h', type: 'link', linkname: '/etc/passwd' } }]],
      ['a device', () => [{ header: { name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 } }]],
      ['a path given twice', () => [{ header: { name: 'd', type: 'directory' } }, { header: { name: 'd', type: 'symlink', linkname: '/' } }]],
    ];

    for (const [label, make] of cases) {
      for (const partial of [false, true]) {
        it(`${label} (${partial ? 'partial' : 'full'})`, async () => {
          const out = outside();
          await mkdir(out, { recursive: true });
          const base = await freshDir();
          const target = join(base, 'target');
          await mkdir(target);
          await writeFile(join(target, 'keep.txt'), 'keep');
          const file = await hostileTar(make(out));
          await assert.rejects(filesEngine.restore(restoreReq(target, file, {}, { partial })), (e) => isErrorCode(e, 'unsafe_path'));
          assert.deepEqual(await readdir(out), []);
          assert.deepEqual((await readdir(base)).sort(), ['target']);
          assert.deepEqual(await readdir(target), ['keep.txt']);
        });
      }
    }

    it('from a stored zstd artifact: a sound one fails with unsafe_path once its bytes proved sound, a damaged one with checksum_mismatch', async () => {
      const out = outside();
      await mkdir(out, { recursive: true });
      // The unsafe entry comes first, then enough to decode after it: the refusal is held until the verdict.
      const file = await hostileTar([{ header: { name: '../escape.txt' }, body: 'x' }, ...Array.from({ length: 200 }, (_, i) => ({ header: { name: `f${i}.txt` }, body: `${i} `.repeat(3000) }))]);
      const { stored, decode } = await storedZstd(file);
      const wrong = { ...decode, sha256: createHash('sha256').update('something else').digest('hex') };
      for (const [spec, code] of [
        [decode, 'unsafe_path'],
        [wrong, 'checksum_mismatch'],
      ] as const) {
        const base = await freshDir();
        const target = join(base, 'target');
        await mkdir(target);
        await writeFile(join(target, 'keep.txt'), 'keep');
        await assert.rejects(filesEngine.restore(restoreReq(target, Readable.from(chunksOf(stored, 4096)), {}, { decode: spec })), (e) => isErrorCode(e, code));
        assert.deepEqual(await readdir(out), []);
        assert.deepEqual((await readdir(base)).sort(), ['target']);
        assert.deepEqual(await readdir(target), ['keep.txt']);
      }
    });
  });

  it('leaves the target untouched when the input fails at its end', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const full = await dumpToFile(src);
    const part = await dumpToFile(src, { selection: ['a/**'] });
    await writeFile(join(src, 'a/hello.txt'), 'changed');
    await writeFile(join(src, 'added.txt'), 'added');
    const state = await treeState(src);
    for (const [f, counts, partial] of [
      [full.file, full.info.counts, false],
      [part.file, part.info.counts, true],
    ] as const) {
      await assert.rejects(filesEngine.restore(restoreReq(src, failingAtEnd(f), counts, { partial })), (e) => isErrorCode(e, 'checksum_mismatch'));
      assert.deepEqual(await treeState(src), state);
      assert.deepEqual(await leftovers(dirname(src)), []);
    }
  });

  it('takes a stored zstd or uncompressed artifact as it is: the worker checks and decompresses it, and a damaged one changes nothing', async () => {
    assert.deepEqual(filesEngine.decodes, ['zstd', 'none']);
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const { file, info } = await dumpToFile(src);
    const tarBytes = await readFile(file);
    const state = await treeState(src);
    for (const compression of ['zstd', 'none'] as const) {
      const { stages, stored: storedInfo } = compressForStorage(compression);
      const storedFile = join(await freshDir(), `files.tar${compression === 'zstd' ? '.zst' : ''}`);
      await pipeline([createReadStream(file), ...stages, createWriteStream(storedFile)]);
      const { size, sha256 } = storedInfo();
      const stored = await readFile(storedFile);
      if (compression === 'zstd') assert.ok(size < tarBytes.length, 'the input really is compressed');
      const decode = { compression, sha256, size, label: `artifact resources/w/${compression}` };

      // Good: restored exactly, from stored bytes fed in small pieces.
      const good = join(await freshDir(), 'good');
      const report = await filesEngine.restore(restoreReq(good, Readable.from(chunksOf(stored, 7001)), info.counts, { mode: 'new_target', decode }));
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.deepEqual(await treeState(good), state);

      // Damaged in the middle, cut short, or with bytes added: checksum_mismatch naming the artifact, target as it was.
      const flipped = Buffer.from(stored);
      flipped[flipped.length >> 1]! ^= 0x5a;
      for (const [why, bytes] of [
        ['flipped', flipped],
        ['cut', stored.subarray(0, stored.length - 100)],
        ['longer', Buffer.concat([stored, Buffer.alloc(10)])],
      ] as const) {
        const target = join(await freshDir(), 't');
        await mkdir(target);
        await writeFile(join(target, 'keep.txt'), 'keep');
        await assert.rejects(
          filesEngine.restore(restoreReq(target, Readable.from([bytes]), info.counts, { decode })),
          (e) => isErrorCode(e, 'checksum_mismatch') && e.message.includes(decode.label),
          `${compression}, ${why}`,
        );
        assert.deepEqual(await readdir(target), ['keep.txt'], `${compression}, ${why}: the target is untouched`);
        assert.deepEqual(await leftovers(dirname(target)), [], `${compression}, ${why}: no staging left`);
      }
    }
  });

  it('restores from the lent chunks of local storage and gives each back once copied, for the next read (zstd and none)', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    for (const [i, size] of [3_000_000, 10, 1_500_000, 0, 700_001].entries()) await writeFile(join(src, 'd', `f${i}`), randomBytes(size));
    const { file, info } = await dumpToFile(src);
    for (const compression of ['zstd', 'none'] as const) {
      const { stages, stored } = compressForStorage(compression);
      const storedFile = join(await freshDir(), 'artifact');
      await pipeline([createReadStream(file), ...stages, createWriteStream(storedFile)]);
      const decode = { compression, ...stored(), label: 'artifact resources/w/files.tar' };
      // Passed on through a stage that looks at each chunk, as the service's byte counter does.
      let reads = 0;
      const memories = new Set<ArrayBuffer>();
      const tap = new Transform({
        transform(c: Buffer, _e, cb) {
          reads++;
          memories.add(c.buffer as ArrayBuffer);
          cb(null, c);
        },
      });
      const input = new LendingFileReader(await open(storedFile, 'r')).pipe(tap);
      const target = join(await freshDir(), 't');
      const r = await filesEngine.restore(restoreReq(target, input, info.counts, { mode: 'new_target', decode }));
      assert.deepEqual(compareCounts(info.counts, r.counts), [], compression);
      assert.deepEqual(await treeState(target), await treeState(src), compression);
      assert.ok(reads >= 10, `${compression}: ${reads} reads`);
      assert.ok(memories.size < reads / 2, `${compression}: ${memories.size} buffers for ${reads} reads: the restore gave them back`);
    }
  });

  it('gets every file digest right when a stored zstd artifact is decoded by the codec, which hashes what the restore worker wrote', async () => {
    // Decoded pieces are 1 MiB: files end inside them, span several and sit on their edges, some are empty.
    const src = join(await freshDir(), 'src');
    await mkdir(join(src, 'd1/d2'), { recursive: true });
    const sizes = [0, 1, 700_000, 1_048_576, 3_000_000, 511, 0, 2_097_152 - 512, 65_536];
    for (const [i, size] of sizes.entries()) await writeFile(join(src, i % 2 ? 'd1' : 'd1/d2', `f${i}`), randomBytes(size));
    await symlink('d1/f1', join(src, 'link'));
    const { file, info } = await dumpToFile(src);
    const { stages, stored } = compressForStorage('zstd');
    const storedFile = join(await freshDir(), 'files.tar.zst');
    await pipeline([createReadStream(file), ...stages, createWriteStream(storedFile)]);
    const decode = { compression: 'zstd' as const, ...stored(), label: 'artifact resources/w/files.tar.zst' };
    const v1 = summarize(await linesOf(src));
    for (const [formatVersion, expected] of [
      [2, info.counts],
      [1, v1],
    ] as const) {
      const target = join(await freshDir(), 't');
      const r = await filesEngine.restore(restoreReq(target, createReadStream(storedFile), expected, { mode: 'new_target', decode, formatVersion }));
      assert.deepEqual(compareCounts(expected, r.counts), [], `format ${formatVersion}`);
      assert.deepEqual(await treeState(target), await treeState(src));
    }
  });

  it('refuses an artifact that is not a tar archive', async () => {
    const target = join(await freshDir(), 't');
    await mkdir(target);
    await writeFile(join(target, 'keep.txt'), 'keep');
    const junk = join(await freshDir(), 'junk');
    await writeFile(junk, Buffer.alloc(4096, 'j'));
    await assert.rejects(filesEngine.restore(restoreReq(target, junk, {})), (e) => isErrorCode(e, 'engine_failed') && /not a valid tar archive/.test(e.message));
    assert.deepEqual(await readdir(target), ['keep.txt']);
    assert.deepEqual(await leftovers(dirname(target)), []);
  });

  it('refuses a restore whose counts do not match, before touching the target', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    const { file, info } = await dumpToFile(src);
    await writeFile(join(src, 'added.txt'), 'added');
    const state = await treeState(src);
    await assert.rejects(
      filesEngine.restore(restoreReq(src, file, { ...info.counts, tree_sha256: '0'.repeat(64) })),
      (e) => isErrorCode(e, 'verification_failed'),
    );
    assert.deepEqual(await treeState(src), state);
    assert.deepEqual(await leftovers(dirname(src)), []);
  });

  it('fails when a file changes size while it is read', async () => {
    for (const change of ['grow', 'shrink'] as const) {
      const src = await freshDir();
      const big = join(src, 'growing.log');
      // Larger than the batches the dump may send ahead (dump.ts CREDIT_BATCHES of dump-pack.ts BATCH): it is still being read when it changes.
      await writeFile(big, Buffer.alloc(32 * 1024 * 1024, 1));
      const out = await filesEngine.dump({ resource: resource(src), selection: null, exclude: [], useReplica: false, workDir: join(root, 'work'), signal: never });
      // Read a little, so the file is being packed, then change it.
      const it = out.stream[Symbol.asyncIterator]();
      await it.next();
      if (change === 'grow') await appendFile(big, 'more');
      else await truncate(big, 1024 * 1024);
      await assert.rejects(
        (async () => {
          for (;;) if ((await it.next()).done) break;
        })(),
        (e) => isErrorCode(e, 'engine_failed') && e.message.includes('growing.log') && /changed size/.test(e.message),
      );
      await assert.rejects(out.info, (e) => isErrorCode(e, 'engine_failed'));
    }
  });

  it('honours cancellation', async () => {
    const src = await freshDir();
    await makeTree(src);
    const ac = new AbortController();
    const out = await filesEngine.dump({ resource: resource(src), selection: null, exclude: [], useReplica: false, workDir: join(root, 'work'), signal: ac.signal });
    const it = out.stream[Symbol.asyncIterator]();
    await it.next();
    ac.abort();
    await assert.rejects(out.info, (e) => isErrorCode(e, 'cancelled'));

    const { file, info } = await dumpToFile(src);
    const target = join(await freshDir(), 't');
    const ac2 = new AbortController();
    const slow = Readable.from(
      (async function* () {
        for await (const c of createReadStream(file, { highWaterMark: 64 * 1024 })) {
          yield c as Buffer;
          ac2.abort();
        }
      })(),
      { objectMode: false },
    );
    await assert.rejects(filesEngine.restore(restoreReq(target, slow, info.counts, { signal: ac2.signal })), (e) => isErrorCode(e, 'cancelled'));
    assert.deepEqual(await readdir(dirname(target)), []);
  });

  it('swaps contents in place when the target cannot be renamed (mount point)', async () => {
    const target = await freshDir();
    await writeFile(join(target, 'old.txt'), 'old');
    await mkdir(join(target, 'old-dir'));
    const staging = join(target, '.backvault-restore-x');
    await mkdir(join(staging, 'new-dir'), { recursive: true });
    await writeFile(join(staging, 'new.txt'), 'new');
    const warnings = await swapContents(staging, target, join(target, '.backvault-old-x'));
    assert.deepEqual(warnings, []);
    assert.deepEqual((await readdir(target)).sort(), ['.backvault-restore-x', 'new-dir', 'new.txt']);
    assert.deepEqual(await readdir(staging), []);
  });

  it('dumps from the replica when asked to', async () => {
    const primary = await freshDir();
    const replica = await freshDir();
    await writeFile(join(primary, 'p.txt'), 'primary');
    await writeFile(join(replica, 'r.txt'), 'replica');
    const spec = { ...resource(primary), replica };
    for (const [useReplica, want] of [
      [true, ['r.txt']],
      [false, ['p.txt']],
    ] as const) {
      const out = await filesEngine.dump({ resource: spec, selection: null, exclude: [], useReplica, workDir: join(root, 'work'), signal: never });
      const file = join(await freshDir(), 'x.tar');
      await pipeline(out.stream, createWriteStream(file));
      await out.info;
      assert.deepEqual(await tarNames(file), want);
    }
  });

  it('lists the top level and gives a scratch target inside workDir', async () => {
    const src = await freshDir();
    await makeTree(src);
    const objects = await filesEngine.listObjects(resource(src, { exclude: ['a'] }));
    assert.deepEqual(
      objects.map((o) => `${o.kind}:${o.name}`),
      ['file:.hidden', 'directory:empty-dir', 'file:empty.txt', 'file:link-dir', 'file:link-internal', 'file:link-outside', `directory:${dirname(LONG)}`, 'file:run.sh', 'file:secret.txt', 'directory:ünïcødé 日本'],
    );
    const { file, info } = await dumpToFile(src);
    const work = join(await freshDir(), 'work');
    const scratch = await filesEngine.scratchTarget(resource(src), work);
    assert.ok(scratch.connection.startsWith(`${work}/`));
    const r = await filesEngine.restore(restoreReq(scratch.connection, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    await scratch.cleanup();
    await scratch.cleanup();
    assert.deepEqual(await readdir(work), []);
  });
  it('verifies a format 1 artifact by the sorted (v1) digest, and format 2 by archive order', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    // Packed after everything in "a/" (walk order), sorted before it (byte order): the two digests differ.
    await writeFile(join(src, 'a-c.txt'), 'between');
    const { file, info } = await dumpToFile(src);
    const lines = await linesOf(src);
    const v1 = summarize(lines);
    const byPath = new Map(lines.map((l) => [l.path, l]));
    const text = (l: TreeLine) => (l.kind === 'd' ? `d ${l.path}` : l.kind === 'l' ? `l ${l.path} ${l.target}` : `f ${l.path} ${l.size} ${l.sha256}`);
    const inArchiveOrder = (await tarNames(file)).map((name) => `${text(byPath.get(name.replace(/\/$/, ''))!)}\n`);
    const v2 = createHash('sha256').update(inArchiveOrder.join('')).digest('hex');
    assert.equal(info.counts.tree_sha256, v2);
    assert.notEqual(v1.tree_sha256, v2);
    assert.deepEqual(compareCounts(v1, { ...info.counts, tree_sha256: v1.tree_sha256 }), []);

    for (const partial of [false, true]) {
      const target = join(await freshDir(), 't');
      const r = await filesEngine.restore(restoreReq(target, file, v1, { mode: partial ? 'in_place' : 'new_target', partial, formatVersion: 1 }));
      assert.deepEqual(compareCounts(v1, r.counts), []);
      assert.deepEqual(await treeState(target), await treeState(src));
    }
    // A v2 digest is not a v1 digest: the restore is refused and leaves nothing.
    const base = await freshDir();
    await assert.rejects(
      filesEngine.restore(restoreReq(join(base, 't'), file, info.counts, { mode: 'new_target', formatVersion: 1 })),
      (e) => isErrorCode(e, 'verification_failed') && /tree_sha256/.test(e.message),
    );
    assert.deepEqual(await readdir(base), []);
  });

  it('restores archives GNU tar wrote, with long names and links (gnu and pax formats)', async () => {
    const src = join(await freshDir(), 'src');
    await mkdir(src);
    await makeTree(src);
    await symlink('z'.repeat(150), join(src, 'long-link'));
    // GNU tar packs in directory order, not the walk's: check by the order-free v1 digest.
    const expected = summarize(await linesOf(src));
    for (const format of ['gnu', 'pax']) {
      const file = join(await freshDir(), `${format}.tar`);
      await run('tar', [`--format=${format}`, '-cf', file, '-C', src, '.']);
      const target = join(await freshDir(), 't');
      const r = await filesEngine.restore(restoreReq(target, file, expected, { mode: 'new_target', formatVersion: 1 }));
      assert.deepEqual(compareCounts(expected, r.counts), []);
      assert.deepEqual(await treeState(target), await treeState(src));
    }
  });

  it('keeps no entry list for a full restore', async () => {
    const src = await freshDir();
    await makeTree(src);
    const { file, info } = await dumpToFile(src);
    for (const keepList of [false, true]) {
      const staging = await freshDir();
      const r = await extractInto(staging, createReadStream(file), 2, never, keepList);
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
      if (keepList) assert.equal(r.list?.length, info.counts.files! + info.counts.directories! + info.counts.symlinks!);
      else assert.equal(r.list, null);
    }
  });

  // A tar comes in batches to the restore worker; a stored zstd artifact goes through a codec worker that sends the decoded pieces to it.
  for (const kind of ['tar', 'stored zstd'] as const) {
    /** The restore's input, half of it and then waiting, and its decode spec. */
    const stalledInput = async (file: string) => {
      if (kind === 'tar') return { input: await stalling(file), decode: undefined };
      const { stored, decode } = await storedZstd(file);
      return { input: stallingBytes(stored), decode };
    };

    it(`stops the restore worker promptly on cancellation, and the next restore succeeds (${kind})`, async () => {
      const src = join(await freshDir(), 'src');
      await manyFiles(src, 1200);
      const { file, info } = await dumpToFile(src);
      const base = await freshDir();
      const target = join(base, 't');
      const ac = new AbortController();
      const { input, decode } = await stalledInput(file);
      const p = filesEngine.restore(restoreReq(target, input, info.counts, { mode: 'new_target', signal: ac.signal, decode }));
      p.catch(() => {});
      // The worker has written part of the tree into staging, and waits for more input.
      await waitFor('files in staging', async () => {
        const [staging] = await readdir(base);
        return staging !== undefined && (await readdir(join(base, staging)).catch(() => [])).length > 2;
      });
      const t0 = Date.now();
      ac.abort();
      await assert.rejects(p, (e) => isErrorCode(e, 'cancelled'));
      // Well within the grace before the worker would be terminated: it stopped by itself.
      assert.ok(Date.now() - t0 < 3000, `cancel took ${Date.now() - t0} ms`);
      assert.deepEqual(await readdir(base), []);

      // The counts' tree_sha256 covers every path and content.
      const again = kind === 'tar' ? { input: file, decode: undefined } : await storedZstd(file).then((z) => ({ input: Readable.from([z.stored]), decode: z.decode }));
      const r = await filesEngine.restore(restoreReq(target, again.input, info.counts, { mode: 'new_target', decode: again.decode }));
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
    });

    it(`fails with an AppError when the restore worker dies, and the next restore gets a new worker (${kind})`, async () => {
      const src = join(await freshDir(), 'src');
      await manyFiles(src, 1200);
      const { file, info } = await dumpToFile(src);
      const base = await freshDir();
      const target = join(base, 't');
      const { input, decode } = await stalledInput(file);
      const p = filesEngine.restore(restoreReq(target, input, info.counts, { mode: 'new_target', decode }));
      p.catch(() => {});
      await waitFor('files in staging', async () => {
        const [staging] = await readdir(base);
        return staging !== undefined && (await readdir(join(base, staging)).catch(() => [])).length > 2;
      });
      const started = restoreWorkerPool.started;
      await restoreWorkerPool.terminateAll();
      await assert.rejects(p, (e) => isErrorCode(e, 'engine_failed') && /restore worker stopped/.test(e.message));
      assert.deepEqual(await readdir(base), []);

      // The counts' tree_sha256 covers every path and content.
      const again = kind === 'tar' ? { input: file, decode: undefined } : await storedZstd(file).then((z) => ({ input: Readable.from([z.stored]), decode: z.decode }));
      const r = await filesEngine.restore(restoreReq(target, again.input, info.counts, { mode: 'new_target', decode: again.decode }));
      assert.deepEqual(compareCounts(info.counts, r.counts), []);
      assert.equal(restoreWorkerPool.started, started + 1);
    });
  }

  describe('restores modes, owners and mtimes exactly', () => {
    const T = new Date('2019-05-06T07:08:09Z');
    /** Sets every entry's mtime (contents before their directory, which the writes would change). */
    async function stamp(dir: string): Promise<void> {
      const state = await statState(dir);
      for (const rel of Object.keys(state).reverse()) {
        const p = join(dir, rel);
        if ((await lstat(p)).isSymbolicLink()) await lutimes(p, T, T);
        else await utimes(p, T, T);
      }
    }

    async function roundTrip(src: string): Promise<void> {
      const state = await statState(src);
      const target = join(await freshDir(), 't');
      try {
        const { file, info } = await dumpToFile(src);
        const r = await filesEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target' }));
        assert.deepEqual(compareCounts(info.counts, r.counts), []);
        assert.deepEqual(await statState(target), state);
        // In place over a changed tree: the swap path gives back the same.
        await chmod(join(target, 'ro'), 0o755);
        await writeFile(join(target, 'ro/added.txt'), 'x');
        await filesEngine.restore(restoreReq(target, file, info.counts));
        assert.deepEqual(await statState(target), state);
      } finally {
        // Read-only directories would stop the cleanup of an unprivileged run (which also leaves the old tree beside target, with a warning).
        await run('chmod', ['-R', 'u+rwX', src, dirname(target)]).catch(() => {});
      }
    }

    it('set-id and sticky bits, read-only directories with content', async () => {
      const src = join(await freshDir(), 'src');
      await mkdir(join(src, 'ro/sub'), { recursive: true });
      await mkdir(join(src, 'sticky'));
      await mkdir(join(src, 'sgid-dir'));
      await writeFile(join(src, 'ro/inner.txt'), 'inner');
      await writeFile(join(src, 'ro/sub/x'), 'x');
      await writeFile(join(src, 'sticky/f'), 'f');
      await writeFile(join(src, 'sgid-dir/f'), 'f');
      await symlink('ro/inner.txt', join(src, 'link'));
      for (const [rel, mode] of [
        ['suid', 0o4755],
        ['sgid', 0o2755],
        ['both', 0o6750],
        ['private', 0o400],
        ['odd', 0o604],
      ] as const) {
        await writeFile(join(src, rel), rel);
        await chmod(join(src, rel), mode);
      }
      await chmod(join(src, 'ro/inner.txt'), 0o444);
      await chmod(join(src, 'sticky'), 0o1777);
      await chmod(join(src, 'sgid-dir'), 0o2775);
      await chmod(join(src, 'ro/sub'), 0o555);
      await chmod(join(src, 'ro'), 0o555);
      await stamp(src);
      const state = await statState(src);
      assert.equal(state.suid!.mode & 0o7777, 0o4755);
      assert.equal(state.sticky!.mode & 0o7777, 0o1777);
      await roundTrip(src);
    });

    it('files, directories and symlinks owned by other users', async (t) => {
      if (process.getuid?.() !== 0) {
        // Only root can give a file to another user; CI runs as root, so there this must not be skipped.
        if (process.env.CI) assert.fail('this test needs root, and CI runs as root');
        t.skip('needs root: only root can give files to other users');
        return;
      }
      const src = join(await freshDir(), 'src');
      await mkdir(join(src, 'ro/owned-dir'), { recursive: true });
      await writeFile(join(src, 'ro/owned-dir/theirs.txt'), 'theirs');
      await writeFile(join(src, 'owned.txt'), 'owned');
      await writeFile(join(src, 'owned-suid'), 'suid');
      await writeFile(join(src, 'owned-sgid'), 'sgid');
      await symlink('owned.txt', join(src, 'owned-link'));
      await chown(join(src, 'ro/owned-dir/theirs.txt'), 4321, 8765);
      await chown(join(src, 'owned.txt'), 1234, 5678);
      await chown(join(src, 'ro/owned-dir'), 1234, 5678);
      await chown(join(src, 'ro'), 1234, 0);
      // chown clears set-id bits: the mode goes on after.
      await chown(join(src, 'owned-suid'), 1234, 5678);
      await chmod(join(src, 'owned-suid'), 0o4750);
      await chown(join(src, 'owned-sgid'), 0, 5678);
      await chmod(join(src, 'owned-sgid'), 0o2710);
      await lchown(join(src, 'owned-link'), 1234, 5678);
      await chmod(join(src, 'ro/owned-dir'), 0o2750);
      await chmod(join(src, 'ro'), 0o555);
      await stamp(src);
      const state = await statState(src);
      assert.equal(state['owned-suid']!.mode & 0o7777, 0o4750);
      assert.equal(state['owned-link']!.uid, 1234);
      await roundTrip(src);
    });
  });
});
