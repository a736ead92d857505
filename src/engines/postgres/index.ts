// The postgres engine: pg_dump custom format (-Fc) without pg_dump's own
// compression (Backvault compresses the stream, many times faster), taken in
// an exported snapshot so the row counts and the dump see the same data;
// restored with pg_restore.
//
// Selection (DumpRequest.selection), one entry per object:
//   public.users, users, public.Weird Name
//       a table (or view, sequence, materialized view): an exact name as
//       listObjects and counts print it (schema.table, or a table name on the
//       search path) is taken as is; anything else is a pg_dump -t pattern:
//       * and ? are wildcards, unquoted letters fold to lower case, "double
//       quotes" keep case and dots: "App"."Weird*Name"
//   schema:<name or pattern>
//       a whole schema with everything in it (pg_dump -n). Combined with table
//       entries it takes only the schema's tables, because pg_dump ignores -n
//       as soon as a -t is given (a warning says so).
// Exclusions (DumpRequest.exclude):
//   <table>           leave the table out entirely (-T)
//   data:<table>      keep the table's definition, leave out its rows
//                     (--exclude-table-data; Cloud66's excluded_tables)
//   schema:<name>     leave a whole schema out (-N)
// A selected name that matches nothing is invalid_selection; an exclusion
// that matches nothing is a warning.
//
// counts.tables: "schema.table" -> exact rows, for every table whose rows are
// in the archive (its TABLE DATA entries, read from the TOC as the stream
// passes). A table whose data is excluded is therefore not counted, neither
// at dump time nor after a restore, which counts the same TOC entries.
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectCounts, ObjectInfo, ResourceSpec } from '../../domain/types.ts';
import { AppError, isAppError } from '../../errors/index.ts';
import { SYNC_DECODABLE } from '../../platform/decoder.ts';
import { PhaseTimer } from '../../platform/phases.ts';
import { spoolInput } from '../../platform/streams.ts';
import { startTool } from '../../platform/process.ts';
import type { DumpInfo, DumpOutput, DumpRequest, Engine, RestoreReport, RestoreRequest, ScratchTarget } from '../engine.ts';
import { dataTables, readTocFromFile, TocSniffer, type ArchiveToc } from './archive.ts';
import { connect, dbnameArg, formatConnection, ident, parseConnection, scrubbed, secretsOf, toolEnv, withDatabase, type PgConn } from './conn.ts';
import {
  applyDbProps,
  connectMaintenance,
  countTables,
  createDatabase,
  databaseExists,
  derivedName,
  dropDatabase,
  readDbProps,
  serverInfo,
  swapDatabases,
  tableKey,
  type TableRef,
} from './db.ts';
import { resolveFilter } from './selection.ts';
import { findTool, majorKey, type FoundTool } from './tools.ts';

/** Every failure as an AppError without the password: cancelled once the signal fired, engine_failed for the unexpected. */
function fail(err: unknown, signal: AbortSignal, conn: PgConn, what: string): AppError {
  if (signal.aborted) return isAppError(err) && err.code === 'cancelled' ? err : new AppError('cancelled', undefined, undefined, { cause: err });
  if (isAppError(err)) return err;
  return new AppError('engine_failed', `${what} failed: ${scrubbed(err, conn)}`, undefined, { cause: err });
}

/** The warning lines of a tool's stderr (e.g. circular foreign keys), for the job's report. */
function toolWarnings(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => /warning:/i.test(l))
    .map((l) => l.trim())
    .slice(0, 20);
}

