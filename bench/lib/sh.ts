// Running the reference pipelines and helper commands. The bench (unlike
// Backvault itself) uses a shell: the reference pipelines are shell pipelines
// by definition, and `set -o pipefail` makes any failing stage fail the run.
import { spawn } from 'node:child_process';

export interface RunResult {
  ms: number;
  stdout: string;
  stderr: string;
}

export function sh(cmd: string, options: { env?: Record<string, string>; input?: string; quiet?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('bash', ['-o', 'pipefail', '-e', '-c', cmd], { env: { ...process.env, ...options.env }, stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    if (options.input !== undefined) {
      // a command that exits without reading all of its input is judged by its exit code
      child.stdin!.on('error', () => {});
      child.stdin!.end(options.input);
    }
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = performance.now() - t0;
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code !== 0) reject(new Error(`command failed (${code}): ${cmd}\n${stderr.slice(-2000)}`));
      else resolve({ ms, stdout, stderr });
    });
  });
}

/** Single-quotes a value for bash. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export const PG = 'psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres';
export const MY = 'mariadb -h 127.0.0.1 -u root';
export const PG_URL = (db: string) => `postgres://postgres@127.0.0.1:5432/${db}`;
export const MY_URL = (db: string) => `mysql://root@127.0.0.1:3306/${db}`;
