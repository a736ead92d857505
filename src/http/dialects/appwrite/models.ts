// Appwrite's words for Backvault's: services onto resource types, statuses,
// timestamps, and the BackupArchive, BackupPolicy and BackupRestoration
// models the SDK reads.
import type { ResourceType } from '../../../domain/types.ts';
import type { BackupView, RestoreView } from '../../../services/views.ts';
import type { PolicyView } from '../../../services/policies.ts';
import { paramInvalid } from './errors.ts';

/** Every value of the SDK's BackupServices enum, plus 'buckets' (Appwrite's older name for storage). */
export const KNOWN_SERVICES = ['databases', 'tablesdb', 'documentsdb', 'vectorsdb', 'dedicatedDatabases', 'functions', 'storage', 'buckets'] as const;

const DATABASE_TYPES: ResourceType[] = ['postgres', 'mysql', 'sqlite', 'redis'];

/**
 * What each service backs up. databases and tablesdb (TablesDB is the
 * Databases service under its newer name) take every database resource;
 * dedicatedDatabases the server databases (postgres, mysql, redis), not
 * sqlite files; storage and buckets take file directories.
 */
export const SERVICE_TYPES: Record<string, ResourceType[]> = {
  databases: DATABASE_TYPES,
  tablesdb: DATABASE_TYPES,
  dedicatedDatabases: ['postgres', 'mysql', 'redis'],
  storage: ['files'],
  buckets: ['files'],
};

/** Why a known service cannot be backed up here. */
const UNSUPPORTED: Record<string, string> = {
  functions: 'Backvault backs up data, not function code or deployments',
  documentsdb: 'Backvault has no document database engine',
  vectorsdb: 'Backvault has no vector database engine',
};

/** The service a resource type is shown under: its canonical Appwrite name. */
export function serviceOf(type: ResourceType): 'databases' | 'storage' {
  return type === 'files' ? 'storage' : 'databases';
}

/** Appwrite's resourceType for a single-resource archive or policy. */
export function appwriteResourceType(type: ResourceType): 'database' | 'bucket' {
  return type === 'files' ? 'bucket' : 'database';
}

/** The canonical services of some resource types, databases first. */
export function servicesOf(types: Iterable<ResourceType>): string[] {
  const set = new Set<string>();
  for (const t of types) set.add(serviceOf(t));
  return ['databases', 'storage'].filter((s) => set.has(s));
}

/**
 * The `services` param: a non-empty array of known services, every one of
 * which Backvault can back up. Returns the resource types they take.
 */
export function parseServices(value: unknown, param = 'services'): { services: string[]; types: Set<ResourceType> } {
  if (!Array.isArray(value)) throw paramInvalid(param, 'Value must be a valid array and Value must be one of (' + KNOWN_SERVICES.join(', ') + ')');
  if (value.length === 0) throw paramInvalid(param, 'Value must name at least one service, e.g. ["databases", "storage"].');
  if (value.length > 100) throw paramInvalid(param, 'Value must be a valid array no longer than 100 items');
  const types = new Set<ResourceType>();
  const services: string[] = [];
  for (const s of value) {
    if (typeof s !== 'string' || !(KNOWN_SERVICES as readonly string[]).includes(s)) {
      throw paramInvalid(param, `Value must be one of (${KNOWN_SERVICES.join(', ')})`);
    }
    const why = UNSUPPORTED[s];
    if (why) {
      throw paramInvalid(
        param,
        `The ${s} service cannot be backed up by Backvault: ${why}. Supported services: databases, tablesdb and dedicatedDatabases (postgres, mysql, sqlite and redis resources) and storage or buckets (file directories).`,
      );
    }
    if (!services.includes(s)) services.push(s);
    for (const t of SERVICE_TYPES[s]!) types.add(t);
  }
  return { services, types };
}

/** Appwrite's datetime: ISO 8601 with milliseconds and +00:00. Unset times are ''. */
export function appwriteTime(iso: string | null | undefined): string {
  if (!iso) return '';
  return new Date(iso).toISOString().replace(/Z$/, '+00:00');
}

/** Archive statuses: pending, processing, uploading, completed, failed (Appwrite's skipped has no core state). */
export function archiveStatus(status: string): string {
  switch (status) {
    case 'scheduled':
      return 'pending';
    case 'running':
      return 'processing';
    case 'uploading':
      return 'uploading';
    case 'success':
      return 'completed';
    default:
      return 'failed';
  }
}

/** Restoration statuses: pending, processing, completed, failed (a restore never uploads; Appwrite's downloading has no core state). */
export function restorationStatus(status: string): string {
  switch (status) {
    case 'scheduled':
      return 'pending';
    case 'running':
    case 'uploading':
      return 'processing';
    case 'success':
      return 'completed';
    default:
      return 'failed';
  }
}

export interface ArchiveModel {
  $id: string;
  $createdAt: string;
  $updatedAt: string;
  policyId: string;
  size: number;
  status: string;
  startedAt: string;
  migrationId: string;
  services: string[];
  resources: string[];
  resourceId?: string;
  resourceType?: string;
}