/** Closes the client when the signal fires, so a query in flight ends at once. */
function closeOnAbort(client: pg.Client, signal: AbortSignal): () => void {
  const onAbort = () => void client.end().catch(() => {});
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

async function dump(req: DumpRequest): Promise<DumpOutput> {
  const { signal } = req;
  // The snapshot, the counts and pg_dump must all be on one server: with
  // useReplica that is the replica, and the primary is not touched at all.
  const conn = parseConnection(req.useReplica && req.resource.replica ? req.resource.replica : req.resource.connection);
  if (signal.aborted) throw new AppError('cancelled');
  const client = await connect(conn, signal);
  const detach = closeOnAbort(client, signal);
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    detach();
    await client.end().catch(() => {});
  };

  let prepared;
  try {
    const server = await serverInfo(client);
    const pgDump = await findTool('pg_dump', majorKey(server.num)!);
    const filter = await resolveFilter(client, req.selection, req.exclude);
    // The snapshot exported here is the one pg_dump imports; the
    // transaction stays open (and the counts run in it) until pg_dump exits.
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const snapshot = (await client.query<{ id: string }>('SELECT pg_catalog.pg_export_snapshot() AS id')).rows[0]!.id;
    const args = ['--no-password', '--format=custom', '--compress=0', `--snapshot=${snapshot}`, ...filter.args, '--dbname', dbnameArg(conn.database)];
    // pg_dump writes ~9 KiB at a time; a 1 MiB stdio buffer makes the pipe reads 64 KiB (6x fewer).
    const tool = startTool(pgDump.path, args, { env: toolEnv(conn), secrets: secretsOf(conn), signal, stdoutBuffer: '1M' });
    prepared = { server, pgDump, filter, tool };
  } catch (err) {
    await close();
    throw fail(err, signal, conn, 'Preparing the PostgreSQL dump');
  }
  const { server, pgDump, filter, tool } = prepared;

  let counts: Promise<Record<string, number>> | undefined;
  const stream = new TocSniffer(
    (toc) => {
      counts = countTables(client, dataTables(toc));
      counts.catch(() => {});
    },
    // The stream ends only once pg_dump has exited cleanly and every count is in.
    async () => {
      await tool.done;
      await counts;
    },
  );
  tool.child.stdout!.pipe(stream);
  tool.done.catch((err: unknown) => stream.destroy(err as Error));

  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    let error: unknown;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => {
      error = err;
    });
    stream.once('close', () => {
      void (async () => {
        // A reader that went away early leaves pg_dump blocked on a full pipe.
        if (!ended) tool.child.kill('SIGTERM');
        await tool.done.catch(() => {});
        const tables = ended ? await counts!.catch((e: unknown) => e as Error) : undefined;
        await client.query('ROLLBACK').catch(() => {});
        await close();
        if (ended && !(tables instanceof Error)) {
          resolve({
            counts: { tables: tables! },
            serverVersion: server.version,
            toolVersion: pgDump.version,
            warnings: [...filter.warnings, ...toolWarnings(tool.stderr())],
          });
        } else {
          reject(fail(tables ?? error ?? new AppError('cancelled', 'The dump stream was closed before its end.'), signal, conn, 'The PostgreSQL dump'));
        }
      })();
    });
  });
  // Callers await info after the stream; an early failure must not count as an unhandled rejection meanwhile.
  info.catch(() => {});
  return { stream, artifactBase: 'database.pgdump', format: 'pg_dump custom-format archive (restore with pg_restore)', info };
}

interface RestoreContext {
  conn: PgConn;
  file: string;
  toc: ArchiveToc;
  pgRestore: FoundTool;
  req: RestoreRequest;
  phases: PhaseTimer;
}

/** Connections counting at once: the staging database is ours alone, and pg_restore ran with two jobs as well. */
const COUNT_CONNECTIONS = 2;

/** Exact row counts of a freshly restored database: a few connections each take the next table until none is left. */
async function countIn(conn: PgConn, tables: TableRef[], signal: AbortSignal): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  let next = 0;
  const counted = await Promise.allSettled(
    Array.from({ length: Math.max(1, Math.min(COUNT_CONNECTIONS, tables.length)) }, async () => {
      const client = await connect(conn, signal);
      const detach = closeOnAbort(client, signal);
      try {
        while (next < tables.length) Object.assign(out, await countTables(client, [tables[next++]!]));
      } finally {
        detach();
        await client.end().catch(() => {});
      }
    }),
  );
  for (const c of counted) if (c.status === 'rejected') throw c.reason;
  // In the tables' order, as one connection would have listed them.
  return Object.fromEntries(tables.filter((t) => tableKey(t) in out).map((t) => [tableKey(t), out[tableKey(t)]!]));
}

