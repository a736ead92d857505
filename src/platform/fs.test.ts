import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { backgroundFlushes, whileFlushing } from './fs.ts';

describe('whileFlushing', () => {
  it('flushes in the background while work runs, and returns what work returns', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'backvault-flush-'));
    try {
      const before = backgroundFlushes.started;
      const value = await whileFlushing(
        dir,
        async () => {
          for (let i = 0; i < 6; i++) {
            await writeFile(join(dir, `f${i}`), Buffer.alloc(256 * 1024, i));
            await sleep(50);
          }
          return 'done';
        },
        40,
      );
      assert.equal(value, 'done');
      assert.ok(backgroundFlushes.started > before, 'no background flush started during 300 ms of work');
      // Once it settled, no flush starts any more.
      const after = backgroundFlushes.started;
      await sleep(150);
      assert.equal(backgroundFlushes.started, after);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("fails with work's own error, and a background flush that fails does not fail the work", async () => {
    const missing = join(tmpdir(), `backvault-flush-missing-${process.pid}`);
    await assert.rejects(
      whileFlushing(missing, async () => {
        await sleep(100);
        throw new Error('work failed');
      }, 20),
      /work failed/,
    );
    // `sync -f` of a path that does not exist fails; the work still succeeds.
    const before = backgroundFlushes.started;
    const value = await whileFlushing(
      missing,
      async () => {
        await sleep(100);
        return 7;
      },
      20,
    );
    assert.equal(value, 7);
    assert.ok(backgroundFlushes.started > before, 'no background flush was tried');
  });
});
