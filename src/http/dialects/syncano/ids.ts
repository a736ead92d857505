// Syncano speaks of backups and restores by integer id; Backvault's ids are 24
// hex characters: 12 of milliseconds, 4 of a per-millisecond counter, 8 random
// (src/platform/ids.ts). The integer is derived from the id alone, so it needs
// no catalog column, is the same after a restart or a catalog rebuilt from
// storage (the manifest keeps the id), and sorts in creation order:
//
//   int = milliseconds * 2048 + (counter mod 2048)
//
// milliseconds < 2^42 (until the year 2109) keeps it under 2^53, a safe JS
// integer. Two ids collide only if one process made more than 2048 ids in one
// millisecond, or two processes made ids in the same millisecond with the same
// counter; the lookup then answers the newest-listed one.
//
// From an integer the hex prefix could be rebuilt, but the core has no lookup
// by id prefix, so a lookup goes through an in-memory index filled from the
// core's lists; a miss refills it once.
import type { ServiceContext } from '../../../services/context.ts';
import * as backups from '../../../services/backups.ts';
import * as restores from '../../../services/restores.ts';
import type { BackupView, RestoreView } from '../../../services/views.ts';
import { isErrorCode } from '../../../errors/index.ts';

const COUNTER_SPAN = 2048;
const PAGE = 500;

export function syncanoId(hexId: string): number {
  const ms = parseInt(hexId.slice(0, 12), 16);
  const counter = parseInt(hexId.slice(12, 16), 16);
  return ms * COUNTER_SPAN + (counter % COUNTER_SPAN);
}

/** Positive safe integers only; Syncano clients may send "8" as well as 8. */
export function parseSyncanoId(value: unknown): number | null {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : null;
  if (typeof value === 'string' && /^[0-9]{1,16}$/.test(value)) {
    const n = Number(value);
    return Number.isSafeInteger(n) && n > 0 ? n : null;
  }
  return null;
}

/** Every backup the core lists for the filter, newest first (the core's order). */
export async function allBackups(ctx: ServiceContext, filter: { instance?: string; type?: 'full' | 'partial' }): Promise<BackupView[]> {
  const out: BackupView[] = [];
  for (let page = 1; ; page++) {
    const { items, total } = await backups.listBackups(ctx, { ...filter, page, perPage: PAGE });
    out.push(...items);
    if (items.length < PAGE || out.length >= total) return out;
  }
}

export async function allRestores(ctx: ServiceContext, instance: string): Promise<RestoreView[]> {
  const out: RestoreView[] = [];
  for (let page = 1; ; page++) {
    const { items, total } = await restores.listRestores(ctx, instance, page, PAGE);
    out.push(...items);
    if (items.length < PAGE || out.length >= total) return out;
  }
}

/** integer -> core backup id, refilled from the catalog on a miss. */
export class BackupIndex {
  private readonly ids = new Map<number, string>();

  remember(hexId: string): number {
    const n = syncanoId(hexId);
    this.ids.set(n, hexId);
    return n;
  }

  /** Takes a newest-first list; on a collision the newest backup keeps the integer. */
  rememberAll(views: { id: string }[]): void {
    for (let i = views.length - 1; i >= 0; i--) this.remember(views[i]!.id);
  }

  /** The backup for an integer id, or null when no backup has it. */
  async find(ctx: ServiceContext, n: number): Promise<BackupView | null> {
    const known = this.ids.get(n);
    if (known) {
      try {
        return await backups.getBackup(ctx, known);
      } catch (err) {
        if (!isErrorCode(err, 'backup_not_found')) throw err;
        this.ids.delete(n); // deleted meanwhile; look again below in case of a collision
      }
    }
    const all = await allBackups(ctx, {});
    this.rememberAll(all);
    return all.find((b) => syncanoId(b.id) === n) ?? null;
  }
}
