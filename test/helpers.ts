// Shared test helpers: a real server on a free port in a temp directory, a
// small JSON client for it, and the real bin in a child process.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from '../src/config/index.ts';
import { startServer, type Server } from '../src/main.ts';
import type { Clock } from '../src/platform/clock.ts';

export class TestClock implements Clock {
  offsetMs = 0;
  now(): Date {
    return new Date(Date.now() + this.offsetMs);
  }
  advance(ms: number): void {
    this.offsetMs += ms;
  }
  /** Jumps to a moment; time then runs on from there. */
  set(date: Date | string): void {
    this.offsetMs = new Date(date).getTime() - Date.now();
  }
}

export interface TestServer {
  server: Server;
  url: string;
  dir: string;
  adminKey: string;
  clock: TestClock;
  api: Api;
  close(): Promise<void>;
}

export interface ApiResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

export type Api = <T = any>(method: string, path: string, body?: unknown, key?: string | null) => Promise<ApiResponse<T>>;

export async function tempDir(prefix = 'bv-test-'): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

export async function startTestServer(overrides: Partial<Config> = {}): Promise<TestServer> {
  const dir = await mkdtemp(join(tmpdir(), 'bv-server-'));
  const config = loadConfig({ flags: { dir, port: 0, rate_limit_per_minute: 100_000, log_level: 'silent', ...overrides }, env: {} });
  const clock = new TestClock();
  const server = await startServer(config, { clock });
  const adminKey = server.initialKey!.key;
  const url = server.url;
  const api: Api = async (method, path, body, key = adminKey) => {
    const headers: Record<string, string> = {};
    if (key) headers.authorization = `Bearer ${key}`;
    let payload: string | undefined;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(url + path, { method, headers, body: payload });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: keep text
    }
    return { status: res.status, headers: res.headers, body: parsed as any };
  };
  return {
    server,
    url,
    dir,
    adminKey,
    clock,
    api,
    async close() {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Polls a backup, restore or drill until it leaves its running states. */
export async function waitFor(api: Api, path: string, field = 'status', timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await api('GET', path);
    if (res.status !== 200) throw new Error(`GET ${path} answered ${res.status}: ${JSON.stringify(res.body)}`);
    const value = res.body[field];
    if (value === 'success' || value === 'error') return res.body;
    if (Date.now() > deadline) throw new Error(`${path} still ${value} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the real bin (bin/backvault.js) in a child process, without the
 * caller's BACKVAULT_* variables. Async, so a server in this process keeps
 * serving while the CLI talks to it (spawnSync would stall it).
 */
export function runCli(args: string[], env: Record<string, string> = {}, input?: string): Promise<CliRun> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BACKVAULT_'))) as Record<string, string>;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/backvault.js', ...args], { cwd: fileURLToPath(new URL('..', import.meta.url)), env: { ...base, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}
