// Restores: a job that writes a backup back, in place or into new targets,
// then checks what it wrote against the manifest.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ServiceContext } from './context.ts';
import { AppError, publicMessage } from '../errors/index.ts';
import type { RestoreTable } from '../catalog/schema.ts';
import { ACTIVE_STATUSES as ACTIVE, RESOURCE_ORDER, type ResourceSpec } from '../domain/types.ts';
import { artifactKey, type ManifestResource } from '../domain/manifest.ts';
import { compareCounts } from '../domain/counts.ts';
import { maskConnection } from '../domain/mask.ts';
import { verifyAndDecompress } from '../platform/streams.ts';
import { newId } from '../platform/ids.ts';
import type { DecodeSpec } from '../platform/decoder.ts';
import type { Phases } from '../platform/phases.ts';
import { workPath } from '../config/index.ts';
import { restoreView, type RestoreTarget, type RestoreView } from './views.ts';
import { getInstanceRow, isInstanceBusy, listResourceRows, resourceSpec } from './instances.ts';
import { getBackupRow, ProgressWriter, readStoredManifest } from './backups.ts';
import type { Job } from '../jobs/queue.ts';
import type { JobHandler } from '../jobs/pool.ts';
import type { Engine, RestoreReport } from '../engines/engine.ts';
import type { Storage } from '../storage/storage.ts';
import { fromAnyCopy } from './copies.ts';


export interface CreateRestoreInput {
  backup: string;
  resources?: string[] | null;
  targets?: Record<string, RestoreTarget> | null;
  /** refuse also while a backup of the instance waits or runs, as PocketBase does */
  requireIdle?: boolean;
}

export async function createRestore(ctx: ServiceContext, instance: string, input: CreateRestoreInput): Promise<RestoreView> {
  await getInstanceRow(ctx, instance);
  const backup = await getBackupRow(ctx, input.backup);
  if (backup.instance !== instance) throw new AppError('backup_not_found', `Instance ${instance} has no backup with id ${input.backup}.`);
  if (backup.status !== 'success') throw new AppError('backup_not_ready', `Backup ${backup.id} has status ${backup.status}; only a successful backup can be restored.`);
  const inBackup = (JSON.parse(backup.resources) as ManifestResource[]).map((r) => r.name);
  const chosen = input.resources ?? inBackup;
  if (chosen.length === 0) throw new AppError('invalid_request', 'Name at least one resource to restore, or leave resources out to restore all.');
  for (const name of chosen) {
    if (!inBackup.includes(name)) throw new AppError('invalid_selection', `Backup ${backup.id} holds no resource named ${name}.`, { resource: name });
  }
  const targets = input.targets ?? {};
  const manifestResources = JSON.parse(backup.resources) as ManifestResource[];
  const current = await listResourceRows(ctx, instance);
  for (const [name, target] of Object.entries(targets)) {
    if (!chosen.includes(name)) throw new AppError('invalid_selection', `targets names ${name}, which is not being restored.`, { resource: name });
    const type = manifestResources.find((r) => r.name === name)!.type;
    ctx.engine(type).checkConnection(target.connection, {});
  }
  for (const name of chosen) {
    if (name in targets) continue;
    const res = current.find((r) => r.name === name);
    const type = manifestResources.find((r) => r.name === name)!.type;
    if (!res) throw new AppError('resource_not_found', `Instance ${instance} has no resource ${name} to restore in place; give a target for it.`, { resource: name });
    if (res.type !== type) throw new AppError('invalid_request', `Resource ${name} is now of type ${res.type} but the backup holds ${type}; restore it into a target instead.`);
  }
  const now = ctx.clock.now().toISOString();
  const row: RestoreTable = {
    id: newId(),
    instance,
    backup_id: backup.id,
    resources: input.resources ? JSON.stringify(input.resources) : null,
    targets: Object.keys(targets).length > 0 ? JSON.stringify(targets) : null,
    status: 'scheduled',
    status_info: null,
    result: null,
    progress: null,
    created_at: now,
    updated_at: now,
    started_at: null,
    finished_at: null,
  };
  // Check and insert in one transaction so two requests cannot both pass the check.
  await ctx.db.transaction().execute(async (trx) => {
    const other = await trx.selectFrom('restores').select('id').where('instance', '=', instance).where('status', 'in', ACTIVE).limit(1).executeTakeFirst();
    if (other) throw new AppError('operation_in_progress', `Restore ${other.id} of instance ${instance} is already waiting or running; wait for it to finish.`, { restore: other.id });
    if (input.requireIdle && (await isInstanceBusy(ctx, instance, trx))) {
      throw new AppError('operation_in_progress', `A backup of instance ${instance} is waiting or running; wait for it to finish.`);
    }
    await trx.insertInto('restores').values(row).execute();
    await ctx.jobs.enqueue({ kind: 'restore', instance, subjectId: row.id, exclusive: true, payload: { backup: backup.id } }, trx);
  });
  ctx.jobs.notify();
  return restoreView(row);
}

