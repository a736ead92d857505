import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runTool, startTool } from './process.ts';

test('a tool runs with an argument array and no shell', async () => {
  assert.equal(await runTool('echo', ['$HOME', '; rm -rf /']), '$HOME ; rm -rf /\n');
});

test('a failing tool rejects with engine_failed and its stderr, secrets scrubbed', async () => {
  await assert.rejects(runTool('sh', ['-c', 'echo "bad password hunter2" >&2; exit 3'], { secrets: ['hunter2'] }), (err: any) => {
    assert.equal(err.code, 'engine_failed');
    assert.match(err.message, /exit 3/);
    assert.ok(!err.message.includes('hunter2'));
    return true;
  });
});

test('a missing tool says so', async () => {
  await assert.rejects(runTool('no-such-tool-backvault', []), (err: any) => err.code === 'tool_missing');
});

test('secrets passed by environment are not in argv', async () => {
  const out = await runTool('sh', ['-c', 'echo "$SECRET_VALUE"; cat /proc/$$/cmdline | tr "\\0" " "'], { env: { SECRET_VALUE: 's3cret' } });
  const [first, cmdline] = out.split('\n');
  assert.equal(first, 's3cret');
  assert.ok(!cmdline!.includes('s3cret'));
});

test('an abort stops the tool and rejects with cancelled', async () => {
  const ac = new AbortController();
  const tool = startTool('sleep', ['30'], { signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  await assert.rejects(tool.done, (err: any) => err.code === 'cancelled');
});
