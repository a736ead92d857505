// PostgreSQL for the dialect round trips: PostgreSQL 15 on 127.0.0.1:5432,
// user postgres, trust auth. Each test run creates its own uniquely named
// database and drops it (and any database a restore made beside it) WITH
// (FORCE) afterwards. An unreachable server fails the test: it is never skipped.
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const PG_SERVER = 'postgres://postgres@127.0.0.1:5432';

/** Runs SQL in one database over a fresh connection; an unreachable server throws, loudly. */
export async function pgQuery<T = any>(db: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: `${PG_SERVER}/${db}` });
  try {
    await client.connect();
  } catch (err) {
    throw new Error(`PostgreSQL 15 on 127.0.0.1:5432 (user postgres, trust) is needed for this test and could not be reached: ${(err as Error).message}`);
  }
  try {
    return (await client.query(sql, params)).rows as T[];
  } finally {
    await client.end();
  }
}

const quote = (name: string): string => `"${name.replace(/"/g, '""')}"`;

export interface PgDatabase {
  /** The database's name: <prefix>_<8 hex>. */
  name: string;
  /** Its connection string for a Backvault resource. */
  connection: string;
  query<T = any>(sql: string, params?: unknown[]): Promise<T[]>;
  /** Another database (a restore's new target) to drop with this one. */
  alsoDrop(name: string): void;
  /** Drops this database and the others named, WITH (FORCE). */
  drop(): Promise<void>;
}

/** Creates a uniquely named database holding the accounts table (see seedAccounts). */
export async function createPgDatabase(prefix: string): Promise<PgDatabase> {
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  await pgQuery('postgres', `CREATE DATABASE ${quote(name)}`);
  const extra: string[] = [];
  const db: PgDatabase = {
    name,
    connection: `${PG_SERVER}/${name}`,
    query: (sql, params) => pgQuery(name, sql, params),
    alsoDrop: (other) => void extra.push(other),
    async drop() {
      for (const n of [name, ...extra]) await pgQuery('postgres', `DROP DATABASE IF EXISTS ${quote(n)} WITH (FORCE)`);
    },
  };
  await seedAccounts(db.query);
  return db;
}

/** 100 accounts and a log table of 20 lines. */
async function seedAccounts(query: PgDatabase['query']): Promise<void> {
  await query(`CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);
               INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g * 10 FROM generate_series(1, 100) g;
               CREATE TABLE audit_log (id serial PRIMARY KEY, line text NOT NULL);
               INSERT INTO audit_log (line) SELECT 'line ' || g FROM generate_series(1, 20) g;`);
}

export interface PgSnapshot {
  accounts: { id: number; owner: string; balance: string }[];
  audit_log: number;
  tables: string[];
}

/** The rows of accounts, the count of audit_log and the public tables of a database. */
export async function pgSnapshot(db: string): Promise<PgSnapshot> {
  const accounts = await pgQuery(db, 'SELECT id, owner, balance::text AS balance FROM accounts ORDER BY id');
  const log = await pgQuery(db, 'SELECT count(*)::int AS n FROM audit_log');
  const tables = await pgQuery(db, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`);
  return { accounts, audit_log: log[0].n, tables: tables.map((t) => t.tablename) };
}

/** Changes rows in accounts and adds a table the backup lacks. */
export async function changePg(db: string): Promise<void> {
  await pgQuery(db, `DELETE FROM accounts WHERE id > 60;
                     UPDATE accounts SET balance = 0, owner = 'changed' WHERE id <= 10;
                     INSERT INTO accounts (owner, balance) VALUES ('intruder', 1);
                     CREATE TABLE IF NOT EXISTS added_later (x int);`);
}

/** Whether a database of this name exists on the server. */
export async function pgDatabaseExists(name: string): Promise<boolean> {
  return (await pgQuery('postgres', 'SELECT 1 FROM pg_database WHERE datname = $1', [name])).length > 0;
}