export async function getRestoreRow(ctx: ServiceContext, id: string): Promise<RestoreTable> {
  const row = await ctx.db.selectFrom('restores').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw new AppError('restore_not_found', `No restore has id ${id}.`);
  return row;
}

export async function getRestore(ctx: ServiceContext, id: string): Promise<RestoreView> {
  return restoreView(await getRestoreRow(ctx, id));
}

export async function listRestores(ctx: ServiceContext, instance: string, page: number, perPage: number, status?: string): Promise<{ items: RestoreView[]; total: number }> {
  await getInstanceRow(ctx, instance);
  let q = ctx.db.selectFrom('restores').where('instance', '=', instance);
  if (status !== undefined) q = q.where('status', '=', status);
  const total = await q.select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const rows = await q.selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(perPage).offset((page - 1) * perPage).execute();
  return { items: rows.map(restoreView), total: Number(total.n) };
}

/**
 * Streams one stored artifact, checksum-checked and decompressed, into an
 * engine's restore. The checksum verifier errors at the end of a damaged
 * artifact, before the engine commits anything.
 */
export async function restoreArtifact(
  storage: Storage,
  backupId: string,
  entry: ManifestResource,
  engine: Engine,
  target: ResourceSpec,
  mode: 'in_place' | 'new_target',
  workDir: string,
  signal: AbortSignal,
  onBytes?: (n: number) => void,
): Promise<RestoreReport> {
  const label = `artifact resources/${entry.name}/${entry.artifact}`;
  if (entry.engine.version > engine.formatVersion) {
    throw new AppError(
      'format_unsupported',
      `The ${label} was written in ${entry.type} format ${entry.engine.version}, and this server reads up to format ${engine.formatVersion}; restore it with a newer Backvault.`,
      { resource: entry.name, format: entry.engine.version, supported: engine.formatVersion },
    );
  }
  const source = await storage.get(artifactKey(backupId, entry.name, entry.artifact));
  const input = new PassThrough();
  let seen = 0;
  const counter = new PassThrough();
  counter.on('data', (c: Buffer) => {
    seen += c.length;
    onBytes?.(seen);
  });
  // Settled into a value at once: the pipeline may fail (a damaged artifact) while the engine is still busy,
  // and a rejection nobody is waiting for yet must not become an unhandled one.
  // An engine that decodes this compression itself gets the stored bytes and checks them where it parses them.
  const decode: DecodeSpec | undefined = engine.decodes?.includes(entry.compression) ? { compression: entry.compression, sha256: entry.sha256, size: entry.size, label } : undefined;
  const piped = pipeline([source, counter, ...(decode ? [] : verifyAndDecompress(entry, label)), input], { signal }).then(
    () => null,
    (e: unknown) => e,
  );
  const partial = entry.selection !== null || entry.exclude.length > 0;
  const versionWarning = await majorVersionWarning(engine, target, entry, signal);
  let report: RestoreReport;
  try {
    report = await engine.restore({ target, input, expected: entry.counts, formatVersion: entry.engine.version, mode, partial, decode, workDir, signal });
  } catch (err) {
    input.destroy();
    const pipeErr = await piped;
    // A damaged artifact explains an engine failure better than the engine's own message.
    if (pipeErr instanceof AppError && pipeErr.code === 'checksum_mismatch') throw pipeErr;
    throw err;
  }
  const pipeErr = await piped;
  if (pipeErr) throw pipeErr;
  return versionWarning ? { ...report, warnings: [versionWarning, ...report.warnings] } : report;
}

/** "15.4 (Debian ...)" -> "15"; "10.11.6-MariaDB" -> "10.11"; "7.0.15" -> "7". */
export function majorOf(version: string, type: string): string {
  const nums = /^(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!nums) return version.trim();
  // PostgreSQL >= 10 and Redis count majors in the first number; MySQL/MariaDB in the first two.
  if (type === 'mysql' || (type === 'postgres' && Number(nums[1]) < 10)) return nums[2] !== undefined ? `${nums[1]}.${nums[2]}` : nums[1]!;
  return nums[1]!;
}

/** A warning when the target server's major version differs from the one the backup came from. */
async function majorVersionWarning(engine: Engine, target: ResourceSpec, entry: ManifestResource, signal: AbortSignal): Promise<string | null> {
  if (!engine.serverVersion || !entry.server_version) return null;
  let now: string | null;
  try {
    now = await engine.serverVersion(target, signal);
  } catch {
    return null; // the restore itself will say why the server cannot be reached
  }
  if (!now) return null;
  const from = majorOf(entry.server_version, entry.type);
  const to = majorOf(now, entry.type);
  return from === to ? null : `The backup of ${entry.name} comes from ${entry.type} ${entry.server_version} and was restored into ${now}, another major version: check the application against it.`;
}

interface ResourceResult {
  name: string;
  type: string;
  target: string;
  mode: 'in_place' | 'new_target';
  ok: boolean;
  expected: unknown;
  actual: unknown;
  differences: string[];
  warnings: string[];
  /** wall time of the engine's steps in ms (spool, load, count, swap, …), to see where a restore's time went */
  phases?: Phases;
  error?: string;
}

