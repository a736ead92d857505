// The mysql dump: mariadb-dump (or mysqldump) of one database in a single
// transaction, streamed through the scanner that counts its rows.
import { rm } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { AppError, isAppError } from '../../errors/index.ts';
import { runTool, startTool } from '../../platform/process.ts';
import type { DumpInfo, DumpOutput, DumpRequest } from '../engine.ts';
import { findTool, parseConnection, rows, withConnection, writeOptionFile } from './conn.ts';
import { DumpScanner } from './scanner.ts';

export async function dump(req: DumpRequest): Promise<DumpOutput> {
  const source = req.useReplica && req.resource.replica ? req.resource.replica : req.resource.connection;
  const p = parseConnection(source);
  const signal = req.signal;
  if (signal.aborted) throw new AppError('cancelled');
  if (req.selection !== null && req.selection.length === 0) throw new AppError('invalid_selection', 'The selection names no table.');

  const tool = await findTool(['mariadb-dump', 'mysqldump']);
  // Asked while the database is read below (a process start takes ~25 ms, about as long as those queries).
  const toolVersionRun = runTool(tool, ['--version'], { signal }).then((v) => v.trim());
  toolVersionRun.catch(() => {}); // awaited below, unless the queries fail first
  const warnings: string[] = [];
  const { serverVersion, tables } = await withConnection(p, signal, p.database, `Reading the database ${p.database} failed`, async (conn) => {
    const version = String((await rows(conn, 'SELECT VERSION() AS v'))[0]?.v ?? '');
    const objects = await rows(conn, 'SELECT TABLE_NAME AS n, TABLE_TYPE AS t, ENGINE AS e FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?', [p.database]);
    const byName = new Map(objects.map((o) => [String(o.n), o]));
    const excluded = new Set(req.exclude);
    let tables: string[] | null = null;
    for (const x of req.exclude) if (!byName.has(x)) warnings.push(`Excluded table ${x} does not exist.`);
    if (req.selection !== null) {
      const missing = req.selection.filter((s) => !byName.has(s));
      if (missing.length > 0) {
        throw new AppError('invalid_selection', `The database ${p.database} has no table or view named ${missing.join(', ')}.`, { missing });
      }
      tables = [...new Set(req.selection)].filter((s) => !excluded.has(s));
      if (tables.length === 0) throw new AppError('invalid_selection', 'Every selected table is also excluded.');
    }
    // --single-transaction gives one consistent snapshot only to transactional (InnoDB) tables.
    const taken = tables === null ? [...byName.keys()].filter((n) => !excluded.has(n)) : tables;
    const loose = taken.filter((n) => {
      const o = byName.get(n)!;
      return o.t === 'BASE TABLE' && String(o.e ?? '').toLowerCase() !== 'innodb';
    });
    if (loose.length > 0) {
      warnings.push(`Tables not using InnoDB are not covered by the dump's consistent snapshot (writes during the dump may be half-seen): ${loose.sort().join(', ')}.`);
    }
    return { serverVersion: version, tables };
  });
  const toolVersion = await toolVersionRun;

  const optionFile = await writeOptionFile(req.workDir, p);
  const args = [
    // --defaults-extra-file must come first to be honoured.
    `--defaults-extra-file=${optionFile}`,
    '--single-transaction',
    '--quick',
    '--hex-blob',
    '--default-character-set=utf8mb4',
    '--skip-dump-date',
    '--triggers',
    '--no-tablespaces',
  ];
  // A table selection is a partial backup of tables (and their triggers);
  // routines and events belong to the whole database, so only a backup
  // that selects everything (exclusions aside) takes them.
  if (tables === null) args.push('--routines', '--events');
  for (const x of req.exclude) args.push(`--ignore-table=${p.database}.${x}`);
  // No --databases: the dump then holds no CREATE DATABASE/USE and restores into any database name.
  args.push('--', p.database, ...(tables ?? []));

  // mariadb-dump writes 4 KiB at a time: a 1 MiB stdio buffer makes the pipe reads 64 KiB.
  const child = startTool(tool, args, { secrets: [p.password], signal, stdoutBuffer: '1M' });
  const scanner = new DumpScanner();
  let exited = false;
  const done = child.done.finally(() => {
    exited = true;
    void rm(optionFile, { force: true });
  });
  done.catch(() => {});

  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        scanner.feed(chunk);
      } catch (err) {
        return cb(err as Error);
      }
      cb(null, chunk);
    },
    // The stream ends only once the tool exited 0: a dump that failed half-way must never look complete.
    flush(cb) {
      done.then(
        () => {
          try {
            scanner.end();
            cb();
          } catch (err) {
            cb(err as Error);
          }
        },
        (err) => cb(err),
      );
    },
  });
  const out = child.child.stdout!;
  out.on('error', (err) => stream.destroy(err));
  out.pipe(stream);
  done.catch((err) => stream.destroy(err));
  stream.on('close', () => {
    // The consumer gave up (or the stream failed): stop the tool.
    if (!exited) child.child.kill('SIGTERM');
  });

  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => reject(isAppError(err) ? err : signal.aborted ? new AppError('cancelled') : new AppError('engine_failed', `The dump failed: ${err.message}`)));
    stream.once('close', () => {
      if (!ended) return reject(new AppError(signal.aborted ? 'cancelled' : 'engine_failed', 'The dump stream was closed before its end.'));
      resolve({ counts: { tables: Object.fromEntries(scanner.rows) }, serverVersion, toolVersion, warnings });
    });
  });
  info.catch(() => {});
  return { stream, artifactBase: 'database.sql', format: 'SQL dump (mariadb-dump; restore with: mariadb DBNAME < database.sql)', info };
}