export interface PolicyModel {
  $id: string;
  name: string;
  $createdAt: string;
  $updatedAt: string;
  services: string[];
  resources: string[];
  resourceId?: string;
  resourceType?: string;
  retention: number;
  schedule: string;
  type: string;
  enabled: boolean;
}

export interface RestorationModel {
  $id: string;
  $createdAt: string;
  $updatedAt: string;
  archiveId: string;
  policyId: string;
  status: string;
  startedAt: string;
  migrationId: string;
  services: string[];
  resources: string[];
  options: string;
}

/** The project's resources as name -> type: what a selection's names resolve to. */
export type ResourceTypes = Map<string, ResourceType>;

/**
 * Which resources a backup or policy takes, with their types: the stored
 * manifest entries once it has succeeded, else its selection (or, for a full
 * one, every resource the project has now).
 */
function taken(selection: Record<string, unknown> | null, current: ResourceTypes, done?: { name: string; type: ResourceType }[]): { name: string; type: ResourceType }[] {
  if (done && done.length > 0) return done.map((r) => ({ name: r.name, type: r.type }));
  const names = selection === null ? [...current.keys()] : Object.keys(selection);
  return names.filter((n) => current.has(n)).map((n) => ({ name: n, type: current.get(n)! }));
}

/** resourceId and resourceType are set when exactly one resource is taken by a partial backup or policy. */
function single(selection: Record<string, unknown> | null, res: { name: string; type: ResourceType }[]): { resourceId?: string; resourceType?: string } {
  if (selection === null || res.length !== 1) return {};
  return { resourceId: res[0]!.name, resourceType: appwriteResourceType(res[0]!.type) };
}

export function archiveModel(b: BackupView, current: ResourceTypes): ArchiveModel {
  const res = taken(b.selection, current, b.status === 'success' ? b.resources : undefined);
  return {
    $id: b.id,
    $createdAt: appwriteTime(b.created_at),
    $updatedAt: appwriteTime(b.updated_at),
    policyId: b.policy_id ?? '',
    size: b.size,
    status: archiveStatus(b.status),
    startedAt: appwriteTime(b.started_at),
    // Backvault runs backups as jobs, not Appwrite migrations: there is no migration to name.
    migrationId: '',
    services: servicesOf(res.map((r) => r.type)),
    resources: res.map((r) => r.name),
    ...single(b.selection, res),
  };
}

export function policyModel(p: PolicyView, current: ResourceTypes): PolicyModel {
  const res = taken(p.type === 'full' ? null : p.selection, current);
  return {
    $id: p.id,
    name: p.name,
    $createdAt: appwriteTime(p.created_at),
    $updatedAt: appwriteTime(p.updated_at),
    services: servicesOf(res.map((r) => r.type)),
    resources: res.map((r) => r.name),
    ...single(p.type === 'full' ? null : p.selection, res),
    retention: p.retention.retention_days ?? 0,
    schedule: p.schedule,
    // Every Backvault backup is a complete copy of what it takes; there are no incremental ones.
    type: 'full',
    enabled: p.enabled,
  };
}

/** What a restoration writes somewhere new, as kept in its options. */
export interface NewTarget {
  resourceId: string;
  newResourceId: string;
  target: string;
  newResourceName?: string;
}

/**
 * The restoration of a backup. `archive` is the backup it restores (null
 * when that backup has since been deleted); `newTarget` describes where a
 * restore into a new target writes.
 */
export function restorationModel(r: RestoreView, archive: BackupView | null, newTarget: NewTarget | null): RestorationModel {
  const inArchive = archive ? archive.resources.map((x) => ({ name: x.name, type: x.type })) : [];
  const fromResult = resultResources(r.result);
  const names = r.resources ?? (inArchive.length > 0 ? inArchive.map((x) => x.name) : fromResult.map((x) => x.name));
  const typeOf = (n: string) => inArchive.find((x) => x.name === n)?.type ?? fromResult.find((x) => x.name === n)?.type;
  const types = names.map(typeOf).filter((t): t is ResourceType => t !== undefined);
  return {
    $id: r.id,
    $createdAt: appwriteTime(r.created_at),
    $updatedAt: appwriteTime(r.updated_at),
    archiveId: r.backup,
    policyId: archive?.policy_id ?? '',
    status: restorationStatus(r.status),
    startedAt: appwriteTime(r.started_at),
    migrationId: '',
    services: servicesOf(types),
    resources: names,
    options: JSON.stringify(newTarget ?? {}),
  };
}

function resultResources(result: unknown): { name: string; type: ResourceType }[] {
  const list = (result as { resources?: unknown } | null)?.resources;
  if (!Array.isArray(list)) return [];
  return list
    .filter((x): x is { name: string; type: ResourceType } => typeof x?.name === 'string' && typeof x?.type === 'string')
    .map((x) => ({ name: x.name, type: x.type }));
}
