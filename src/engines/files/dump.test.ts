import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import tar from 'tar-stream';
import { decompress as zstdDecompress } from 'zstd-napi';
import { isErrorCode } from '../../errors/index.ts';
import { lend, recycled } from '../../platform/recycle.ts';
import { ByteCounter, compressForStorage } from '../../platform/streams.ts';
import type { DumpInfo } from '../engine.ts';
import { dumpTree, filesDumpPool } from './dump.ts';
import { BATCH } from './dump-pack.ts';
import { PathFilter } from './select.ts';

const never = new AbortController().signal;
const MiB = 1024 * 1024;

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bv-files-dump-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
const freshDir = () => mkdtemp(join(root, `t${n++}-`));
const everything = () => new PathFilter([], []);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Bytes that do not compress to nothing and differ per file. */
function bytes(size: number, seed: string): Buffer {
  const out = Buffer.alloc(size);
  const block = createHash('sha256').update(seed).digest();
  for (let i = 0; i < size; i += block.length) block.copy(out, i);
  return out;
}

async function bigTree(bigMiB = 24): Promise<string> {
  const dir = await freshDir();
  await mkdir(join(dir, 'small'));
  for (let i = 0; i < 50; i++) await writeFile(join(dir, 'small', `f${i}.txt`), bytes(3000 + i, `s${i}`));
  await writeFile(join(dir, 'z-big.bin'), bytes(bigMiB * MiB, 'big'));
  return dir;
}

async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function dumpAll(dir: string): Promise<{ tar: Buffer; info: DumpInfo }> {
  const { stream, info } = dumpTree(dir, everything(), never);
  const data = await drain(stream);
  return { tar: data, info: await info };
}

