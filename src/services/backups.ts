// Backups: create (a job), list, show, delete, cancel, files, download.
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ServiceContext } from './context.ts';
import { AppError, publicMessage } from '../errors/index.ts';
import type { BackupTable } from '../catalog/schema.ts';
import { ACTIVE_STATUSES as ACTIVE, RESOURCE_ORDER, isActiveStatus, type Compression, type Exclusion, type Progress, type ResourceType, type Selection } from '../domain/types.ts';
import { MANIFEST_FORMAT, artifactKey, compressionExtension, manifestKey, manifestProblems, type Manifest, type ManifestResource } from '../domain/manifest.ts';
import { ByteCounter, compressForStorage } from '../platform/streams.ts';
import { newId } from '../platform/ids.ts';
import { deletePrefix, type Storage } from '../storage/storage.ts';
import { copiesForViews, deleteFromAll, fromAnyCopy, putToAll, recordCopies } from './copies.ts';
import type { Destination } from './context.ts';
import { workPath } from '../config/index.ts';
import { backupView, type BackupView } from './views.ts';
import { getInstanceRow, isInstanceBusy, listResourceRows, resourceSpec } from './instances.ts';
import type { CatalogDb } from '../catalog/db.ts';
import type { Job } from '../jobs/queue.ts';
import type { JobHandler } from '../jobs/pool.ts';
import { exchangeArchiveSize, writeExchangeArchive } from '../archive/writer.ts';
import { encryptExport, encryptedExportSize } from '../storage/encrypted.ts';
import { readAll } from '../platform/read-all.ts';

export const BACKVAULT_VERSION = '0.1.0';

export interface CreateBackupInput {
  type: 'full' | 'partial';
  label?: string | null;
  description?: string | null;
  selection?: Selection | null;
  exclude?: Exclusion | null;
  compression?: Compression;
  /** dump from each resource's replica where one is set (Cloud66's run_on_replica_server) */
  run_on_replica?: boolean;
  origin?: 'api' | 'policy';
  policy_id?: string | null;
  /** refuse (operation_in_progress) while another backup or restore of the instance waits or runs, as PocketBase does */
  requireIdle?: boolean;
}

/**
 * Throws quota_exceeded when the instance has its max_backups. Pass the
 * transaction that inserts the new backup as db, so two requests cannot both
 * take the last place.
 */
export async function assertQuota(ctx: ServiceContext, instance: string, maxBackups: number | null, db: CatalogDb = ctx.db): Promise<void> {
  const cap = maxBackups ?? (ctx.config.default_max_backups || null);
  if (!cap) return;
  const row = await db
    .selectFrom('backups')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where('instance', '=', instance)
    .where('status', '!=', 'error')
    .executeTakeFirstOrThrow();
  if (Number(row.n) >= cap) {
    throw new AppError('quota_exceeded', `Instance ${instance} already has ${Number(row.n)} backups, its max_backups is ${cap}; delete old backups or raise max_backups.`, {
      max_backups: cap,
      backups: Number(row.n),
    });
  }
}

export async function createBackup(ctx: ServiceContext, instance: string, input: CreateBackupInput): Promise<BackupView> {
  const inst = await getInstanceRow(ctx, instance);
  const resources = await listResourceRows(ctx, instance);
  if (resources.length === 0) throw new AppError('invalid_request', `Instance ${instance} has no resources yet; add one before backing it up.`);
  const names = new Set(resources.map((r) => r.name));
  const selection = input.selection ?? null;
  const exclude = input.exclude ?? null;
  if (input.type === 'full' && selection !== null) {
    throw new AppError('invalid_selection', 'A full backup takes every resource; use type "partial" with a selection.');
  }
  if (input.type === 'partial' && (selection === null || Object.keys(selection).length === 0)) {
    throw new AppError('invalid_selection', 'A partial backup needs a selection naming at least one resource.');
  }
  for (const name of [...Object.keys(selection ?? {}), ...Object.keys(exclude ?? {})]) {
    if (!names.has(name)) throw new AppError('invalid_selection', `Instance ${instance} has no resource named ${name}.`, { resource: name });
  }
  const now = ctx.clock.now().toISOString();
  const id = newId();
  const row: BackupTable = {
    id,
    instance,
    type: input.type,
    origin: input.origin ?? 'api',
    label: input.label ?? null,
    description: input.description ?? null,
    status: 'scheduled',
    status_info: null,
    compression: input.compression ?? 'zstd',
    selection: selection === null ? null : JSON.stringify(selection),
    exclude: exclude === null ? null : JSON.stringify(exclude),
    size: 0,
    resources: '[]',
    progress: null,
    policy_id: input.policy_id ?? null,
    verify_status: null,
    verify_result: null,
    created_at: now,
    updated_at: now,
    started_at: null,
    finished_at: null,
  };
  // Checked and inserted in one transaction, so concurrent requests cannot both pass the checks.
  await ctx.db.transaction().execute(async (trx) => {
    await assertQuota(ctx, instance, inst.max_backups, trx);
    if (input.requireIdle && (await isInstanceBusy(ctx, instance, trx))) {
      throw new AppError('operation_in_progress', `Another backup or restore of instance ${instance} is already waiting or running; wait for it to finish.`);
    }
    await trx.insertInto('backups').values(row).execute();
    await ctx.jobs.enqueue({ kind: 'backup', instance, subjectId: id, exclusive: true, payload: { run_on_replica: input.run_on_replica === true } }, trx);
  });
  ctx.jobs.notify();
  return backupView(row);
}