function checkExpected(expected: ObjectCounts, tables: Record<string, number>): void {
  if (!expected.tables) return;
  const diffs = compareCounts(expected, { tables });
  if (diffs.length) {
    throw new AppError('verification_failed', `The restored data does not match the backup (${diffs.slice(0, 10).join('; ')}); the target was left unchanged.`, {
      differences: diffs,
    });
  }
}

/**
 * A full restore (or one into a database that does not exist yet): restore
 * into a fresh staging database, check it, then put it in the target's
 * place. Restoring into a new database from template0 is what guarantees the
 * result equals the backup (nothing of the old contents can survive, which
 * --clean cannot promise for objects the dump does not know about), and the
 * target is untouched until the restore has succeeded and counted right.
 * Sessions on the target are ended at the swap.
 */
async function restoreWhole(ctx: RestoreContext, maint: pg.Client, exists: boolean): Promise<RestoreReport> {
  const { conn, req, toc, phases } = ctx;
  const props = exists ? await readDbProps(maint, conn.database) : null;
  const staging = derivedName(conn.database, 'bvrestore');
  await phases.time('create_staging', () => createDatabase(maint, staging, props));
  let placed = false;
  try {
    // -j needs a seekable archive: the temp file. It cannot be combined
    // with --single-transaction, which the staging database makes unnecessary.
    const tool = startTool(ctx.pgRestore.path, ['--no-password', '--exit-on-error', '--jobs=2', '--dbname', dbnameArg(staging), ctx.file], {
      env: toolEnv(conn),
      secrets: secretsOf(conn),
      signal: req.signal,
      stdout: 'ignore',
    });
    await phases.time('pg_restore', () => tool.done);
    const tables = await phases.time('count', () => countIn(withDatabase(conn, staging), dataTables(toc), req.signal));
    checkExpected(req.expected, tables);
    const warnings = toolWarnings(tool.stderr());
    await phases.time('swap', async () => {
      if (props) await applyDbProps(maint, staging, props);
      if (req.signal.aborted) throw new AppError('cancelled');
      if (exists) warnings.push(...(await swapDatabases(maint, conn.database, staging, props!.allowConn)));
      else await maint.query(`ALTER DATABASE ${ident(staging)} RENAME TO ${ident(conn.database)}`);
    });
    placed = true;
    return { counts: { tables }, warnings, phases: phases.result() };
  } finally {
    if (!placed) await dropDatabase(conn, staging).catch(() => {});
  }
}

/**
 * TOC entries a partial in-place restore must leave out:
 * - SCHEMA entries for schemas the target has: --clean would try to drop
 *   them, which fails (or would take along objects the backup does not have);
 * - tables whose rows were excluded (data:<table>) and that the target has:
 *   their rows are not in the backup, so replacing them would empty them.
 *   What hangs on such a table (its sequences, defaults, indexes, triggers,
 *   comments, dependent views) stays too; foreign keys are restored, as they
 *   belong to the table on the other side as much.
 */
function entriesToSkip(toc: ArchiveToc, schemas: Set<string>, tables: Set<string>): { skip: Set<number>; keptTables: string[] } {
  const skip = new Set<number>();
  const byId = new Map(toc.entries.map((e) => [e.dumpId, e]));
  const withData = new Set(dataTables(toc).map(tableKey));
  const keptTables: string[] = [];
  for (const e of toc.entries) {
    if (e.desc === 'SCHEMA' && schemas.has(e.tag)) skip.add(e.dumpId);
  }
  const alone = new Set<number>();
  for (const e of toc.entries) {
    const key = tableKey({ schema: e.namespace ?? '', name: e.tag });
    if (e.desc === 'TABLE' && !withData.has(key) && tables.has(key)) {
      alone.add(e.dumpId);
      keptTables.push(key);
    }
  }
  for (let changed = alone.size > 0; changed; ) {
    changed = false;
    for (const e of toc.entries) {
      if (alone.has(e.dumpId) || e.desc === 'FK CONSTRAINT' || e.desc === 'TABLE DATA') continue;
      if (e.desc === 'TABLE' && withData.has(tableKey({ schema: e.namespace ?? '', name: e.tag }))) continue;
      if (!e.deps.some((d) => alone.has(d))) continue;
      alone.add(e.dumpId);
      changed = true;
      // A serial's sequence depends on nothing but is owned by the table: it stays with it.
      if (e.desc === 'SEQUENCE OWNED BY') for (const d of e.deps) if (byId.get(d)?.desc === 'SEQUENCE') alone.add(d);
    }
  }
  for (const id of alone) skip.add(id);
  return { skip, keptTables };
}

