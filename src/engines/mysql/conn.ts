// Connections for the mysql engine: URL parsing, the private option file the
// client tools read their credentials from, and mysql2 connections that die
// with the job's signal.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import mysql from 'mysql2/promise';
import { AppError, isAppError } from '../../errors/index.ts';
import { scrub } from '../../platform/process.ts';

export interface ConnParams {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** a Unix socket path, from ?socket=... */
  socket?: string;
}

const FORM = 'A mysql connection looks like mysql://user:password@host:3306/database (mariadb:// works too).';

/** Parses mysql://user:pass@host:port/db. Messages never repeat the URL: it holds the password. */
export function parseConnection(connection: unknown): ConnParams {
  if (typeof connection !== 'string' || connection === '') throw new AppError('invalid_connection', FORM);
  let url: URL;
  try {
    url = new URL(connection);
  } catch {
    throw new AppError('invalid_connection', `The connection is not a URL. ${FORM}`);
  }
  if (url.protocol !== 'mysql:' && url.protocol !== 'mariadb:') {
    throw new AppError('invalid_connection', `The connection scheme must be mysql:// or mariadb://. ${FORM}`);
  }
  let user: string, password: string, database: string;
  try {
    user = decodeURIComponent(url.username);
    password = decodeURIComponent(url.password);
    database = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw new AppError('invalid_connection', `The connection has a badly percent-encoded user, password or database. ${FORM}`);
  }
  const socket = url.searchParams.get('socket') ?? undefined;
  if (!url.hostname && !socket) throw new AppError('invalid_connection', `The connection names no host. ${FORM}`);
  if (!user) throw new AppError('invalid_connection', `The connection names no user. ${FORM}`);
  if (!database || database.includes('/')) throw new AppError('invalid_connection', `The connection must name exactly one database. ${FORM}`);
  if (database.length > 64 || /[\0\\]/.test(database) || database.endsWith(' ')) {
    throw new AppError('invalid_connection', 'The database name is not a valid MySQL/MariaDB database name.');
  }
  if (/[\0\n\r]/.test(user + password + (socket ?? ''))) {
    throw new AppError('invalid_connection', 'The user, password or socket holds a control character.');
  }
  const port = url.port ? Number(url.port) : 3306;
  return { host: url.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost', port, user, password, database, socket };
}

/** The same connection, naming another database. */
export function withDatabase(connection: string, database: string): string {
  const url = new URL(connection);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

export function quoteId(name: string): string {
  return '`' + name.replace(/`/g, '``') + '`';
}

function optionValue(v: string): string {
  return '"' + v.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

/**
 * Writes the [client] option file the tools read with --defaults-extra-file:
 * the password must never be in argv (any local user can read
 * /proc/PID/cmdline), so it lives in this private file (mode 0600) in the
 * job's workDir, which the caller removes.
 */
export async function writeOptionFile(workDir: string, p: ConnParams): Promise<string> {
  await mkdir(workDir, { recursive: true });
  const path = join(workDir, `mysql-client-${randomBytes(6).toString('hex')}.cnf`);
  const lines = ['[client]', `user=${optionValue(p.user)}`];
  if (p.password) lines.push(`password=${optionValue(p.password)}`);
  if (p.socket) lines.push(`socket=${optionValue(p.socket)}`, 'protocol=SOCKET');
  else lines.push(`host=${optionValue(p.host)}`, `port=${p.port}`, 'protocol=TCP');
  await writeFile(path, lines.join('\n') + '\n', { mode: 0o600, flag: 'wx' });
  return path;
}

/** The first of the given tools found on PATH (mariadb-dump, else mysqldump). */
export async function findTool(names: string[]): Promise<string> {
  const dirs = (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter(Boolean);
  for (const name of names) {
    for (const dir of dirs) {
      try {
        await access(join(dir, name), constants.X_OK);
        return name;
      } catch {
        // not here
      }
    }
  }
  throw new AppError('tool_missing', `${names.join(' or ')} is not installed on the server; install the MariaDB (or MySQL) client tools.`);
}

/** An engine_failed AppError for a driver error, password scrubbed; AppErrors and cancellations pass through. */
export function dbError(err: unknown, p: ConnParams, what: string, signal?: AbortSignal): AppError {
  if (isAppError(err)) return err;
  if (signal?.aborted) return new AppError('cancelled', undefined, undefined, { cause: err });
  const msg = scrub((err as Error)?.message ?? String(err), [p.password]);
  return new AppError('engine_failed', `${what}: ${msg}`);
}

export type Conn = mysql.Connection;

/** A mysql2 connection (no database selected unless given) that is destroyed when signal fires. */
export async function connect(p: ConnParams, signal: AbortSignal, database: string | null): Promise<{ conn: Conn; close: () => Promise<void> }> {
  if (signal.aborted) throw new AppError('cancelled');
  let conn: Conn;
  try {
    conn = await mysql.createConnection({
      host: p.socket ? undefined : p.host,
      port: p.socket ? undefined : p.port,
      socketPath: p.socket,
      user: p.user,
      password: p.password,
      database: database ?? undefined,
      charset: 'UTF8MB4_GENERAL_CI',
      supportBigNumbers: true,
      bigNumberStrings: true,
      dateStrings: true,
      multipleStatements: false,
      connectTimeout: 15000,
    });
  } catch (err) {
    throw dbError(err, p, `Could not connect to MySQL/MariaDB at ${p.socket ?? `${p.host}:${p.port}`}`, signal);
  }
  const onAbort = () => conn.destroy();
  signal.addEventListener('abort', onAbort, { once: true });
  // A destroyed or dropped connection emits 'error'; the pending query reports it.
  conn.on('error', () => {});
  let closed = false;
  return {
    conn,
    close: async () => {
      if (closed) return;
      closed = true;
      signal.removeEventListener('abort', onAbort);
      try {
        await conn.end();
      } catch {
        conn.destroy();
      }
    },
  };
}

/** Runs fn on a fresh connection and closes it, mapping driver errors. */
export async function withConnection<T>(p: ConnParams, signal: AbortSignal, database: string | null, what: string, fn: (conn: Conn) => Promise<T>): Promise<T> {
  const { conn, close } = await connect(p, signal, database);
  try {
    return await fn(conn);
  } catch (err) {
    throw dbError(err, p, what, signal);
  } finally {
    await close();
  }
}

type Row = Record<string, unknown>;

/** query() returning plain rows. */
export async function rows(conn: Conn, sql: string, values: unknown[] = []): Promise<Row[]> {
  const [result] = await conn.query(sql, values);
  return result as Row[];
}

/** Base tables (what counts describe) of a database. */
export async function baseTables(conn: Conn, db: string): Promise<string[]> {
  const r = await rows(
    conn,
    "SELECT TABLE_NAME AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
    [db],
  );
  return r.map((x) => String(x.n));
}

/** Exact row counts, as SELECT COUNT(*) sees them. */
export async function countRows(conn: Conn, db: string, tables: string[], signal: AbortSignal): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of tables) {
    if (signal.aborted) throw new AppError('cancelled');
    const r = await rows(conn, `SELECT COUNT(*) AS n FROM ${quoteId(db)}.${quoteId(t)}`);
    out[t] = Number(r[0]?.n ?? 0);
  }
  return out;
}
