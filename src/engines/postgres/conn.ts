// PostgreSQL connection URLs: parsing, the pg library's config, and the
// environment for libpq tools. Passwords go to the tools through PGPASSWORD,
// never argv; every other parameter also travels by environment so argv
// holds nothing a user typed except object names.
import pg from 'pg';
import { AppError } from '../../errors/index.ts';

export interface PgConn {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  sslmode?: string;
  connectTimeout?: number;
  applicationName?: string;
}

const SSLMODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];
const PARAMS = ['sslmode', 'connect_timeout', 'application_name'];

function invalid(why: string): AppError {
  return new AppError('invalid_connection', `A postgres connection is a URL like postgres://user:password@host:5432/database; ${why}.`);
}

function decode(s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalid(`the ${what} is not valid percent-encoding`);
  }
}

/** Parses postgres://user:pass@host:port/db[?sslmode=...]. Messages never quote the URL (it may hold a password). */
export function parseConnection(connection: unknown): PgConn {
  if (typeof connection !== 'string' || connection === '') throw invalid('it is empty');
  let url: URL;
  try {
    url = new URL(connection);
  } catch {
    throw invalid('this one cannot be parsed');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') throw invalid(`the scheme must be postgres:// or postgresql://, not ${url.protocol}//`);
  // postgres: is not a "special" scheme for WHATWG URL, so hostname keeps
  // percent-encoding; %2Fvar%2Frun%2Fpostgresql names a Unix socket directory.
  const rawHost = decode(url.hostname, 'host');
  // IPv6 literals keep their brackets in a URL's hostname; libpq and pg want them bare.
  const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
  if (!host) throw invalid('the host is missing');
  const port = url.port === '' ? 5432 : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid('the port is not a number between 1 and 65535');
  const database = decode(url.pathname.replace(/^\//, ''), 'database name');
  if (!database) throw invalid('the database name (the path) is missing');
  if (database.includes('/')) throw invalid('the database name may not contain "/"');
  const user = decode(url.username, 'user name') || 'postgres';
  const password = decode(url.password, 'password');
  const conn: PgConn = { host, port, user, password, database };
  for (const [key, value] of url.searchParams) {
    if (!PARAMS.includes(key)) throw invalid(`the parameter "${key}" is not supported (supported: ${PARAMS.join(', ')})`);
    if (key === 'sslmode') {
      if (!SSLMODES.includes(value)) throw invalid(`sslmode must be one of ${SSLMODES.join(', ')}`);
      conn.sslmode = value;
    } else if (key === 'connect_timeout') {
      const t = Number(value);
      if (!Number.isInteger(t) || t < 0) throw invalid('connect_timeout must be a whole number of seconds');
      conn.connectTimeout = t;
    } else conn.applicationName = value;
  }
  for (const [what, v] of [['database name', database], ['user name', user], ['host', host]] as const) {
    if (v.includes('\0')) throw invalid(`the ${what} contains a NUL byte`);
  }
  return conn;
}

/** The same server and credentials, another database. */
export function withDatabase(conn: PgConn, database: string): PgConn {
  return { ...conn, database };
}

/** A URL for conn (used for scratch targets, which keep the resource's credentials). */
export function formatConnection(conn: PgConn): string {
  const auth = encodeURIComponent(conn.user) + (conn.password ? `:${encodeURIComponent(conn.password)}` : '');
  const host = conn.host.startsWith('/') ? encodeURIComponent(conn.host) : conn.host.includes(':') ? `[${conn.host}]` : conn.host;
  const params = new URLSearchParams();
  if (conn.sslmode) params.set('sslmode', conn.sslmode);
  if (conn.connectTimeout !== undefined) params.set('connect_timeout', String(conn.connectTimeout));
  if (conn.applicationName !== undefined) params.set('application_name', conn.applicationName);
  const q = params.toString();
  return `postgres://${auth}@${host}:${conn.port}/${encodeURIComponent(conn.database)}${q ? `?${q}` : ''}`;
}

export function clientConfig(conn: PgConn): pg.ClientConfig {
  // The pg library has no "prefer" fallback: only modes that demand TLS turn it on.
  const ssl =
    conn.sslmode === 'require' ? { rejectUnauthorized: false } : conn.sslmode === 'verify-ca' || conn.sslmode === 'verify-full' ? true : false;
  return {
    host: conn.host,
    port: conn.port,
    user: conn.user,
    password: conn.password,
    database: conn.database,
    ssl,
    connectionTimeoutMillis: (conn.connectTimeout ?? 30) * 1000,
    application_name: conn.applicationName ?? 'backvault',
  };
}

/** libpq environment for pg_dump / pg_restore: everything but the database name, which goes in -d as a quoted conninfo. */
export function toolEnv(conn: PgConn): Record<string, string> {
  const env: Record<string, string> = {
    PGHOST: conn.host,
    PGPORT: String(conn.port),
    PGUSER: conn.user,
    PGCONNECT_TIMEOUT: String(conn.connectTimeout ?? 30),
    PGAPPNAME: conn.applicationName ?? 'backvault',
    // Credentials come from the URL alone, not from a ~/.pgpass of the server's user
    // (a missing file is ignored silently; /dev/null would draw a warning).
    PGPASSFILE: '/nonexistent/backvault-no-pgpass',
  };
  if (conn.password) env.PGPASSWORD = conn.password;
  if (conn.sslmode) env.PGSSLMODE = conn.sslmode;
  return env;
}

/**
 * The value for -d: a conninfo naming only the database. Passing the bare
 * name would let a database called "host=elsewhere" be read as a conninfo.
 */
export function dbnameArg(database: string): string {
  return `dbname='${database.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export function secretsOf(conn: PgConn): string[] {
  return conn.password ? [conn.password, encodeURIComponent(conn.password)] : [];
}

/** Connects a pg client; failures become engine_failed naming host and database, never the password. */
export async function connect(conn: PgConn, signal?: AbortSignal): Promise<pg.Client> {
  if (signal?.aborted) throw new AppError('cancelled');
  const client = new pg.Client(clientConfig(conn));
  // A dropped connection emits 'error' on the client; without a listener it would crash the process.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw new AppError('engine_failed', `Could not connect to PostgreSQL at ${where(conn)}: ${scrubbed(err, conn)}`, undefined, { cause: err });
  }
  return client;
}

export function where(conn: PgConn): string {
  return `${conn.host}:${conn.port} (database "${conn.database}", user "${conn.user}")`;
}

/** An error's message with the password removed. */
export function scrubbed(err: unknown, conn: PgConn): string {
  let msg = err instanceof Error ? err.message : String(err);
  for (const s of secretsOf(conn)) if (s) msg = msg.split(s).join('****');
  return msg;
}

export const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;
export const literal = (value: string): string => pg.escapeLiteral(value);