/** Waits until cond() holds, or fails after ms. */
async function eventually(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting: ${what}`);
    await sleep(10);
  }
}

interface Entry {
  header: tar.Header;
  data: Buffer;
}

async function entries(archive: Buffer): Promise<Entry[]> {
  const out: Entry[] = [];
  const ex = tar.extract();
  const fed = new Promise<void>((resolve, reject) => {
    ex.on('error', reject);
    ex.on('finish', resolve);
  });
  ex.end(archive);
  for await (const e of ex) out.push({ header: e.header, data: await drain(e as unknown as Readable) });
  await fed;
  return out;
}

describe('files dump in a worker thread', () => {
  it('hashes the tree in walk order (v2), as an independent walk does, and packs what tar-stream packs', async () => {
    const dir = await freshDir();
    // "a/b/x" walks before "a-c" although it sorts after it as a path; U+E000
    // sorts after U+1F600 in UTF-8 but before its surrogates in UTF-16.
    await mkdir(join(dir, 'a/b'), { recursive: true });
    await mkdir(join(dir, 'a-c'));
    await mkdir(join(dir, 'ünï 日本'));
    await writeFile(join(dir, 'a/b/x'), 'x\n');
    await writeFile(join(dir, 'a-c/y'), 'y\n');
    await writeFile(join(dir, 'a/b0'), '');
    await writeFile(join(dir, 'ünï 日本/файл.txt'), 'привет\n');
    await writeFile(join(dir, '\u{1F600}smile'), 'smile');
    await writeFile(join(dir, '\uE000private'), 'private');
    await writeFile(join(dir, 'Z'), bytes(1234567, 'z'));
    await writeFile(join(dir, `${'n'.repeat(120)}.txt`), 'long name');
    await symlink('a/b/x', join(dir, 'link'));
    await symlink('ünï 日本/'.repeat(20), join(dir, 'long-link'));

    // The expected digest, from a walk written here with the promise API.
    const lines: string[] = [];
    const order: string[] = [];
    const walk = async (rel: string) => {
      const names = (await readdir(join(dir, rel))).sort((p, q) => Buffer.compare(Buffer.from(p), Buffer.from(q)));
      for (const name of names) {
        const r = rel ? `${rel}/${name}` : name;
        const st = await lstat(join(dir, r));
        order.push(`${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'} ${r}`);
        if (st.isDirectory()) {
          lines.push(`d ${r}`);
          await walk(r);
        } else if (st.isSymbolicLink()) {
          lines.push(`l ${r} ${await readlink(join(dir, r))}`);
        } else {
          const data = await readFile(join(dir, r));
          lines.push(`f ${r} ${data.length} ${createHash('sha256').update(data).digest('hex')}`);
        }
      }
    };
    await walk('');
    const expected = createHash('sha256')
      .update(lines.map((l) => `${l}\n`).join(''))
      .digest('hex');

    const { tar: archive, info } = await dumpAll(dir);
    assert.equal(info.counts.tree_sha256, expected);
    assert.deepEqual(info.warnings, []);
    assert.equal(info.counts.files, 8);
    assert.equal(info.counts.directories, 4);
    assert.equal(info.counts.symlinks, 2);

    // The archive holds the same paths in the same order.
    const got = await entries(archive);
    assert.deepEqual(
      got.map((e) => `${e.header.type === 'directory' ? 'd' : e.header.type === 'symlink' ? 'l' : 'f'} ${e.header.name.replace(/\/$/, '')}`),
      order,
    );
    assert.ok(got.findIndex((e) => e.header.name === 'a/b/x') < got.findIndex((e) => e.header.name === 'a-c/'));

    // Byte for byte what tar-stream's own pack makes of the same entries.
    const pack = tar.pack();
    const packed = drain(pack as unknown as Readable);
    for (const e of got) {
      const h = e.header;
      const header = { name: h.name, mode: h.mode, uid: h.uid, gid: h.gid, mtime: h.mtime, type: h.type, size: h.size, ...(h.linkname ? { linkname: h.linkname } : {}) };
      await new Promise<void>((resolve, reject) => pack.entry(header, e.data, (err) => (err ? reject(err) : resolve())));
    }
    pack.finalize();
    assert.ok((await packed).equals(archive));
  });

  it('stops the worker when the dump is cancelled or its stream destroyed, and reuses it', async () => {
    const dir = await bigTree();
    await dumpAll(dir); // a worker exists and is idle
    const started = filesDumpPool.started;
    for (const how of ['signal', 'destroy'] as const) {
      const ac = new AbortController();
      const { stream, info } = dumpTree(dir, everything(), ac.signal);
      const it = stream[Symbol.asyncIterator]();
      await it.next();
      await sleep(50); // mid-file: the worker waits for credit inside z-big.bin
      if (how === 'signal') ac.abort();
      else stream.destroy();
      await assert.rejects(info, (e) => isErrorCode(e, 'cancelled'));
      // The worker answered and went back to the pool: it was neither left running nor killed.
      await eventually(() => filesDumpPool.idle() >= 1, 'the worker is idle again');
      const received = filesDumpPool.received;
      await sleep(100);
      assert.equal(filesDumpPool.received, received);
    }
    const again = await dumpAll(dir);
    assert.equal(again.info.counts.files, 51);
    assert.equal(filesDumpPool.started, started);
  });

  it('does not run ahead of a consumer that stops reading', async () => {
    const dir = await bigTree(64);
    const { stream, info } = dumpTree(dir, everything(), never);
    const before = filesDumpPool.received;
    const it = stream[Symbol.asyncIterator]();
    let total = ((await it.next()).value as Buffer).length;
    // Until the worker has stopped sending (or has sent everything, if it ignored the credit).
    let paused = -1;
    for (let i = 0; i < 50 && filesDumpPool.received - before !== paused; i++) {
      paused = filesDumpPool.received - before;
      await sleep(200);
    }
    // The batch read, and the credit (2 batches of 4 MiB); the tree is 64 MiB.
    assert.ok(paused > 0 && paused <= 3 * BATCH, `sent ${paused} bytes while nobody read`);
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      total += (r.value as Buffer).length;
    }
    const done = await info;
    assert.equal(done.counts.files, 51);
    assert.equal(total, filesDumpPool.received - before);
    assert.ok(total > 24 * MiB);
  });

  it('fails the dump with an AppError when its worker dies, and the next dump gets a new worker', async () => {
    const dir = await bigTree();
    const good = await dumpAll(dir);
    const { stream, info } = dumpTree(dir, everything(), never);
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const started = filesDumpPool.started;
    await filesDumpPool.terminateAll();
    assert.equal(filesDumpPool.live(), 0);
    await assert.rejects(
      (async () => {
        for (;;) if ((await it.next()).done) break;
      })(),
      (e) => isErrorCode(e, 'engine_failed') && /worker stopped/.test(e.message),
    );
    await assert.rejects(info, (e) => isErrorCode(e, 'engine_failed'));
    const again = await dumpAll(dir);
    assert.equal(filesDumpPool.started, started + 1);
    assert.equal(again.info.counts.tree_sha256, good.info.counts.tree_sha256);
    assert.ok(again.tar.equals(good.tar));
  });

  it('takes back the batches the compressing stage took and refills them, and the stored bytes are the same tar', async () => {
    const dir = await bigTree(64);
    const plain = await dumpAll(dir); // a consumer that keeps the chunks: nothing is given back
    const reused = filesDumpPool.reused;
    const made = filesDumpPool.made;
    const { stream, info } = dumpTree(dir, everything(), never);
    const stored = compressForStorage('zstd');
    const zst = await drain(stream.pipe(new ByteCounter(() => {})).pipe(stored.stages[0]!));
    assert.equal((await info).counts.tree_sha256, plain.info.counts.tree_sha256);
    // 64 MiB in 4 MiB batches (17 with the tar headers): three buffers in all, the two
    // the codec holds and the one the worker fills; every other batch is one of them refilled.
    assert.ok(filesDumpPool.made - made <= 3, `made ${filesDumpPool.made - made} batch buffers`);
    assert.ok(filesDumpPool.reused - reused >= 17 - 3, `reused ${filesDumpPool.reused - reused} batches`);
    assert.ok(zstdDecompress(zst).equals(plain.tar), 'the compressed dump decompresses to the tar of a dump without reuse');
    assert.equal(stored.stored().sha256, createHash('sha256').update(zst).digest('hex'));
  });

  it('never gives back a part of a batch that a stream split', () => {
    const chunk = Buffer.alloc(1024, 7);
    let given = 0;
    lend(chunk, () => given++);
    // A consumer that read(n) a part: the rest is still queued in the stream.
    assert.equal(recycled(chunk.subarray(0, 512)), false);
    assert.equal(recycled(chunk.subarray(512)), false);
    assert.equal(recycled(Buffer.alloc(1024)), false);
    assert.equal(given, 0);
    assert.equal(recycled(chunk), true);
    assert.equal(recycled(chunk), false, 'given back once only');
    assert.equal(given, 1);
  });

  it('reports errors from the worker as AppErrors', async () => {
    const dir = join(await freshDir(), 'missing');
    const { stream, info } = dumpTree(dir, everything(), never);
    await assert.rejects(drain(stream), (e) => isErrorCode(e, 'engine_failed') && /Cannot read the directory/.test(e.message) && e.message.includes(dir));
    await assert.rejects(info, (e) => isErrorCode(e, 'engine_failed'));
    // The worker survived its job's failure.
    await eventually(() => filesDumpPool.idle() >= 1, 'the worker is idle again');
  });
});
