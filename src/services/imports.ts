// Imports: an exchange archive (uploaded or fetched from a URL) becomes a
// backup of an instance. The archive is validated while it streams into
// storage (tar structure, paths, manifest, sizes, checksums); then a job
// checks that every artifact decompresses before the backup is a success.
// Nothing of a bad archive stays visible: its objects and row are removed.
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ServiceContext } from './context.ts';
import { AppError, isAppError, publicMessage } from '../errors/index.ts';
import { deleteFromAll, putToAll, readableCopies, recordCopies } from './copies.ts';
import type { BackupTable } from '../catalog/schema.ts';
import { artifactKey, manifestKey, type Manifest } from '../domain/manifest.ts';
import { verifyAndDecompress } from '../platform/streams.ts';
import { newId } from '../platform/ids.ts';
import { safeFetch, RefusedAddressError } from '../platform/safe-fetch.ts';
import { deletePrefix } from '../storage/storage.ts';
import { readExchangeArchive, type ReadArchiveOptions } from '../archive/reader.ts';

/** Parses an archive stream, handing over each artifact; tar by default (a dialect may pass its zip reader). */
export type ArchiveReader = (input: Readable, options: ReadArchiveOptions) => Promise<Manifest>;
import { assertQuota, emitBackupFinished, getBackupRow, readStoredManifest } from './backups.ts';
import { getInstanceRow } from './instances.ts';
import { backupView, type BackupView } from './views.ts';
import type { Job } from '../jobs/queue.ts';
import type { JobHandler } from '../jobs/pool.ts';

const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

async function setBackup(ctx: ServiceContext, id: string, set: Partial<BackupTable>): Promise<void> {
  await ctx.db.updateTable('backups').set({ ...set, updated_at: ctx.clock.now().toISOString() }).where('id', '=', id).execute();
}

function importRow(ctx: ServiceContext, instance: string, status: string): BackupTable {
  const now = ctx.clock.now().toISOString();
  return {
    id: newId(),
    instance,
    type: 'full',
    origin: 'import',
    label: null,
    description: null,
    status,
    status_info: null,
    compression: 'none',
    selection: null,
    exclude: null,
    size: 0,
    resources: '[]',
    progress: null,
    policy_id: null,
    verify_status: null,
    verify_result: null,
    created_at: now,
    updated_at: now,
    started_at: now,
    finished_at: null,
  };
}

/**
 * Streams an archive into storage under the backup's id, then writes the
 * manifest rewritten for this instance and id. Throws an AppError (4xx) on
 * any problem, after removing what it stored.
 */
async function ingest(ctx: ServiceContext, backupId: string, instance: string, input: Readable, signal?: AbortSignal, reader: ArchiveReader = readExchangeArchive): Promise<Manifest> {
  // Like a backup, an import goes to every destination at once; one that fails drops out.
  let live = [...ctx.destinations];
  const lost = new Map<string, string>();
  const dropFailed = (failed: Map<string, unknown>) => {
    for (const [name, err] of failed) lost.set(name, publicMessage(err));
    live = live.filter((d) => !failed.has(d.name));
  };
  try {
    const source = await reader(input, {
      maxManifestBytes: MAX_MANIFEST_BYTES,
      maxTotalBytes: ctx.config.max_upload_bytes,
      onArtifact: async (r, data) => {
        dropFailed(await putToAll(live, artifactKey(backupId, r.name, r.artifact), data, [], signal));
      },
    });
    const manifest: Manifest = { ...source, backup_id: backupId, instance };
    dropFailed(await putToAll(live, manifestKey(backupId), Readable.from([Buffer.from(JSON.stringify(manifest, null, 2))]), [], signal));
    for (const d of ctx.destinations.filter((x) => lost.has(x.name))) await deletePrefix(d.storage, `backups/${backupId}/`).catch(() => undefined);
    if (ctx.destinations.length > 1 || lost.size > 0) {
      const size = manifest.resources.reduce((s, r) => s + r.size, 0);
      await recordCopies(ctx, backupId, [
        ...live.map((d) => ({ destination: d.name, status: 'success' as const, status_info: null, size })),
        ...[...lost].map(([name, why]) => ({ destination: name, status: 'error' as const, status_info: why, size: 0 })),
      ]);
    }
    const selection = manifest.resources.some((r) => r.selection !== null) ? Object.fromEntries(manifest.resources.map((r) => [r.name, r.selection])) : null;
    const exclude = manifest.resources.some((r) => r.exclude.length > 0) ? Object.fromEntries(manifest.resources.map((r) => [r.name, r.exclude])) : null;
    await setBackup(ctx, backupId, {
      type: manifest.type,
      label: manifest.label,
      description: manifest.description ?? `imported from backup ${source.backup_id} of instance ${source.instance}`,
      compression: manifest.compression,
      selection: selection && JSON.stringify(selection),
      exclude: exclude && JSON.stringify(exclude),
      size: manifest.resources.reduce((s, r) => s + r.size, 0),
      resources: JSON.stringify(manifest.resources),
    });
    return manifest;
  } catch (err) {
    input.destroy();
    await deleteFromAll(ctx, backupId, manifestKey(backupId)).catch(() => undefined);
    throw err;
  }
}

