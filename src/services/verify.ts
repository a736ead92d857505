// Restore drills: restore a backup into scratch targets, compare with the
// manifest, drop the scratch targets, record verify_status and verify_result.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ServiceContext } from './context.ts';
import { AppError, publicMessage } from '../errors/index.ts';
import { compareCounts } from '../domain/counts.ts';
import { workPath } from '../config/index.ts';
import { getBackupRow, getBackup, readStoredManifest } from './backups.ts';
import { listResourceRows, resourceSpec } from './instances.ts';
import { restoreArtifact } from './restores.ts';
import { fromAnyCopy } from './copies.ts';
import { backupView, type BackupView } from './views.ts';
import type { Job } from '../jobs/queue.ts';
import type { JobHandler } from '../jobs/pool.ts';

export async function requestVerify(ctx: ServiceContext, backupId: string): Promise<BackupView> {
  const row = await getBackupRow(ctx, backupId);
  if (row.status !== 'success') throw new AppError('backup_not_ready', `Backup ${backupId} has status ${row.status}; only a successful backup can be verified.`);
  if (row.verify_status === 'scheduled' || row.verify_status === 'running') throw new AppError('operation_in_progress', 'A restore drill of this backup is already waiting or running.');
  await ctx.db.transaction().execute(async (trx) => {
    await trx.updateTable('backups').set({ verify_status: 'scheduled', verify_result: null, updated_at: ctx.clock.now().toISOString() }).where('id', '=', backupId).execute();
    // A drill only reads the backup and writes scratch targets, so it does not hold the instance.
    await ctx.jobs.enqueue({ kind: 'verify', instance: row.instance, subjectId: backupId, exclusive: false }, trx);
  });
  ctx.jobs.notify();
  return getBackup(ctx, backupId);
}

async function setVerify(ctx: ServiceContext, id: string, status: string, result: unknown): Promise<void> {
  await ctx.db
    .updateTable('backups')
    .set({ verify_status: status, verify_result: result === undefined ? null : JSON.stringify(result), updated_at: ctx.clock.now().toISOString() })
    .where('id', '=', id)
    .execute();
}

export async function runVerify(ctx: ServiceContext, job: Job, signal: AbortSignal): Promise<void> {
  const row = await getBackupRow(ctx, job.subject_id);
  if (row.verify_status !== 'scheduled') return;
  await setVerify(ctx, row.id, 'running', undefined);
  const { manifest } = await readStoredManifest(ctx, row.id);
  const current = await listResourceRows(ctx, row.instance);
  const workDir = join(workPath(ctx.config), job.id);
  await mkdir(workDir, { recursive: true });
  const results: { name: string; ok: boolean; differences: string[]; error?: string; warnings?: string[] }[] = [];
  try {
    for (const entry of manifest.resources) {
      if (signal.aborted) throw signal.reason;
      const engine = ctx.engine(entry.type);
      const existing = current.find((r) => r.name === entry.name && r.type === entry.type);
      const base = existing ? resourceSpec(existing) : { name: entry.name, type: entry.type, connection: '', replica: null, options: {} };
      const scratch = await engine.scratchTarget(base, workDir);
      try {
        const { value: report, warnings } = await fromAnyCopy(ctx, row.id, (storage) =>
          restoreArtifact(storage, row.id, { ...entry, selection: null, exclude: [] }, engine, { ...base, connection: scratch.connection }, 'new_target', workDir, signal),
        );
        const differences = compareCounts(entry.counts, report.counts);
        results.push({ name: entry.name, ok: differences.length === 0, differences, ...(warnings.length ? { warnings } : {}) });
      } catch (err) {
        if (signal.aborted) throw err;
        results.push({ name: entry.name, ok: false, differences: [], error: publicMessage(err) });
      } finally {
        await scratch.cleanup();
      }
    }
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
  const ok = results.every((r) => r.ok);
  await setVerify(ctx, row.id, ok ? 'success' : 'error', { resources: results, finished_at: ctx.clock.now().toISOString() });
  ctx.events.emit('verify.finished', { backup: await getBackup(ctx, row.id) });
}

export function verifyJobHandler(ctx: ServiceContext): JobHandler {
  return {
    run: (job, signal) => runVerify(ctx, job, signal),
    async fail(job, info) {
      await setVerify(ctx, job.subject_id, 'error', { error: info, finished_at: ctx.clock.now().toISOString() });
      const row = await ctx.db.selectFrom('backups').selectAll().where('id', '=', job.subject_id).executeTakeFirst();
      if (row) ctx.events.emit('verify.finished', { backup: backupView(row) });
    },
  };
}
