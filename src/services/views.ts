// Catalog rows turned into what the API shows, and back.
import type { BackupTable, RestoreTable } from '../catalog/schema.ts';
import type { ManifestResource } from '../domain/manifest.ts';
import { maskConnection } from '../domain/mask.ts';
import { isActiveStatus, type Progress } from '../domain/types.ts';

export interface BackupView {
  id: string;
  instance: string;
  type: 'full' | 'partial';
  origin: string;
  label: string | null;
  description: string | null;
  status: string;
  status_info: string | null;
  size: number;
  compression: string;
  selection: Record<string, string[] | null> | null;
  exclude: Record<string, string[]> | null;
  policy_id: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  verify_status: string | null;
  verify_result: unknown;
  resources: ManifestResource[];
  progress: Progress | null;
  /** where the backup is stored: one entry per destination, with the status of that copy */
  copies: { destination: string; status: string; status_info: string | null; size: number }[];
  links: { self: string; download: string };
}

function parse<T>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

export function backupView(row: BackupTable, copies: BackupView['copies'] = []): BackupView {
  const running = isActiveStatus(row.status);
  return {
    id: row.id,
    instance: row.instance,
    type: row.type,
    origin: row.origin,
    label: row.label,
    description: row.description,
    status: row.status,
    status_info: row.status_info,
    size: Number(row.size),
    compression: row.compression,
    selection: parse(row.selection),
    exclude: parse(row.exclude),
    policy_id: row.policy_id,
    created_at: row.created_at,
    updated_at: row.updated_at,
    started_at: row.started_at,
    finished_at: row.finished_at,
    verify_status: row.verify_status,
    verify_result: parse(row.verify_result),
    resources: parse<ManifestResource[]>(row.resources) ?? [],
    progress: running ? parse<Progress>(row.progress) : null,
    copies,
    links: { self: `/api/v1/backups/${row.id}`, download: `/api/v1/backups/${row.id}/download` },
  };
}

export interface RestoreTarget {
  connection: string;
}

export interface RestoreView {
  id: string;
  instance: string;
  backup: string;
  resources: string[] | null;
  targets: Record<string, RestoreTarget> | null;
  status: string;
  status_info: string | null;
  result: unknown;
  progress: Progress | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  links: { self: string; backup: string };
}

export function restoreView(row: RestoreTable): RestoreView {
  const targets = parse<Record<string, RestoreTarget>>(row.targets);
  const running = isActiveStatus(row.status);
  return {
    id: row.id,
    instance: row.instance,
    backup: row.backup_id,
    resources: parse(row.resources),
    targets: targets === null ? null : Object.fromEntries(Object.entries(targets).map(([k, v]) => [k, { connection: maskConnection(v.connection) }])),
    status: row.status,
    status_info: row.status_info,
    result: parse(row.result),
    progress: running ? parse<Progress>(row.progress) : null,
    created_at: row.created_at,
    updated_at: row.updated_at,
    started_at: row.started_at,
    finished_at: row.finished_at,
    links: { self: `/api/v1/restores/${row.id}`, backup: `/api/v1/backups/${row.backup_id}` },
  };
}
