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

async function readAll(tool: ReturnType<typeof startTool>): Promise<{ text: string; reads: number }> {
  let text = '';
  let reads = 0;
  tool.child.stdout!.on('data', (c: Buffer) => {
    reads++;
    text += c.toString('utf8');
  });
  await tool.done;
  return { text, reads };
}

test('stdoutBuffer runs the tool itself with a large stdio buffer for its stdout, bytes unchanged', async () => {
  // stdbuf passes the size to the tool's C library through _STDBUF_O and then execs the tool.
  const env = await readAll(startTool('env', [], { stdout: 'pipe', stdoutBuffer: '1M' }));
  assert.match(env.text, /^_STDBUF_O=1048576$/m);
  const plain = await readAll(startTool('seq', ['1', '300000'], { stdout: 'pipe' }));
  const buffered = await readAll(startTool('seq', ['1', '300000'], { stdout: 'pipe', stdoutBuffer: '1M' }));
  assert.ok(plain.text.length > 1_000_000);
  assert.equal(buffered.text, plain.text);
});

test('a missing tool behind stdoutBuffer is still tool_missing, named by the tool', async () => {
  const tool = startTool('no-such-dump-tool', [], { stdout: 'pipe', stdoutBuffer: '1M' });
  tool.child.stdout!.resume();
  await assert.rejects(tool.done, (err: Error & { code?: string }) => err.code === 'tool_missing' && /no-such-dump-tool/.test(err.message) && !/stdbuf/.test(err.message));
});
