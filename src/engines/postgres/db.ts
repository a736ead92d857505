// Database-level work on a server: maintenance connections, counting rows,
// creating, swapping and dropping databases. A dump made without --create
// holds the database's contents but not the database object itself (owner,
// encoding, locale, ACL, comment, per-database settings), so an in-place
// restore carries those over from the database it replaces.
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { AppError } from '../../errors/index.ts';
import { connect, ident, literal, withDatabase, type PgConn } from './conn.ts';

export interface ServerInfo {
  num: number;
  version: string;
}

export async function serverInfo(client: pg.Client): Promise<ServerInfo> {
  const r = await client.query<{ num: string; version: string }>(
    `SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version`,
  );
  return { num: Number(r.rows[0]!.num), version: r.rows[0]!.version };
}

/**
 * A connection to another database of the same server, for CREATE, ALTER
 * and DROP DATABASE (which cannot run inside the database they act on).
 */
export async function connectMaintenance(conn: PgConn, signal?: AbortSignal): Promise<pg.Client> {
  const candidates = conn.database === 'postgres' ? ['template1'] : ['postgres', 'template1'];
  let first: unknown;
  for (const db of candidates) {
    try {
      return await connect(withDatabase(conn, db), signal);
    } catch (err) {
      first ??= err;
    }
  }
  throw first;
}

export async function databaseExists(client: pg.Client, name: string): Promise<boolean> {
  const r = await client.query('SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1', [name]);
  return (r.rowCount ?? 0) > 0;
}

/** A database name derived from base, unique, within PostgreSQL's 63-byte limit. */
export function derivedName(base: string, tag: string): string {
  const suffix = `_${tag}_${randomBytes(4).toString('hex')}`;
  let head = base;
  while (Buffer.byteLength(head + suffix) > 63) head = head.slice(0, -1);
  // A cut may have split a surrogate pair; drop a lone half.
  return head.replace(/[\uD800-\uDBFF]$/, '') + suffix;
}

export type TableRef = { schema: string; name: string };
export const tableKey = (t: TableRef): string => `${t.schema}.${t.name}`;

/**
 * Exact row counts. Runs in whatever transaction the client is in (the
 * dump's snapshot). row_security off makes a table that row-level security
 * would filter fail loudly instead of being counted short, as pg_dump does.
 * A missing table is left out, so the comparison reports it missing.
 */
