// The sqlite engine: a dump is the database file itself, taken with SQLite's
// online backup API so other processes may keep writing meanwhile; a restore
// writes that file back (whole, or table by table for a partial backup).
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { ResourceSpec } from '../../domain/types.ts';
import { AppError, isAppError } from '../../errors/index.ts';
import { fsyncDir, fsyncFile, tempPathBeside } from '../../platform/fs.ts';
import { PhaseTimer } from '../../platform/phases.ts';
import type { DumpInfo, DumpOutput, DumpRequest, Engine, RestoreReport, RestoreRequest, ScratchTarget } from '../engine.ts';
import { testPause } from './control.ts';
import { runTask } from './offload.ts';

/** Files SQLite keeps beside a database; a stale one would be applied to whatever file next has the database's name. */
const SIDE_FILES = ['-wal', '-shm', '-journal'];

function checkPath(connection: unknown): string {
  if (typeof connection !== 'string' || connection === '' || connection.includes('\0') || !isAbsolute(connection) || connection.endsWith('/')) {
    throw new AppError('invalid_connection', 'A sqlite connection is the absolute path of the database file, e.g. /srv/app/data.db.');
  }
  return connection;
}

async function removeWithSideFiles(path: string): Promise<void> {
  await Promise.all(['', ...SIDE_FILES].map((s) => rm(path + s, { force: true })));
}

/** Every failure as an AppError: cancelled when the signal fired, engine_failed for anything unexpected. */
function asAppError(err: unknown, signal: AbortSignal, what: string): AppError {
  if (isAppError(err)) return err;
  if (signal.aborted) return new AppError('cancelled', undefined, undefined, { cause: err });
  return new AppError('engine_failed', `${what}: ${(err as Error)?.message ?? String(err)}`, undefined, { cause: err });
}

async function dump(req: DumpRequest): Promise<DumpOutput> {
  // A replica (a copy kept in sync elsewhere) spares the primary the read when the backup asks for it.
  const source = checkPath(req.useReplica && req.resource.replica ? req.resource.replica : req.resource.connection);
  if (req.signal.aborted) throw new AppError('cancelled');
  await mkdir(req.workDir, { recursive: true });
  // The backup API writes pages at random offsets, so it needs a seekable
  // file; this copy in workDir is the one full-size temporary the dump makes.
  const copy = join(req.workDir, `sqlite-${randomBytes(6).toString('hex')}.sqlite`);
  let prepared;
  try {
    prepared = await runTask('dumpCopy', { source, dest: copy, selection: req.selection, exclude: req.exclude }, req.signal);
  } catch (err) {
    await removeWithSideFiles(copy);
    await removeWithSideFiles(`${copy}.full`);
    throw err;
  }

  const stream = createReadStream(copy);
  const onAbort = () => stream.destroy(new AppError('cancelled'));
  req.signal.addEventListener('abort', onAbort, { once: true });
  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => reject(asAppError(err, req.signal, 'Reading the SQLite copy failed')));
    stream.once('close', () => {
      req.signal.removeEventListener('abort', onAbort);
      void removeWithSideFiles(copy).finally(() => {
        if (ended) resolve({ counts: prepared.counts, serverVersion: prepared.serverVersion, warnings: prepared.warnings });
        else reject(new AppError('cancelled', 'The dump stream was closed before its end.'));
      });
    });
  });
  // Callers await info after the stream; an early failure must not count as an unhandled rejection meanwhile.
  info.catch(() => {});
  return { stream, artifactBase: 'database.sqlite', format: 'sqlite database file', info };
}

/**
 * A new target must not hold a database already: a path that exists is more
 * likely a typo than a wish to lose what is there. Absent, or an empty
 * (0-byte) regular file, is fine; anything else (a non-empty file, a
 * directory, a symlink) is refused with target_not_empty.
 */
async function requireFreshTarget(target: string): Promise<void> {
  let st;
  try {
    st = await lstat(target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException)?.code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return; // nothing there; mkdir reports a bad parent
    throw new AppError('engine_failed', `The restore target ${target} cannot be checked: ${(err as Error).message}`, undefined, { cause: err });
  }
  if (st.isFile() && st.size === 0) return;
  const what = st.isFile() ? `a file of ${st.size} bytes` : st.isDirectory() ? 'a directory' : st.isSymbolicLink() ? 'a symlink' : 'not a regular file';
  throw new AppError(
    'target_not_empty',
    `The new target ${target} already exists (${what}); a new target must not exist or be an empty file, so nothing was written. Choose a new path, or restore in place.`,
    { target },
  );
}

