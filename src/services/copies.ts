// Several destinations: one dump streamed to every storage at once, a status
// per copy, and reads that fall back to another copy when one is damaged or
// gone. With a single destination this is a thin layer over ctx.storage.
import { PassThrough, Writable, type Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ServiceContext, Destination } from './context.ts';
import { AppError, isAppError, publicMessage } from '../errors/index.ts';
import type { Storage } from '../storage/storage.ts';
import { deletePrefix } from '../storage/storage.ts';

export interface CopyView {
  destination: string;
  status: 'success' | 'error' | 'deleted';
  status_info: string | null;
  size: number;
}

/** Errors after which another copy may still serve: the bytes are bad or missing, or that storage failed. */
export function isCopyFault(err: unknown): boolean {
  return isAppError(err) && ['checksum_mismatch', 'storage_not_found', 'storage_failed'].includes(err.code);
}

/**
 * Writes one stream to several storages. The source is read once; each chunk
 * goes to every destination still alive, and the next chunk waits until all
 * of them took it (backpressure from the slowest). A destination whose put
 * fails is dropped and reported; the others go on. Resolves with the failures
 * by destination name; rejects only when every destination failed (with the
 * first failure) or the source failed.
 */
export async function putToAll(destinations: Destination[], key: string, source: Readable, transforms: Transform[] = [], signal?: AbortSignal): Promise<Map<string, unknown>> {
  const failed = new Map<string, unknown>();
  const live = destinations.map((d) => {
    const body = new PassThrough({ highWaterMark: 1 << 20 });
    const put = d.storage.put(key, body, signal ? { signal } : {}).then(
      () => null,
      (err: unknown) => {
        failed.set(d.name, err);
        body.destroy();
        return err;
      },
    );
    return { d, body, put };
  });
  const fanout = new Writable({
    highWaterMark: 1 << 20,
    write(chunk: Buffer, _enc, cb) {
      const open = live.filter((l) => !failed.has(l.d.name));
      if (open.length === 0) return cb(firstFailure(failed) as Error);
      const waits: Promise<void>[] = [];
      for (const l of open) {
        if (!l.body.write(chunk)) {
          waits.push(
            new Promise<void>((resolve) => {
              const done = () => {
                l.body.off('drain', done);
                l.body.off('close', done);
                resolve();
              };
              l.body.on('drain', done);
              l.body.on('close', done);
            }),
          );
        }
      }
      if (waits.length === 0) cb();
      else Promise.all(waits).then(() => cb(), cb);
    },
    final(cb) {
      for (const l of live) if (!failed.has(l.d.name)) l.body.end();
      cb();
    },
    destroy(err, cb) {
      if (err) for (const l of live) l.body.destroy(err);
      cb(err);
    },
  });
  try {
    await pipeline([source, ...transforms, fanout], signal ? { signal } : {});
  } catch (err) {
    for (const l of live) l.body.destroy(err as Error);
    await Promise.all(live.map((l) => l.put));
    throw err;
  }
  await Promise.all(live.map((l) => l.put));
  if (failed.size === destinations.length) throw firstFailure(failed);
  return failed;
}

function firstFailure(failed: Map<string, unknown>): unknown {
  return failed.values().next().value ?? new AppError('storage_failed');
}

export async function recordCopies(ctx: ServiceContext, backupId: string, copies: CopyView[]): Promise<void> {
  const now = ctx.clock.now().toISOString();
  for (const c of copies) {
    await ctx.db
      .insertInto('backup_copies')
      .values({ backup_id: backupId, destination: c.destination, status: c.status, status_info: c.status_info, size: c.size, updated_at: now })
      .onConflict((oc) => oc.columns(['backup_id', 'destination']).doUpdateSet({ status: c.status, status_info: c.status_info, size: c.size, updated_at: now }))
      .execute();
  }
}

export async function listCopies(ctx: ServiceContext, backupId: string): Promise<CopyView[]> {
  const rows = await ctx.db.selectFrom('backup_copies').selectAll().where('backup_id', '=', backupId).execute();
  const order = new Map(ctx.destinations.map((d, i) => [d.name, i]));
  return rows
    .map((r) => ({ destination: r.destination, status: r.status as CopyView['status'], status_info: r.status_info, size: Number(r.size) }))
    .sort((a, b) => (order.get(a.destination) ?? 99) - (order.get(b.destination) ?? 99));
}

