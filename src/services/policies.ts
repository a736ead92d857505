// Policies: a schedule (cron in a time zone) plus what to back up, how, and
// how long to keep it. The scheduler (src/scheduler) turns due policies into
// backups; this module holds the rules around them: validation, state,
// retention after each success, drills after each success when asked.
import { Cron } from 'croner';
import type { ServiceContext } from './context.ts';
import { AppError } from '../errors/index.ts';
import type { PolicyTable } from '../catalog/schema.ts';
import { ACTIVE_STATUSES, type Compression, type Exclusion, type Selection } from '../domain/types.ts';
import { applyRetention, hasRules, type RetentionDecision, type RetentionRules } from '../domain/retention.ts';
import { newId } from '../platform/ids.ts';
import { createBackup, deleteBackup } from './backups.ts';
import { copiesForViews, deleteCopy } from './copies.ts';
import { manifestKey } from '../domain/manifest.ts';
import { getInstanceRow, listResourceRows } from './instances.ts';
import { requestVerify } from './verify.ts';
import type { BackupView } from './views.ts';

export interface PolicyInput {
  name: string;
  enabled?: boolean;
  schedule: string;
  timezone?: string;
  type?: 'full' | 'partial';
  selection?: Selection | null;
  exclude?: Exclusion | null;
  compression?: Compression;
  run_on_replica?: boolean;
  verify?: boolean;
  retention?: RetentionRules & { destinations?: Record<string, RetentionRules> };
  catch_up?: boolean;
}

export type PolicyState = 'disabled' | 'pending' | 'ok' | 'late' | 'failing';

export interface PolicyView {
  id: string;
  instance: string;
  name: string;
  enabled: boolean;
  schedule: string;
  timezone: string;
  type: 'full' | 'partial';
  selection: Selection | null;
  exclude: Exclusion | null;
  compression: Compression;
  run_on_replica: boolean;
  verify: boolean;
  retention: RetentionRules;
  catch_up: boolean;
  state: PolicyState;
  next_run_at: string | null;
  last_run_at: string | null;
  last_success_at: string | null;
  last_backup_id: string | null;
  late_since: string | null;
  created_at: string;
  updated_at: string;
  links: { self: string; run: string; retention_preview: string; backups: string };
}

/** A validated cron schedule; throws invalid_request naming the problem. */
export function parseSchedule(schedule: string, timezone: string): Cron {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
  } catch {
    throw new AppError('invalid_request', `timezone ${JSON.stringify(timezone)} is not a known IANA time zone (for example UTC or Europe/Berlin).`, { field: 'timezone' });
  }
  if (schedule.trim().split(/\s+/).length > 6) throw new AppError('invalid_request', 'schedule must be a cron expression of 5 or 6 fields.', { field: 'schedule' });
  try {
    return new Cron(schedule, { timezone, paused: true });
  } catch (err) {
    throw new AppError('invalid_request', `schedule is not a valid cron expression: ${(err as Error).message}`, { field: 'schedule' });
  }
}

/** The first scheduled time strictly after `after`. */
export function nextRunAfter(schedule: string, timezone: string, after: Date): Date | null {
  return parseSchedule(schedule, timezone).nextRun(after);
}

function parse<T>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

export async function policyState(ctx: ServiceContext, row: PolicyTable): Promise<PolicyState> {
  if (!row.enabled) return 'disabled';
  if (row.late_since) return 'late';
  const last = await ctx.db
    .selectFrom('backups')
    .select(['status'])
    .where('policy_id', '=', row.id)
    .where('status', 'in', ['success', 'error'])
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(1)
    .executeTakeFirst();
  if (!last) return 'pending';
  return last.status === 'success' ? 'ok' : 'failing';
}

export async function policyView(ctx: ServiceContext, row: PolicyTable): Promise<PolicyView> {
  return {
    id: row.id,
    instance: row.instance,
    name: row.name,
    enabled: row.enabled === 1,
    schedule: row.schedule,
    timezone: row.timezone,
    type: row.type,
    selection: parse(row.selection),
    exclude: parse(row.exclude),
    compression: row.compression as Compression,
    run_on_replica: row.run_on_replica === 1,
    verify: row.verify === 1,
    retention: JSON.parse(row.retention) as RetentionRules,
    catch_up: row.catch_up === 1,
    state: await policyState(ctx, row),
    next_run_at: row.next_run_at,
    last_run_at: row.last_run_at,
    last_success_at: row.last_success_at,
    last_backup_id: row.last_backup_id,
    late_since: row.late_since,
    created_at: row.created_at,
    updated_at: row.updated_at,
    links: {
      self: `/api/v1/policies/${row.id}`,
      run: `/api/v1/policies/${row.id}/run`,
      retention_preview: `/api/v1/policies/${row.id}/retention-preview`,
      backups: `/api/v1/instances/${row.instance}/backups?policy=${row.id}`,
    },
  };
}