export async function countTables(client: pg.Client, tables: TableRef[]): Promise<Record<string, number>> {
  await client.query('SET row_security = off');
  const out: Record<string, number> = {};
  for (const t of tables) {
    try {
      const r = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${ident(t.schema)}.${ident(t.name)}`);
      out[tableKey(t)] = Number(r.rows[0]!.n);
    } catch (err) {
      if ((err as { code?: string }).code === '42P01') continue;
      throw err;
    }
  }
  return out;
}

export interface DbProps {
  owner: string;
  encoding: string;
  collate: string;
  ctype: string;
  provider: string | null;
  locale: string | null;
  icuRules: string | null;
  tablespace: string | null;
  connLimit: number;
  allowConn: boolean;
  comment: string | null;
  /** null: the default ACL; otherwise the explicit grants */
  acl: { grantee: string | null; privilege: string; grantable: boolean }[] | null;
  settings: { role: string | null; config: string[] }[];
}

export async function readDbProps(client: pg.Client, name: string): Promise<DbProps> {
  // to_jsonb(d) reads version-dependent columns (datlocprovider in 15+,
  // daticulocale 15-16, datlocale 17+) without naming columns an older server lacks.
  const r = await client.query(
    `SELECT pg_catalog.pg_get_userbyid(d.datdba) AS owner, pg_catalog.pg_encoding_to_char(d.encoding) AS encoding,
            d.datcollate AS collate, d.datctype AS ctype, d.datconnlimit AS connlimit, d.datallowconn AS allowconn,
            to_jsonb(d) ->> 'datlocprovider' AS provider,
            coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') AS locale,
            to_jsonb(d) ->> 'daticurules' AS icurules,
            nullif(t.spcname, 'pg_default') AS tablespace,
            pg_catalog.shobj_description(d.oid, 'pg_database') AS comment,
            d.datacl IS NULL AS default_acl
       FROM pg_catalog.pg_database d LEFT JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
      WHERE d.datname = $1`,
    [name],
  );
  const row = r.rows[0];
  if (!row) throw new AppError('engine_failed', `Database "${name}" disappeared during the restore.`);
  const acl = row.default_acl
    ? null
    : (
        await client.query(
          `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END AS grantee,
                  a.privilege_type AS privilege, a.is_grantable AS grantable
             FROM pg_catalog.pg_database d, LATERAL pg_catalog.aclexplode(d.datacl) a WHERE d.datname = $1`,
          [name],
        )
      ).rows;
  const settings = (
    await client.query(
      `SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END AS role, s.setconfig AS config
         FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1`,
      [name],
    )
  ).rows;
  return {
    owner: row.owner,
    encoding: row.encoding,
    collate: row.collate,
    ctype: row.ctype,
    provider: row.provider,
    locale: row.locale,
    icuRules: row.icurules,
    tablespace: row.tablespace,
    connLimit: row.connlimit,
    allowConn: row.allowconn,
    comment: row.comment,
    acl,
    settings,
  };
}

/** CREATE DATABASE from template0, with the properties of the database it will replace when there is one. */
export async function createDatabase(client: pg.Client, name: string, props: DbProps | null): Promise<void> {
  let sql = `CREATE DATABASE ${ident(name)} WITH TEMPLATE template0`;
  if (props) {
    sql += ` OWNER ${ident(props.owner)} ENCODING ${literal(props.encoding)} LC_COLLATE ${literal(props.collate)} LC_CTYPE ${literal(props.ctype)}`;
    if (props.provider === 'i') {
      sql += ` LOCALE_PROVIDER icu ICU_LOCALE ${literal(props.locale ?? '')}`;
      if (props.icuRules) sql += ` ICU_RULES ${literal(props.icuRules)}`;
    } else if (props.provider === 'b') sql += ` LOCALE_PROVIDER builtin BUILTIN_LOCALE ${literal(props.locale ?? '')}`;
    if (props.tablespace) sql += ` TABLESPACE ${ident(props.tablespace)}`;
    sql += ` CONNECTION LIMIT ${Number(props.connLimit)}`;
  }
  await client.query(sql);
}

/** GUCs whose values are lists of identifiers (pg_dumpall's variable_is_guc_list_quote). */
const LIST_GUCS = new Set(['local_preload_libraries', 'search_path', 'session_preload_libraries', 'shared_preload_libraries', 'temp_tablespaces', 'unix_socket_directories']);

/** Splits a stored list value such as `"$user", public` into its elements. */
export function splitGucList(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inQuotes = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (inQuotes) {
      if (ch === '"' && value[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (ch === '"') inQuotes = false;
      else cur += ch;
    } else if (ch === '"') inQuotes = true;
    else if (ch === ',') {
      out.push(cur);
      cur = '';
    } else if (!/\s/.test(ch)) cur += ch;
  }
  out.push(cur);
  return out;
}

/** The database-level properties that CREATE DATABASE does not set. Applied after the restore: a setting like default_transaction_read_only would break it. */
export async function applyDbProps(client: pg.Client, name: string, props: DbProps): Promise<void> {
  const db = ident(name);
  if (props.comment !== null) await client.query(`COMMENT ON DATABASE ${db} IS ${literal(props.comment)}`);
  if (props.acl !== null) {
    await client.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
    await client.query(`REVOKE ALL ON DATABASE ${db} FROM ${ident(props.owner)}`);
    for (const a of props.acl) {
      await client.query(`GRANT ${a.privilege} ON DATABASE ${db} TO ${a.grantee === null ? 'PUBLIC' : ident(a.grantee)}${a.grantable ? ' WITH GRANT OPTION' : ''}`);
    }
  }
  for (const s of props.settings) {
    for (const item of s.config) {
      const eq = item.indexOf('=');
      if (eq <= 0) continue;
      const name = item.slice(0, eq);
      const raw = item.slice(eq + 1);
      const value = LIST_GUCS.has(name.toLowerCase()) ? splitGucList(raw).map(literal).join(', ') : literal(raw);
      const guc = name.split('.').map(ident).join('.');
      const target = s.role === null ? `DATABASE ${db}` : `ROLE ${ident(s.role)} IN DATABASE ${db}`;
      await client.query(`ALTER ${target} SET ${guc} = ${value}`);
    }
  }
  if (!props.allowConn) await client.query(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS false`);
}

/** Ends every other session on a database and waits until they are gone. */
export async function terminateSessions(client: pg.Client, name: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await client.query<{ n: number }>(
      `SELECT count(pg_catalog.pg_terminate_backend(pid))::int AS n FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()`,
      [name],
    );
    if (r.rows[0]!.n === 0) return;
    if (Date.now() > deadline) {
      throw new AppError('engine_failed', `Sessions on database "${name}" did not end within ${timeoutMs / 1000} s; stop the application using it and retry.`);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

/**
 * Puts staging in target's place: no new sessions on target, end the
 * existing ones, rename target away, rename staging to target, drop the old
 * one. Undone if the second rename fails. Returns warnings.
 */
export async function swapDatabases(client: pg.Client, target: string, staging: string, allowConn: boolean): Promise<string[]> {
  const t = ident(target);
  const old = derivedName(target, 'bvold');
  await client.query(`ALTER DATABASE ${t} WITH ALLOW_CONNECTIONS false`);
  try {
    await terminateSessions(client, target);
    await client.query(`ALTER DATABASE ${t} RENAME TO ${ident(old)}`);
  } catch (err) {
    await client.query(`ALTER DATABASE ${t} WITH ALLOW_CONNECTIONS ${allowConn}`).catch(() => {});
    throw err;
  }
  try {
    await client.query(`ALTER DATABASE ${ident(staging)} RENAME TO ${t}`);
  } catch (err) {
    await client.query(`ALTER DATABASE ${ident(old)} RENAME TO ${t}`).catch(() => {});
    await client.query(`ALTER DATABASE ${t} WITH ALLOW_CONNECTIONS ${allowConn}`).catch(() => {});
    throw err;
  }
  try {
    await terminateSessions(client, old);
    await client.query(`DROP DATABASE ${ident(old)}`);
    return [];
  } catch (err) {
    return [`The replaced database was kept as "${old}" because dropping it failed (${(err as Error).message}); drop it by hand.`];
  }
}

/** Drops a database if it exists, ending its sessions; on its own connection, so it works after a cancelled job. */
export async function dropDatabase(conn: PgConn, name: string): Promise<void> {
  const client = await connectMaintenance(conn);
  try {
    if (!(await databaseExists(client, name))) return;
    await client.query(`ALTER DATABASE ${ident(name)} WITH ALLOW_CONNECTIONS false`).catch(() => {});
    await terminateSessions(client, name);
    await client.query(`DROP DATABASE IF EXISTS ${ident(name)}`);
  } finally {
    await client.end().catch(() => {});
  }
}
