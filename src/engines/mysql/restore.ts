// The mysql restore. The mariadb client executes statements as they arrive,
// so nothing reaches the target before the input has ended cleanly (the
// input errors at its very end on a checksum failure). The scanner splits
// the input into
//   - the table part (CREATE TABLE, INSERT, sequences), and
//   - the object part (views, triggers, routines, events).
// Then:
//   1. the table part streams, as it arrives, into the mariadb client loading
//      a new staging database on the same server, which nothing else sees;
//      the object part is written to a temp file in workDir. A failing
//      statement stops there (the client's error line is reported); an input
//      that fails, even at its very end, kills the client before it could
//      see the end of its input, so no cut statement runs: either way the
//      target is untouched;
//   2. the staged row counts are checked against the manifest, still before
//      the target is touched;
//   3. one RENAME TABLE statement, which MariaDB applies atomically, moves
//      the target's replaced tables to a trash database and the staged
//      tables into the target. A full restore replaces every table (those
//      the backup lacks go to the trash too); a partial one, or a restore
//      into a new target, only the tables the backup holds;
//   4. the object part runs in the target.
// Why not the objects in staging too: views may name tables a partial backup
// does not hold, and neither triggers (MariaDB refuses to move a table with
// triggers to another database) nor views, routines or events can be moved
// between databases. So a table's triggers are dropped just before the
// rename and recreated right after it: writes landing in that short window
// fire no trigger. If step 4 fails the tables are already swapped: the
// error says so and names the trash database that keeps the previous tables.
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { compareCounts } from '../../domain/counts.ts';
import { AppError, isAppError } from '../../errors/index.ts';
import { PhaseTimer } from '../../platform/phases.ts';
import { startTool } from '../../platform/process.ts';
import type { RestoreReport, RestoreRequest } from '../engine.ts';
import {
  baseTables,
  connect,
  countRows,
  dbError,
  findTool,
  parseConnection,
  quoteId,
  rows,
  writeOptionFile,
  type Conn,
  type ConnParams,
} from './conn.ts';
import { DumpScanner } from './scanner.ts';

const CLIENT_ARGS = ['--binary-mode', '--default-character-set=utf8mb4'];

/**
 * Streams the table part of the input into the mariadb client loading stage
 * and writes the object part to objectsPath. Resolves once the input ended
 * without error and the client ran all of it; rejects with the client's
 * error (clientFailed) or the input's.
 */
async function load(
  input: Readable,
  client: string,
  optionFile: string,
  stage: string,
  objectsPath: string,
  p: ConnParams,
  signal: AbortSignal,
  clientFailed: Set<unknown>,
): Promise<DumpScanner> {
  const objects = createWriteStream(objectsPath, { flags: 'wx', mode: 0o600 });
  const tool = startTool(client, [`--defaults-extra-file=${optionFile}`, ...CLIENT_ARGS, `--database=${stage}`], {
    stdin: 'pipe',
    stdout: 'ignore',
    secrets: [p.password],
    signal,
  });
  const stdin = tool.child.stdin!;
  // A client that stopped early breaks the pipe; its exit says why.
  stdin.on('error', () => {});
  const running = () => tool.child.exitCode === null && tool.child.signalCode === null;
  // The client's end before the input's is always a failure.
  const failed: Promise<unknown> = tool.done.then(
    () => new AppError('engine_failed', `${client} stopped before the end of its input.`),
    (err: unknown) => err,
  );
  let finishing = false;
  const scanner = new DumpScanner((part, bytes) => {
    if (part !== 'objects') stdin.write(bytes);
    if (part !== 'tables') objects.write(bytes);
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      try {
        scanner.feed(chunk);
      } catch (err) {
        return cb(err as Error);
      }
      const waits: Promise<unknown>[] = [];
      if (stdin.writableNeedDrain) waits.push(new Promise((resolve) => stdin.once('drain', resolve)));
      if (objects.writableNeedDrain) waits.push(once(objects, 'drain'));
      if (waits.length === 0) return cb();
      Promise.race([Promise.all(waits), failed.then((err) => Promise.reject(err))]).then(() => cb(), cb);
    },
    final(cb) {
      finishing = true;
      try {
        scanner.end();
      } catch (err) {
        return cb(err as Error);
      }
      // Only now may the client see the end of its input.
      stdin.end();
      const closed = new Promise<void>((resolve, reject) => objects.end((err?: Error | null) => (err ? reject(err) : resolve())));
      Promise.all([closed, tool.done]).then(() => cb(), cb);
    },
    destroy(err, cb) {
      // Killed before its stdin closes, the client never runs a statement the input cut short.
      if (running()) tool.child.kill('SIGKILL');
      stdin.destroy();
      if (!objects.closed) objects.destroy();
      // The stage is dropped next: wait until the client's session is gone.
      tool.done.then(
        () => cb(err),
        () => cb(err),
      );
    },
  });
  const fail = (err: unknown) => {
    clientFailed.add(err);
    sink.destroy(err as Error);
  };
  tool.done.then(
    () => {
      if (!finishing) fail(new AppError('engine_failed', `${client} stopped before the end of its input.`));
    },
    fail,
  );
  await pipeline(input, sink, { signal });
  return scanner;
}

