// Backup keys: PocketBase names its backups by file name. Here a backup's key
// is its label when the label is a valid PocketBase name ([a-z0-9_-]+.zip),
// else backvault_<id>.zip (backups made through other dialects or the native
// API). Keys are assigned oldest first, so an older backup keeps its key when
// a newer one carries the same label (the newer one falls back to its id).
import type { ServiceContext } from '../../../services/context.ts';
import { listBackups } from '../../../services/backups.ts';
import type { BackupView } from '../../../services/views.ts';

export const KEY_RE = /^[a-z0-9_-]+\.zip$/;
/** Longest name: a backup's label holds it, and labels have at most 64 characters. */
export const MAX_NAME = 64;

export function fallbackKey(id: string): string {
  return `backvault_${id}.zip`;
}

/** Every backup of the instance that is made, being made or done (failed ones left no file), by key. */
export async function backupsByKey(ctx: ServiceContext, instance: string): Promise<Map<string, BackupView>> {
  const all: BackupView[] = [];
  const perPage = 500;
  for (let page = 1; ; page++) {
    const { items, total } = await listBackups(ctx, { instance, page, perPage });
    all.push(...items);
    if (items.length < perPage || all.length >= total) break;
  }
  const live = all.filter((b) => b.status !== 'error').sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  const byKey = new Map<string, BackupView>();
  // Labelled keys first, so a label that happens to look like a fallback key cannot be shadowed.
  const rest: BackupView[] = [];
  for (const b of live) {
    if (b.label !== null && KEY_RE.test(b.label) && !byKey.has(b.label)) byKey.set(b.label, b);
    else rest.push(b);
  }
  for (const b of rest) {
    const key = fallbackKey(b.id);
    if (!byKey.has(key)) byKey.set(key, b);
  }
  return byKey;
}

function stamp(d: Date): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}`;
}

/** pb_backup_YYYYMMDDHHmmss.zip as PocketBase names them; a suffix when that second is taken. */
export function generatedName(now: Date, taken: { has(key: string): boolean }): string {
  const base = `pb_backup_${stamp(now)}`;
  if (!taken.has(`${base}.zip`)) return `${base}.zip`;
  for (let i = 2; ; i++) {
    const name = `${base}_${i}.zip`;
    if (!taken.has(name)) return name;
  }
}

/** PocketBase's date format: "2023-05-19 16:25:57.542Z". */
export function pbDate(iso: string | null): string {
  if (!iso) return '';
  const ms = Date.parse(iso);
  if (!Number.isFinite(ms)) return '';
  return new Date(ms).toISOString().replace('T', ' ');
}
