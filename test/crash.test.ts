// A server killed in the middle of a backup: after a restart the backup is in
// error as interrupted, and storage shows nothing of it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdir, readdir } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { once } from 'node:events';
import { tempDir } from './helpers.ts';
import { loadConfig } from '../src/config/index.ts';
import { startServer } from '../src/main.ts';

async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path);
  for (let done = 0; done < bytes; done += 1 << 20) {
    if (!out.write(randomBytes(1 << 20))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'close');
}

test('a server killed during a backup leaves an error status and no visible artifact', async (t) => {
  const work = await tempDir();
  t.after(() => work.cleanup());
  const dataDir = join(work.path, 'data');
  const src = join(work.path, 'big');
  await mkdir(src);
  // Random data with gzip runs slowly enough (tens of MB/s) to be caught mid-way.
  await writeRandomFile(join(src, 'blob.bin'), 160 << 20);

  const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/serve.ts', dataDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
  const { url, key } = JSON.parse(line) as { url: string; key: string };
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(url + path, { method, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return (await res.json()) as any;
  };
  await call('POST', '/api/v1/instances', { name: 'big' });
  await call('POST', '/api/v1/instances/big/resources', { name: 'www', type: 'files', connection: src });
  const backup = await call('POST', '/api/v1/instances/big/backups', { type: 'full', compression: 'gzip' });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const b = await call('GET', `/api/v1/backups/${backup.id}`);
    if (b.status === 'running' && b.progress?.bytes_done > 0) break;
    assert.ok(b.status === 'scheduled' || b.status === 'running', `backup ended before it could be interrupted: ${b.status}`);
    assert.ok(Date.now() < deadline, 'backup never started');
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGKILL');
  await once(child, 'exit');

  // Restart on the same directory.
  const server = await startServer(loadConfig({ flags: { dir: dataDir, port: 0, log_level: 'silent' }, env: {} }));
  try {
    const res = await fetch(`${server.url}/api/v1/backups/${backup.id}`, { headers: { authorization: `Bearer ${key}` } });
    const b = (await res.json()) as any;
    assert.equal(b.status, 'error');
    assert.match(b.status_info, /interrupted/);
    const backupsDir = join(dataDir, 'storage', 'backups');
    const left = await readdir(backupsDir).catch(() => [] as string[]);
    assert.deepEqual(left, [], 'no object of the interrupted backup is visible');
    const temps = await readdir(join(dataDir, 'storage', '.tmp')).catch(() => [] as string[]);
    assert.deepEqual(temps, [], 'temp files of the killed write are cleaned at start');
  } finally {
    await server.close();
  }
});