/** Runs an SQL file through the mariadb client into db; rejects with the client's error line. */
async function runScript(client: string, optionFile: string, db: string, path: string, p: ConnParams, signal: AbortSignal): Promise<void> {
  const tool = startTool(client, [`--defaults-extra-file=${optionFile}`, ...CLIENT_ARGS, `--database=${db}`], {
    stdin: 'pipe',
    stdout: 'ignore',
    secrets: [p.password],
    signal,
  });
  const [fed, ran] = await Promise.allSettled([pipeline(createReadStream(path), tool.child.stdin!), tool.done]);
  // The client's exit says why; a broken pipe is only the consequence of it stopping early.
  if (ran.status === 'rejected') throw ran.reason;
  if (fed.status === 'rejected') throw new AppError('engine_failed', `Feeding ${client} failed: ${(fed.reason as Error).message}`);
}

interface Inventory {
  /** base tables, sequences, system-versioned tables: what RENAME TABLE moves */
  tables: string[];
  views: string[];
  triggers: { name: string; table: string }[];
  routines: { name: string; type: string }[];
  events: string[];
}

async function inventory(conn: Conn, db: string): Promise<Inventory> {
  const t = await rows(conn, 'SELECT TABLE_NAME AS n, TABLE_TYPE AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME', [db]);
  const tr = await rows(conn, 'SELECT TRIGGER_NAME AS n, EVENT_OBJECT_TABLE AS t FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?', [db]);
  const r = await rows(conn, 'SELECT ROUTINE_NAME AS n, ROUTINE_TYPE AS t FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?', [db]);
  const e = await rows(conn, 'SELECT EVENT_NAME AS n FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?', [db]);
  return {
    tables: t.filter((x) => x.t !== 'VIEW').map((x) => String(x.n)),
    views: t.filter((x) => x.t === 'VIEW').map((x) => String(x.n)),
    triggers: tr.map((x) => ({ name: String(x.n), table: String(x.t) })),
    routines: r.map((x) => ({ name: String(x.n), type: String(x.t) })),
    events: e.map((x) => String(x.n)),
  };
}

/**
 * Moving a table between databases keeps its foreign keys pointing at the
 * database they pointed at (a staged child still references the staging
 * parent), and moving a parent drags its children's references along (a kept
 * child would follow its old parent into the trash). Point every such key
 * back at the target's table of the same name.
 */
