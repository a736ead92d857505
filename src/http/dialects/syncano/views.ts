// Core views in Syncano's shapes (the document's backup objects).
import type { BackupView, RestoreView } from '../../../services/views.ts';
import { syncanoId } from './ids.ts';

/** Syncano prints microseconds: 2016-04-25T09:23:58.154759Z. The core keeps milliseconds. */
export function syncanoTime(iso: string): string {
  return new Date(iso).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export interface SyncanoBackup {
  id: number;
  instance: string;
  created_at: string;
  updated_at: string;
  archive: string | null;
  size: number | null;
  status: string;
  status_info: string;
  description: string;
  label: string;
  links: { self: string };
}

/** `base` is the dialect's path prefix (/syncano/v1), so links.self can be fetched from the same host. */
export function backupJson(b: BackupView, base: string, archive: string | null): SyncanoBackup {
  const done = b.status === 'success';
  return {
    id: syncanoId(b.id),
    instance: b.instance,
    created_at: syncanoTime(b.created_at),
    updated_at: syncanoTime(b.updated_at),
    archive: done ? archive : null,
    size: done ? b.size : null,
    // The core's statuses are Syncano's own words: scheduled, running, uploading, success, error.
    status: b.status,
    status_info: b.status_info ?? '',
    description: b.description ?? '',
    label: b.label ?? '',
    links: { self: `${base}/backups/${b.type}/${syncanoId(b.id)}/` },
  };
}

export function restoreJson(r: RestoreView, base: string) {
  const id = syncanoId(r.id);
  return {
    id,
    backup: syncanoId(r.backup),
    created_at: syncanoTime(r.created_at),
    updated_at: syncanoTime(r.updated_at),
    status: r.status,
    // Syncano restores could also come from an uploaded archive; these always come from a backup.
    archive: null,
    status_info: r.status_info ?? '',
    links: { self: `${base}/instances/${r.instance}/restores/${id}/` },
  };
}
