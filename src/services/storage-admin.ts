// Storage administration: rebuild the catalog from the manifests in storage,
// check storage against the catalog, and measure storage use per instance.
//
// Storage is the source of truth (DESIGN.md principle 3): a backup directory
// backups/<id>/ whose manifest.json is valid and whose artifacts have the
// manifest's sizes is a complete backup, whatever the catalog says. The
// manifest is written last and deleted first, so a directory without one is a
// backup that never finished (or one half-deleted).
//
// Nothing is lost (principle 4): the check never removes a complete backup
// (catalog rebuild adopts those), nor anything of a backup in progress, and it
// deletes only the keys it listed, after looking at the catalog again.
import { lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ServiceContext } from './context.ts';
import { ACTIVE_STATUSES, isActiveStatus } from '../domain/types.ts';
import type { BackupTable } from '../catalog/schema.ts';
import { AppError } from '../errors/index.ts';
import { artifactKey, manifestKey, manifestProblems, type Manifest } from '../domain/manifest.ts';
import { readAll } from '../platform/read-all.ts';
import { storagePath } from '../config/index.ts';
import type { Storage, StoredObject } from '../storage/storage.ts';

/** What these operations need; the CLI's rebuild builds it without a server. */
export type AdminDeps = Pick<ServiceContext, 'db' | 'storage' | 'clock'>;

/** The one destination there is today; items carry it so that several can come without changing the shape. */
export const DEFAULT_DESTINATION = 'default';

const PREFIX = 'backups/';
const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
/** Keys listed per report entry; the counts cover the rest. */
const MAX_KEYS_SHOWN = 20;
/** A local temp file untouched this long belongs to no running put (puts write continuously). */
const TEMP_GRACE_MS = 10 * 60 * 1000;

// ---------------------------------------------------------------- scanning

interface BackupDir {
  id: string;
  objects: StoredObject[];
  manifest: StoredObject | null;
}

interface Scan {
  dirs: Map<string, BackupDir>;
  /** keys under backups/ that are not inside a backup directory */
  loose: StoredObject[];
  objects: number;
  bytes: number;
}

/** One listing of backups/, grouped by backup directory. */
async function scanStorage(storage: Storage): Promise<Scan> {
  const dirs = new Map<string, BackupDir>();
  const loose: StoredObject[] = [];
  let objects = 0;
  let bytes = 0;
  for await (const obj of storage.list(PREFIX)) {
    objects++;
    bytes += obj.size;
    const rest = obj.key.slice(PREFIX.length);
    const slash = rest.indexOf('/');
    if (slash <= 0) {
      loose.push(obj);
      continue;
    }
    const id = rest.slice(0, slash);
    let dir = dirs.get(id);
    if (!dir) {
      dir = { id, objects: [], manifest: null };
      dirs.set(id, dir);
    }
    dir.objects.push(obj);
    if (obj.key === manifestKey(id)) dir.manifest = obj;
  }
  return { dirs, loose, objects, bytes };
}

type ManifestRead = { manifest: Manifest; problem: null } | { manifest: null; problem: string };

async function readManifest(storage: Storage, id: string): Promise<ManifestRead> {
  let parsed: unknown;
  try {
    const bytes = await readAll(await storage.get(manifestKey(id)), MAX_MANIFEST_BYTES);
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    if (err instanceof AppError && err.code !== 'storage_not_found') throw err;
    return { manifest: null, problem: `manifest.json cannot be read: ${(err as Error).message}` };
  }
  const problems = manifestProblems(parsed);
  if (problems.length > 0) return { manifest: null, problem: `manifest.json is not a valid backvault/1 manifest (${problems[0]})` };
  const manifest = parsed as Manifest;
  // A manifest copied into another backup's directory would make two backups claim the same artifacts.
  if (manifest.backup_id !== id) return { manifest: null, problem: `manifest.json names backup ${manifest.backup_id}, not ${id}` };
  for (const field of ['created_at', 'finished_at'] as const) {
    if (Number.isNaN(Date.parse(manifest[field]))) return { manifest: null, problem: `manifest.json has an invalid ${field}` };
  }
  return { manifest, problem: null };
}

