// The files engine: a directory tree as a tar archive (directories, regular
// files, symlinks as links; modes and mtimes kept), restorable with GNU tar.
import { mkdir, mkdtemp, readdir, lstat, realpath, rm, stat, chmod, chown } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, isAbsolute, join, normalize } from 'node:path';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectInfo, ResourceSpec } from '../../domain/types.ts';
import { AppError, isAppError } from '../../errors/index.ts';
import { tempPathBeside } from '../../platform/fs.ts';
import { SYNC_DECODABLE } from '../../platform/decoder.ts';
import { PhaseTimer } from '../../platform/phases.ts';
import type { DumpOutput, DumpRequest, Engine, RestoreReport, RestoreRequest, ScratchTarget } from '../engine.ts';
import { Carrier, planCarry } from './carry.ts';
import { dumpTree } from './dump.ts';
import { extractInto, overlayInto, swapContents, swapInto } from './restore.ts';
import { checkGlobs, PathFilter } from './select.ts';
import { byteCompare, digestVersionOf } from './tree.ts';

/**
 * The artifact format this engine writes. 2: tree_sha256 hashes the lines in
 * archive order (tree.ts); 1 sorted them by path. The tar itself is the same.
 */
const FORMAT_VERSION = 2;

function checkPath(connection: unknown): string {
  if (typeof connection !== 'string' || connection === '' || connection.includes('\0') || !isAbsolute(connection)) {
    throw new AppError('invalid_connection', 'A files connection is the absolute path of a directory, e.g. /srv/app/uploads.');
  }
  const p = normalize(connection);
  if (p === '/') throw new AppError('invalid_connection', 'A files connection cannot be the root directory /.');
  return p.endsWith('/') ? p.slice(0, -1) : p;
}

function optionGlobs(options: Record<string, unknown>): { include: string[] | null; exclude: string[] } {
  return {
    include: options.include === undefined ? null : checkGlobs(options.include, 'options.include', 'invalid_connection'),
    exclude: options.exclude === undefined ? [] : checkGlobs(options.exclude, 'options.exclude', 'invalid_connection'),
  };
}

async function checkDirectory(root: string): Promise<void> {
  let st;
  try {
    st = await stat(root);
  } catch (err) {
    throw new AppError('engine_failed', `The directory ${root} cannot be read: ${(err as Error).message}`, undefined, { cause: err });
  }
  if (!st.isDirectory()) throw new AppError('engine_failed', `${root} is not a directory.`);
}