/**
 * An upload: the request body is consumed here; a bad archive is answered
 * with its 4xx error and leaves no backup behind. A good one becomes a backup
 * in status running whose import job checks that its artifacts decompress.
 */
export async function importUpload(
  ctx: ServiceContext,
  instance: string,
  input: Readable,
  assertComplete: () => void = () => undefined,
  options: { reader?: ArchiveReader; label?: string | null } = {},
): Promise<BackupView> {
  const inst = await getInstanceRow(ctx, instance);
  const row = importRow(ctx, instance, 'uploading');
  // Checked and inserted in one transaction, so two uploads cannot both take the last place.
  await ctx.db.transaction().execute(async (trx) => {
    await assertQuota(ctx, instance, inst.max_backups, trx);
    await trx.insertInto('backups').values(row).execute();
  });
  try {
    await ingest(ctx, row.id, instance, input, undefined, options.reader);
    if (options.label !== undefined) await setBackup(ctx, row.id, { label: options.label });
    // The transport may have cut the upload (size limit) after a readable end.
    try {
      assertComplete();
    } catch (err) {
      await deleteFromAll(ctx, row.id, manifestKey(row.id)).catch(() => undefined);
      throw err;
    }
  } catch (err) {
    await ctx.db.deleteFrom('backups').where('id', '=', row.id).execute();
    throw err;
  }
  await ctx.db.transaction().execute(async (trx) => {
    await trx.updateTable('backups').set({ status: 'running', updated_at: ctx.clock.now().toISOString() }).where('id', '=', row.id).execute();
    await ctx.jobs.enqueue({ kind: 'import', instance, subjectId: row.id, exclusive: true, payload: { source: 'upload' } }, trx);
  });
  ctx.jobs.notify();
  return backupView(await getBackupRow(ctx, row.id));
}

/** A URL import: a backup in status scheduled whose job fetches and validates the archive. */
export async function importFromUrl(ctx: ServiceContext, instance: string, url: string, options: { policy_id?: string } = {}): Promise<BackupView> {
  const inst = await getInstanceRow(ctx, instance);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new AppError('invalid_request', 'url is not a valid URL.', { field: 'url' });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new AppError('import_url_refused', 'Only http and https URLs can be imported.');
  // An import may join a policy's backups (Cloud66's backup group), so that policy's retention counts it.
  const row = { ...importRow(ctx, instance, 'scheduled'), started_at: null, policy_id: options.policy_id ?? null };
  await ctx.db.transaction().execute(async (trx) => {
    await assertQuota(ctx, instance, inst.max_backups, trx);
    await trx.insertInto('backups').values(row).execute();
    await ctx.jobs.enqueue({ kind: 'import', instance, subjectId: row.id, exclusive: true, payload: { source: 'url', url } }, trx);
  });
  ctx.jobs.notify();
  return backupView(row);
}