export interface ObjectProblem {
  key: string;
  problem: 'missing' | 'wrong_size' | 'manifest_missing' | 'manifest_damaged' | 'manifest_differs';
  expected_size?: number;
  actual_size?: number;
  detail?: string;
}

/** Artifacts of resources that are absent or not of the recorded size. */
function artifactProblems(dir: BackupDir | undefined, id: string, resources: { name: string; artifact: string; size: number }[]): ObjectProblem[] {
  const byKey = new Map((dir?.objects ?? []).map((o) => [o.key, o]));
  const problems: ObjectProblem[] = [];
  for (const r of resources) {
    const key = artifactKey(id, r.name, r.artifact);
    const obj = byKey.get(key);
    if (!obj) problems.push({ key, problem: 'missing', expected_size: r.size });
    else if (obj.size !== r.size) problems.push({ key, problem: 'wrong_size', expected_size: r.size, actual_size: obj.size });
  }
  return problems;
}

/** JSON with object keys sorted, so equal values compare equal whatever their key order. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

function sum(objects: StoredObject[]): number {
  return objects.reduce((s, o) => s + o.size, 0);
}

// ---------------------------------------------------------------- rebuild

export interface RebuiltBackup {
  id: string;
  instance: string;
  type: 'full' | 'partial';
  created_at: string;
  size: number;
}

export interface RebuildReport {
  dry_run: boolean;
  storage: string;
  /** backup directories found in storage */
  scanned: number;
  instances: { created: string[]; existing: string[] };
  backups: {
    inserted: RebuiltBackup[];
    /** rows of successful backups that disagreed with their manifest; storage wins */
    updated: (RebuiltBackup & { fields: string[] })[];
    unchanged: number;
  };
  /** directories that are not complete, valid backups: not added */
  skipped: { backup_id: string; instance: string | null; reason: string }[];
  /** rows that storage cannot overrule (a failed, cancelled or running backup, another instance): left as they are */
  conflicts: { backup_id: string; instance: string; reason: string }[];
  /** successful backups in the catalog without a manifest in storage; `storage check` tells more */
  catalog_only: string[];
  notes: string[];
}

/** The catalog row a manifest describes: what the backup was when it succeeded. */
function rowFromManifest(m: Manifest, now: string): BackupTable {
  const selection = m.type === 'partial' ? Object.fromEntries(m.resources.map((r) => [r.name, r.selection])) : null;
  const excluded = m.resources.filter((r) => r.exclude.length > 0);
  const exclude = excluded.length > 0 ? Object.fromEntries(excluded.map((r) => [r.name, r.exclude])) : null;
  return {
    id: m.backup_id,
    instance: m.instance,
    type: m.type,
    // The manifest does not record how a backup was started; 'import' says it
    // came into this catalog from stored data (and keeps it out of the
    // freshness metrics, which count the instance's own runs).
    origin: 'import',
    label: m.label,
    description: m.description,
    status: 'success',
    status_info: `Recreated from storage by catalog rebuild at ${now}.`,
    compression: m.compression,
    selection: selection === null ? null : JSON.stringify(selection),
    exclude: exclude === null ? null : JSON.stringify(exclude),
    size: m.resources.reduce((s, r) => s + r.size, 0),
    resources: JSON.stringify(m.resources),
    progress: null,
    policy_id: null,
    verify_status: null,
    verify_result: null,
    created_at: m.created_at,
    updated_at: now,
    started_at: null,
    finished_at: m.finished_at,
  };
}

/** Fields of a successful backup's row that restores rely on and that differ from the manifest's. */
function differingFields(row: BackupTable, want: BackupTable, m: Manifest): string[] {
  const fields: string[] = [];
  if (row.type !== want.type) fields.push('type');
  if (row.compression !== want.compression) fields.push('compression');
  if (Number(row.size) !== want.size) fields.push('size');
  if (canonical(parseResources(row.resources)) !== canonical(m.resources)) fields.push('resources');
  return fields;
}

