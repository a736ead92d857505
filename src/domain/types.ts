// Pure types shared by every layer. No I/O here.

export const RESOURCE_TYPES = ['postgres', 'mysql', 'redis', 'sqlite', 'files'] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

/** The order resources are dumped and restored in: databases first, files (least consistent, often largest) last. */
export const RESOURCE_ORDER: Record<ResourceType, number> = { postgres: 0, mysql: 1, redis: 2, sqlite: 3, files: 4 };

export const COMPRESSIONS = ['zstd', 'gzip', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

export const BACKUP_STATUSES = ['scheduled', 'running', 'uploading', 'success', 'error'] as const;
export type BackupStatus = (typeof BACKUP_STATUSES)[number];
/** The statuses of a backup or restore that has not ended yet: a job holds or waits for it. */
export const ACTIVE_STATUSES: readonly BackupStatus[] = ['scheduled', 'running', 'uploading'];
export function isActiveStatus(status: string): boolean {
  return (ACTIVE_STATUSES as readonly string[]).includes(status);
}
export type RestoreStatus = BackupStatus;
export type VerifyStatus = 'scheduled' | 'running' | 'success' | 'error';

export type BackupType = 'full' | 'partial';

/** Instance and resource names: DESIGN.md `[a-z0-9][a-z0-9_-]{0,62}`. */
export const NAME_PATTERN = '^[a-z0-9][a-z0-9_-]{0,62}$';
export const NAME_RE = new RegExp(NAME_PATTERN);

export interface ResourceSpec {
  name: string;
  type: ResourceType;
  /** URL for network databases; a filesystem path for sqlite and files. May hold secrets: never log it. */
  connection: string;
  replica?: string | null;
  options: Record<string, unknown>;
}

/** Per resource: null takes everything, a list names objects (tables, key patterns, path globs). */
export type Selection = Record<string, string[] | null>;
/** Per resource: objects to leave out (tables, path globs). */
export type Exclusion = Record<string, string[]>;

/**
 * What a resource held, counted at dump time and again after a restore; a
 * restore is correct when the two agree on every field the dump recorded.
 */
export interface ObjectCounts {
  /** table name -> row count (sqlite, postgres, mysql) */
  tables?: Record<string, number>;
  /** number of keys (redis) */
  keys?: number;
  /** regular files, directories, symlinks and their total byte size (files) */
  files?: number;
  directories?: number;
  symlinks?: number;
  bytes?: number;
  /** sha256 over the sorted list of "type path size sha256" lines of a tree (files) */
  tree_sha256?: string;
}

export interface ObjectInfo {
  /** what a selection names: a table, a path, a key prefix */
  name: string;
  kind: 'table' | 'view' | 'directory' | 'file' | 'key_prefix' | 'schema';
  /** rows, bytes or keys where cheap to know */
  size?: number;
}

export interface Progress {
  phase: string;
  resource?: string;
  resources_done: number;
  resources_total: number;
  bytes_done: number;
}