/**
 * Reads every stored artifact of every copy through checksum and
 * decompression, proving each copy can be restored from. A bad copy is marked
 * so; the import fails only when no copy is good.
 */
async function checkArtifacts(ctx: ServiceContext, manifest: Manifest, signal: AbortSignal): Promise<void> {
  const copies = await readableCopies(ctx, manifest.backup_id);
  let good = 0;
  let firstError: unknown;
  for (const d of copies) {
    try {
      for (const r of manifest.resources) {
        const label = `artifact resources/${r.name}/${r.artifact}`;
        const sink = new Writable({ write: (_c, _e, cb) => cb() });
        await pipeline([await d.storage.get(artifactKey(manifest.backup_id, r.name, r.artifact)), ...verifyAndDecompress(r, label), sink], { signal });
      }
      good++;
    } catch (err) {
      if (signal.aborted || copies.length === 1) throw err;
      firstError ??= err;
      await recordCopies(ctx, manifest.backup_id, [{ destination: d.name, status: 'error', status_info: publicMessage(err), size: 0 }]);
    }
  }
  if (good === 0) throw firstError;
}

async function runImport(ctx: ServiceContext, job: Job, signal: AbortSignal): Promise<void> {
  const row = await getBackupRow(ctx, job.subject_id);
  if (row.status !== 'scheduled' && row.status !== 'running') return;
  let manifest: Manifest;
  if (job.payload.source === 'url') {
    await setBackup(ctx, row.id, { status: 'running', started_at: ctx.clock.now().toISOString() });
    let body;
    try {
      body = await safeFetch(String(job.payload.url), { allowPrivate: ctx.config.allow_private_import_urls, signal });
    } catch (err) {
      const refused = findRefusal(err);
      if (refused) {
        throw new AppError('import_url_refused', `The import URL is refused: ${refused.message}. Set allow_private_import_urls to fetch from private networks.`);
      }
      if (signal.aborted) throw err;
      // The URL may carry a pre-signed secret: the message names only the host.
      throw new AppError('import_fetch_failed', `Fetching the archive from ${new URL(String(job.payload.url)).host} failed: ${(err as Error).message}`);
    }
    if (body.contentLength !== null && body.contentLength > ctx.config.max_upload_bytes) {
      body.stream.destroy();
      throw new AppError('payload_too_large', `The archive at the URL has ${body.contentLength} bytes; the limit is ${ctx.config.max_upload_bytes}.`);
    }
    await setBackup(ctx, row.id, { status: 'uploading' });
    manifest = await ingest(ctx, row.id, row.instance, body.stream, signal);
  } else {
    manifest = (await readStoredManifest(ctx, row.id)).manifest;
  }
  await checkArtifacts(ctx, manifest, signal);
  await setBackup(ctx, row.id, { status: 'success', status_info: null, finished_at: ctx.clock.now().toISOString() });
  emitBackupFinished(ctx, row.id);
}

/** undici wraps connect errors; the refusal may sit a few causes deep. */
function findRefusal(err: unknown): RefusedAddressError | null {
  for (let e = err, depth = 0; e && depth < 5; e = (e as Error).cause, depth++) {
    if (e instanceof RefusedAddressError) return e;
  }
  return null;
}

export function importJobHandler(ctx: ServiceContext): JobHandler {
  return {
    run: (job, signal) => runImport(ctx, job, signal),
    async fail(job, info, err) {
      const row = await ctx.db.selectFrom('backups').select(['status']).where('id', '=', job.subject_id).executeTakeFirst();
      if (!row || row.status === 'success' || row.status === 'error') return;
      await deleteFromAll(ctx, job.subject_id, manifestKey(job.subject_id)).catch(() => undefined);
      const text = isAppError(err) ? err.message : info;
      await setBackup(ctx, job.subject_id, { status: 'error', status_info: text, finished_at: ctx.clock.now().toISOString() });
      emitBackupFinished(ctx, job.subject_id);
    },
  };
}