/** Added to a restore's warnings when the cancel came after its point of no return. */
export const LATE_CANCEL_WARNING = 'Cancellation was requested after the restore had become visible (committed or renamed into place); it was not cancelled and completed.';

function report(counts: RestoreReport['counts'], warnings: string[], signal: AbortSignal): RestoreReport {
  // Had the cancel come before the point of no return, the restore would have been cancelled.
  return { counts, warnings: signal.aborted ? [...warnings, LATE_CANCEL_WARNING] : warnings };
}

async function restore(req: RestoreRequest): Promise<RestoreReport> {
  const phases = new PhaseTimer();
  const { counts, warnings } = await restoreFile(req, phases);
  // Only now, after the temp file's cleanup: a cancel that came during it came
  // after the point of no return too, and the report must say so.
  return { ...report(counts, warnings, req.signal), phases: phases.result() };
}

async function restoreFile(req: RestoreRequest, phases: PhaseTimer): Promise<{ counts: RestoreReport['counts']; warnings: string[] }> {
  const target = checkPath(req.target.connection);
  const signal = req.signal;
  if (signal.aborted) throw new AppError('cancelled');
  // Before anything is written (not even the target's directory).
  if (req.mode === 'new_target') await requireFreshTarget(target);
  await mkdir(dirname(target), { recursive: true });
  const temp = tempPathBeside(target);
  // Set once the target is being changed (full restore): from then on the
  // signal is ignored and no failure is reported as a cancel.
  let committed = false;
  try {
    // The temp file sits beside the target so the final rename is atomic
    // (same file system). Nothing touches the target until the input has
    // ended cleanly: a checksum failure surfaces as an error at its end.
    await pipeline(req.input, createWriteStream(temp, { flags: 'wx', mode: 0o600 }), { signal });
    await fsyncFile(temp);
    phases.lap('spool');

    if (req.partial && req.mode === 'in_place') {
      // The worker commits atomically; a cancel after its COMMIT is ignored (offload.ts).
      const replaced = await runTask('replaceTables', { target, source: temp, expected: req.expected }, signal);
      phases.lap('replace_tables');
      return replaced;
    }

    const { counts } = await runTask('checkRestored', { path: temp, expected: req.expected }, signal);
    phases.lap('check');
    if (signal.aborted) throw new AppError('cancelled');
    // Again just before the rename: something may have been put there while the input streamed.
    if (req.mode === 'new_target') await requireFreshTarget(target);
    // The application must still be able to open its database: keep the old
    // file's mode and owner (new files get SQLite's usual 0644).
    const old = await stat(target).catch(() => null);
    await chmod(temp, old ? old.mode & 0o7777 : 0o644);
    if (old && process.getuid?.() === 0) await chown(temp, old.uid, old.gid);
    await testPause('before-rename');
    // Point of no return: removing the old side files already changes the
    // target, so the last cancel check is here and none comes after it.
    if (signal.aborted) throw new AppError('cancelled');
    committed = true;
    // Whole-file replacement. The application should be stopped (or reopen
    // the database afterwards): a process holding the old file open keeps
    // using the old inode. The old file's -wal/-shm/-journal go first: SQLite
    // would otherwise replay them into the new file and corrupt it.
    for (const s of SIDE_FILES) await rm(target + s, { force: true });
    await rename(temp, target);
    await testPause('after-rename');
    await fsyncDir(dirname(target));
    phases.lap('swap');
    return { counts, warnings: [] };
  } catch (err) {
    if (committed && !isAppError(err)) {
      throw new AppError('engine_failed', `Replacing the SQLite database ${target} failed part-way (the target may already be replaced): ${(err as Error)?.message ?? String(err)}`, undefined, { cause: err });
    }
    throw asAppError(err, signal, `Restoring the SQLite database ${target} failed`);
  } finally {
    // After a successful rename only the (absent) side files remain to remove.
    await removeWithSideFiles(temp);
  }
}

async function scratchTarget(_resource: ResourceSpec, workDir: string): Promise<ScratchTarget> {
  await mkdir(workDir, { recursive: true });
  const dir = await mkdtemp(join(workDir, 'scratch-sqlite-'));
  return {
    connection: join(dir, 'database.sqlite'),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

export const sqliteEngine: Engine = {
  type: 'sqlite',
  formatVersion: 1,
  checkConnection(connection: string, _options: Record<string, unknown>): void {
    checkPath(connection);
  },
  listObjects: (resource) => runTask('listObjects', { path: checkPath(resource.connection) }, new AbortController().signal),
  dump,
  restore,
  scratchTarget,
};
