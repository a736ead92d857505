// The SQLite work itself. better-sqlite3 is synchronous, and a copy, VACUUM,
// integrity_check or row copy of a large database takes seconds to minutes, so
// these functions run in a worker thread (see offload.ts) to keep the server's
// event loop (HTTP, job heartbeats) responsive. They take and return plain
// data only, because arguments and results cross the thread boundary, and
// a TaskControl (control.ts) through which they notice cancellation between
// steps and claim the point of no return before anything becomes visible.
// Every connection a task opens is closed (in a finally block) before it
// returns or throws: the worker outlives the task, and its caller may remove
// the files or let other processes write as soon as the task settles.
import { rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectCounts, ObjectInfo } from '../../domain/types.ts';
import { AppError } from '../../errors/index.ts';
import { type TaskControl, uncancellable } from './control.ts';

type DB = Database.Database;

/** Waits this long for another process's lock instead of failing at once. */
const BUSY_TIMEOUT_MS = 30_000;

interface TableEntry {
  name: string;
  /** 'table' ordinary, 'virtual' (e.g. fts5), 'shadow' (a virtual table's storage), 'view' */
  type: string;
  /** WITHOUT ROWID */
  wr: number;
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function tableList(db: DB, schema: string): TableEntry[] {
  const rows = db.pragma(`${schema}.table_list`) as TableEntry[];
  // sqlite_schema, sqlite_sequence, sqlite_stat1…: internal, maintained by SQLite itself.
  return rows.filter((r) => !r.name.startsWith('sqlite_'));
}

/** Tables a selection can name: ordinary and virtual tables. */
function userTables(db: DB, schema: string): TableEntry[] {
  return tableList(db, schema).filter((t) => t.type === 'table' || t.type === 'virtual');
}

/**
 * Row count per table that holds data: ordinary tables and the shadow tables
 * in which virtual tables store theirs (counting those needs no module).
 * Dump and restore both count with this, so their results compare.
 */
export function countTables(db: DB, schema: string, only?: Set<string>): Record<string, number> {
  const counts: Record<string, number> = {};
  const names = tableList(db, schema)
    .filter((t) => t.type === 'table' || t.type === 'shadow')
    .map((t) => t.name)
    .filter((n) => !only || only.has(n))
    .sort();
  for (const name of names) {
    const row = db.prepare(`SELECT count(*) AS n FROM ${schema}.${quoteIdent(name)}`).get() as { n: number };
    counts[name] = row.n;
  }
  return counts;
}

function integrityProblems(db: DB, schema: string): string[] {
  const rows = db.pragma(`${schema}.integrity_check`) as { integrity_check: string }[];
  const msgs = rows.map((r) => r.integrity_check);
  return msgs.length === 1 && msgs[0] === 'ok' ? [] : msgs;
}

function open(path: string, opts: Database.Options = {}): DB {
  const db = new Database(path, { fileMustExist: true, timeout: BUSY_TIMEOUT_MS, ...opts });
  return db;
}

export interface DumpCopyArgs {
  source: string;
  dest: string;
  selection: string[] | null;
  exclude: string[];
}

export interface DumpCopyResult {
  counts: ObjectCounts;
  serverVersion: string;
  warnings: string[];
}

/**
 * Takes a consistent copy of source into dest (a new file), trims it to the
 * selection and checks it. dest must be a real file: the backup API writes
 * pages at random offsets, so it cannot write into a stream.
 */
export async function dumpCopy(args: DumpCopyArgs, ctl: TaskControl = uncancellable): Promise<DumpCopyResult> {
  // Writes only dest (and dest.full) in the caller's work directory, which the
  // caller removes after a failure: cancellable throughout.
  const warnings: string[] = [];
  let src: DB;
  try {
    // Read-only: a backup never writes to the application's database.
    src = open(args.source, { readonly: true });
  } catch (err) {
    throw new AppError('engine_failed', `Cannot open the SQLite database ${args.source}: ${(err as Error).message}`, undefined, { cause: err });
  }
  let serverVersion: string;
  // A partial dump trims a full snapshot, then compacts it into dest.
  const snap = args.selection || args.exclude.length > 0 ? `${args.dest}.full` : args.dest;
  try {
    serverVersion = (src.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
    // All remaining pages in one step: the step holds one read transaction,
    // so the copy is one snapshot even while other processes write (in WAL
    // mode they keep writing; in rollback mode they wait for the step). With
    // small steps every foreign write would restart the copy, possibly forever.
    await src.backup(snap, { progress: () => 0x7fffffff });
  } finally {
    src.close();
  }

  ctl.checkpoint();
  if (snap !== args.dest) {
    try {
      trimToSelection(snap, args, warnings, ctl);
    } finally {
      for (const s of ['', '-wal', '-shm', '-journal']) rmSync(snap + s, { force: true });
    }
  }

  ctl.checkpoint();
  const db = open(args.dest);
  try {
    const problems = integrityProblems(db, 'main');
    if (problems.length > 0) {
      throw new AppError('engine_failed', `The copy of ${args.source} fails integrity_check, so the source database is damaged: ${problems.slice(0, 5).join('; ')}`, {
        problems: problems.slice(0, 20),
      });
    }
    return { counts: { tables: countTables(db, 'main') }, serverVersion, warnings };
  } finally {
    db.close();
  }
}

/** Drops from the snapshot the tables a partial dump leaves out, and writes the rest, compacted, to args.dest. */
function trimToSelection(snap: string, args: DumpCopyArgs, warnings: string[], ctl: TaskControl): void {
  const db = open(snap);
  try {
    const tables = userTables(db, 'main');
    const byLower = new Map(tables.map((t) => [t.name.toLowerCase(), t]));
    // SQLite names are case-insensitive, so are selections.
    const resolve = (n: string) => byLower.get(n.toLowerCase());
    if (args.selection) {
      const missing = args.selection.filter((n) => !resolve(n));
      if (missing.length > 0) {
        throw new AppError('invalid_selection', `The database has no table named ${missing.map((m) => `"${m}"`).join(', ')}.`, { missing });
      }
    }
    const unknownExcluded = args.exclude.filter((n) => !resolve(n));
    if (unknownExcluded.length > 0) warnings.push(`excluded tables not in the database: ${unknownExcluded.join(', ')}`);

    const keep = new Set((args.selection ? args.selection.map((n) => resolve(n)!) : tables).map((t) => t.name));
    for (const n of args.exclude) {
      const t = resolve(n);
      if (t) keep.delete(t.name);
    }
    const drop = tables.filter((t) => !keep.has(t.name));
    db.pragma('foreign_keys = OFF');
    db.transaction(() => {
      // Triggers on a dropped table go with it; a virtual table takes its shadow tables along.
      for (const t of drop) db.exec(`DROP TABLE main.${quoteIdent(t.name)}`);
      dropBrokenViews(db);
      // Triggers on kept tables whose bodies name a dropped table stay: they
      // are inert until fired, and a partial in-place restore recreates
      // kept tables with their triggers, which must not silently vanish.
    })();
    ctl.checkpoint();
    // VACUUM INTO writes only live pages, so neither the dropped tables'
    // data nor their space reach the artifact. Plain VACUUM would renumber
    // the rowids of tables without an INTEGER PRIMARY KEY; VACUUM INTO keeps them.
    db.prepare('VACUUM INTO ?').run(args.dest);
  } finally {
    db.close();
  }
}

/** Drops views that no longer compile because a table (or view) they read was dropped; repeats for views on views. */
function dropBrokenViews(db: DB): void {
  for (;;) {
    const views = db.prepare(`SELECT name FROM main.sqlite_schema WHERE type = 'view'`).all() as { name: string }[];
    let dropped = false;
    for (const v of views) {
      try {
        db.prepare(`SELECT * FROM main.${quoteIdent(v.name)} LIMIT 0`);
      } catch (err) {
        if (!/no such (table|view|column)/.test((err as Error).message)) throw err;
        db.exec(`DROP VIEW main.${quoteIdent(v.name)}`);
        dropped = true;
      }
    }
    if (!dropped) return;
  }
}

export interface CheckRestoredArgs {
  path: string;
  expected: ObjectCounts;
}

/** Checks a restored file before it replaces anything: integrity, then counts against the manifest. */
export function checkRestored(args: CheckRestoredArgs, ctl: TaskControl = uncancellable): { counts: ObjectCounts } {
  let db: DB;
  try {
    db = open(args.path);
  } catch (err) {
    throw new AppError('verification_failed', `The restored data is not a SQLite database: ${(err as Error).message}`, undefined, { cause: err });
  }
  try {
    let problems: string[];
    try {
      problems = integrityProblems(db, 'main');
    } catch (err) {
      // e.g. "file is not a database"
      problems = [(err as Error).message];
    }
    if (problems.length > 0) {
      throw new AppError('verification_failed', `The restored database fails integrity_check: ${problems.slice(0, 5).join('; ')}`, {
        problems: problems.slice(0, 20),
      });
    }
    ctl.checkpoint();
    const counts: ObjectCounts = { tables: countTables(db, 'main') };
    assertCounts(args.expected, counts);
    return { counts };
  } finally {
    db.close();
  }
}

function assertCounts(expected: ObjectCounts, actual: ObjectCounts): void {
  const diffs = compareCounts(expected, actual);
  if (diffs.length > 0) {
    throw new AppError('verification_failed', `The restored database does not match the backup: ${diffs.slice(0, 5).join('; ')}`, { differences: diffs });
  }
}

export interface ReplaceTablesArgs {
  /** the database to restore into, in place */
  target: string;
  /** the restored backup file */
  source: string;
  expected: ObjectCounts;
}

/**
 * Partial in-place restore: replaces each table the backup holds (schema,
 * indexes, triggers, rows) in one transaction and leaves every other table
 * alone. Either all of them are replaced or, on any error, none.
 *
 * The COMMIT is the point of no return: a cancel before it rolls everything
 * back; once claimed (ctl.pointOfNoReturn) the task runs to its end and
 * reports success, however late a cancel arrives.
 */
export function replaceTables(args: ReplaceTablesArgs, ctl: TaskControl = uncancellable): { counts: ObjectCounts; warnings: string[] } {
  checkRestored({ path: args.source, expected: args.expected }, ctl);
  ctl.checkpoint();
  const warnings: string[] = [];
  const db = open(args.target, { fileMustExist: false });
  try {
    // Tables are dropped and refilled one by one; with foreign keys enforced
    // a drop would cascade or fail on rows other tables still reference.
    // (Has to be set outside a transaction.)
    db.pragma('foreign_keys = OFF');
    // better-sqlite3 opens connections in SQLite's defensive mode, which
    // forbids writing a virtual table's shadow tables; copying them verbatim
    // is the only way to restore e.g. an fts5 index exactly as it was.
    db.unsafeMode(true);
    db.prepare('ATTACH DATABASE ? AS bk').run(args.source);
    try {
      const bkTables = userTables(db, 'bk');
      const bkShadow = tableList(db, 'bk').filter((t) => t.type === 'shadow');
      const replaced = new Set<string>();
      const run = db.transaction(() => {
        const mainByLower = new Map(tableList(db, 'main').map((t) => [t.name.toLowerCase(), t]));
        for (const t of bkTables) {
          ctl.checkpoint();
          const existing = mainByLower.get(t.name.toLowerCase());
          if (existing) db.exec(`DROP ${existing.type === 'view' ? 'VIEW' : 'TABLE'} main.${quoteIdent(existing.name)}`);
          const schemaRows = db
            .prepare(`SELECT type, name, sql FROM bk.sqlite_schema WHERE tbl_name = ? AND sql IS NOT NULL ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name`)
            .all(t.name) as { type: string; name: string; sql: string }[];
          const create = schemaRows.find((r) => r.type === 'table');
          if (!create) throw new AppError('engine_failed', `The backup has no schema for table ${t.name}.`);
          // Unqualified CREATE statements create in main.
          db.exec(create.sql);
          replaced.add(t.name);
          if (t.type === 'virtual') {
            // CREATE VIRTUAL TABLE made empty shadow tables; fill them from the backup's.
            for (const s of bkShadow.filter((s) => s.name.startsWith(`${t.name}_`))) {
              db.exec(`DELETE FROM main.${quoteIdent(s.name)}`);
              copyRows(db, s);
              replaced.add(s.name);
            }
          } else {
            copyRows(db, t);
          }
          copySequence(db, t.name);
          // Indexes and triggers after the rows: one index build instead of
          // per-row updates, and triggers must not fire for restored rows.
          for (const r of schemaRows) if (r.type !== 'table') db.exec(r.sql);
        }
        ctl.checkpoint();
        const counts: ObjectCounts = { tables: countTables(db, 'main', replaced) };
        assertCounts(args.expected, counts);
        ctl.testPause('before-commit');
        // Last moment a cancel can win: it throws here and the transaction
        // rolls back. Once this returns, the main thread no longer cancels.
        ctl.pointOfNoReturn();
        return counts;
      });
      // IMMEDIATE takes the write lock first, so a concurrent writer cannot
      // make the transaction fail half-way with SQLITE_BUSY.
      const counts = run.immediate();
      // Committed: from here on no cancel checks; the report must say it happened.
      ctl.testPause('after-commit');
      for (const name of replaced) {
        const bad = db.pragma(`main.foreign_key_check(${quoteIdent(name)})`) as unknown[];
        if (bad.length > 0) warnings.push(`table ${name}: ${bad.length} rows reference rows missing from the tables this backup did not include`);
      }
      return { counts, warnings };
    } finally {
      try {
        db.exec('DETACH DATABASE bk');
      } catch {
        // closing the connection below detaches it anyway; keep the first error
      }
    }
  } finally {
    db.close();
  }
}

function copyRows(db: DB, t: TableEntry): void {
  const cols = (db.pragma(`bk.table_xinfo(${quoteIdent(t.name)})`) as { name: string; hidden: number }[])
    // hidden 2/3 are generated columns: computed, and refused by INSERT.
    .filter((c) => c.hidden === 0)
    .map((c) => c.name);
  const list = cols.map(quoteIdent);
  const shadowsRowid = cols.some((c) => ['rowid', '_rowid_', 'oid'].includes(c.toLowerCase()));
  if (!t.wr && !shadowsRowid) list.unshift('rowid'); // keep rowids: other data (FTS, app code) may refer to them
  const sel = list.join(', ');
  db.exec(`INSERT INTO main.${quoteIdent(t.name)} (${sel}) SELECT ${sel} FROM bk.${quoteIdent(t.name)}`);
}

/** Carries an AUTOINCREMENT table's counter over, so new ids do not reuse ones the backup had used. */
function copySequence(db: DB, table: string): void {
  const hasSeq = (schema: string) =>
    db.prepare(`SELECT 1 FROM ${schema}.sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'`).get() !== undefined;
  if (!hasSeq('bk') || !hasSeq('main')) return;
  db.prepare('DELETE FROM main.sqlite_sequence WHERE name = ?').run(table);
  db.prepare('INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM bk.sqlite_sequence WHERE name = ?').run(table);
}

export interface ListObjectsArgs {
  path: string;
}

export function listObjects(args: ListObjectsArgs, _ctl: TaskControl = uncancellable): ObjectInfo[] {
  let db: DB;
  try {
    db = open(args.path, { readonly: true });
  } catch (err) {
    throw new AppError('engine_failed', `Cannot open the SQLite database ${args.path}: ${(err as Error).message}`, undefined, { cause: err });
  }
  try {
    const out: ObjectInfo[] = [];
    for (const t of tableList(db, 'main')) {
      if (t.type === 'table') {
        const n = (db.prepare(`SELECT count(*) AS n FROM main.${quoteIdent(t.name)}`).get() as { n: number }).n;
        out.push({ name: t.name, kind: 'table', size: n });
      } else if (t.type === 'virtual') {
        out.push({ name: t.name, kind: 'table' });
      } else if (t.type === 'view') {
        out.push({ name: t.name, kind: 'view' });
      }
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } finally {
    db.close();
  }
}

export const tasks = { dumpCopy, checkRestored, replaceTables, listObjects };
export type Tasks = typeof tasks;
