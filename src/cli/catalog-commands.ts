// `backvault catalog rebuild` works on a data directory, without a server: it
// recreates instances and backups from the manifests in storage. `backvault
// storage check|usage` are client commands of the native API.
import type { Command } from 'commander';
import type { CheckReport, OrphanEntry, RebuildReport, UsageReport } from '../services/storage-admin.ts';
import type { Config } from '../config/index.ts';
import type { Ctx } from './commands.ts';
import { CliError, EXIT, UsageError } from './errors.ts';
import { bytes, printJson, stderr, stdout, table, type Out } from './format.ts';

type Wrap = <A extends unknown[]>(fn: (c: Ctx, ...args: A) => Promise<number>) => (...args: unknown[]) => Promise<void>;

export interface RebuildOptions {
  dir?: string;
  config?: string;
  storage?: string;
  dryRun?: boolean;
}

/**
 * Holds the data directory's lock for the whole rebuild, so no server starts
 * on a half-rebuilt catalog and none is running while it writes.
 */
export async function catalogRebuild(o: RebuildOptions, io: { json: boolean; out: Out; err: Out }): Promise<number> {
  // Loaded here, so client commands do not pay for the server's modules.
  const { catalogPath, ConfigError, loadConfig, storagePath } = await import('../config/index.ts');
  const { lockDataDir, openStorage } = await import('../main.ts');
  const { openCatalog } = await import('../catalog/db.ts');
  const { rebuildCatalog } = await import('../services/storage-admin.ts');
  const { systemClock } = await import('../platform/clock.ts');
  const { existsSync } = await import('node:fs');

  const flags: Partial<Config> = {};
  if (o.dir !== undefined) flags.dir = o.dir;
  if (o.storage !== undefined) flags.storage = o.storage;
  let cfg: Config;
  try {
    cfg = loadConfig({ flags, ...(o.config ? { configFile: o.config } : {}) });
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
  // Nothing to rebuild from: most likely a mistyped --dir, which should not create an empty data directory.
  if (!cfg.storage?.startsWith('s3://') && !existsSync(storagePath(cfg))) {
    throw new CliError(`there is no storage at ${storagePath(cfg)}; pass the data directory with --dir, or the storage with --storage`, EXIT.failed);
  }
  let unlock: () => Promise<void>;
  try {
    unlock = await lockDataDir(cfg.dir);
  } catch (err) {
    throw new CliError(`cannot rebuild the catalog: ${(err as Error).message}; the rebuild needs the catalog to itself`, EXIT.failed);
  }
  try {
    const path = catalogPath(cfg);
    // A dry run on a directory without a catalog leaves none behind.
    const target = o.dryRun && !existsSync(path) ? ':memory:' : path;
    let db;
    try {
      db = await openCatalog(target);
    } catch (err) {
      throw new CliError(
        `the catalog ${path} cannot be opened (${(err as Error).message}); move it aside (for example: mv ${path} ${path}.damaged) and run catalog rebuild again to rebuild into a new, empty catalog`,
        EXIT.failed,
      );
    }
    try {
      let storage;
      try {
        storage = await openStorage(cfg);
      } catch (err) {
        throw new CliError(`cannot open storage: ${(err as Error).message}`, EXIT.failed);
      }
      const report = await rebuildCatalog({ db, storage, clock: systemClock }, { dryRun: o.dryRun === true });
      if (io.json) printJson(report, io.out);
      else printRebuild(report, io.out);
      return EXIT.ok;
    } finally {
      await db.destroy();
    }
  } finally {
    await unlock();
  }
}

function printRebuild(r: RebuildReport, out: Out): void {
  out(`Scanned ${r.scanned} backup directories in ${r.storage}.`);
  const verb = r.dry_run ? 'would be ' : '';
  if (r.instances.created.length > 0) out(`Instances ${verb}created: ${r.instances.created.join(', ')}.`);
  out(`Backups: ${r.backups.inserted.length} ${verb}added, ${r.backups.updated.length} ${verb}repaired, ${r.backups.unchanged} already in the catalog.`);
  if (r.backups.inserted.length > 0) table(['ID', 'INSTANCE', 'TYPE', 'SIZE', 'CREATED'], r.backups.inserted.map((b) => [b.id, b.instance, b.type, bytes(b.size), b.created_at]), out);
  for (const b of r.backups.updated) out(`repaired ${b.id} (${b.instance}): ${b.fields.join(', ')} taken from its manifest`);
  if (r.skipped.length > 0) {
    out(`Skipped ${r.skipped.length} directories that are not complete backups:`);
    for (const s of r.skipped) out(`  ${s.backup_id}${s.instance ? ` (${s.instance})` : ''}: ${s.reason}`);
  }
  if (r.conflicts.length > 0) {
    out(`Left ${r.conflicts.length} catalog entries as they are:`);
    for (const c of r.conflicts) out(`  ${c.backup_id} (${c.instance}): ${c.reason}`);
  }
  if (r.catalog_only.length > 0) out(`${r.catalog_only.length} successful backups in the catalog have no manifest in storage; see: backvault storage check`);
  for (const n of r.notes) out(`Note: ${n}`);
  if (r.dry_run) out('Dry run: nothing was written.');
}

function action(o: OrphanEntry, dryRun: boolean): string {
  if (o.removed) return 'removed';
  if (!o.removable) return 'kept';
  return dryRun ? 'would remove' : 'not removed (changed since the listing)';
}

export async function storageCheck(c: Ctx, o: { removeOrphans?: boolean }): Promise<number> {
  const r = await c.client.post<CheckReport>('/storage/check', { remove_orphans: o.removeOrphans === true });
  // Missing objects mean backups that cannot be restored: the check fails, so cron jobs notice.
  const code = r.missing.length > 0 ? EXIT.failed : EXIT.ok;
  if (c.json) {
    printJson(r, c.out);
    return code;
  }
  c.out(`Checked ${r.scanned.objects} objects (${bytes(r.scanned.bytes)}) in ${r.scanned.backup_dirs} backup directories against ${r.scanned.catalog_backups} catalog backups (${r.storage}).`);
  if (r.orphans.length > 0) {
    c.out('');
    c.out('Orphans:');
    table(
      ['KIND', 'BACKUP', 'INSTANCE', 'OBJECTS', 'SIZE', 'ACTION', 'WHY'],
      r.orphans.map((x) => [x.kind, x.backup_id, x.instance, x.objects, bytes(x.bytes), action(x, r.dry_run), x.reason]),
      c.out,
    );
  }
  if (r.missing.length > 0) {
    c.out('');
    c.out('Missing or damaged objects of successful backups:');
    table(
      ['BACKUP', 'INSTANCE', 'KEY', 'PROBLEM'],
      r.missing.flatMap((m) =>
        m.problems.map((p) => [m.backup_id, m.instance, p.key, p.problem === 'wrong_size' ? `wrong size: ${p.actual_size} bytes, expected ${p.expected_size}` : `${p.problem}${p.detail ? `: ${p.detail}` : ''}`]),
      ),
      c.out,
    );
  }
  if (r.in_progress.length > 0) {
    c.out('');
    c.out(`In progress (not touched): ${r.in_progress.map((p) => `${p.backup_id} (${p.status})`).join(', ')}`);
  }
  c.out('');
  const s = r.summary;
  c.out(
    `${r.orphans.length === 0 && r.missing.length === 0 ? 'Storage and catalog agree. ' : ''}${s.orphan_objects} orphan objects (${bytes(s.orphan_bytes)}), ${s.removed_objects} removed; ${s.backups_with_missing_objects} backups with missing objects.`,
  );
  for (const n of r.notes) c.err(`note: ${n}`);
  return code;
}

export async function storageUsage(c: Ctx, o: { instance?: string }): Promise<number> {
  const r = await c.client.get<UsageReport>('/storage/usage', { instance: o.instance });
  if (c.json) {
    printJson(r, c.out);
    return EXIT.ok;
  }
  table(
    ['INSTANCE', 'DESTINATION', 'BACKUPS', 'SIZE', 'STORED_OBJECTS', 'STORED'],
    r.items.map((i) => [i.instance, i.destination, i.backups, bytes(i.bytes), i.stored_objects, bytes(i.stored_bytes)]),
    c.out,
  );
  for (const u of r.unattributed) if (u.objects > 0) c.err(`${u.objects} objects (${bytes(u.bytes)}) in ${u.destination} belong to no catalog backup; see: backvault storage check`);
  return EXIT.ok;
}

export function addCatalogCommands(program: Command, client: Wrap, setExit: (code: number) => void): void {
  const catalog = program.command('catalog').description('the metadata database of a data directory');
  catalog
    .command('rebuild')
    .description('recreate instances and backups from the manifests in storage (stop the server first); instances come back without resources')
    .option('--dir <dir>', 'data directory (default ./backvault-data, or BACKVAULT_DIR)')
    .option('--config <file>', 'JSON config file (default <dir>/config.json)')
    .option('--storage <url>', 'file:///path (default <dir>/storage) or s3://BUCKET/PREFIX (keys from BACKVAULT_S3_ACCESS_KEY and BACKVAULT_S3_SECRET_KEY)')
    .option('--dry-run', 'report what would change, write nothing')
    .action(async (o: RebuildOptions, command: Command) => {
      const json = Boolean(command.optsWithGlobals<{ json?: boolean }>().json);
      setExit(await catalogRebuild(o, { json, out: stdout, err: stderr }));
    });

  const storage = program.command('storage').description('storage compared with the catalog, and its use');
  storage
    .command('check')
    .description('report orphans and missing objects (a dry run); exit 1 when successful backups miss objects')
    .option('--remove-orphans', 'remove the orphans marked removable (never complete backups nor backups in progress)')
    .action(client((c, o: { removeOrphans?: boolean }) => storageCheck(c, o)));
  storage
    .command('usage')
    .description('backups and bytes per instance and destination')
    .option('--instance <name>')
    .action(client((c, o: { instance?: string }) => storageUsage(c, o)));
}