/**
 * A partial backup restored in place replaces only what it holds: the
 * backed-up objects are dropped and recreated (--clean --if-exists) in one
 * transaction, so a failure leaves the target as it was.
 */
async function restoreSelected(ctx: RestoreContext): Promise<RestoreReport> {
  const { conn, req, toc, phases } = ctx;
  const client = await connect(conn, req.signal);
  const detach = closeOnAbort(client, req.signal);
  const listFile = `${ctx.file}.list`;
  try {
    const schemas = new Set((await client.query<{ n: string }>('SELECT nspname AS n FROM pg_catalog.pg_namespace')).rows.map((r) => r.n));
    const tables = new Set(
      (
        await client.query<{ s: string; t: string }>(
          `SELECT n.nspname AS s, c.relname AS t FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'f')`,
        )
      ).rows.map((r) => tableKey({ schema: r.s, name: r.t })),
    );
    const { skip, keptTables } = entriesToSkip(toc, schemas, tables);
    // pg_restore -L reads the dump id before the ";" of each line and restores in the list's order: the TOC's own.
    await writeFile(listFile, toc.entries.filter((e) => !skip.has(e.dumpId)).map((e) => `${e.dumpId};\n`).join(''), { mode: 0o600 });
    const tool = startTool(
      ctx.pgRestore.path,
      ['--no-password', '--clean', '--if-exists', '--single-transaction', '--exit-on-error', `--use-list=${listFile}`, '--dbname', dbnameArg(conn.database), ctx.file],
      { env: toolEnv(conn), secrets: secretsOf(conn), signal: req.signal, stdout: 'ignore' },
    );
    await phases.time('pg_restore', () => tool.done);
    const counted = await phases.time('count', () => countTables(client, dataTables(toc)));
    const warnings = toolWarnings(tool.stderr());
    if (keptTables.length) warnings.push(`Kept as they were (the backup has their definition but not their rows): ${keptTables.join(', ')}.`);
    return { counts: { tables: counted }, warnings, phases: phases.result() };
  } finally {
    detach();
    await client.end().catch(() => {});
    await rm(listFile, { force: true });
  }
}

async function restore(req: RestoreRequest): Promise<RestoreReport> {
  const { signal } = req;
  // The input may fail (a damaged artifact) before the pipeline below
  // listens; its error must then wait for the pipeline, not crash the process.
  req.input.on('error', () => {});
  const conn = parseConnection(req.target.connection);
  if (signal.aborted) throw new AppError('cancelled');
  await mkdir(req.workDir, { recursive: true });
  const file = join(req.workDir, `postgres-${randomBytes(6).toString('hex')}.pgdump`);
  try {
    // The whole archive lands in a temp file first, a full-size copy on
    // purpose: pg_restore's parallel mode (-j) needs a seekable file, and
    // nothing may touch the database before the input has ended cleanly (a
    // damaged artifact errors only at its very end).
    const phases = new PhaseTimer();
    await phases.time('spool', () => spoolInput(req.input, file, req.decode, signal));
    const toc = await readTocFromFile(file);
    const maint = await connectMaintenance(conn, signal);
    const detach = closeOnAbort(maint, signal);
    try {
      const server = await serverInfo(maint);
      // New enough for the server and able to read what the dump's pg_dump wrote.
      const need = Math.max(majorKey(server.num)!, (toc.dumpVersion ? majorKey(toc.dumpVersion) : null) ?? 0);
      const pgRestore = await findTool('pg_restore', need);
      const exists = await databaseExists(maint, conn.database);
      if (exists && req.mode === 'new_target') await assertEmptyDatabase(conn, signal);
      const ctx: RestoreContext = { conn, file, toc, pgRestore, req, phases };
      if (req.partial && exists) return await restoreSelected(ctx);
      return await restoreWhole(ctx, maint, exists);
    } finally {
      detach();
      await maint.end().catch(() => {});
    }
  } catch (err) {
    throw fail(err, signal, conn, `Restoring PostgreSQL database "${conn.database}"`);
  } finally {
    await rm(file, { force: true });
  }
}

