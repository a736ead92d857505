// Core views in Cloud66's shapes: integer ids, the backup object of
// reference/cloud66-backups.md, its status numbers, and the backup file
// split into parts. Pure functions: no I/O here.
import { createHash } from 'node:crypto';
import type { BackupView, RestoreView } from '../../../services/views.ts';
import type { ResourceType } from '../../../domain/types.ts';

// Cloud66 ids are integers; Backvault's are 24 hex characters: 12 of
// milliseconds, 4 of a per-millisecond counter, 8 random (src/platform/ids.ts).
// The integer is derived from the id alone, so it needs no catalog column,
// survives restarts and a catalog rebuilt from storage, and sorts in creation
// order:  int = milliseconds * 2048 + (counter mod 2048)
// which stays below 2^53 until the year 2109. Policies (Cloud66's backup
// groups) have ids of the same form and get their integers the same way.
const COUNTER_SPAN = 2048;

export function cloud66Id(hexId: string): number {
  const ms = parseInt(hexId.slice(0, 12), 16);
  const counter = parseInt(hexId.slice(12, 16), 16);
  return ms * COUNTER_SPAN + (counter % COUNTER_SPAN);
}

/** A positive safe integer from a path or query value, else null. */
export function parseCloud66Id(value: unknown): number | null {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : null;
  if (typeof value === 'string' && /^[0-9]{1,16}$/.test(value)) {
    const n = Number(value);
    return Number.isSafeInteger(n) && n > 0 ? n : null;
  }
  return null;
}

/** Cloud66's database type words; sqlite and files are Backvault's own and keep their names. */
export const DB_TYPE_OF: Record<ResourceType, string> = {
  mysql: 'mysql',
  postgres: 'postgresql',
  redis: 'redis',
  sqlite: 'sqlite',
  files: 'files',
};
export const RESOURCE_TYPE_OF: Record<string, ResourceType> = Object.fromEntries(Object.entries(DB_TYPE_OF).map(([k, v]) => [v, k as ResourceType]));
/** Resource types whose objects are tables: excluded_tables applies to these. */
export const TABLE_TYPES: ReadonlySet<string> = new Set(['mysql', 'postgres', 'sqlite']);
const TYPE_ORDER: Record<string, number> = { postgres: 0, mysql: 1, redis: 2, sqlite: 3, files: 4 };

/** Backup status numbers of Cloud66: 0 ok, 1 failed. Only ended backups have one. */
export function backupStatus(status: string): 0 | 1 | null {
  if (status === 'success') return 0;
  if (status === 'error') return 1;
  return null;
}

/** Restore status: 0 not restored, 1 restoring, 2 restored, 3 restore failed (the latest restore of the backup). */
export function restoreStatus(latest: RestoreView | undefined): { status: number; result: string | null } {
  if (!latest) return { status: 0, result: null };
  if (latest.status === 'success') return { status: 2, result: latest.status_info };
  if (latest.status === 'error') return { status: 3, result: latest.status_info ?? 'restore failed' };
  return { status: 1, result: null };
}

/**
 * Verify status: 0 not verified, 1 verifying, 2 verified, 3 verification
 * failed (a restored resource differs from the manifest), 4 unable to verify
 * (the drill itself could not run: its result holds only an error).
 */
export function verifyStatus(b: Pick<BackupView, 'verify_status' | 'verify_result'>): { status: number; result: string | null } {
  const result = (b.verify_result ?? null) as { error?: string; resources?: { name: string; ok: boolean; differences: string[]; error?: string }[] } | null;
  switch (b.verify_status) {
    case null:
    case undefined:
      return { status: 0, result: null };
    case 'scheduled':
    case 'running':
      return { status: 1, result: null };
    case 'success': {
      const names = result?.resources?.map((r) => r.name) ?? [];
      return { status: 2, result: `restored into scratch targets; ${names.length ? names.join(', ') : 'every resource'} matched the manifest` };
    }
    default: {
      if (result && !result.resources) return { status: 4, result: result.error ?? 'the restore drill could not run' };
      const bad = (result?.resources ?? []).filter((r) => !r.ok);
      const text = bad.map((r) => `${r.name}: ${r.error ?? r.differences.join('; ')}`).join(' | ');
      return { status: 3, result: text || 'the restored data did not match the manifest' };
    }
  }
}

