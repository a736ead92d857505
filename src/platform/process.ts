// Spawning external tools (pg_dump, mariadb-dump, ...): argument arrays, never
// a shell; secrets only through the environment or private files, never argv;
// stderr kept (bounded) for error messages, with known secrets scrubbed.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { AppError } from '../errors/index.ts';

export interface ToolOptions {
  /** extra environment (e.g. PGPASSWORD); merged over a minimal inherited one */
  env?: Record<string, string>;
  /** strings that must never appear in messages (passwords) */
  secrets?: string[];
  signal?: AbortSignal;
  /** 'pipe' to write to the tool's stdin */
  stdin?: 'pipe' | 'ignore';
  /** 'pipe' to read the tool's stdout as a stream */
  stdout?: 'pipe' | 'ignore';
  /**
   * A larger stdio buffer for the tool's stdout (stdbuf -o, e.g. '1M'), when
   * coreutils' stdbuf is installed. Dump tools write through a 4-8 KiB stdio
   * buffer: each write becomes one pipe read here, one Buffer for the garbage
   * collector and one trip through every stream stage. stdbuf execs the tool,
   * so the process and its argv are the tool's own.
   */
  stdoutBuffer?: string;
  cwd?: string;
}

let stdbuf: string | null | undefined;
/** stdbuf's absolute path from PATH, or null; looked up once. */
function stdbufPath(): string | null {
  if (stdbuf === undefined) {
    const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d.startsWith('/'));
    stdbuf = dirs.map((d) => join(d, 'stdbuf')).find((p) => existsSync(p)) ?? null;
  }
  return stdbuf;
}

export interface RunningTool {
  child: ChildProcess;
  /** settles when the tool exits: resolves on exit 0, rejects with AppError engine_failed (or cancelled) otherwise */
  done: Promise<void>;
  /** the last part of stderr, secrets scrubbed */
  stderr(): string;
}

const STDERR_LIMIT = 64 * 1024;

export function scrub(text: string, secrets: string[] = []): string {
  let out = text;
  for (const s of secrets) if (s) out = out.split(s).join('****');
  return out;
}

export function startTool(command: string, args: string[], options: ToolOptions = {}): RunningTool {
  const wrapper = options.stdoutBuffer ? stdbufPath() : null;
  const child = spawn(wrapper ?? command, wrapper ? ['-o', options.stdoutBuffer!, command, ...args] : args, {
    stdio: [options.stdin ?? 'ignore', options.stdout ?? 'pipe', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8', HOME: process.env.HOME ?? '/tmp', ...options.env },
    cwd: options.cwd,
    shell: false,
  });
  let tail = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    tail = (tail + chunk).slice(-STDERR_LIMIT);
  });
  const onAbort = () => child.kill('SIGTERM');
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (err: NodeJS.ErrnoException) => {
      options.signal?.removeEventListener('abort', onAbort);
      if (err.code === 'ENOENT') reject(new AppError('tool_missing', `${command} is not installed on the server.`));
      else reject(new AppError('engine_failed', `${command} could not start: ${err.message}`));
    });
    child.on('close', (code, sig) => {
      options.signal?.removeEventListener('abort', onAbort);
      if (options.signal?.aborted) return reject(new AppError('cancelled', `${command} was stopped: the job was cancelled.`));
      if (code === 0) return resolve();
      // stdbuf exits 127 when it cannot run the tool itself.
      if (wrapper && code === 127 && /stdbuf: failed to run command/.test(tail)) return reject(new AppError('tool_missing', `${command} is not installed on the server.`));
      const msg = scrub(tail.trim(), options.secrets).split('\n').slice(-8).join('\n');
      reject(new AppError('engine_failed', `${command} failed (${code === null ? `signal ${sig}` : `exit ${code}`})${msg ? `: ${msg}` : ''}`));
    });
  });
  return { child, done, stderr: () => scrub(tail, options.secrets) };
}

/** Runs a tool to completion and returns its stdout (small outputs only, e.g. versions). */
export async function runTool(command: string, args: string[], options: ToolOptions = {}): Promise<string> {
  const tool = startTool(command, args, { ...options, stdout: 'pipe' });
  let out = '';
  tool.child.stdout!.setEncoding('utf8');
  tool.child.stdout!.on('data', (c: string) => {
    if (out.length < 1024 * 1024) out += c;
  });
  await tool.done;
  return out;
}