async function dump(req: DumpRequest): Promise<DumpOutput> {
  // A replica (a copy kept in sync elsewhere) spares the primary the read when the backup asks for it.
  const root = checkPath(req.useReplica && req.resource.replica ? req.resource.replica : req.resource.connection);
  const opts = optionGlobs(req.resource.options);
  const selection = req.selection === null ? null : checkGlobs(req.selection, 'selection', 'invalid_selection');
  const exclude = checkGlobs(req.exclude, 'exclude', 'invalid_selection');
  if (req.signal.aborted) throw new AppError('cancelled');
  await checkDirectory(root);
  const filter = new PathFilter([opts.include, selection], [...opts.exclude, ...exclude]);
  const { stream, info } = dumpTree(root, filter, req.signal);
  return { stream, artifactBase: 'files.tar', format: 'tar archive', info };
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/** The real directory to restore into (a symlinked target is followed once, here), and whether it exists. */
async function resolveTarget(path: string): Promise<{ dir: string; exists: boolean }> {
  try {
    const dir = await realpath(path);
    if (!(await stat(dir)).isDirectory()) throw new AppError('engine_failed', `${path} exists and is not a directory.`);
    return { dir, exists: true };
  } catch (err) {
    if (isNotFound(err)) return { dir: path, exists: false };
    throw err;
  }
}

/**
 * A new target must not hold data already: a path that exists is more likely
 * a typo than a wish to lose what is there. Absent, or an empty directory
 * (a symlink to one is followed, as resolveTarget does), is fine; anything
 * else is refused with target_not_empty. ignore names an entry of ours inside
 * it (staging in a mount point).
 */
async function requireFreshTarget(path: string, ignore?: string): Promise<void> {
  let names: string[];
  try {
    if (!(await stat(path)).isDirectory()) {
      throw new AppError(
        'target_not_empty',
        `The new target ${path} already exists and is not a directory; a new target must not exist or be an empty directory, so nothing was written. Choose a new path, or restore in place.`,
        { target: path },
      );
    }
    names = (await readdir(path)).filter((n) => n !== ignore);
  } catch (err) {
    if (isAppError(err)) throw err;
    const code = (err as NodeJS.ErrnoException)?.code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return; // nothing there; mkdir reports a bad parent
    throw new AppError('engine_failed', `The restore target ${path} cannot be checked: ${(err as Error).message}`, undefined, { cause: err });
  }
  if (names.length === 0) return;
  const shown = names.sort(byteCompare).slice(0, 3).map((n) => JSON.stringify(n)).join(', ');
  throw new AppError(
    'target_not_empty',
    `The new target ${path} is a directory that already holds ${names.length} entr${names.length === 1 ? 'y' : 'ies'} (${shown}${names.length > 3 ? ', …' : ''}); a new target must not exist or be an empty directory, so nothing was written. Choose a new path, or restore in place.`,
    { target: path },
  );
}

async function restore(req: RestoreRequest): Promise<RestoreReport> {
  const signal = req.signal;
  if (signal.aborted) throw new AppError('cancelled');
  const path = checkPath(req.target.connection);
  // Before anything is written (not even the target's parent directories).
  if (req.mode === 'new_target') await requireFreshTarget(path);
  const { dir: target, exists } = await resolveTarget(path);
  const overlay = req.partial && req.mode === 'in_place';
  // A full in-place restore keeps what the resource's options (as they are now) leave out of backups; see carry.ts.
  const opts = !overlay && req.mode === 'in_place' && exists ? optionGlobs(req.target.options ?? {}) : null;
  await mkdir(dirname(target), { recursive: true });

  // Staging beside target keeps every rename on one file system. A mount
  // point (a Docker volume, say) is its own file system and cannot be
  // renamed, so there staging goes inside it.
  const targetStat = exists ? await lstat(target) : null;
  const mountPoint = targetStat !== null && targetStat.dev !== (await lstat(dirname(target))).dev;
  const tag = randomBytes(6).toString('hex');
  const staging = mountPoint ? join(target, `.backvault-restore-${tag}`) : tempPathBeside(target);
  await mkdir(staging, { mode: 0o700 });
  const phases = new PhaseTimer();
  /** set when carried-over paths could not be put back: staging then holds the user's data and must stay */
  let keepStaging = false;
  try {
    // Counted as extracted, before anything is carried over (below), so
    // counts and tree_sha256 describe exactly the backed-up paths: what the
    // manifest recorded at dump time, where the same options kept the carried
    // paths out of the count too. Counting the carried paths would make every
    // restore of a resource with exclusions "not match" its backup.
    // Only an overlay needs the entry list; a full restore keeps no per-file state.
    const { list, counts } = await extractInto(staging, req.input, digestVersionOf(req.formatVersion ?? FORMAT_VERSION), signal, overlay, phases, req.decode);
    // Check before anything is visible: a mismatch leaves the target as it was.
    const diffs = compareCounts(req.expected, counts);
    if (diffs.length > 0) {
      throw new AppError('verification_failed', `The restored files do not match the backup: ${diffs.slice(0, 5).join('; ')}`, { differences: diffs });
    }
    if (signal.aborted) throw new AppError('cancelled');

    let warnings: string[];
    if (overlay) {
      // The moved inodes are the ones counted above, so counts describe what the target now holds at the backed-up paths.
      await phases.time('overlay', () => overlayInto(staging, target, list!));
      warnings = [];
    } else {
      const swapStarted = performance.now();
      warnings = [];
      let carrier: Carrier | null = null;
      if (opts) {
        const filter = new PathFilter([opts.include], opts.exclude);
        const plan = await planCarry(target, staging, filter, new Set(mountPoint ? [basename(staging)] : []), signal);
        if (plan.replaced.length > 0) {
          const shown = plan.replaced.slice(0, 5).map((p) => JSON.stringify(p)).join(', ');
          const more = plan.replaced.length > 5 ? ` and ${plan.replaced.length - 5} more` : '';
          warnings.push(`${plan.replaced.length} path(s) that the resource's options leave out of backups were replaced by what the backup has at or above them: ${shown}${more}`);
        }
        if (plan.ops.length > 0) carrier = new Carrier(target, staging, plan);
      }
      // Again just before the swap: something may have been put there while the input streamed.
      if (req.mode === 'new_target') await requireFreshTarget(target, mountPoint ? basename(staging) : undefined);
      try {
        // From here on the left-out paths live in staging until the swap puts it in place (with them) or undo puts them back.
        await carrier?.run();
        if (mountPoint) {
          warnings.push(...(await swapContents(staging, target, join(target, `.backvault-old-${tag}`))));
        } else {
          // The tree's root is not in the archive: keep the old root's mode and owner.
          if (targetStat) {
            await chmod(staging, targetStat.mode & 0o7777);
            if (process.getuid?.() === 0) await chown(staging, targetStat.uid, targetStat.gid);
          } else {
            await chmod(staging, 0o755);
          }
          warnings.push(...(await swapInto(staging, target, tempPathBeside(target))));
        }
        phases.add('swap', performance.now() - swapStarted);
      } catch (err) {
        const failed = carrier ? await carrier.undo() : [];
        if (failed.length > 0) {
          keepStaging = true;
          throw new AppError(
            'engine_failed',
            `The restore failed (${(err as Error).message}), and ${failed.length} path(s) that the resource's options leave out of backups could not be moved back into ${target}: they are in ${staging} (${failed
              .slice(0, 5)
              .map((p) => JSON.stringify(p))
              .join(', ')}${failed.length > 5 ? ', …' : ''}); move them back by hand.`,
            { kept: staging, paths: failed.slice(0, 100) },
            { cause: err },
          );
        }
        throw err;
      }
    }
    return { counts, warnings, phases: phases.result() };
  } catch (err) {
    if (signal.aborted && !(isAppError(err) && err.code !== 'cancelled')) throw new AppError('cancelled', undefined, undefined, { cause: err });
    if (isAppError(err)) throw err;
    // tar-stream's parse errors
    if (err instanceof Error && /^(Invalid tar header|Invalid header|Unexpected end of data|Header exceeds max size)/.test(err.message)) {
      throw new AppError('engine_failed', `The artifact is not a valid tar archive (${err.message}); the stored copy may be damaged.`, undefined, { cause: err });
    }
    throw new AppError('engine_failed', `Restoring the files failed: ${(err as Error).message}`, undefined, { cause: err });
  } finally {
    // After a swap staging no longer exists; otherwise this removes every trace of the attempt.
    if (!keepStaging) await rm(staging, { recursive: true, force: true });
  }
}

async function listObjects(resource: ResourceSpec): Promise<ObjectInfo[]> {
  const root = checkPath(resource.connection);
  const opts = optionGlobs(resource.options);
  await checkDirectory(root);
  const filter = new PathFilter([], opts.exclude);
  const out: ObjectInfo[] = [];
  // The top level only: enough to build a selection, cheap on any tree.
  for (const name of (await readdir(root)).sort(byteCompare)) {
    if (filter.excluded(name)) continue;
    const st = await lstat(join(root, name)).catch(() => null);
    if (!st) continue;
    if (st.isDirectory()) out.push({ name, kind: 'directory' });
    else if (st.isFile()) out.push({ name, kind: 'file', size: st.size });
    else if (st.isSymbolicLink()) out.push({ name, kind: 'file' });
  }
  return out;
}

async function scratchTarget(_resource: ResourceSpec, workDir: string): Promise<ScratchTarget> {
  await mkdir(workDir, { recursive: true });
  const dir = await mkdtemp(join(workDir, 'scratch-files-'));
  return {
    connection: join(dir, 'tree'),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

export const filesEngine: Engine = {
  type: 'files',
  formatVersion: FORMAT_VERSION,
  // The stored tar is checked where it is used: zstd by a codec worker that sends the pieces straight to the restore worker, an uncompressed one by the restore worker itself (restore-pool.ts); no byte of it reaches the event loop.
  decodes: SYNC_DECODABLE,
  checkConnection(connection: string, options: Record<string, unknown>): void {
    checkPath(connection);
    optionGlobs(options ?? {});
  },
  listObjects,
  dump,
  restore,
  scratchTarget,
};