async function checkWhat(ctx: ServiceContext, instance: string, type: 'full' | 'partial', selection: Selection | null, exclude: Exclusion | null): Promise<void> {
  const names = new Set((await listResourceRows(ctx, instance)).map((r) => r.name));
  if (type === 'full' && selection) throw new AppError('invalid_selection', 'A full policy takes every resource; use type "partial" with a selection.');
  if (type === 'partial' && (!selection || Object.keys(selection).length === 0)) throw new AppError('invalid_selection', 'A partial policy needs a selection naming at least one resource.');
  for (const name of [...Object.keys(selection ?? {}), ...Object.keys(exclude ?? {})]) {
    if (!names.has(name)) throw new AppError('invalid_selection', `Instance ${instance} has no resource named ${name}.`, { resource: name });
  }
}

function checkRetention(ctx: ServiceContext, retention: PolicyRetention | undefined): void {
  for (const name of Object.keys(retention?.destinations ?? {})) {
    if (!ctx.destinations.some((d) => d.name === name)) {
      throw new AppError('invalid_request', `retention names destination ${name}, but the server has ${ctx.destinations.map((d) => d.name).join(', ')}.`, { field: 'retention.destinations' });
    }
  }
}

export async function createPolicy(ctx: ServiceContext, instance: string, input: PolicyInput, id?: string): Promise<PolicyView> {
  await getInstanceRow(ctx, instance);
  checkRetention(ctx, input.retention);
  const timezone = input.timezone ?? 'UTC';
  parseSchedule(input.schedule, timezone);
  const type = input.type ?? 'full';
  await checkWhat(ctx, instance, type, input.selection ?? null, input.exclude ?? null);
  const now = ctx.clock.now();
  const enabled = input.enabled ?? true;
  const row: PolicyTable = {
    id: id ?? newId(now.getTime()),
    instance,
    name: input.name,
    enabled: enabled ? 1 : 0,
    schedule: input.schedule,
    timezone,
    type,
    selection: input.selection ? JSON.stringify(input.selection) : null,
    exclude: input.exclude ? JSON.stringify(input.exclude) : null,
    compression: input.compression ?? 'zstd',
    run_on_replica: input.run_on_replica ? 1 : 0,
    verify: input.verify ? 1 : 0,
    retention: JSON.stringify(input.retention ?? {}),
    catch_up: input.catch_up === false ? 0 : 1,
    next_run_at: enabled ? (nextRunAfter(input.schedule, timezone, now)?.toISOString() ?? null) : null,
    last_run_at: null,
    last_success_at: null,
    last_backup_id: null,
    late_since: null,
    created_at: now.toISOString(),
    updated_at: now.toISOString(),
  };
  const res = await ctx.db.insertInto('policies').values(row).onConflict((oc) => oc.column('id').doNothing()).executeTakeFirst();
  if (Number(res.numInsertedOrUpdatedRows ?? 0n) === 0) throw new AppError('already_exists', `A policy with id ${row.id} already exists.`);
  return policyView(ctx, row);
}

export async function getPolicyRow(ctx: ServiceContext, id: string): Promise<PolicyTable> {
  const row = await ctx.db.selectFrom('policies').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw new AppError('policy_not_found', `No policy has id ${id}.`);
  return row;
}

export async function getPolicy(ctx: ServiceContext, id: string): Promise<PolicyView> {
  return policyView(ctx, await getPolicyRow(ctx, id));
}

export async function listPolicies(ctx: ServiceContext, filter: { instance?: string; page: number; perPage: number }): Promise<{ items: PolicyView[]; total: number }> {
  if (filter.instance !== undefined) await getInstanceRow(ctx, filter.instance);
  let q = ctx.db.selectFrom('policies');
  if (filter.instance !== undefined) q = q.where('instance', '=', filter.instance);
  const total = await q.select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const rows = await q.selectAll().orderBy('created_at').orderBy('id').limit(filter.perPage).offset((filter.page - 1) * filter.perPage).execute();
  const items: PolicyView[] = [];
  for (const row of rows) items.push(await policyView(ctx, row));
  return { items, total: Number(total.n) };
}

