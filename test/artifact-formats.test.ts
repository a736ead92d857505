// Artifacts written by other versions of Backvault: a files backup of format 1
// (tree digest over lines sorted by path) still restores and is checked by
// that digest; an artifact of a format newer than this server reads is
// refused before anything is written. Through the HTTP API with a real
// server, exchange archives and a real directory tree.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';

/** The format-1 digest, computed here on its own: "d/f/l" lines sorted by the bytes of their paths. */
async function digestV1(root: string): Promise<string> {
  const lines: { path: Buffer; text: string }[] = [];
  async function walk(rel: string): Promise<void> {
    for (const name of await readdir(join(root, rel))) {
      const p = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(root, p));
      if (st.isDirectory()) {
        lines.push({ path: Buffer.from(p), text: `d ${p}` });
        await walk(p);
      } else if (st.isSymbolicLink()) {
        lines.push({ path: Buffer.from(p), text: `l ${p} ${await readlink(join(root, p))}` });
      } else {
        const data = await readFile(join(root, p));
        lines.push({ path: Buffer.from(p), text: `f ${p} ${data.length} ${createHash('sha256').update(data).digest('hex')}` });
      }
    }
  }
  await walk('');
  lines.sort((a, b) => Buffer.compare(a.path, b.path));
  return createHash('sha256')
    .update(lines.map((l) => `${l.text}\n`).join(''))
    .digest('hex');
}

/** The exchange archive with its manifest changed by edit (manifest.json stays the first entry). */
function rewriteManifest(archive: Buffer, work: string, edit: (m: any) => void): Buffer {
  const dir = mkdtempSync(join(work, 'x-'));
  execFileSync('tar', ['-xf', '-', '-C', dir], { input: archive });
  const path = join(dir, 'manifest.json');
  const manifest = JSON.parse(readFileSync(path, 'utf8'));
  edit(manifest);
  writeFileSync(path, JSON.stringify(manifest));
  return execFileSync('tar', ['-cf', '-', '-C', dir, 'manifest.json', 'resources'], { maxBuffer: 64 * 1024 * 1024 });
}

async function upload(t: TestServer, instance: string, data: Buffer) {
  const fd = new FormData();
  fd.append('file', new Blob([new Uint8Array(data)]), 'archive.tar');
  const res = await fetch(`${t.url}/api/v1/instances/${instance}/backups/import`, { method: 'POST', headers: { authorization: `Bearer ${t.adminKey}` }, body: fd });
  return { status: res.status, body: (await res.json()) as any };
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

describe('artifacts of other formats', () => {
  let t: TestServer;
  let work: { path: string; cleanup(): Promise<void> };
  let archive: Buffer;
  let src: string;

  before(async () => {
    t = await startTestServer();
    work = await tempDir();
    // Names whose walk order differs from their sorted order ("a/…" walks before "a-c", sorts after it).
    src = join(work.path, 'tree');
    await mkdir(join(src, 'a/deep'), { recursive: true });
    await writeFile(join(src, 'a/deep/x.txt'), 'inner');
    await writeFile(join(src, 'a-c'), 'beside');
    await writeFile(join(src, 'a.txt'), 'dot');
    await writeFile(join(src, 'über.md'), 'ü');
    await symlink('a/deep/x.txt', join(src, 'link'));
    assert.equal((await t.api('POST', '/api/v1/instances', { name: 'fmt' })).status, 201);
    assert.equal((await t.api('POST', '/api/v1/instances/fmt/resources', { name: 'www', type: 'files', connection: src })).status, 201);
    const created = await t.api('POST', '/api/v1/instances/fmt/backups', { type: 'full' });
    const b = await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    assert.equal(b.status, 'success', b.status_info);
    const link = await t.api('POST', `/api/v1/backups/${b.id}/download-link`, {});
    archive = Buffer.from(await (await fetch(link.body.url)).arrayBuffer());
  });
  after(async () => {
    await t.close();
    await work.cleanup();
  });

  async function importAndRestore(edited: Buffer, target: string) {
    const imported = await upload(t, 'fmt', edited);
    assert.equal(imported.status, 202, JSON.stringify(imported.body));
    const ib = await waitFor(t.api, `/api/v1/backups/${imported.body.id}`);
    assert.equal(ib.status, 'success', ib.status_info);
    const r = await t.api('POST', '/api/v1/instances/fmt/restores', { backup: ib.id, targets: { www: { connection: target } } });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    return waitFor(t.api, `/api/v1/restores/${r.body.id}`);
  }

  test('new backups are written in files format 2, whose digest is not the sorted one', () => {
    const dir = mkdtempSync(join(work.path, 'peek-'));
    execFileSync('tar', ['-xf', '-', '-C', dir, 'manifest.json'], { input: archive });
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    assert.deepEqual(manifest.resources[0].engine, { name: 'files', version: 2 });
    assert.match(manifest.resources[0].counts.tree_sha256, /^[0-9a-f]{64}$/);
  });

  test('a format-1 files backup restores and is checked by the sorted digest', async () => {
    const v1 = await digestV1(src);
    const edited = rewriteManifest(archive, work.path, (m) => {
      assert.notEqual(m.resources[0].counts.tree_sha256, v1, 'the tree must tell the two digests apart');
      m.resources[0].engine.version = 1;
      m.resources[0].counts.tree_sha256 = v1;
    });
    const target = join(work.path, 'from-v1');
    const done = await importAndRestore(edited, target);
    assert.equal(done.status, 'success', done.status_info);
    assert.equal(await digestV1(target), v1);
    assert.equal(await readlink(join(target, 'link')), 'a/deep/x.txt');
  });

  test('a format-1 manifest carrying a format-2 digest fails verification and leaves no target', async () => {
    const edited = rewriteManifest(archive, work.path, (m) => {
      m.resources[0].engine.version = 1;
    });
    const target = join(work.path, 'mislabelled');
    const done = await importAndRestore(edited, target);
    assert.equal(done.status, 'error');
    assert.match(done.status_info, /do not match the backup/);
    assert.equal(await exists(target), false);
  });

  test('an artifact of a newer format is refused before anything is written', async () => {
    const edited = rewriteManifest(archive, work.path, (m) => {
      m.resources[0].engine.version = 99;
    });
    const target = join(work.path, 'from-future');
    const done = await importAndRestore(edited, target);
    assert.equal(done.status, 'error');
    assert.match(done.status_info, /format 99.*reads up to format 2.*newer Backvault/);
    assert.match(done.result.resources[0].error, /newer Backvault/);
    assert.equal(await exists(target), false);
  });
});
