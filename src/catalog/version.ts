// A stamp that changes whenever the catalog's content may have changed, so
// answers derived from it can be reused until then. SQLite gives two cheap
// counters: total_changes() counts rows inserted, updated or deleted through
// this connection (the server's only one), and data_version changes when
// another connection (a CLI command on the same file) commits.
import { CompiledQuery } from 'kysely';
import type { CatalogDb } from './db.ts';

const STAMP = CompiledQuery.raw('select total_changes() as changes, data_version as other from pragma_data_version');

/**
 * The catalog's current version. Read it before the data it guards: data read
 * afterwards is at least as new, so an answer stored under the stamp is never
 * older than the stamp says.
 */
export async function catalogVersion(db: CatalogDb): Promise<string> {
  const { rows } = await db.executeQuery<{ changes: number; other: number }>(STAMP);
  const row = rows[0]!;
  return `${row.changes}.${row.other}`;
}