/** 2014-09-01T19:00:33Z: Cloud66 prints whole seconds in UTC. */
export function cloud66Time(iso: string): string {
  return new Date(iso).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A stable 32-hex id standing for the stack's "server": Backvault dumps each stack's resources itself. */
export function serverUid(instance: string): string {
  return createHash('md5').update(`backvault-stack:${instance}`).digest('hex');
}

/** The base name of the backup file; the same name the native API gives the exchange archive. */
export function fileBase(b: Pick<BackupView, 'id' | 'instance'>): string {
  return `backvault-${b.instance}-${b.id}`;
}

export interface BackupResource {
  name: string;
  type: string;
}

/**
 * What a backup holds: the manifest's resources once it has them; before
 * that (a failed backup) the resources it was asked to take, by the stack's
 * current resources.
 */
export function backupResources(b: Pick<BackupView, 'resources' | 'selection'>, stackResources: BackupResource[]): BackupResource[] {
  if (b.resources.length > 0) return b.resources.map((r) => ({ name: r.name, type: r.type }));
  const chosen = b.selection === null ? stackResources : stackResources.filter((r) => b.selection !== null && r.name in b.selection);
  return [...chosen].sort((x, y) => (TYPE_ORDER[x.type] ?? 9) - (TYPE_ORDER[y.type] ?? 9) || x.name.localeCompare(y.name));
}

export function dbTypesOf(resources: BackupResource[]): string[] {
  return [...new Set(resources.map((r) => DB_TYPE_OF[r.type as ResourceType] ?? r.type))];
}

export interface Cloud66Backup {
  id: number;
  server_uid: string;
  db_type: string;
  database_name: string;
  file_base: string;
  backup_date_iso: string;
  backup_status: number;
  backup_result: string;
  restore_status: number;
  restore_result: string | null;
  created_at_iso: string;
  updated_at_iso: string;
  verify_status: number;
  verify_result: string | null;
  storage_path: string;
  skip_tables: string;
  backup_size: number;
  /** Backvault's addition: the backup group (backup task) that made it, null for one-off and imported backups. */
  group: number | null;
}

/** The document's backup object (plus group); only for ended backups (see backupStatus). */
export function backupJson(b: BackupView, resources: BackupResource[], latestRestore: RestoreView | undefined): Cloud66Backup {
  const status = backupStatus(b.status) ?? 1;
  const restore = restoreStatus(latestRestore);
  const verify = verifyStatus(b);
  const tableTypes = new Map(resources.map((r) => [r.name, r.type]));
  const skipped = new Set<string>();
  for (const [name, tables] of Object.entries(b.exclude ?? {})) {
    if (!TABLE_TYPES.has(tableTypes.get(name) ?? '')) continue;
    // postgres exclusions carry the engine's data: prefix (rows only); a schema: exclusion is no table.
    for (const t of tables) if (!t.startsWith('schema:')) skipped.add(t.replace(/^data:/, ''));
  }
  return {
    id: cloud66Id(b.id),
    server_uid: serverUid(b.instance),
    db_type: dbTypesOf(resources).join(','),
    database_name: resources.map((r) => r.name).join(','),
    file_base: fileBase(b),
    backup_date_iso: cloud66Time(b.started_at ?? b.created_at),
    backup_status: status,
    backup_result: status === 0 ? '' : (b.status_info ?? 'backup failed'),
    restore_status: restore.status,
    restore_result: restore.result,
    created_at_iso: cloud66Time(b.created_at),
    updated_at_iso: cloud66Time(b.updated_at),
    verify_status: verify.status,
    verify_result: verify.result,
    storage_path: `backups/${b.id}`,
    skip_tables: [...skipped].join(','),
    backup_size: status === 0 ? b.size : 0,
    group: b.policy_id ? cloud66Id(b.policy_id) : null,
  };
}

// The backup file: the exchange archive (a tar: manifest.json, then the
// artifacts). Like Cloud66, a file larger than the part size is offered as
// parts named by split(1)'s suffixes (file.tar-aa, file.tar-ab, ...), which
// `cat` joins back into the tar.

// The part size is config cloud66_part_bytes (Cloud66's own 250 MiB by default).


/**
 * split(1)'s suffix for part i (0-based), widening as GNU split does: aa..yz,
 * then zaaa..zyzz, then zzaaaa..., so the names still sort in part order.
 */
export function splitSuffix(i: number): string {
  let prefix = '';
  let width = 2;
  let span = 25 * 26; // suffixes of this width that do not start with z
  while (i >= span) {
    i -= span;
    prefix += 'z';
    width += 1;
    span = 25 * 26 ** (width - 1);
  }
  const letters: string[] = [];
  for (let k = 0; k < width; k++) {
    letters.unshift(String.fromCharCode(97 + (i % 26)));
    i = Math.floor(i / 26);
  }
  return prefix + letters.join('');
}

export interface BackupFile {
  id: string;
  name: string;
  /** Backvault's addition: bytes of this file */
  size: number;
  /** first and last byte of the archive it holds, inclusive */
  start: number;
  end: number;
}

export function backupFiles(base: string, archiveSize: number, part: number): BackupFile[] {
  if (archiveSize <= part) return [{ id: 'tar', name: `${base}.tar`, size: archiveSize, start: 0, end: archiveSize - 1 }];
  const files: BackupFile[] = [];
  for (let start = 0, i = 0; start < archiveSize; start += part, i++) {
    const end = Math.min(archiveSize, start + part) - 1;
    const id = `tar-${splitSuffix(i)}`;
    files.push({ id, name: `${base}.${id}`, size: end - start + 1, start, end });
  }
  return files;
}