export async function updatePolicy(ctx: ServiceContext, id: string, patch: Partial<PolicyInput>): Promise<PolicyView> {
  const row = await getPolicyRow(ctx, id);
  checkRetention(ctx, patch.retention);
  const schedule = patch.schedule ?? row.schedule;
  const timezone = patch.timezone ?? row.timezone;
  parseSchedule(schedule, timezone);
  const type = patch.type ?? row.type;
  const selection = patch.selection !== undefined ? patch.selection : parse<Selection>(row.selection);
  const exclude = patch.exclude !== undefined ? patch.exclude : parse<Exclusion>(row.exclude);
  await checkWhat(ctx, row.instance, type, selection, exclude);
  const now = ctx.clock.now();
  const enabled = patch.enabled ?? row.enabled === 1;
  const scheduleChanged = schedule !== row.schedule || timezone !== row.timezone || enabled !== (row.enabled === 1);
  const set: Partial<PolicyTable> = {
    name: patch.name ?? row.name,
    enabled: enabled ? 1 : 0,
    schedule,
    timezone,
    type,
    selection: selection ? JSON.stringify(selection) : null,
    exclude: exclude ? JSON.stringify(exclude) : null,
    compression: patch.compression ?? row.compression,
    run_on_replica: patch.run_on_replica === undefined ? row.run_on_replica : patch.run_on_replica ? 1 : 0,
    verify: patch.verify === undefined ? row.verify : patch.verify ? 1 : 0,
    retention: patch.retention === undefined ? row.retention : JSON.stringify(patch.retention),
    catch_up: patch.catch_up === undefined ? row.catch_up : patch.catch_up ? 1 : 0,
    updated_at: now.toISOString(),
  };
  if (scheduleChanged) {
    set.next_run_at = enabled ? (nextRunAfter(schedule, timezone, now)?.toISOString() ?? null) : null;
    if (!enabled) set.late_since = null;
  }
  await ctx.db.updateTable('policies').set(set).where('id', '=', id).execute();
  return getPolicy(ctx, id);
}

/** Deletes the policy; its backups stay (they lose nothing but their schedule). */
export async function deletePolicy(ctx: ServiceContext, id: string): Promise<void> {
  await getPolicyRow(ctx, id);
  await ctx.db.deleteFrom('policies').where('id', '=', id).execute();
}

/** Starts a backup of the policy now, as a scheduled run would. */
export async function runPolicy(ctx: ServiceContext, row: PolicyTable): Promise<BackupView> {
  const backup = await createBackup(ctx, row.instance, {
    type: row.type,
    label: `${row.name}`.slice(0, 64),
    description: `scheduled by policy ${row.name}`.slice(0, 256),
    selection: parse<Selection>(row.selection),
    exclude: parse<Exclusion>(row.exclude),
    compression: row.compression as Compression,
    run_on_replica: row.run_on_replica === 1,
    origin: 'policy',
    policy_id: row.id,
  });
  await ctx.db.updateTable('policies').set({ last_run_at: ctx.clock.now().toISOString(), last_backup_id: backup.id }).where('id', '=', row.id).execute();
  return backup;
}

async function successfulPolicyBackups(ctx: ServiceContext, policyId: string) {
  return ctx.db.selectFrom('backups').select(['id', 'created_at']).where('policy_id', '=', policyId).where('status', '=', 'success').execute();
}

function minimumKeep(ctx: ServiceContext, rules: RetentionRules): RetentionRules {
  return { ...rules, minimum: Math.max(rules.minimum ?? 1, ctx.config.retention_min_keep) };
}

/** A policy's retention: rules for every destination, and optionally other rules per destination. */
export type PolicyRetention = RetentionRules & { destinations?: Record<string, RetentionRules> };

export interface RetentionPreview {
  keep: RetentionDecision[];
  delete: RetentionDecision[];
  rules: RetentionRules;
  /** per destination, when the policy has rules for some destinations of their own */
  destinations?: Record<string, { keep: RetentionDecision[]; delete: RetentionDecision[]; rules: RetentionRules }>;
}

function destinationRules(retention: PolicyRetention): Record<string, RetentionRules> {
  return retention.destinations ?? {};
}

export async function retentionPreview(ctx: ServiceContext, id: string): Promise<RetentionPreview> {
  const row = await getPolicyRow(ctx, id);
  const retention = JSON.parse(row.retention) as PolicyRetention;
  const { destinations: _omit, ...base } = retention;
  const rules = minimumKeep(ctx, base);
  const backups = await successfulPolicyBackups(ctx, id);
  const now = ctx.clock.now();
  const decide = (list: typeof backups, r: RetentionRules) => {
    const ds = applyRetention(list.map((b) => ({ id: b.id, taken_at: b.created_at })), r, now, row.timezone);
    return { keep: ds.filter((d) => d.keep), delete: ds.filter((d) => !d.keep), rules: r };
  };
  const preview: RetentionPreview = decide(backups, rules);
  const own = destinationRules(retention);
  if (Object.keys(own).length > 0 && ctx.destinations.length > 1) {
    // Per destination: its own rules or the common ones, over the backups that have a good copy there.
    const copies = await copiesForViews(ctx, backups.map((b) => ({ id: b.id, status: 'success', size: 0 })));
    preview.destinations = {};
    for (const d of ctx.destinations) {
      const here = backups.filter((b) => copies.get(b.id)?.some((c) => c.destination === d.name && c.status === 'success'));
      preview.destinations[d.name] = decide(here, minimumKeep(ctx, own[d.name] ?? base));
    }
  }
  return preview;
}

