// Finding a pg_dump / pg_restore new enough for a server. pg_dump refuses
// servers newer than itself, and pg_restore cannot read archives written by
// a newer pg_dump, so the tool must be at least the server's (and the
// archive's) major version. Debian installs each version side by side under
// /usr/lib/postgresql/<major>/bin; the oldest one that is new enough is the
// closest match to the server.
import { access, constants, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AppError } from '../../errors/index.ts';
import { runTool } from '../../platform/process.ts';

export type PgTool = 'pg_dump' | 'pg_restore';

export interface FoundTool {
  path: string;
  /** e.g. "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" */
  version: string;
}

const LIB_ROOT = '/usr/lib/postgresql';

/**
 * A comparable key for a major version: 15 -> 150000, 9.6 -> 90600. Takes a
 * server_version_num (150020), a version string ("15.20 (Debian ...)",
 * "9.6.24") or a directory name ("15", "9.6").
 */
export function majorKey(v: string | number): number | null {
  if (typeof v === 'number') return v >= 100000 ? Math.floor(v / 10000) * 10000 : Math.floor(v / 100) * 100;
  const m = /(\d+)(?:\.(\d+))?/.exec(v);
  if (!m) return null;
  const major = Number(m[1]);
  return major >= 10 ? major * 10000 : major * 10000 + Number(m[2] ?? 0) * 100;
}

/** 150000 -> "15", 90600 -> "9.6": how Debian names the version (postgresql-client-15). */
export function majorName(key: number): string {
  return key >= 100000 ? String(key / 10000) : `${Math.floor(key / 10000)}.${(key % 10000) / 100}`;
}

async function versionOf(path: string): Promise<string | null> {
  try {
    return (await runTool(path, ['--version'])).trim();
  } catch {
    return null;
  }
}

/** Parses "pg_dump (PostgreSQL) 15.20 ..." to its major key. */
function toolKey(version: string): number | null {
  const m = /\(PostgreSQL\)\s+(\S+)/.exec(version);
  return m ? majorKey(m[1]!) : null;
}

/** The oldest installed tool whose major version is at least minKey; tool_missing if there is none. */
export async function findTool(tool: PgTool, minKey: number, libRoot = LIB_ROOT): Promise<FoundTool> {
  let dirs: { key: number; dir: string }[] = [];
  try {
    dirs = (await readdir(libRoot))
      .map((dir) => ({ key: /^\d+(\.\d+)?$/.test(dir) ? majorKey(dir) : null, dir }))
      .filter((d): d is { key: number; dir: string } => d.key !== null && d.key >= minKey)
      .sort((a, b) => a.key - b.key);
  } catch {
    // no versioned installs: only PATH remains
  }
  for (const { dir } of dirs) {
    const path = join(libRoot, dir, 'bin', tool);
    try {
      await access(path, constants.X_OK);
    } catch {
      continue;
    }
    const version = await versionOf(path);
    if (version) return { path, version };
  }
  // Elsewhere (another distribution, a container image) the tool on PATH may do.
  const found: string[] = [];
  const version = await versionOf(tool);
  if (version) {
    const key = toolKey(version);
    if (key !== null && key >= minKey) return { path: tool, version };
    found.push(`${tool} on PATH is ${version}`);
  }
  const need = majorName(minKey);
  throw new AppError(
    'tool_missing',
    `${tool} ${need} or newer is needed for PostgreSQL ${need} and none is installed${found.length ? ` (${found.join('; ')})` : ''}; install the Debian package postgresql-client-${need}.`,
    { tool, version_needed: need, package: `postgresql-client-${need}` },
  );
}