/** A row's resources JSON; null when unreadable (a damaged row). */
function parseResources(text: string): { name: string; artifact: string; size: number; sha256: string }[] | null {
  try {
    const value: unknown = JSON.parse(text);
    return Array.isArray(value) ? (value as { name: string; artifact: string; size: number; sha256: string }[]) : null;
  } catch {
    return null;
  }
}

/**
 * Recreates instances and backups in the catalog from the manifests in
 * storage. Rows that exist and agree are not touched; rows of successful
 * backups that disagree take the manifest's values. Meant to run with the
 * catalog to itself (the CLI holds the data directory's lock).
 */
export async function rebuildCatalog(deps: AdminDeps, options: { dryRun: boolean }): Promise<RebuildReport> {
  const now = deps.clock.now().toISOString();
  const scan = await scanStorage(deps.storage);
  const report: RebuildReport = {
    dry_run: options.dryRun,
    storage: deps.storage.description,
    scanned: scan.dirs.size,
    instances: { created: [], existing: [] },
    backups: { inserted: [], updated: [], unchanged: 0 },
    skipped: [],
    conflicts: [],
    catalog_only: [],
    notes: [],
  };

  const complete: Manifest[] = [];
  for (const dir of scan.dirs.values()) {
    if (!dir.manifest) {
      report.skipped.push({ backup_id: dir.id, instance: null, reason: `no manifest.json: the backup never finished (${dir.objects.length} objects)` });
      continue;
    }
    const read = await readManifest(deps.storage, dir.id);
    if (!read.manifest) {
      report.skipped.push({ backup_id: dir.id, instance: null, reason: read.problem });
      continue;
    }
    const problems = artifactProblems(dir, dir.id, read.manifest.resources);
    if (problems.length > 0) {
      const p = problems[0]!;
      const what = p.problem === 'missing' ? 'is missing' : `has ${p.actual_size} bytes, the manifest says ${p.expected_size}`;
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more problems)` : '';
      report.skipped.push({ backup_id: dir.id, instance: read.manifest.instance, reason: `${p.key.slice(`${PREFIX}${dir.id}/`.length)} ${what}${more}` });
      continue;
    }
    complete.push(read.manifest);
  }
  complete.sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.backup_id < b.backup_id ? -1 : 1));

  const instanceNames = new Set((await deps.db.selectFrom('instances').select('name').execute()).map((r) => r.name));
  const rows = new Map<string, BackupTable>();
  const ids = complete.map((m) => m.backup_id);
  const completeIds = new Set(ids);
  // Chunked: SQLite caps the number of bound parameters.
  for (let i = 0; i < ids.length; i += 500) {
    for (const row of await deps.db.selectFrom('backups').selectAll().where('id', 'in', ids.slice(i, i + 500)).execute()) rows.set(row.id, row);
  }

  const newInstances = new Set<string>();
  const inserts: BackupTable[] = [];
  const updates: { id: string; set: Partial<BackupTable> }[] = [];
  for (const m of complete) {
    const want = rowFromManifest(m, now);
    const summary: RebuiltBackup = { id: m.backup_id, instance: m.instance, type: m.type, created_at: m.created_at, size: want.size };
    const row = rows.get(m.backup_id);
    // Also for rows that exist: a damaged catalog may have lost the instance but kept its backups.
    if ((!row || row.instance === m.instance) && !instanceNames.has(m.instance)) newInstances.add(m.instance);
    if (!row) {
      inserts.push(want);
      report.backups.inserted.push(summary);
      continue;
    }
    if (row.instance !== m.instance) {
      report.conflicts.push({ backup_id: row.id, instance: row.instance, reason: `the catalog files it under instance ${row.instance}, its manifest under ${m.instance}` });
      continue;
    }
    if (row.status !== 'success') {
      // A failure or cancellation is a decision the catalog made after the
      // objects were written; storage cannot tell it was wrong.
      report.conflicts.push({ backup_id: row.id, instance: row.instance, reason: `the catalog says ${row.status}${row.status_info ? ` (${row.status_info})` : ''}, yet storage holds a complete backup` });
      continue;
    }
    const fields = differingFields(row, want, m);
    if (fields.length === 0) {
      report.backups.unchanged++;
      continue;
    }
    const set: Partial<BackupTable> = { updated_at: now, status_info: `Repaired from storage by catalog rebuild at ${now} (${fields.join(', ')}).` };
    for (const f of fields) Object.assign(set, { [f]: want[f as keyof BackupTable] });
    // selection and exclude follow the resources they describe
    if (fields.includes('resources') || fields.includes('type')) Object.assign(set, { selection: want.selection, exclude: want.exclude });
    updates.push({ id: row.id, set });
    report.backups.updated.push({ ...summary, fields });
  }
  report.instances.created = [...newInstances].sort();
  report.instances.existing = [...new Set(complete.map((m) => m.instance))].filter((n) => !newInstances.has(n)).sort();

  const storedIds = new Set([...scan.dirs.values()].filter((d) => d.manifest).map((d) => d.id));
  const successIds = await deps.db.selectFrom('backups').select('id').where('status', '=', 'success').execute();
  report.catalog_only = successIds.map((r) => r.id).filter((id) => !storedIds.has(id) && !completeIds.has(id));

  if (report.instances.created.length > 0) {
    report.notes.push(
      `Instances come back without resources: connections hold secrets and are not in storage. Re-add them (backvault resources add) before backing up or restoring in place; restoring into a new target needs none.`,
    );
  }
  const key = await deps.db.selectFrom('api_keys').select('id').limit(1).executeTakeFirst();
  const user = await deps.db.selectFrom('superusers').select('id').limit(1).executeTakeFirst();
  if (!key && !user) {
    report.notes.push('API keys, superusers, policies and notification channels are not in storage; with none in the catalog, the server creates a new admin key at its next start and prints it once.');
  }
  if (options.dryRun) return report;

  await deps.db.transaction().execute(async (trx) => {
    for (const name of report.instances.created) {
      await trx
        .insertInto('instances')
        .values({ name, description: '', max_backups: null, created_at: now, updated_at: now })
        .onConflict((oc) => oc.column('name').doNothing())
        .execute();
    }
    for (const row of inserts) await trx.insertInto('backups').values(row).onConflict((oc) => oc.column('id').doNothing()).execute();
    for (const u of updates) await trx.updateTable('backups').set(u.set).where('id', '=', u.id).where('status', '=', 'success').execute();
  });
  return report;
}

// ---------------------------------------------------------------- check

export type OrphanKind =
  /** no manifest and no catalog row: a backup that never finished */
  | 'incomplete'
  /** objects left by a backup the catalog records as failed */
  | 'failed_backup'
  /** an object under resources/ of a successful backup that its manifest does not name */
  | 'stray_artifact'
  /** a complete, valid backup the catalog does not know: catalog rebuild adopts it */
  | 'not_in_catalog'
  /** a manifest that cannot be read or validated, without a catalog row */
  | 'unreadable_manifest'
  /** an object outside the layout Backvault writes */
  | 'unknown_object'
  /** leftovers of interrupted writes in local storage's temp directory */
  | 'temp';

export interface OrphanEntry {
  kind: OrphanKind;
  backup_id: string | null;
  instance: string | null;
  objects: number;
  bytes: number;
  /** the first keys; objects and bytes count all of them */
  keys: string[];
  /** whether remove_orphans deletes it; when false, reason says why not */
  removable: boolean;
  removed: boolean;
  reason: string;
}

export interface MissingEntry {
  backup_id: string;
  instance: string;
  problems: ObjectProblem[];
}

export interface CheckReport {
  destination: string;
  storage: string;
  dry_run: boolean;
  checked_at: string;
  scanned: { objects: number; bytes: number; backup_dirs: number; catalog_backups: number };
  orphans: OrphanEntry[];
  /** successful backups whose manifest or artifacts are missing, damaged or of the wrong size */
  missing: MissingEntry[];
  /** backups being made (or used by a job): never touched */
  in_progress: { backup_id: string; instance: string; status: string; objects: number; bytes: number }[];
  summary: { orphan_objects: number; orphan_bytes: number; removable_objects: number; removed_objects: number; removed_bytes: number; backups_with_missing_objects: number };
  notes: string[];
}

interface OrphanWork {
  entry: OrphanEntry;
  objects: StoredObject[];
  /** paths in the local temp directory, for kind temp */
  tempPaths?: string[];
}

/** Checks run one at a time per storage when they remove things, so two removals never race. */
const removing = new WeakSet<Storage>();

function orphan(kind: OrphanKind, id: string | null, instance: string | null, objects: StoredObject[], removable: boolean, reason: string): OrphanWork {
  return {
    entry: { kind, backup_id: id, instance, objects: objects.length, bytes: sum(objects), keys: objects.slice(0, MAX_KEYS_SHOWN).map((o) => o.key), removable, removed: false, reason },
    objects,
  };
}

/** Backup ids with a queued or running job (backup, import, verify). */
async function busyIds(deps: AdminDeps, ids: string[]): Promise<Set<string>> {
  const busy = new Set<string>();
  for (let i = 0; i < ids.length; i += 500) {
    const rows = await deps.db.selectFrom('jobs').select('subject_id').where('subject_id', 'in', ids.slice(i, i + 500)).where('state', 'in', ['queued', 'running']).execute();
    for (const r of rows) busy.add(r.subject_id);
  }
  return busy;
}

/** Local storage's temp directory, or null for backends that keep no visible temp files (S3). */
function localTempDir(ctx: AdminDeps & { config?: ServiceContext['config'] }): string | null {
  if (!ctx.config || ctx.config.storage?.startsWith('s3://')) return null;
  return join(storagePath(ctx.config), '.tmp');
}

async function scanTemp(dir: string, now: number): Promise<{ path: string; key: string; size: number; old: boolean }[]> {
  const out: { path: string; key: string; size: number; old: boolean }[] = [];
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    const path = join(dir, name);
    const info = await lstat(path).catch(() => null);
    if (!info) continue;
    out.push({ path, key: `.tmp/${name}`, size: info.isFile() ? info.size : 0, old: now - info.mtimeMs > TEMP_GRACE_MS });
  }
  return out;
}

/**
 * Compares the storage listing with the catalog. A dry run unless
 * removeOrphans; then it deletes the removable orphans only, each after
 * looking at its catalog row again.
 */
export async function checkStorage(ctx: AdminDeps & { config?: ServiceContext['config'] }, options: { removeOrphans: boolean }): Promise<CheckReport> {
  if (options.removeOrphans) {
    if (removing.has(ctx.storage)) throw new AppError('operation_in_progress', 'A storage check that removes orphans is already running; wait for it to finish.');
    removing.add(ctx.storage);
  }
  try {
    return await runCheck(ctx, options.removeOrphans);
  } finally {
    if (options.removeOrphans) removing.delete(ctx.storage);
  }
}

async function runCheck(ctx: AdminDeps & { config?: ServiceContext['config'] }, remove: boolean): Promise<CheckReport> {
  const startedAt = ctx.clock.now();
  // Storage first, catalog second: a row is inserted before its backup writes
  // anything, so every listed object's row (if any) is in the catalog read.
  const scan = await scanStorage(ctx.storage);
  const rows = await ctx.db.selectFrom('backups').select(['id', 'instance', 'status', 'resources']).execute();
  const byId = new Map(rows.map((r) => [r.id, r]));
  const busy = await busyIds(ctx, [...scan.dirs.keys()]);

  const work: OrphanWork[] = [];
  const missing: MissingEntry[] = [];
  const inProgress: CheckReport['in_progress'] = [];

  for (const obj of scan.loose) work.push(orphan('unknown_object', null, null, [obj], false, 'not inside a backup directory; Backvault did not write it, so it is left alone'));

  for (const dir of scan.dirs.values()) {
    const row = byId.get(dir.id);
    if (row && (isActiveStatus(row.status) || (row.status !== 'success' && busy.has(dir.id)))) {
      inProgress.push({ backup_id: dir.id, instance: row.instance, status: row.status, objects: dir.objects.length, bytes: sum(dir.objects) });
      continue;
    }
    if (!row) {
      if (!dir.manifest) {
        work.push(orphan('incomplete', dir.id, null, dir.objects, true, 'no manifest.json and no catalog entry: a backup that never finished'));
        continue;
      }
      const read = await readManifest(ctx.storage, dir.id);
      if (!read.manifest) {
        work.push(orphan('unreadable_manifest', dir.id, null, dir.objects, false, `${read.problem}; kept for a human to look at`));
        continue;
      }
      const problems = artifactProblems(dir, dir.id, read.manifest.resources);
      const reason =
        problems.length === 0
          ? 'a complete backup the catalog does not know; `backvault catalog rebuild` adopts it (never removed here)'
          : `a backup the catalog does not know, with ${problems.length} missing or damaged artifacts; kept for a human to look at`;
      work.push(orphan('not_in_catalog', dir.id, read.manifest.instance, dir.objects, false, reason));
      continue;
    }
    if (row.status === 'error') {
      work.push(orphan('failed_backup', dir.id, row.instance, dir.objects, true, 'left behind by a backup that failed'));
      continue;
    }
    // A successful backup: its objects must all be there, and nothing else under resources/.
    const parsed = parseResources(row.resources);
    const expected = parsed ?? [];
    const problems: ObjectProblem[] = [];
    if (parsed === null) problems.push({ key: manifestKey(dir.id), problem: 'manifest_differs', detail: "the catalog's record of this backup's artifacts cannot be read; catalog rebuild repairs it" });
    if (!dir.manifest) problems.push({ key: manifestKey(dir.id), problem: 'manifest_missing' });
    else {
      const read = await readManifest(ctx.storage, dir.id);
      if (!read.manifest) problems.push({ key: manifestKey(dir.id), problem: 'manifest_damaged', detail: read.problem });
      else if (canonical(read.manifest.resources.map((r) => [r.name, r.artifact, r.size, r.sha256])) !== canonical(expected.map((r) => [r.name, r.artifact, r.size, r.sha256]))) {
        problems.push({ key: manifestKey(dir.id), problem: 'manifest_differs', detail: 'the stored manifest lists other artifacts than the catalog' });
      }
    }
    problems.push(...artifactProblems(dir, dir.id, expected));
    if (problems.length > 0) missing.push({ backup_id: dir.id, instance: row.instance, problems });
    const named = new Set([manifestKey(dir.id), ...expected.map((r) => artifactKey(dir.id, r.name, r.artifact))]);
    const extra = dir.objects.filter((o) => !named.has(o.key));
    const strays = extra.filter((o) => o.key.startsWith(`${PREFIX}${dir.id}/resources/`));
    const unknown = extra.filter((o) => !o.key.startsWith(`${PREFIX}${dir.id}/resources/`));
    if (strays.length > 0) work.push(orphan('stray_artifact', dir.id, row.instance, strays, true, 'not named by the backup\'s manifest'));
    // Outside resources/ may be something a newer Backvault keeps with a backup: never removed.
    if (unknown.length > 0) work.push(orphan('unknown_object', dir.id, row.instance, unknown, false, 'not part of the backup layout Backvault writes; left alone'));
  }

  // Successful backups with nothing at all in storage.
  for (const row of rows) {
    if (row.status !== 'success' || scan.dirs.has(row.id)) continue;
    const expected = parseResources(row.resources) ?? [];
    missing.push({ backup_id: row.id, instance: row.instance, problems: [{ key: manifestKey(row.id), problem: 'manifest_missing' }, ...artifactProblems(undefined, row.id, expected)] });
  }

  const notes: string[] = [];
  const tempDir = localTempDir(ctx);
  if (tempDir) {
    // File times are wall-clock times, whatever clock the services run on.
    const temps = await scanTemp(tempDir, Date.now());
    if (temps.length > 0) {
      const anyInProgress = rows.some((r) => isActiveStatus(r.status));
      const allOld = temps.every((t) => t.old);
      const removable = !anyInProgress && allOld;
      const reason = removable
        ? 'temp files of writes cut short (a crash); the server also clears them at start'
        : anyInProgress
          ? 'temp files, kept while a backup is in progress (one of them may be its write)'
          : 'temp files written in the last 10 minutes: they may belong to a write that is still running';
      const objects = temps.map((t) => ({ key: t.key, size: t.size, modified: startedAt }));
      work.push({ ...orphan('temp', null, null, objects, removable, reason), tempPaths: temps.map((t) => t.path) });
    }
  } else {
    notes.push('Incomplete multipart uploads are not visible in an S3 listing; give the bucket an AbortIncompleteMultipartUpload lifecycle rule to clear them.');
  }

  let removedObjects = 0;
  let removedBytes = 0;
  if (remove) {
    for (const w of work) {
      if (!w.entry.removable || !(await stillRemovable(ctx, w))) continue;
      if (w.tempPaths) {
        for (const p of w.tempPaths) await rm(p, { recursive: true, force: true });
      } else {
        // The manifest goes first, as in deleteBackup: leftovers must never look complete.
        const ordered = [...w.objects].sort((a, b) => Number(b.key.endsWith('/manifest.json')) - Number(a.key.endsWith('/manifest.json')));
        for (const o of ordered) await ctx.storage.delete(o.key);
      }
      w.entry.removed = true;
      removedObjects += w.entry.objects;
      removedBytes += w.entry.bytes;
    }
  }
  if (!remove && work.some((w) => w.entry.removable)) notes.push('Dry run: nothing was removed. Run again with remove_orphans to remove the removable orphans.');
  if (missing.length > 0) notes.push('Backups with missing objects cannot be restored completely; delete them, or bring the objects back from another copy.');

  const orphans = work.map((w) => w.entry);
  return {
    destination: DEFAULT_DESTINATION,
    storage: ctx.storage.description,
    dry_run: !remove,
    checked_at: startedAt.toISOString(),
    scanned: { objects: scan.objects, bytes: scan.bytes, backup_dirs: scan.dirs.size, catalog_backups: rows.length },
    orphans,
    missing,
    in_progress: inProgress,
    summary: {
      orphan_objects: orphans.reduce((s, o) => s + o.objects, 0),
      orphan_bytes: orphans.reduce((s, o) => s + o.bytes, 0),
      removable_objects: orphans.filter((o) => o.removable).reduce((s, o) => s + o.objects, 0),
      removed_objects: removedObjects,
      removed_bytes: removedBytes,
      backups_with_missing_objects: missing.length,
    },
    notes,
  };
}

/** Looks at the catalog again right before removing: a backup may have started, ended or been adopted since the listing. */
async function stillRemovable(ctx: AdminDeps, w: OrphanWork): Promise<boolean> {
  if (w.entry.kind === 'temp') {
    const active = await ctx.db.selectFrom('backups').select('id').where('status', 'in', ACTIVE_STATUSES).limit(1).executeTakeFirst();
    return !active;
  }
  const id = w.entry.backup_id;
  if (id === null) return false;
  const row = await ctx.db.selectFrom('backups').select(['status']).where('id', '=', id).executeTakeFirst();
  const busy = (await busyIds(ctx, [id])).size > 0;
  switch (w.entry.kind) {
    case 'incomplete':
      return !row && !busy;
    case 'failed_backup':
      return row?.status === 'error' && !busy;
    case 'stray_artifact':
      return row?.status === 'success';
    default:
      return false;
  }
}

// ---------------------------------------------------------------- usage

export interface UsageItem {
  instance: string;
  /** where the bytes are; one destination today, several later (one item per instance and destination) */
  destination: string;
  /** successful backups in the catalog */
  backups: number;
  /** sum of the sizes the catalog records for them */
  bytes: number;
  /** objects listed in storage under the instance's backups, whatever their status */
  stored_objects: number;
  stored_bytes: number;
}

export interface UsageReport {
  items: UsageItem[];
  /** objects under backups/ that no catalog backup accounts for (see storage check) */
  unattributed: { destination: string; objects: number; bytes: number }[];
  measured_at: string;
}

export async function storageUsage(ctx: AdminDeps & { destinations?: ServiceContext['destinations'] }, filter: { instance?: string } = {}): Promise<UsageReport> {
  if (filter.instance !== undefined) {
    const known = await ctx.db.selectFrom('instances').select('name').where('name', '=', filter.instance).executeTakeFirst();
    if (!known) throw new AppError('instance_not_found', `No instance is named ${filter.instance}.`);
  }
  const destinations = ctx.destinations ?? [{ name: DEFAULT_DESTINATION, storage: ctx.storage }];
  const rows = await ctx.db.selectFrom('backups').select(['id', 'instance', 'status', 'size']).execute();
  const copies = await ctx.db.selectFrom('backup_copies').selectAll().execute();
  const copyOf = new Map(copies.map((c) => [`${c.backup_id}/${c.destination}`, c]));
  const recorded = new Set(copies.map((c) => c.backup_id));
  const instances = (await ctx.db.selectFrom('instances').select('name').execute()).map((r) => r.name);
  const items = new Map<string, UsageItem>();
  const unattributed: UsageReport['unattributed'] = [];
  for (const [index, d] of destinations.entries()) {
    const item = (instance: string): UsageItem => {
      const k = `${instance}/${d.name}`;
      let it = items.get(k);
      if (!it) {
        it = { instance, destination: d.name, backups: 0, bytes: 0, stored_objects: 0, stored_bytes: 0 };
        items.set(k, it);
      }
      return it;
    };
    for (const name of instances) item(name);
    const owner = new Map<string, string>();
    for (const r of rows) {
      owner.set(r.id, r.instance);
      if (r.status !== 'success') continue;
      // A backup counts where it has a good copy; one without copy records lives in the primary.
      const copy = copyOf.get(`${r.id}/${d.name}`);
      const here = copy ? copy.status === 'success' : !recorded.has(r.id) && index === 0;
      if (!here) continue;
      const it = item(r.instance);
      it.backups++;
      it.bytes += Number(r.size);
    }
    const scan = await scanStorage(d.storage);
    let looseObjects = scan.loose.length;
    let looseBytes = sum(scan.loose);
    for (const dir of scan.dirs.values()) {
      const instance = owner.get(dir.id);
      if (instance === undefined) {
        looseObjects += dir.objects.length;
        looseBytes += sum(dir.objects);
        continue;
      }
      const it = item(instance);
      it.stored_objects += dir.objects.length;
      it.stored_bytes += sum(dir.objects);
    }
    unattributed.push({ destination: d.name, objects: looseObjects, bytes: looseBytes });
  }
  const order = new Map(destinations.map((d, i) => [d.name, i]));
  const list = [...items.values()]
    .filter((i) => filter.instance === undefined || i.instance === filter.instance)
    .sort((a, b) => (a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : (order.get(a.destination) ?? 0) - (order.get(b.destination) ?? 0)));
  return { items: list, unattributed, measured_at: ctx.clock.now().toISOString() };
}
