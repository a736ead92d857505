// The scheduler: turns due policies into backups, finds late policies, and
// runs retention after each successful policy backup.
//
// A due policy is claimed by moving its next_run_at to the first scheduled
// time after now, in one conditional UPDATE: a pass that finds many missed
// ticks (the server was down for days) runs the policy once, never once per
// missed tick, and two schedulers sharing a catalog cannot both run it.
// Croner computes the times in the policy's time zone, so a run at 02:30 on a
// daylight-saving day happens exactly once (shifted when 02:30 does not exist).
// All time comes from ctx.clock, so tests drive it and call tick().
import type { ServiceContext } from '../services/context.ts';
import { ACTIVE_STATUSES } from '../domain/types.ts';
import type { PolicyTable } from '../catalog/schema.ts';
import { AppError, publicMessage } from '../errors/index.ts';
import { newId } from '../platform/ids.ts';
import { dueBy, nextRunAfter, onPolicyBackupFinished, runPolicy } from '../services/policies.ts';
import { emitBackupFinished } from '../services/backups.ts';

export interface TickReport {
  started: string[];
  skipped: string[];
  failed: string[];
  late: string[];
}

export class Scheduler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> = Promise.resolve();
  private readonly onFinished = (e: { backup: import('../services/views.ts').BackupView }) => {
    if (!e.backup.policy_id) return;
    this.running = this.running
      .then(() => onPolicyBackupFinished(this.ctx, e.backup))
      .catch((err: unknown) => this.ctx.log.error({ err, policy: e.backup.policy_id }, 'after-backup policy work failed'));
  };

  constructor(private readonly ctx: ServiceContext) {}

  /**
   * At start: a policy whose run was missed while the server was down runs
   * once on the first tick when it catches up, or is moved to its next time
   * when it does not.
   */
  async start(): Promise<void> {
    this.ctx.events.on('backup.finished', this.onFinished);
    const now = this.ctx.clock.now();
    const missed = await this.ctx.db
      .selectFrom('policies')
      .selectAll()
      .where('enabled', '=', 1)
      .where('catch_up', '=', 0)
      .where('next_run_at', '<=', now.toISOString())
      .execute();
    for (const p of missed) {
      const next = nextRunAfter(p.schedule, p.timezone, now);
      await this.ctx.db.updateTable('policies').set({ next_run_at: next?.toISOString() ?? null }).where('id', '=', p.id).execute();
      this.ctx.log.info({ policy: p.id }, 'a run missed while the server was down is skipped (catch_up is off)');
    }
    const tickMs = this.ctx.config.scheduler_tick_seconds * 1000;
    this.timer = setInterval(() => {
      this.running = this.running.then(() => this.tick()).catch((err: unknown) => this.ctx.log.error({ err }, 'scheduler pass failed'));
    }, tickMs);
    this.running = this.running.then(() => this.tick()).catch((err: unknown) => this.ctx.log.error({ err }, 'scheduler pass failed'));
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.ctx.events.off('backup.finished', this.onFinished);
    await this.running.catch(() => undefined);
  }

  /** Waits for queued after-backup work (retention, drills); for tests. */
  async settle(): Promise<void> {
    await this.running.catch(() => undefined);
  }

  /** One pass: start due policies, then mark late ones. */
  async tick(): Promise<TickReport> {
    const report: TickReport = { started: [], skipped: [], failed: [], late: [] };
    const now = this.ctx.clock.now();
    const due = await this.ctx.db
      .selectFrom('policies')
      .selectAll()
      .where('enabled', '=', 1)
      .where('next_run_at', '<=', now.toISOString())
      .orderBy('next_run_at')
      .execute();
    for (const policy of due) {
      const next = nextRunAfter(policy.schedule, policy.timezone, now);
      const claimed = await this.ctx.db
        .updateTable('policies')
        .set({ next_run_at: next?.toISOString() ?? null })
        .where('id', '=', policy.id)
        .where('next_run_at', '=', policy.next_run_at)
        .executeTakeFirst();
      if (Number(claimed.numUpdatedRows) === 0) continue; // another scheduler took it
      const active = await this.ctx.db
        .selectFrom('backups')
        .select('id')
        .where('policy_id', '=', policy.id)
        .where('status', 'in', ACTIVE_STATUSES)
        .limit(1)
        .executeTakeFirst();
      if (active) {
        // Runs must not pile up behind a slow one; the late check reports a policy that falls behind.
        this.ctx.log.warn({ policy: policy.id, backup: active.id }, 'policy run skipped: its previous backup is still running');
        report.skipped.push(policy.id);
        continue;
      }
      try {
        await runPolicy(this.ctx, policy);
        report.started.push(policy.id);
      } catch (err) {
        report.failed.push(policy.id);
        await this.recordFailedRun(policy, err);
      }
    }
    report.late.push(...(await this.markLate()));
    return report;
  }

  /**
   * A run that could not even start (quota, resources gone) is recorded as a
   * backup in error, so it shows where the user looks and notifications fire.
   */
  private async recordFailedRun(policy: PolicyTable, err: unknown): Promise<void> {
    const now = this.ctx.clock.now().toISOString();
    const id = newId();
    const info = `policy ${policy.name} could not start a backup: ${publicMessage(err)}`;
    if (!(err instanceof AppError)) this.ctx.log.error({ err, policy: policy.id }, 'policy run failed');
    await this.ctx.db
      .insertInto('backups')
      .values({
        id,
        instance: policy.instance,
        type: policy.type,
        origin: 'policy',
        label: policy.name.slice(0, 64),
        description: null,
        status: 'error',
        status_info: info,
        compression: policy.compression,
        selection: policy.selection,
        exclude: policy.exclude,
        size: 0,
        resources: '[]',
        progress: null,
        policy_id: policy.id,
        verify_status: null,
        verify_result: null,
        created_at: now,
        updated_at: now,
        started_at: now,
        finished_at: now,
      })
      .execute();
    await this.ctx.db.updateTable('policies').set({ last_run_at: now, last_backup_id: id }).where('id', '=', policy.id).execute();
    emitBackupFinished(this.ctx, id);
  }

  /** Policies with no success since a run was due (plus grace) become late once, and say so. */
  private async markLate(): Promise<string[]> {
    const now = this.ctx.clock.now();
    const candidates = await this.ctx.db.selectFrom('policies').selectAll().where('enabled', '=', 1).where('late_since', 'is', null).execute();
    const late: string[] = [];
    for (const p of candidates) {
      const deadline = dueBy(p, this.ctx.config.policy_late_grace_seconds);
      if (!deadline || deadline > now) continue;
      const res = await this.ctx.db.updateTable('policies').set({ late_since: now.toISOString() }).where('id', '=', p.id).where('late_since', 'is', null).executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) continue;
      late.push(p.id);
      this.ctx.events.emit('policy.late', {
        policy: { id: p.id, instance: p.instance, name: p.name },
        dueAt: new Date(deadline.getTime() - this.ctx.config.policy_late_grace_seconds * 1000).toISOString(),
        lastSuccessAt: p.last_success_at,
      });
    }
    return late;
  }
}
