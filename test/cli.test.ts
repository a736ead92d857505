// The `backvault` bin against a real server: keys, exit codes, and a backup,
// download, import and restore of a files resource, end to end.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config/index.ts';
import { startServer, type Server } from '../src/main.ts';
import { parseExclude, parseOptions, parseSelection, parseTargets } from '../src/cli/parse.ts';
import { redactUrl } from '../src/http/app.ts';
import { runCli } from './helpers.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));


function lastLine(s: string): string {
  const lines = s.trimEnd().split('\n');
  return lines[lines.length - 1]!;
}

async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const p = join(e.parentPath, e.name);
    out[relative(dir, p)] = e.isDirectory() ? '<dir>' : (await readFile(p)).toString('base64');
  }
  return out;
}

async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

describe('backvault CLI', () => {
  let tmp: string;
  let dataDir: string;
  let server: Server;
  let env: Record<string, string>;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'bv-cli-'));
    dataDir = join(tmp, 'data');
    const config = loadConfig({ flags: { dir: dataDir, port: 0, log_level: 'silent', rate_limit_per_minute: 100_000 }, env: {} });
    server = await startServer(config);
    assert.ok(server.initialKey, 'a fresh data directory gets an initial admin key');
    env = { BACKVAULT_URL: server.url, BACKVAULT_KEY: server.initialKey.key };
  });

  after(async () => {
    await server?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  async function api(method: string, path: string, key: string | null, body?: unknown): Promise<{ status: number; body: any }> {
    const headers: Record<string, string> = key ? { authorization: `Bearer ${key}` } : {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${server.url}/api/v1${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  test('keys create prints the key alone on the last line, and it works', async () => {
    const r = await runCli(['keys', 'create', '--name', 'ci', '--scope', 'admin', '--dir', dataDir]);
    assert.equal(r.status, 0, r.stderr);
    const key = lastLine(r.stdout);
    assert.match(key, /^bvk_\S+$/);
    const res = await api('GET', '/instances', key);
    assert.equal(res.status, 200);
  });

  test('a read key cannot create an instance: exit 3, forbidden', async () => {
    const k = await runCli(['keys', 'create', '--name', 'viewer', '--scope', 'read', '--dir', dataDir]);
    assert.equal(k.status, 0, k.stderr);
    const r = await runCli(['instances', 'create', 'nope'], { ...env, BACKVAULT_KEY: lastLine(k.stdout) });
    assert.equal(r.status, 3);
    assert.match(r.stderr, /^error: forbidden: /m);
    const list = await runCli(['instances', 'list'], { ...env, BACKVAULT_KEY: lastLine(k.stdout) });
    assert.equal(list.status, 0, list.stderr);
  });

  test('policies: create with retention, show, run --wait, preview, update, delete', async () => {
    const dir = join(tmp, 'policy-src');
    await mkdir(dir);
    await writeFile(join(dir, 'f.txt'), 'policy data');
    assert.equal((await runCli(['instances', 'create', 'sched'], env)).status, 0);
    assert.equal((await runCli(['resources', 'add', 'sched', 'www', '--type', 'files', '--connection', dir], env)).status, 0);
    const bad = await runCli(['policies', 'create', 'sched', '--name', 'n', '--schedule', 'whenever'], env);
    assert.equal(bad.status, 3);
    assert.match(bad.stderr, /invalid_request/);
    const created = await runCli(['--json', 'policies', 'create', 'sched', '--name', 'nightly', '--schedule', '0 3 * * *', '--timezone', 'Europe/Berlin', '--keep-last', '2', '--keep-daily', '7'], env);
    assert.equal(created.status, 0, created.stderr);
    const p = JSON.parse(created.stdout);
    assert.deepEqual(p.retention, { keep_last: 2, keep_daily: 7 });
    assert.equal(p.timezone, 'Europe/Berlin');
    const run = await runCli(['policies', 'run', p.id, '--wait'], env);
    assert.equal(run.status, 0, run.stderr);
    const shown = await runCli(['policies', 'show', p.id], env);
    assert.match(shown.stdout, /state:\s+ok/);
    const preview = await runCli(['policies', 'preview', p.id], env);
    assert.equal(preview.status, 0, preview.stderr);
    assert.match(preview.stdout, /keep\s+newest/);
    const upd = await runCli(['--json', 'policies', 'update', p.id, '--disable'], env);
    assert.equal(JSON.parse(upd.stdout).state, 'disabled');
    assert.equal((await runCli(['policies', 'delete', p.id], env)).status, 0);
    assert.equal((await runCli(['policies', 'show', p.id], env)).status, 3);
  });

  test('usage errors exit 2', async () => {
    assert.equal((await runCli(['backups', 'create'], env)).status, 2);
    assert.equal((await runCli(['keys', 'create', '--name', 'x', '--scope', 'root'])).status, 2);
    assert.equal((await runCli(['instances', 'list', '--page', '0'], env)).status, 2);
    assert.equal((await runCli(['backups', 'import', 'app'], env)).status, 2);
    assert.equal((await runCli(['frobnicate'])).status, 2);
    assert.equal((await runCli(['--help'])).status, 0);
  });

  test('an unknown backup id exits 3 with the API error code', async () => {
    const r = await runCli(['backups', 'show', '0123456789abcdef01234567'], env);
    assert.equal(r.status, 3);
    assert.match(r.stderr, /^error: backup_not_found: /m);
  });

  test('no server there exits 4', async () => {
    const r = await runCli(['instances', 'list'], { ...env, BACKVAULT_URL: `http://127.0.0.1:${await closedPort()}` });
    assert.equal(r.status, 4);
    assert.match(r.stderr, /cannot reach the server/);
    assert.doesNotMatch(r.stderr, new RegExp(env.BACKVAULT_KEY!), 'the key is never printed');
  });

  test('without a key the API refuses with a hint: exit 3', async () => {
    const r = await runCli(['instances', 'list'], { BACKVAULT_URL: server.url });
    assert.equal(r.status, 3);
    assert.match(r.stderr, /^error: unauthorized: /m);
    assert.match(r.stderr, /BACKVAULT_KEY/);
  });

  test('a backup that ends in error exits 1 and says why', async () => {
    let r = await runCli(['instances', 'create', 'broken'], env);
    assert.equal(r.status, 0, r.stderr);
    r = await runCli(['resources', 'add', 'broken', 'gone', '--type', 'files', '--connection', join(tmp, 'does-not-exist')], env);
    assert.equal(r.status, 0, r.stderr);
    r = await runCli(['backups', 'create', 'broken', '--wait'], env);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^backup \w+ failed: \S/m);
  });

  test('superuser upsert, then login works', async () => {
    const r = await runCli(['superuser', 'upsert', 'Admin@Example.com', 'correct horse battery', '--dir', dataDir]);
    assert.equal(r.status, 0, r.stderr);
    const login = await api('POST', '/auth/login', null, { email: 'admin@example.com', password: 'correct horse battery' });
    assert.equal(login.status, 200);
    assert.equal(typeof login.body.token, 'string');
    // "-" reads the password from stdin; a short one is refused like the API refuses it.
    const short = await runCli(['superuser', 'upsert', 'admin@example.com', '-', '--dir', dataDir], {}, 'short\n');
    assert.equal(short.status, 3);
    assert.match(short.stderr, /^error: invalid_request: /m);
    const again = await runCli(['superuser', 'upsert', 'admin@example.com', '-', '--dir', dataDir], {}, 'another long password\n');
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /updated/);
    assert.equal((await api('POST', '/auth/login', null, { email: 'admin@example.com', password: 'another long password' })).status, 200);
  });

  test('backup, download, import and restore a files resource', async () => {
    const src = join(tmp, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'a.txt'), 'hello backvault\n');
    await writeFile(join(src, 'sub', 'b.bin'), Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7) % 256)));

    let r = await runCli(['instances', 'create', 'app', '--description', 'the app'], env);
    assert.equal(r.status, 0, r.stderr);
    r = await runCli(['resources', 'add', 'app', 'files', '--type', 'files', '--connection', src], env);
    assert.equal(r.status, 0, r.stderr);
    r = await runCli(['resources', 'list', 'app'], env);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^files\s+files\s/m);

    r = await runCli(['backups', 'create', 'app', '--wait', '--json', '--label', 'cli'], env);
    assert.equal(r.status, 0, r.stderr);
    const backup = JSON.parse(r.stdout) as { id: string; status: string; label: string };
    assert.equal(backup.status, 'success');
    assert.equal(backup.label, 'cli');
    // Not a terminal: progress comes as plain status lines on stderr.
    assert.doesNotMatch(r.stderr, /\u001b\[/);

    r = await runCli(['backups', 'list', '--instance', 'app'], env);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^${backup.id}\\s+app\\s+full\\s+success`, 'm'));

    const archive = join(tmp, 'f.tar');
    r = await runCli(['backups', 'download', backup.id, '-o', archive], env);
    assert.equal(r.status, 0, r.stderr);
    await assert.rejects(stat(`${archive}.part`), 'no .part file is left behind');
    const listing = spawnSync('tar', ['-tf', archive], { encoding: 'utf8' });
    assert.equal(listing.status, 0, listing.stderr);
    assert.equal(listing.stdout.split('\n')[0], 'manifest.json');

    r = await runCli(['instances', 'create', 'copy'], env);
    assert.equal(r.status, 0, r.stderr);
    r = await runCli(['backups', 'import', 'copy', archive, '--wait', '--json'], env);
    assert.equal(r.status, 0, r.stderr);
    const imported = JSON.parse(r.stdout) as { id: string; status: string; instance: string };
    assert.equal(imported.status, 'success');
    assert.equal(imported.instance, 'copy');

    const dest = join(tmp, 'restored');
    r = await runCli(['restores', 'create', 'app', backup.id, '--target', `files=${dest}`, '--wait'], env);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /succeeded/);
    assert.deepEqual(await tree(dest), await tree(src));

    r = await runCli(['restores', 'list', 'app', '--json'], env);
    assert.equal(r.status, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { items: { status: string }[] }).items[0]!.status, 'success');
  });
});

test('serve prints its URL and, on the first start only, the admin key; SIGTERM stops it with exit 0', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bv-serve-'));
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BACKVAULT_'))) as Record<string, string>;
  const children: ReturnType<typeof spawn>[] = [];
  const start = async () => {
    const child = spawn(process.execPath, ['bin/backvault.js', 'serve', '--dir', join(dir, 'data'), '--http', '127.0.0.1:0'], {
      cwd: ROOT,
      env: { ...base, BACKVAULT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    let closed = false;
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => ((closed = true), resolve(code))));
    /** Waits until stdout matches re; the server writes its lines in bursts that may arrive split. */
    const waitOutput = async (re: RegExp): Promise<RegExpExecArray> => {
      for (let i = 0; i < 200; i++) {
        const m = re.exec(out);
        if (m) return m;
        if (closed) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error(`serve never printed ${re}: ${out}`);
    };
    const url = (await waitOutput(/Backvault listening on (http:\/\/\S+)/))[1]!;
    return { child, exited, url, waitOutput, output: () => out };
  };
  try {
    const first = await start();
    const key = (await first.waitOutput(/Initial admin API key \(shown once, store it now\):\n(\S+)\n/))[1];
    const res = await fetch(`${first.url}/api/v1/instances`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(res.status, 200);
    first.child.kill('SIGTERM');
    assert.equal(await first.exited, 0);

    const second = await start();
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.doesNotMatch(second.output(), /Initial admin API key|bvk_/);
    second.child.kill('SIGINT');
    assert.equal(await second.exited, 0);
  } finally {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});

test('option parsers', () => {
  assert.deepEqual(parseSelection(['db', 'files=a/*,b', 'files=c', 'db=t1']), { db: null, files: ['a/*', 'b', 'c'] });
  assert.deepEqual(parseExclude(['db=t1,t2', 'db=t3']), { db: ['t1', 't2', 't3'] });
  assert.deepEqual(parseTargets(['db=postgres://u:p@h/db?sslmode=require']), { db: { connection: 'postgres://u:p@h/db?sslmode=require' } });
  assert.deepEqual(parseOptions(['jobs=4', 'single=true', 'name=abc', 'forced="5"', 'list=["a"]']), { jobs: 4, single: true, name: 'abc', forced: '5', list: ['a'] });
  assert.throws(() => parseExclude(['db']), /RES=OBJ/);
  assert.throws(() => parseTargets(['=x']), /RES=CONNECTION/);
  assert.equal(redactUrl('/api/v1/backups/x/download?token=abc.def&z=1'), '/api/v1/backups/x/download?token=[redacted]&z=1');
});
