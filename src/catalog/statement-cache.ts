// A prepared-statement cache in front of better-sqlite3 for Kysely's
// SqliteDialect. Kysely's SQLite driver calls `db.prepare(sql)` for every query
// (kysely/dist/esm/dialect/sqlite/sqlite-driver.js, executeQuery and
// streamQuery); compiling the same SQL text again each time was ~9% of the
// event loop under list load. Statements are reusable with new parameters,
// except while an unfinished `iterate()` (Kysely's streamQuery) holds them:
// then `stmt.busy` is true and a fresh, uncached statement is handed out.
import type { Database, Statement } from 'better-sqlite3';

export const DEFAULT_STATEMENT_CACHE_SIZE = 200;

/**
 * Returns a view of `db` whose `prepare(sql)` answers from a bounded LRU of
 * statements keyed by SQL text. Every other property is the database's own.
 */
export function withStatementCache(db: Database, max = DEFAULT_STATEMENT_CACHE_SIZE): Database {
  if (!Number.isInteger(max) || max < 1) throw new RangeError(`statement cache size must be a positive integer, got ${max}`);
  // A Map keeps insertion order: re-inserting on hit makes the first key the least recently used.
  const cache = new Map<string, Statement>();
  const prepare = (sql: string): Statement => {
    const hit = cache.get(sql);
    if (hit !== undefined) {
      // In use by an unfinished iterate(): reusing it would throw; use a one-off statement.
      if (hit.busy) return db.prepare(sql);
      cache.delete(sql);
      cache.set(sql, hit);
      return hit;
    }
    const stmt = db.prepare(sql);
    cache.set(sql, stmt);
    if (cache.size > max) cache.delete(cache.keys().next().value!);
    return stmt;
  };
  return new Proxy(db, {
    get(target, prop) {
      if (prop === 'prepare') return prepare;
      const value: unknown = Reflect.get(target, prop, target);
      // better-sqlite3's methods check their receiver: bind them to the real database.
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
