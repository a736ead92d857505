// The server's resident memory across repeated files backups and restores:
// a fresh server (bin/backvault.js, so the shebang's memory settings apply),
// a generated tree, three backups and three restores into a new directory
// through the API, VmRSS and VmHWM after each, and once more after the idle
// workers have left. Shows both the peaks and what each job leaves behind.
//   node --import tsx bench/files-memory.ts [--size-mb 120] [--compression zstd|gzip|none] [--idle-s 10]
import { mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeTree } from './lib/datasets.ts';
import { Backvault } from './lib/server.ts';

const { values: opt } = parseArgs({
  options: {
    'size-mb': { type: 'string', default: '120' },
    compression: { type: 'string', default: 'zstd' },
    'idle-s': { type: 'string', default: '10' },
  },
});
const dir = join(tmpdir(), 'bv-files-memory');
await rm(dir, { recursive: true, force: true });
await mkdir(dir, { recursive: true });
const tree = join(dir, 'tree');
const st = await writeTree(tree, Number(opt['size-mb']) * 1e6, 7);
console.log(`tree: ${st.files} files, ${(st.bytes / 1e6).toFixed(1)} MB`);
const bv = new Backvault(join(dir, 'backvault'));
await bv.start();
try {
  const rss = async () => {
    const s = await readFile(`/proc/${bv.pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(s)![1]);
    return `rss ${kb('VmRSS') >> 10} MiB, peak so far ${kb('VmHWM') >> 10} MiB, threads ${kb('Threads')}`;
  };
  const until = async (path: string) => {
    for (;;) {
      const b = await bv.api('GET', path);
      if (b.status === 'success' || b.status === 'error') return b;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  console.log(`idle: ${await rss()}`);
  await bv.api('POST', '/instances', { name: 'mem' });
  await bv.api('POST', '/instances/mem/resources', { name: 'w', type: 'files', connection: tree });
  let last = '';
  for (let i = 1; i <= 3; i++) {
    const b = await bv.api('POST', '/instances/mem/backups', { type: 'full', compression: opt.compression });
    const done = await until(`/backups/${b.id}`);
    last = b.id;
    console.log(`after backup ${i} (${done.status}): ${await rss()}`);
  }
  for (let i = 1; i <= 3; i++) {
    await rm(join(dir, 'out'), { recursive: true, force: true });
    const r = await bv.api('POST', '/instances/mem/restores', { backup: last, targets: { w: { connection: join(dir, 'out') } } });
    const done = await until(`/restores/${r.id}`);
    console.log(`after restore ${i} (${done.status}): ${await rss()}`);
  }
  await new Promise((r) => setTimeout(r, Number(opt['idle-s']) * 1000));
  console.log(`after ${opt['idle-s']} s idle: ${await rss()}`);
} finally {
  await bv.stop();
  await rm(dir, { recursive: true, force: true });
}