/**
 * Applies the policy's retention. Runs only after a successful backup of the
 * policy, so days of failures never eat into the good backups; deletes only
 * this policy's successful backups that no rule keeps; a backup in use is
 * left for the next run.
 */
export async function applyPolicyRetention(ctx: ServiceContext, id: string): Promise<string[]> {
  const row = await getPolicyRow(ctx, id);
  const retention = JSON.parse(row.retention) as PolicyRetention;
  const preview = await retentionPreview(ctx, id);
  if (preview.destinations) return applyPerDestination(ctx, id, preview.destinations);
  if (!hasRules(retention)) return [];
  const deleted: string[] = [];
  for (const d of preview.delete) {
    try {
      await deleteBackup(ctx, d.id);
      deleted.push(d.id);
    } catch (err) {
      ctx.log.warn({ err, backup: d.id, policy: id }, 'retention could not delete a backup; it will try again after the next success');
    }
  }
  return deleted;
}

/**
 * Retention with rules per destination: each destination drops the copies
 * its rules do not keep; a backup whose last good copy is gone is deleted.
 */
async function applyPerDestination(ctx: ServiceContext, policyId: string, perDestination: NonNullable<RetentionPreview['destinations']>): Promise<string[]> {
  const touched = new Set<string>();
  for (const d of ctx.destinations) {
    const plan = perDestination[d.name];
    if (!plan || !hasRules(plan.rules)) continue;
    for (const drop of plan.delete) {
      try {
        await assertCopyRemovable(ctx, drop.id);
        await deleteCopy(ctx, drop.id, d, manifestKey(drop.id));
        touched.add(drop.id);
      } catch (err) {
        ctx.log.warn({ err, backup: drop.id, destination: d.name, policy: policyId }, 'retention could not remove a copy; it will try again after the next success');
      }
    }
  }
  const deleted: string[] = [];
  for (const id of touched) {
    const left = await ctx.db.selectFrom('backup_copies').select('destination').where('backup_id', '=', id).where('status', '=', 'success').execute();
    if (left.length > 0) continue;
    try {
      await deleteBackup(ctx, id);
      deleted.push(id);
    } catch (err) {
      ctx.log.warn({ err, backup: id, policy: policyId }, 'retention could not delete a backup with no copy left');
    }
  }
  return deleted;
}

/** A copy may go unless a job reads the backup right now. */
async function assertCopyRemovable(ctx: ServiceContext, backupId: string): Promise<void> {
  const busy = await ctx.db.selectFrom('restores').select('id').where('backup_id', '=', backupId).where('status', 'in', ACTIVE_STATUSES).executeTakeFirst();
  const row = await ctx.db.selectFrom('backups').select(['verify_status']).where('id', '=', backupId).executeTakeFirst();
  if (busy || row?.verify_status === 'scheduled' || row?.verify_status === 'running') throw new AppError('backup_in_use');
}

/** After a backup of a policy ends: record success, apply retention, start a drill when asked. */
export async function onPolicyBackupFinished(ctx: ServiceContext, backup: BackupView): Promise<void> {
  if (!backup.policy_id || backup.status !== 'success') return;
  const row = await ctx.db.selectFrom('policies').selectAll().where('id', '=', backup.policy_id).executeTakeFirst();
  if (!row) return;
  await ctx.db
    .updateTable('policies')
    .set({ last_success_at: backup.finished_at ?? ctx.clock.now().toISOString(), late_since: null })
    .where('id', '=', row.id)
    .execute();
  await applyPolicyRetention(ctx, row.id);
  if (row.verify === 1) await requestVerify(ctx, backup.id);
}

/**
 * When the policy should have had a success by: the first scheduled time
 * after its last success (or its creation), plus the grace. Null when nothing
 * is due (disabled, or a schedule with no future runs).
 */
export function dueBy(row: PolicyTable, graceSeconds: number): Date | null {
  if (!row.enabled) return null;
  const since = new Date(row.last_success_at ?? row.created_at);
  const next = nextRunAfter(row.schedule, row.timezone, since);
  return next ? new Date(next.getTime() + graceSeconds * 1000) : null;
}