export async function getBackupRow(ctx: ServiceContext, id: string): Promise<BackupTable> {
  const row = await ctx.db.selectFrom('backups').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw new AppError('backup_not_found', `No backup has id ${id}.`);
  return row;
}

export async function getBackup(ctx: ServiceContext, id: string): Promise<BackupView> {
  const row = await getBackupRow(ctx, id);
  return backupView(row, (await copiesForViews(ctx, [row])).get(row.id));
}

export interface BackupFilter {
  instance?: string;
  status?: string;
  type?: string;
  policy?: string;
  page: number;
  perPage: number;
}

export async function listBackups(ctx: ServiceContext, f: BackupFilter): Promise<{ items: BackupView[]; total: number }> {
  if (f.instance !== undefined) await getInstanceRow(ctx, f.instance);
  let q = ctx.db.selectFrom('backups');
  if (f.instance !== undefined) q = q.where('instance', '=', f.instance);
  if (f.status !== undefined) q = q.where('status', '=', f.status);
  if (f.type !== undefined) q = q.where('type', '=', f.type as 'full' | 'partial');
  if (f.policy !== undefined) q = q.where('policy_id', '=', f.policy);
  const total = await q.select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const rows = await q
    .selectAll()
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(f.perPage)
    .offset((f.page - 1) * f.perPage)
    .execute();
  const copies = await copiesForViews(ctx, rows);
  return { items: rows.map((r) => backupView(r, copies.get(r.id))), total: Number(total.n) };
}


/** Throws backup_in_use when a job works on or reads the backup. */
async function assertNotInUse(ctx: ServiceContext, row: BackupTable): Promise<void> {
  if (isActiveStatus(row.status)) throw new AppError('backup_in_use', 'The backup is still being made; cancel it first.');
  if (row.verify_status === 'scheduled' || row.verify_status === 'running') throw new AppError('backup_in_use', 'A restore drill of this backup is running.');
  const restore = await ctx.db.selectFrom('restores').select('id').where('backup_id', '=', row.id).where('status', 'in', ACTIVE).limit(1).executeTakeFirst();
  if (restore) throw new AppError('backup_in_use', `Restore ${restore.id} is using this backup.`, { restore: restore.id });
}

export async function deleteBackup(ctx: ServiceContext, id: string): Promise<void> {
  const row = await getBackupRow(ctx, id);
  await assertNotInUse(ctx, row);
  await deleteFromAll(ctx, id, manifestKey(id));
  await ctx.db.deleteFrom('backups').where('id', '=', id).execute();
}

export async function cancelBackup(ctx: ServiceContext, id: string): Promise<BackupView> {
  const row = await getBackupRow(ctx, id);
  if (!isActiveStatus(row.status)) throw new AppError('not_cancellable', `The backup has already ended with status ${row.status}.`);
  const jobs = await ctx.jobs.activeForSubject(id);
  for (const job of jobs) {
    const outcome = await ctx.jobs.requestCancel(job.id);
    if (outcome === 'cancelled_queued') await backupJobHandler(ctx).fail(job, 'cancelled by request');
  }
  return getBackup(ctx, id);
}