async function setRestore(ctx: ServiceContext, id: string, set: Partial<RestoreTable>): Promise<void> {
  await ctx.db.updateTable('restores').set({ ...set, updated_at: ctx.clock.now().toISOString() }).where('id', '=', id).execute();
}

export async function runRestore(ctx: ServiceContext, job: Job, signal: AbortSignal): Promise<void> {
  const row = await getRestoreRow(ctx, job.subject_id);
  if (row.status !== 'scheduled') return;
  await setRestore(ctx, row.id, { status: 'running', started_at: ctx.clock.now().toISOString() });
  const { manifest } = await readStoredManifest(ctx, row.backup_id);
  const chosenNames: string[] = row.resources ? (JSON.parse(row.resources) as string[]) : manifest.resources.map((r) => r.name);
  const targets: Record<string, RestoreTarget> = row.targets ? (JSON.parse(row.targets) as Record<string, RestoreTarget>) : {};
  const entries = manifest.resources
    .filter((r) => chosenNames.includes(r.name))
    .sort((a, b) => RESOURCE_ORDER[a.type] - RESOURCE_ORDER[b.type] || a.name.localeCompare(b.name));
  const current = await listResourceRows(ctx, row.instance);
  const workDir = join(workPath(ctx.config), job.id);
  await mkdir(workDir, { recursive: true });
  const progress = new ProgressWriter((p) => setRestore(ctx, row.id, { progress: JSON.stringify(p) }));
  const results: ResourceResult[] = [];
  try {
    for (const [index, entry] of entries.entries()) {
      if (signal.aborted) throw signal.reason;
      const engine = ctx.engine(entry.type);
      const target = targets[entry.name];
      let spec: ResourceSpec;
      if (target) {
        const existing = current.find((r) => r.name === entry.name);
        spec = { name: entry.name, type: entry.type, connection: target.connection, replica: null, options: existing ? resourceSpec(existing).options : {} };
      } else {
        const existing = current.find((r) => r.name === entry.name);
        if (!existing) throw new AppError('resource_not_found', `Resource ${entry.name} was deleted after the restore was asked for.`);
        spec = resourceSpec(existing);
      }
      const mode = target ? 'new_target' : 'in_place';
      const base = { phase: 'restoring', resource: entry.name, resources_done: index, resources_total: entries.length };
      progress.update({ ...base, bytes_done: 0 }, true);
      const result: ResourceResult = { name: entry.name, type: entry.type, target: maskConnection(spec.connection), mode, ok: false, expected: entry.counts, actual: null, differences: [], warnings: [] };
      results.push(result);
      try {
        // From the first copy that restores; a damaged or missing copy gives way to the next.
        const { value: report, warnings: copyWarnings } = await fromAnyCopy(ctx, row.backup_id, (storage) =>
          restoreArtifact(storage, row.backup_id, entry, engine, spec, mode, workDir, signal, (n) => progress.update({ ...base, bytes_done: n })),
        );
        result.actual = report.counts;
        result.warnings = [...copyWarnings, ...report.warnings];
        if (report.phases) {
          result.phases = report.phases;
          ctx.log.info({ restore: row.id, resource: entry.name, phases: report.phases }, 'resource restored');
        }
        result.differences = compareCounts(entry.counts, report.counts);
        result.ok = result.differences.length === 0;
      } catch (err) {
        result.error = publicMessage(err);
        throw err;
      }
      if (!result.ok) {
        throw new AppError('verification_failed', `Resource ${entry.name} was restored but does not match the backup: ${result.differences.slice(0, 3).join('; ')}`);
      }
    }
    await progress.flush();
    await setRestore(ctx, row.id, { status: 'success', status_info: null, progress: null, result: JSON.stringify({ resources: results }), finished_at: ctx.clock.now().toISOString() });
    emitRestoreFinished(ctx, row.id);
  } catch (err) {
    await progress.flush();
    // Keep what each resource did, so the failure says what was and was not restored.
    await setRestore(ctx, row.id, { result: JSON.stringify({ resources: results }) });
    const done = results.filter((r) => r.ok).map((r) => r.name);
    if (done.length > 0 && err instanceof AppError) {
      throw new AppError(err.code, `${err.message} (already restored: ${done.join(', ')})`, err.details);
    }
    throw err;
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

function emitRestoreFinished(ctx: ServiceContext, id: string): void {
  void getRestoreRow(ctx, id)
    .then((row) => ctx.events.emit('restore.finished', { restore: restoreView(row) }))
    .catch((err: unknown) => ctx.log.error({ err, restore: id }, 'announcing a finished restore failed'));
}

export function restoreJobHandler(ctx: ServiceContext): JobHandler {
  return {
    run: (job, signal) => runRestore(ctx, job, signal),
    async fail(job, info) {
      const row = await ctx.db.selectFrom('restores').select(['status']).where('id', '=', job.subject_id).executeTakeFirst();
      if (!row || row.status === 'success' || row.status === 'error') return;
      await setRestore(ctx, job.subject_id, { status: 'error', status_info: info, progress: null, finished_at: ctx.clock.now().toISOString() });
      emitRestoreFinished(ctx, job.subject_id);
    },
  };
}