/**
 * The storages holding a good copy of a backup, in destination order. A
 * backup with no copy rows (made before destinations existed, rebuilt from
 * storage, or on a single-destination server) is in the first destination.
 */
export async function readableCopies(ctx: ServiceContext, backupId: string): Promise<Destination[]> {
  const copies = await listCopies(ctx, backupId);
  if (copies.length === 0) return ctx.destinations.slice(0, 1);
  const good = new Set(copies.filter((c) => c.status === 'success').map((c) => c.destination));
  return ctx.destinations.filter((d) => good.has(d.name));
}

/**
 * Runs fn against each good copy in turn until one works. A copy fault
 * (damaged or missing bytes, a failing storage) moves on to the next copy and
 * is reported in the warnings; any other error is final.
 */
export async function fromAnyCopy<T>(ctx: ServiceContext, backupId: string, fn: (storage: Storage, destination: string) => Promise<T>): Promise<{ value: T; destination: string; warnings: string[] }> {
  const copies = await readableCopies(ctx, backupId);
  if (copies.length === 0) throw new AppError('storage_not_found', `Backup ${backupId} has no good copy left in any destination.`);
  const warnings: string[] = [];
  let last: unknown;
  for (const d of copies) {
    try {
      return { value: await fn(d.storage, d.name), destination: d.name, warnings };
    } catch (err) {
      if (!isCopyFault(err) || copies.length === 1) throw err;
      last = err;
      // A damaged or missing copy is marked, so later restores and drills go to a good copy first and the
      // user sees which one is bad. A storage failure (network, timeout, a 5xx) may be passing: it says
      // nothing about the copy, so the copy keeps its status and is tried again next time.
      if (isAppError(err) && err.code === 'storage_failed') {
        warnings.push(`The copy in destination ${d.name} could not be read this time (${publicMessage(err)}); another copy was used.`);
        continue;
      }
      warnings.push(`The copy in destination ${d.name} could not be used: ${publicMessage(err)}`);
      await recordCopies(ctx, backupId, [{ destination: d.name, status: 'error', status_info: publicMessage(err), size: 0 }]);
    }
  }
  throw last;
}

/**
 * The copies to show for backups: recorded ones, or for a successful backup
 * without records (single destination) its one copy in the primary.
 */
export async function copiesForViews(ctx: ServiceContext, rows: { id: string; status: string; size: number }[]): Promise<Map<string, CopyView[]>> {
  const out = new Map<string, CopyView[]>();
  if (rows.length === 0) return out;
  const recorded = await ctx.db.selectFrom('backup_copies').selectAll().where('backup_id', 'in', rows.map((r) => r.id)).execute();
  const order = new Map(ctx.destinations.map((d, i) => [d.name, i]));
  for (const c of recorded) {
    const list = out.get(c.backup_id) ?? [];
    list.push({ destination: c.destination, status: c.status, status_info: c.status_info, size: Number(c.size) });
    out.set(c.backup_id, list);
  }
  for (const r of rows) {
    const list = out.get(r.id);
    if (list) list.sort((a, b) => (order.get(a.destination) ?? 99) - (order.get(b.destination) ?? 99));
    else if (r.status === 'success') out.set(r.id, [{ destination: ctx.destinations[0]!.name, status: 'success', status_info: null, size: Number(r.size) }]);
    else out.set(r.id, []);
  }
  return out;
}

/** Removes a backup's objects from every destination (those without a copy too: a failed run may have left parts). */
export async function deleteFromAll(ctx: ServiceContext, backupId: string, manifestKey: string): Promise<void> {
  for (const d of ctx.destinations) {
    // The manifest first: without it the leftovers are an incomplete backup, never mistaken for a good one.
    await d.storage.delete(manifestKey);
    await deletePrefix(d.storage, `backups/${backupId}/`);
  }
  await ctx.db.deleteFrom('backup_copies').where('backup_id', '=', backupId).execute();
}

/** Removes one destination's copy, leaving the others. */
export async function deleteCopy(ctx: ServiceContext, backupId: string, destination: Destination, manifestKey: string): Promise<void> {
  await destination.storage.delete(manifestKey);
  await deletePrefix(destination.storage, `backups/${backupId}/`);
  await recordCopies(ctx, backupId, [{ destination: destination.name, status: 'deleted', status_info: 'removed by retention', size: 0 }]);
}