/** Reads and checks a backup's manifest from one storage. */
export async function readManifestFrom(storage: Storage, id: string): Promise<{ bytes: Buffer; manifest: Manifest }> {
  const bytes = await readAll(await storage.get(manifestKey(id)), 16 * 1024 * 1024);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(bytes.toString('utf8')) as Manifest;
  } catch {
    throw new AppError('storage_failed', `The stored manifest of backup ${id} is not valid JSON: the stored copy is damaged.`);
  }
  const problems = manifestProblems(manifest);
  if (problems.length > 0) throw new AppError('storage_failed', `The stored manifest of backup ${id} is damaged: ${problems[0]}`);
  return { bytes, manifest };
}

/**
 * The manifest as stored (the source of truth for a backup's files), from the
 * first good copy; with it the storage it came from, so the artifacts are
 * read from the same copy.
 */
export async function readStoredManifest(ctx: ServiceContext, id: string): Promise<{ bytes: Buffer; manifest: Manifest; storage: Storage; destination: string }> {
  const { value, destination } = await fromAnyCopy(ctx, id, (storage) => readManifestFrom(storage, id));
  const storage = ctx.destinations.find((d) => d.name === destination)!.storage;
  return { ...value, storage, destination };
}

async function successfulBackup(ctx: ServiceContext, id: string): Promise<BackupTable> {
  const row = await getBackupRow(ctx, id);
  if (row.status !== 'success') throw new AppError('backup_not_ready', `Backup ${id} has status ${row.status}; only a successful backup can be used for this.`);
  return row;
}

/**
 * Resolves with the backup once it has ended (success or error). For dialects
 * whose create call answers only when the backup is done (PocketBase).
 */