/**
 * A new target must be new or empty (a database created for the restore):
 * restoring over another database's tables by a typo would destroy them.
 */
async function assertEmptyDatabase(conn: PgConn, signal: AbortSignal): Promise<void> {
  const client = await connect(conn, signal);
  try {
    const r = await client.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND s.nspname NOT IN ('pg_catalog', 'information_schema') AND s.nspname NOT LIKE 'pg_toast%'`,
    );
    if ((r.rows[0]?.n ?? 0) > 0) {
      throw new AppError('target_not_empty', `Database ${conn.database} already exists and is not empty; restore into a new database name, or restore in place.`);
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function listObjects(resource: ResourceSpec): Promise<ObjectInfo[]> {
  const conn = parseConnection(resource.connection);
  const client = await connect(conn);
  // Objects that belong to an extension are recreated by it, not chosen by a user.
  const notExtension = (catalog: string, oid: string) =>
    `NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '${catalog}'::regclass AND d.objid = ${oid} AND d.deptype = 'e')`;
  try {
    const schemas = await client.query<{ name: string }>(
      `SELECT n.nspname AS name FROM pg_catalog.pg_namespace n
        WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' AND ${notExtension('pg_namespace', 'n.oid')}
        ORDER BY 1`,
    );
    const rels = await client.query<{ schema: string; name: string; kind: string; rows: number }>(
      `SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind, c.reltuples::float8 AS rows
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
          AND ${notExtension('pg_class', 'c.oid')}
        ORDER BY 1, 2`,
    );
    return [
      ...schemas.rows.map((s): ObjectInfo => ({ name: `schema:${s.name}`, kind: 'schema' })),
      ...rels.rows.map((r): ObjectInfo => {
        const o: ObjectInfo = { name: `${r.schema}.${r.name}`, kind: r.kind === 'v' || r.kind === 'm' ? 'view' : 'table' };
        // reltuples is the planner's estimate; -1 means never analyzed.
        if (o.kind === 'table' && r.rows >= 0) o.size = Math.round(r.rows);
        return o;
      }),
    ];
  } catch (err) {
    throw fail(err, new AbortController().signal, conn, 'Listing PostgreSQL objects');
  } finally {
    await client.end().catch(() => {});
  }
}

/** A database name nobody uses, on the resource's server; the restore creates it, cleanup drops it. */
async function scratchTarget(resource: ResourceSpec, _workDir: string): Promise<ScratchTarget> {
  const conn = parseConnection(resource.connection);
  const scratch = withDatabase(conn, `bv_scratch_${randomBytes(8).toString('hex')}`);
  let cleaned = false;
  return {
    connection: formatConnection(scratch),
    async cleanup() {
      if (cleaned) return;
      await dropDatabase(conn, scratch.database);
      cleaned = true;
    },
  };
}

export const postgresEngine: Engine = {
  type: 'postgres',
  formatVersion: 1,
  // The spool is checked and decompressed into its file by a codec worker (spoolInput).
  decodes: SYNC_DECODABLE,
  checkConnection(connection: string, _options: Record<string, unknown>): void {
    parseConnection(connection);
  },
  listObjects,
  dump,
  restore,
  scratchTarget,
  async serverVersion(target, signal) {
    // The maintenance database answers even when the target database does not exist yet.
    const client = await connectMaintenance(parseConnection(target.connection), signal);
    try {
      return (await serverInfo(client)).version;
    } finally {
      await client.end().catch(() => undefined);
    }
  },
};
