// Redis connection URLs and clients. A URL is redis://[user:pass@]host[:port][/db]
// (rediss:// for TLS), db 0-15, default 0. A URL may also list several
// databases as ?databases=1,2,3 (used for scratch targets and new targets);
// a resource's options.databases takes precedence over both.
import { Redis } from 'ioredis';
import type { ResourceSpec } from '../../domain/types.ts';
import { AppError, isAppError } from '../../errors/index.ts';

export const MAX_DB = 15;

export interface RedisAddress {
  host: string;
  port: number;
  username: string | undefined;
  password: string | undefined;
  tls: boolean;
  /** the URL's database (path), 0 when absent */
  db: number;
  /** databases listed by ?databases=, or null */
  databases: number[] | null;
  /** host:port, safe to show */
  label: string;
}

function invalid(why: string): AppError {
  return new AppError('invalid_connection', `${why} A Redis connection looks like redis://[user:password@]host:6379/0 (database 0-15).`);
}

function parseDb(text: string, what: string): number {
  if (!/^\d{1,2}$/.test(text) || Number(text) > MAX_DB) throw invalid(`The ${what} "${text}" is not a database number 0-${MAX_DB}.`);
  return Number(text);
}

/** Sorted, distinct database numbers; throws on anything else. */
export function checkDatabaseList(value: unknown, what: string): number[] {
  if (!Array.isArray(value) || value.length === 0) throw invalid(`${what} must be a non-empty list of database numbers.`);
  const out = new Set<number>();
  for (const v of value) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_DB) throw invalid(`${what} holds ${JSON.stringify(v)}, which is not a database number 0-${MAX_DB}.`);
    if (out.has(v)) throw invalid(`${what} lists database ${v} twice.`);
    out.add(v);
  }
  return [...out].sort((a, b) => a - b);
}

/** Parses a connection URL; errors never repeat the URL (it may hold a password). */
export function parseConnection(connection: unknown): RedisAddress {
  if (typeof connection !== 'string' || connection === '') throw invalid('The connection is empty.');
  let url: URL;
  try {
    url = new URL(connection);
  } catch {
    throw invalid('The connection is not a URL.');
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw invalid(`The scheme "${url.protocol.replace(/:$/, '')}" is not redis or rediss.`);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw invalid('The connection has no host.');
  const port = url.port === '' ? 6379 : Number(url.port);
  const path = url.pathname.replace(/^\//, '');
  if (path.includes('/')) throw invalid('The connection path must be a single database number.');
  const db = path === '' ? 0 : parseDb(path, 'database');
  let databases: number[] | null = null;
  for (const [name, value] of url.searchParams) {
    if (name !== 'databases') throw invalid(`The connection parameter "${name}" is not supported (only databases).`);
    databases = checkDatabaseList(
      value.split(',').map((v) => (/^\d{1,2}$/.test(v.trim()) ? Number(v.trim()) : v)),
      'The databases parameter',
    );
  }
  if (url.hash !== '') throw invalid('The connection must not have a #fragment.');
  let username: string | undefined;
  let password: string | undefined;
  try {
    username = url.username === '' ? undefined : decodeURIComponent(url.username);
    password = url.password === '' ? undefined : decodeURIComponent(url.password);
  } catch {
    throw invalid('The user name or password is not validly percent-encoded.');
  }
  const label = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return { host, port, username, password, tls: url.protocol === 'rediss:', db, databases, label };
}

/** The logical databases a resource covers: options.databases, else the URL's list, else its one database. */
export function resourceDatabases(spec: Pick<ResourceSpec, 'connection' | 'options'>): number[] {
  const addr = parseConnection(spec.connection);
  const opt = spec.options?.databases;
  if (opt !== undefined && opt !== null) return checkDatabaseList(opt, 'The databases option');
  return addr.databases ?? [addr.db];
}

/** Removes secrets from a message that came from a client library or server. */
export function scrub(message: string, addr: RedisAddress): string {
  let out = message;
  for (const s of [addr.password, addr.password && encodeURIComponent(addr.password)]) {
    if (s) out = out.split(s).join('***');
  }
  return out;
}

/** Every failure as an AppError: cancelled when the signal fired, engine_failed with a scrubbed message otherwise. */
export function asAppError(err: unknown, addr: RedisAddress, signal: AbortSignal, what: string): AppError {
  if (isAppError(err)) return err;
  if (signal.aborted) return new AppError('cancelled', undefined, undefined, { cause: err });
  const msg = scrub((err as Error)?.message ?? String(err), addr);
  return new AppError('engine_failed', `${what} (Redis at ${addr.label}): ${msg}`);
}

/**
 * A connected client. It never reconnects: a backup or restore whose
 * connection drops fails instead of carrying on against a changed session.
 * The signal disconnects it, which fails whatever command is in flight.
 */
export async function openClient(addr: RedisAddress, db: number, signal: AbortSignal): Promise<Redis> {
  if (signal.aborted) throw new AppError('cancelled');
  const client = new Redis({
    host: addr.host,
    port: addr.port,
    username: addr.username,
    password: addr.password,
    db,
    tls: addr.tls ? { servername: addr.host } : undefined,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: 10_000,
    connectionName: 'backvault',
  });
  // Failures surface through the commands' own rejections; this keeps ioredis from logging them.
  client.on('error', () => {});
  const onAbort = () => client.disconnect();
  signal.addEventListener('abort', onAbort, { once: true });
  client.once('end', () => signal.removeEventListener('abort', onAbort));
  try {
    await client.connect();
  } catch (err) {
    client.disconnect();
    throw asAppError(err, addr, signal, 'Cannot connect');
  }
  return client;
}

/** Closes politely, or at once if the connection is already unusable. */
export async function closeClient(client: Redis): Promise<void> {
  if (client.status === 'ready') {
    try {
      await client.quit();
      return;
    } catch {
      // fall through
    }
  }
  client.disconnect();
}

export async function serverVersion(client: Redis): Promise<string> {
  try {
    const info = await client.info('server');
    return /redis_version:([^\r\n]+)/.exec(info)?.[1]?.trim() ?? 'unknown';
  } catch {
    // INFO may be denied to a restricted user; the version is informative only.
    return 'unknown';
  }
}