export async function waitForBackupEnd(ctx: ServiceContext, id: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<BackupView> {
  const deadline = Date.now() + (options.timeoutMs ?? 6 * 3600 * 1000);
  for (;;) {
    const row = await getBackupRow(ctx, id);
    if (row.status === 'success' || row.status === 'error') return backupView(row);
    if (options.signal?.aborted) throw new AppError('cancelled', 'Stopped waiting for the backup; it goes on running.');
    if (Date.now() > deadline) throw new AppError('internal', 'The backup did not end in time; it goes on running.');
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function listBackupFiles(ctx: ServiceContext, id: string) {
  await successfulBackup(ctx, id);
  const { bytes, manifest } = await readStoredManifest(ctx, id);
  return [
    { path: 'manifest.json', resource: null, size: bytes.length, sha256: null, compression: null },
    ...manifest.resources.map((r) => ({ path: `resources/${r.name}/${r.artifact}`, resource: r.name, size: r.size, sha256: r.sha256, compression: r.compression })),
  ];
}

export interface Download {
  filename: string;
  size: number;
  stream(range?: { start: number; end: number }): Readable;
}

/** The exchange archive of a backup: tar, manifest.json first, then the stored artifacts. */
export async function openDownload(ctx: ServiceContext, id: string): Promise<Download> {
  const row = await successfulBackup(ctx, id);
  const { bytes, manifest, storage } = await readStoredManifest(ctx, id);
  const size = exchangeArchiveSize(bytes, manifest);
  return {
    filename: `backvault-${row.instance}-${id}.tar`,
    size,
    stream: (range) => writeExchangeArchive(bytes, manifest, (r, artifactRange) => storage.get(artifactKey(id, r.name, r.artifact), artifactRange), range),
  };
}

/**
 * The exchange archive encrypted with a passphrase (AES-256-GCM, key from
 * scrypt), for archives that leave the user's hands; `backvault archive
 * decrypt` turns it back into the plain tar. No ranges: it is made on the fly.
 */
export async function openEncryptedExport(ctx: ServiceContext, id: string, passphrase: string): Promise<{ filename: string; size: number; stream: Readable }> {
  const download = await openDownload(ctx, id);
  return { filename: `${download.filename}.bvx`, size: encryptedExportSize(download.size), stream: encryptExport(download.stream(), passphrase) };
}

/** Writes progress at most once a second, so a fast stream does not hammer the catalog. */
export class ProgressWriter {
  private last = 0;
  private pending: Progress | null = null;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly write: (p: Progress) => Promise<void>) {}

  update(p: Progress, force = false): void {
    this.pending = p;
    const now = Date.now();
    if (!force && now - this.last < 1000) return;
    this.last = now;
    const snapshot = this.pending;
    this.writing = this.writing.then(() => this.write(snapshot)).catch(() => undefined);
  }

  async flush(): Promise<void> {
    await this.writing;
  }
}

async function setBackup(ctx: ServiceContext, id: string, set: Partial<BackupTable>): Promise<void> {
  await ctx.db.updateTable('backups').set({ ...set, updated_at: ctx.clock.now().toISOString() }).where('id', '=', id).execute();
}

/**
 * Pipes a dump through hashing and compression into every live destination
 * at once. Returns the destinations whose copy failed (the others go on);
 * throws when the dump failed or every destination did.
 */
export async function streamToStorage(ctx: ServiceContext, destinations: Destination[], source: Readable, key: string, compression: Compression, signal: AbortSignal, onBytes: (n: number) => void) {
  const raw = new ByteCounter(onBytes);
  const compressed = compressForStorage(compression);
  const failed = await putToAll(destinations, key, source, [raw, ...compressed.stages], signal);
  return { rawSize: raw.bytes, ...compressed.stored(), failed };
}

/** The error to report: an AppError from the engine explains more than a broken pipe does. */
async function rootCause(err: unknown, info: Promise<unknown>): Promise<unknown> {
  if (err instanceof AppError && err.code !== 'cancelled') return err;
  const settled = await Promise.race([info.then(() => null, (e: unknown) => e), new Promise((r) => setTimeout(() => r(null), 2000))]);
  return settled instanceof AppError ? settled : err;
}

export async function runBackup(ctx: ServiceContext, job: Job, signal: AbortSignal): Promise<void> {
  const row = await getBackupRow(ctx, job.subject_id);
  if (row.status !== 'scheduled') return; // cancelled while queued
  const started = ctx.clock.now().toISOString();
  await setBackup(ctx, row.id, { status: 'running', started_at: started });
  const selection = row.selection === null ? null : (JSON.parse(row.selection) as Selection);
  const exclude = row.exclude === null ? {} : (JSON.parse(row.exclude) as Exclusion);
  const all = await listResourceRows(ctx, row.instance);
  const chosen = (selection === null ? all : all.filter((r) => r.name in selection)).sort(
    (a, b) => RESOURCE_ORDER[a.type as ResourceType] - RESOURCE_ORDER[b.type as ResourceType] || a.name.localeCompare(b.name),
  );
  if (selection !== null) {
    const missing = Object.keys(selection).filter((n) => !chosen.some((r) => r.name === n));
    if (missing.length > 0) throw new AppError('invalid_selection', `Resources ${missing.join(', ')} were deleted after the backup was asked for.`);
  }
  if (chosen.length === 0) throw new AppError('invalid_request', `Instance ${row.instance} has no resources to back up.`);
  const compression = row.compression as Compression;
  const workDir = join(workPath(ctx.config), job.id);
  await mkdir(workDir, { recursive: true });
  const progress = new ProgressWriter((p) => setBackup(ctx, row.id, { progress: JSON.stringify(p) }));
  const entries: ManifestResource[] = [];
  let total = 0;
  // Every destination gets the same stream; one that fails drops out and the backup goes on in the others.
  let live = [...ctx.destinations];
  const lost = new Map<string, string>();
  const dropFailed = (failed: Map<string, unknown>) => {
    for (const [name, err] of failed) {
      lost.set(name, publicMessage(err));
      ctx.log.warn({ backup: row.id, destination: name, code: (err as AppError).code }, 'a destination failed; the backup goes on in the others');
    }
    live = live.filter((d) => !failed.has(d.name));
  };
  try {
    for (const [index, res] of chosen.entries()) {
      if (signal.aborted) throw signal.reason;
      const engine = ctx.engine(res.type as ResourceType);
      const sel = selection === null ? null : (selection[res.name] ?? null);
      const exc = exclude[res.name] ?? [];
      const base = { phase: 'dumping', resource: res.name, resources_done: index, resources_total: chosen.length };
      progress.update({ ...base, bytes_done: total }, true);
      const useReplica = job.payload.run_on_replica === true && !!res.replica;
      const out = await engine.dump({ resource: resourceSpec(res), selection: sel, exclude: exc, useReplica, workDir, signal });
      const artifact = `${out.artifactBase}${compressionExtension(compression)}`;
      let written;
      try {
        written = await streamToStorage(ctx, live, out.stream, artifactKey(row.id, res.name, artifact), compression, signal, (n) =>
          progress.update({ ...base, bytes_done: total + n }),
        );
      } catch (err) {
        throw await rootCause(err, out.info);
      }
      dropFailed(written.failed);
      const info = await out.info;
      total += written.rawSize;
      entries.push({
        name: res.name,
        type: res.type as ResourceType,
        artifact,
        compression,
        size: written.size,
        sha256: written.sha256,
        raw_size: written.rawSize,
        engine: { name: res.type, version: engine.formatVersion },
        ...(info.serverVersion ? { server_version: info.serverVersion } : {}),
        ...(info.toolVersion ? { tool_version: info.toolVersion } : {}),
        format: out.format,
        selection: sel,
        exclude: exc,
        counts: info.counts,
      });
    }
    progress.update({ phase: 'uploading', resources_done: chosen.length, resources_total: chosen.length, bytes_done: total }, true);
    await progress.flush();
    await setBackup(ctx, row.id, { status: 'uploading' });
    const finished = ctx.clock.now().toISOString();
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      backup_id: row.id,
      instance: row.instance,
      type: row.type,
      label: row.label,
      description: row.description,
      created_at: row.created_at,
      finished_at: finished,
      compression,
      backvault_version: BACKVAULT_VERSION,
      resources: entries,
    };
    // The manifest is written last: its presence in storage marks a complete backup.
    dropFailed(await putToAll(live, manifestKey(row.id), Readable.from([Buffer.from(JSON.stringify(manifest, null, 2))]), [], signal));
    if (signal.aborted) throw signal.reason;
    const size = entries.reduce((s, e) => s + e.size, 0);
    // A destination that dropped out holds parts only: remove them, so nothing half-written is visible there.
    for (const d of ctx.destinations.filter((x) => lost.has(x.name))) {
      await deletePrefix(d.storage, `backups/${row.id}/`).catch((err: unknown) => ctx.log.error({ err, destination: d.name }, 'removing a failed copy failed'));
    }
    if (ctx.destinations.length > 1 || lost.size > 0) {
      await recordCopies(ctx, row.id, [
        ...live.map((d) => ({ destination: d.name, status: 'success' as const, status_info: null, size })),
        ...[...lost].map(([name, why]) => ({ destination: name, status: 'error' as const, status_info: why, size: 0 })),
      ]);
    }
    const info = lost.size > 0 ? `Stored in ${live.map((d) => d.name).join(', ')}; the copy in ${[...lost.keys()].join(', ')} failed: ${[...lost.values()][0]}` : null;
    await setBackup(ctx, row.id, { status: 'success', status_info: info, size, resources: JSON.stringify(entries), progress: null, finished_at: finished });
    emitBackupFinished(ctx, row.id);
  } catch (err) {
    await progress.flush();
    throw err;
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Tells listeners a backup ended; never throws into the caller. */
export function emitBackupFinished(ctx: ServiceContext, id: string): void {
  void getBackupRow(ctx, id)
    .then((row) => {
      const view = backupView(row);
      const durationMs = row.started_at && row.finished_at ? Date.parse(row.finished_at) - Date.parse(row.started_at) : null;
      ctx.events.emit('backup.finished', { backup: view, durationMs });
    })
    .catch((err: unknown) => ctx.log.error({ err, backup: id }, 'announcing a finished backup failed'));
}

export function backupJobHandler(ctx: ServiceContext): JobHandler {
  return {
    run: (job, signal) => runBackup(ctx, job, signal),
    async fail(job, info) {
      const row = await ctx.db.selectFrom('backups').select(['status']).where('id', '=', job.subject_id).executeTakeFirst();
      if (!row || row.status === 'success' || row.status === 'error') return;
      // Nothing half-written stays visible: drop whatever the failed run stored, in every destination.
      for (const d of ctx.destinations) {
        try {
          await deletePrefix(d.storage, `backups/${job.subject_id}/`);
        } catch (err) {
          ctx.log.error({ err, backup: job.subject_id, destination: d.name }, 'removing the artifacts of a failed backup failed');
        }
      }
      await setBackup(ctx, job.subject_id, { status: 'error', status_info: info, progress: null, finished_at: ctx.clock.now().toISOString() });
      emitBackupFinished(ctx, job.subject_id);
    },
  };
}
