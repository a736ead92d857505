// A Backvault server for the bench: started from bin/backvault.js on a fresh
// data directory, driven through its native API as a user would, and watched
// through /proc (resident memory, CPU time).
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');

export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}

/** Servers still running when the bench exits (it failed) are stopped with it. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

/** The environment assignments and node flags of the bin's `#!/usr/bin/env -S ... node ...` line. */
function shebangSettings(bin: string): { env: Record<string, string>; nodeArgs: string[] } {
  const tokens = readFileSync(bin, 'utf8').split('\n')[0]!.replace(/^#!\S+\s+-S\s+/, '').trim().split(/\s+/);
  const env: Record<string, string> = {};
  let i = 0;
  for (; i < tokens.length && tokens[i]!.includes('='); i++) {
    const [k, v] = tokens[i]!.split('=') as [string, string];
    env[k] = v;
  }
  if (tokens[i] !== 'node') throw new Error(`unexpected shebang in ${bin}`);
  return { env, nodeArgs: tokens.slice(i + 1) };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`HTTP ${status}: ${body.slice(0, 500)}`);
  }
}

export class Backvault {
  child!: ChildProcess;
  key = '';
  url = '';
  pid = 0;

  constructor(
    readonly dir: string,
    /** nodeArgs: more node flags (e.g. --trace-gc) for a look inside; the server then starts like a profiled one. */
    private readonly options: { cpuProfDir?: string; nodeArgs?: string[]; env?: Record<string, string> } = {},
  ) {}

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const port = await freePort();
    this.url = `http://127.0.0.1:${port}`;
    // Started the way a user starts it: the bin as an executable, so its
    // shebang's runtime settings apply. node refuses --cpu-prof in
    // NODE_OPTIONS, so a profiled server is started by node with the
    // shebang's settings read from the bin itself.
    const bin = join(ROOT, 'bin', 'backvault.js');
    const serveArgs = ['serve', '--dir', this.dir, '--http', `127.0.0.1:${port}`];
    const shebang = shebangSettings(bin);
    const extra = [...(this.options.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${this.options.cpuProfDir}`] : []), ...(this.options.nodeArgs ?? [])];
    const [command, args, profileEnv] = extra.length > 0 ? [process.execPath, [...shebang.nodeArgs, ...extra, bin, ...serveArgs], shebang.env] : [bin, serveArgs, {}];
    this.child = spawn(command, args, {
      cwd: ROOT,
      // The default rate limit (1,200 requests a minute per key) would turn a
      // load test into a test of the rate limiter: raised for the bench only.
      env: { ...process.env, BACKVAULT_RATE_LIMIT_PER_MINUTE: '100000000', ...profileEnv, ...this.options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.pid = this.child.pid!;
    running.add(this.child);
    this.child.once('exit', () => running.delete(this.child));
    const log = createWriteStream(join(this.dir, 'server.log'));
    let text = '';
    let found = false;
    const keyPromise = new Promise<string>((resolveKey, reject) => {
      this.child.stdout!.on('data', (c: Buffer) => {
        log.write(c);
        if (found) return;
        text += c.toString('utf8');
        // V8's traces (nodeArgs such as --trace-gc) print lines starting with '[' to stdout too.
        const m = /Initial admin API key[^\n]*\n(?:\[[^\n]*\n)*([^[\s]\S*)\n/.exec(text);
        if (m) {
          found = true;
          resolveKey(m[1]!);
        }
      });
      this.child.stderr!.on('data', (c: Buffer) => log.write(c));
      this.child.once('exit', (code) => reject(new Error(`backvault exited early (${code}); see ${join(this.dir, 'server.log')}`)));
      setTimeout(() => reject(new Error('backvault did not print its key within 60 s')), 60000).unref();
    });
    this.key = await keyPromise;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    await once(this.child, 'exit');
  }

  async api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(`${this.url}/api/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${this.key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new ApiError(res.status, text);
    return (text ? JSON.parse(text) : null) as T;
  }

  async ensureInstance(name: string, resources: { name: string; type: string; connection: string; options?: Record<string, unknown> }[]): Promise<void> {
    await this.api('POST', '/instances', { name });
    for (const r of resources) await this.api('POST', `/instances/${name}/resources`, r);
  }

  /**
   * Fills the catalog with `total` backups of tiny `files` resources (the
   * cheapest honest backup) on the given instances, 16 clients POSTing, and
   * waits until all succeeded; throws if any failed.
   */
  async seedBackups(instances: string[], total: number, tinyDir: string): Promise<void> {
    await mkdir(tinyDir, { recursive: true });
    await writeFile(join(tinyDir, 'notes.txt'), 'a tiny resource for seeding the catalog\n');
    for (const i of instances) await this.ensureInstance(i, [{ name: 'notes', type: 'files', connection: tinyDir }]);
    let n = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (n < total) {
          const i = instances[n++ % instances.length]!;
          await this.api('POST', `/instances/${i}/backups`, { type: 'full', label: 'seed' });
        }
      }),
    );
    for (;;) {
      const done = await this.api('GET', '/backups?status=success&per_page=1');
      const failed = await this.api('GET', '/backups?status=error&per_page=1');
      if (failed.pagination.total > 0) throw new Error(`${failed.pagination.total} seed backups failed`);
      if (done.pagination.total >= total) return;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /**
   * Polls a backup or restore until it ends; returns the final document.
   * Every 25 ms for the first 2 s (short operations are timed to the poll),
   * then every 100 ms: each poll is a request the server logs and answers on
   * its main thread, and at 40 a second they took a few percent of a core
   * from the operation being measured. The end is seen at most 100 ms late.
   */
  async waitFor(kind: 'backups' | 'restores', id: string): Promise<any> {
    const start = performance.now();
    for (;;) {
      const doc = await this.api('GET', `/${kind}/${id}`);
      if (doc.status === 'success') return doc;
      if (doc.status === 'error') throw new Error(`${kind} ${id} failed: ${doc.status_info}`);
      await new Promise((r) => setTimeout(r, performance.now() - start < 2000 ? 25 : 100));
    }
  }

  async backup(instance: string, compression = 'zstd'): Promise<{ ms: number; doc: any }> {
    const t0 = performance.now();
    const created = await this.api('POST', `/instances/${instance}/backups`, { type: 'full', compression });
    const doc = await this.waitFor('backups', created.id);
    return { ms: performance.now() - t0, doc };
  }

  async restore(instance: string, backup: string, targets: Record<string, { connection: string }>): Promise<{ ms: number; doc: any }> {
    const t0 = performance.now();
    const created = await this.api('POST', `/instances/${instance}/restores`, { backup, targets });
    const doc = await this.waitFor('restores', created.id);
    return { ms: performance.now() - t0, doc };
  }
}

/** Samples a process's resident memory and CPU time while an operation runs. */
export class Sampler {
  private timer: NodeJS.Timeout | undefined;
  peakRssKb = 0;
  startRssKb = 0;
  private cpu0 = 0;
  cpuSeconds = 0;

  constructor(private readonly pid: number) {}

  static async status(pid: number): Promise<{ rssKb: number; hwmKb: number }> {
    const s = await readFile(`/proc/${pid}/status`, 'utf8');
    const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? 0);
    return { rssKb: get('VmRSS'), hwmKb: get('VmHWM') };
  }

  static async cpuTicks(pid: number): Promise<number> {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks (100 a second)
  }

  async start(): Promise<void> {
    this.peakRssKb = this.startRssKb = (await Sampler.status(this.pid)).rssKb;
    this.cpu0 = await Sampler.cpuTicks(this.pid);
    this.timer = setInterval(() => {
      Sampler.status(this.pid).then(
        (s) => {
          if (s.rssKb > this.peakRssKb) this.peakRssKb = s.rssKb;
        },
        () => {},
      );
    }, 20);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    const s = await Sampler.status(this.pid);
    if (s.rssKb > this.peakRssKb) this.peakRssKb = s.rssKb;
    this.cpuSeconds = ((await Sampler.cpuTicks(this.pid)) - this.cpu0) / 100;
  }
}
