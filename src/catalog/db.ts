// Opens the catalog and brings its schema up to date. SQLite (better-sqlite3)
// is the embedded default; the Kysely layer keeps PostgreSQL possible later.
import Database from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Database as Schema } from './schema.ts';
import { migrationProvider } from './migrations.ts';
import { withStatementCache } from './statement-cache.ts';

export type CatalogDb = Kysely<Schema>;

export async function openCatalog(path: string): Promise<CatalogDb> {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const sqlite = new Database(path);
  // WAL lets readers (API lists) run while a worker writes progress.
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  // Kysely's SQLite driver prepares every query afresh; the cache reuses statements per SQL text.
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
  const migrator = new Migrator({ db, provider: migrationProvider });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    await db.destroy();
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new Error(`catalog migration ${failed} failed: ${(error as Error).message}`);
  }
  return db;
}
