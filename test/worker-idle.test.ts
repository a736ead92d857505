// worker_idle_seconds: the server's worker threads (compression, files dump
// and restore) wait this long for the next job, then leave.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { codecPool } from '../src/platform/codec.ts';
import { restoreWorkerPool } from '../src/engines/files/restore.ts';
import { filesDumpPool } from '../src/engines/files/dump.ts';
import { startTestServer, tempDir, waitFor, type TestServer } from './helpers.ts';

const livePools = () => ({ codec: codecPool.live(), restore: restoreWorkerPool.live(), dump: filesDumpPool.live() });

async function untilNoWorkers(limitMs: number): Promise<void> {
  for (let waited = 0; ; waited += 100) {
    const live = livePools();
    if (live.codec + live.restore + live.dump === 0) return;
    assert.ok(waited < limitMs, `workers still alive after ${limitMs} ms: ${JSON.stringify(live)}`);
    await sleep(100);
  }
}

/** A files backup and its restore, through the API: they use all three kinds of worker. */
async function backupAndRestore(t: TestServer, instance: string, src: string, target: string): Promise<void> {
  await t.api('POST', '/api/v1/instances', { name: instance });
  await t.api('POST', `/api/v1/instances/${instance}/resources`, { name: 'www', type: 'files', connection: src });
  const b = await t.api('POST', `/api/v1/instances/${instance}/backups`, { type: 'full' });
  assert.equal((await waitFor(t.api, `/api/v1/backups/${b.body.id}`)).status, 'success');
  const r = await t.api('POST', `/api/v1/instances/${instance}/restores`, { backup: b.body.id, targets: { www: { connection: target } } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.equal((await waitFor(t.api, `/api/v1/restores/${r.body.id}`)).status, 'success');
}

describe('worker_idle_seconds', () => {
  let dir: { path: string; cleanup(): Promise<void> };
  let src: string;
  before(async () => {
    dir = await tempDir();
    src = join(dir.path, 'src');
    await mkdir(src);
    for (let i = 0; i < 20; i++) await writeFile(join(src, `f${i}.txt`), `file ${i}\n`.repeat(500));
  });
  after(() => dir.cleanup());

  it('lets idle workers go after the time it says', async () => {
    const t = await startTestServer({ worker_idle_seconds: 1 });
    try {
      await backupAndRestore(t, 'short', src, join(dir.path, 'short'));
      // Well before the default 5 s.
      await untilNoWorkers(3_500);
    } finally {
      await t.close();
    }
  });

  it('keeps them that long for the next job, which starts no new one', async () => {
    const t = await startTestServer({ worker_idle_seconds: 60 });
    try {
      await backupAndRestore(t, 'kept', src, join(dir.path, 'kept'));
      // Past the default 5 s.
      await sleep(6_000);
      const live = livePools();
      assert.ok(live.codec >= 1 && live.restore >= 1 && live.dump >= 1, `workers kept: ${JSON.stringify(live)}`);
      const started = { codec: codecPool.started, restore: restoreWorkerPool.started, dump: filesDumpPool.started };
      await backupAndRestore(t, 'again', src, join(dir.path, 'again'));
      assert.deepEqual({ codec: codecPool.started, restore: restoreWorkerPool.started, dump: filesDumpPool.started }, started);
    } finally {
      await t.close();
      await restoreWorkerPool.terminateAll();
    }
  });
});