async function repointForeignKeys(conn: Conn, target: string, temporary: string[]): Promise<void> {
  const refs = await rows(
    conn,
    `SELECT DISTINCT TABLE_NAME AS t FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND UNIQUE_CONSTRAINT_SCHEMA IN (${temporary.map(() => '?').join(', ')})`,
    [target, ...temporary],
  );
  for (const ref of refs) {
    const table = `${quoteId(target)}.${quoteId(String(ref.t))}`;
    const create = String((await rows(conn, `SHOW CREATE TABLE ${table}`))[0]?.['Create Table'] ?? '');
    for (const line of create.split('\n')) {
      const m = /^\s*CONSTRAINT (`(?:[^`]|``)+`) FOREIGN KEY /.exec(line);
      if (!m) continue;
      let clause = line.trim().replace(/,$/, '');
      const before = clause;
      for (const db of temporary) clause = clause.replace(`REFERENCES ${quoteId(db)}.`, `REFERENCES ${quoteId(target)}.`);
      if (clause === before) continue;
      // Two statements: one ALTER may not drop and re-add a key of the same name.
      await conn.query(`ALTER TABLE ${table} DROP FOREIGN KEY ${m[1]}`);
      await conn.query(`ALTER TABLE ${table} ADD ${clause}`);
    }
  }
}

interface SwapState {
  /** the trash database exists */
  trashCreated: boolean;
  /** the RENAME happened: the target holds the restored tables, the trash the previous ones */
  renamed: boolean;
}

async function swap(conn: Conn, target: string, stage: string, trash: string, full: boolean, dumpViews: Set<string>, state: SwapState): Promise<void> {
  const t = await inventory(conn, target);
  const incoming = (await inventory(conn, stage)).tables;
  const incomingSet = new Set(incoming);
  // A table of the backup, or one that a view of the backup replaces.
  const out = full ? t.tables : t.tables.filter((n) => incomingSet.has(n) || dumpViews.has(n));
  const outSet = new Set(out);
  const q = (db: string, name: string) => `${quoteId(db)}.${quoteId(name)}`;

  for (const tr of t.triggers) if (full || outSet.has(tr.table)) await conn.query(`DROP TRIGGER IF EXISTS ${q(target, tr.name)}`);
  for (const v of t.views) if (full || incomingSet.has(v)) await conn.query(`DROP VIEW IF EXISTS ${q(target, v)}`);
  if (out.length > 0) {
    await conn.query(`CREATE DATABASE ${quoteId(trash)}`);
    state.trashCreated = true;
  }
  const pairs = [...out.map((n) => `${q(target, n)} TO ${q(trash, n)}`), ...incoming.map((n) => `${q(stage, n)} TO ${q(target, n)}`)];
  // One statement: MariaDB renames all or none.
  if (pairs.length > 0) await conn.query(`RENAME TABLE ${pairs.join(', ')}`);
  state.renamed = true;
  if (full) {
    // The object part recreates what the backup holds; what it lacks must go.
    for (const r of t.routines) await conn.query(`DROP ${r.type} IF EXISTS ${q(target, r.name)}`);
    for (const e of t.events) await conn.query(`DROP EVENT IF EXISTS ${q(target, e)}`);
  }
  await repointForeignKeys(conn, target, [stage, trash]);
}

function charsetClause(cs: unknown, co: unknown): string {
  const ok = (x: unknown) => typeof x === 'string' && /^\w+$/.test(x);
  return ok(cs) && ok(co) ? ` CHARACTER SET ${cs as string} COLLATE ${co as string}` : '';
}

export async function restore(req: RestoreRequest): Promise<RestoreReport> {
  const p = parseConnection(req.target.connection);
  const target = p.database;
  const signal = req.signal;
  if (signal.aborted) throw new AppError('cancelled');
  const full = req.mode === 'in_place' && !req.partial;
  const client = await findTool(['mariadb', 'mysql']);
  await mkdir(req.workDir, { recursive: true });
  const id = randomBytes(6).toString('hex');
  const objectsPath = join(req.workDir, `mysql-objects-${id}.sql`);
  const optionPath = { value: '' };
  const stage = `bvstage_${id}`;
  const trash = `bvtrash_${id}`;
  let createdTarget = false;
  let succeeded = false;
  const state: SwapState = { trashCreated: false, renamed: false };
  let session: Awaited<ReturnType<typeof connect>> | undefined;
  let step = `Preparing the restore of ${target} failed`;
  const phases = new PhaseTimer();
  try {
    optionPath.value = await writeOptionFile(req.workDir, p);
    session = await connect(p, signal, null);
    const conn = session.conn;
    await conn.query('SET SESSION foreign_key_checks = 0');
    const schema = await rows(conn, 'SELECT DEFAULT_CHARACTER_SET_NAME AS cs, DEFAULT_COLLATION_NAME AS co FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [target]);
    if (schema.length > 0 && req.mode === 'new_target') {
      // A new target must be new: restoring over another database's tables by a typo would destroy them.
      const present = await rows(conn, 'SELECT COUNT(*) AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?', [target]);
      if (Number(present[0]?.n ?? 0) > 0) {
        throw new AppError('target_not_empty', `Database ${target} already exists and holds tables; restore into a new database name, or restore in place.`);
      }
    }
    // A missing target gets the server's default character set, and so does the stage.
    await conn.query(`CREATE DATABASE ${quoteId(stage)}${charsetClause(schema[0]?.cs, schema[0]?.co)}`);

    step = 'Reading the backup failed';
    const clientFailed = new Set<unknown>();
    let scanner: DumpScanner;
    try {
      scanner = await phases.time('load', () => load(req.input, client, optionPath.value, stage, objectsPath, p, signal, clientFailed));
    } catch (err) {
      if (signal.aborted) throw new AppError('cancelled');
      if (clientFailed.has(err) && isAppError(err) && err.code === 'engine_failed') {
        throw new AppError('engine_failed', `Restoring the backup's tables into a staging database failed, so ${target} was not changed. ${err.message}`);
      }
      if (isAppError(err)) throw err;
      throw new AppError('engine_failed', `Reading the backup failed, so ${target} was not changed: ${(err as Error).message}`);
    }

    step = `Checking the restored tables of ${target} failed`;
    const staged = await phases.time('count', async () => countRows(conn, stage, await baseTables(conn, stage), signal));
    const diffs = compareCounts(req.expected, { tables: staged });
    if (diffs.length > 0) {
      throw new AppError('verification_failed', `The backup does not hold what its manifest records, so ${target} was not changed: ${diffs.slice(0, 5).join('; ')}.`, {
        differences: diffs,
      });
    }

    if (signal.aborted) throw new AppError('cancelled');
    if (schema.length === 0) {
      // A new target, or a database that was lost: either way it is created, now that the input proved whole.
      step = `Creating the database ${target} failed`;
      await conn.query(`CREATE DATABASE ${quoteId(target)}`);
      createdTarget = true;
    }
    step = `Swapping the restored tables into ${target} failed`;
    await phases.time('swap', () => swap(conn, target, stage, trash, full, scanner.views, state));

    try {
      await phases.time('objects', () => runScript(client, optionPath.value, target, objectsPath, p, signal));
    } catch (err) {
      if (isAppError(err) && err.code === 'engine_failed') {
        throw new AppError('engine_failed', `The tables of ${target} were restored, but recreating its views, triggers, routines or events failed. ${err.message}`);
      }
      throw err;
    }

    // The counts of what was restored are those just checked: RENAME moves
    // the staged tables as they are, so counting them again would only repeat it.
    const counts = full ? staged : Object.fromEntries(Object.entries(staged).filter(([n]) => scanner.rows.has(n)));
    succeeded = true;
    return { counts: { tables: counts }, warnings: [], phases: phases.result() };
  } catch (err) {
    const e = dbError(err, p, step, signal);
    // After the rename the previous tables exist only in the trash: keep them for the operator.
    const keepTrash = state.renamed && state.trashCreated && !createdTarget;
    if (!keepTrash) throw e;
    throw new AppError(e.code, `${e.message} The previous tables of ${target} are kept in database ${trash}; drop it when no longer needed.`, e.details);
  } finally {
    await session?.close();
    const drop = [stage];
    if (succeeded || !(state.renamed && state.trashCreated) || createdTarget) drop.push(trash);
    if (createdTarget && !succeeded) drop.push(target);
    await dropDatabases(p, drop);
    await Promise.all([objectsPath, optionPath.value].filter(Boolean).map((f) => rm(f, { force: true })));
  }
}

/** Best-effort cleanup on a fresh connection: the job's may have died with its signal. */
async function dropDatabases(p: ConnParams, names: string[]): Promise<void> {
  let session: Awaited<ReturnType<typeof connect>> | undefined;
  try {
    session = await connect(p, new AbortController().signal, null);
    await session.conn.query('SET SESSION foreign_key_checks = 0');
    for (const n of names) await session.conn.query(`DROP DATABASE IF EXISTS ${quoteId(n)}`);
  } catch {
    // Left behind at worst: bvstage_*/bvtrash_* databases are recognisable by name.
  } finally {
    await session?.close();
  }
}
