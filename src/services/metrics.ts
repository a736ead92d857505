// Prometheus metrics for GET /metrics, in a registry of our own (not
// prom-client's global one, so several servers in one process stay apart).
// Whatever the catalog knows is read at scrape time by collect callbacks, so
// the values are right after a restart and on every node sharing a catalog.
// Only the failure counters are counted from events: a counter must never go
// down, and deleting failed backups would make a catalog count go down.
//
// The instance label is `instance_name`: Prometheus itself sets `instance`
// (the scraped target) and would rename ours to `exported_instance`.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { BACKUP_STATUSES } from '../domain/types.ts';
import type { ServiceContext } from './context.ts';
import type { BackupView } from './views.ts';

const JOB_KINDS = ['backup', 'restore', 'verify', 'import'];

interface LatestSuccess {
  instance: string;
  policy_id: string | null;
  started_at: string | null;
  finished_at: string | null;
  size: number;
}

interface Snapshot {
  latest: LatestSuccess[];
  byStatus: { instance: string; status: string; n: number }[];
  jobs: { kind: string; state: string; n: number }[];
  policies: { id: string; instance: string; name: string; late_since: string | null }[];
  instances: string[];
}

type Labels = { instance_name: string; policy: string };

export class MetricsCollector {
  readonly registry = new Registry();
  /** instance \0 policy_id ('' for none) -> failures seen by this process */
  private readonly backupFailures = new Map<string, number>();
  private readonly verifyFailures = new Map<string, number>();
  private loading: Promise<Snapshot> | null = null;

  private readonly onBackup = ({ backup }: { backup: BackupView }) => {
    // Imports are not runs of the instance's own backups.
    if (backup.status !== 'error' || backup.origin === 'import') return;
    const key = `${backup.instance}\0${backup.policy_id ?? ''}`;
    this.backupFailures.set(key, (this.backupFailures.get(key) ?? 0) + 1);
  };

  private readonly onVerify = ({ backup }: { backup: BackupView }) => {
    if (backup.verify_status !== 'error') return;
    this.verifyFailures.set(backup.instance, (this.verifyFailures.get(backup.instance) ?? 0) + 1);
  };

  constructor(private readonly ctx: ServiceContext) {
    collectDefaultMetrics({ register: this.registry });
    const self = this;
    const perPolicy = ['instance_name', 'policy'] as const;

    new Gauge({
      name: 'backvault_backup_last_success_timestamp_seconds',
      help: 'When the newest successful backup of an instance (per policy; policy="" for backups asked for by hand) finished, in unix seconds',
      labelNames: perPolicy,
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const r of s.latest) if (r.finished_at) this.set(self.labels(s, r.instance, r.policy_id), Date.parse(r.finished_at) / 1000);
      },
    });
    new Gauge({
      name: 'backvault_backup_last_success_duration_seconds',
      help: 'How long the newest successful backup (per instance and policy) took, start to end',
      labelNames: perPolicy,
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const r of s.latest) {
          if (r.started_at && r.finished_at) this.set(self.labels(s, r.instance, r.policy_id), Math.max(0, Date.parse(r.finished_at) - Date.parse(r.started_at)) / 1000);
        }
      },
    });
    new Gauge({
      name: 'backvault_backup_last_success_size_bytes',
      help: 'Stored size (compressed artifacts) of the newest successful backup, per instance and policy',
      labelNames: perPolicy,
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const r of s.latest) this.set(self.labels(s, r.instance, r.policy_id), Number(r.size));
      },
    });
    new Counter({
      name: 'backvault_backup_failures_total',
      help: 'Backups that ended in error since this process started, per instance and policy (policy="" for backups asked for by hand)',
      labelNames: perPolicy,
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        // Known instance/policy pairs start at 0, so increase() sees the first failure.
        const keys = new Set(self.backupFailures.keys());
        for (const instance of s.instances) keys.add(`${instance}\0`);
        for (const r of s.latest) keys.add(`${r.instance}\0${r.policy_id ?? ''}`);
        for (const p of s.policies) keys.add(`${p.instance}\0${p.id}`);
        for (const key of keys) {
          const [instance, policyId] = key.split('\0') as [string, string];
          this.inc(self.labels(s, instance, policyId || null), self.backupFailures.get(key) ?? 0);
        }
      },
    });
    new Counter({
      name: 'backvault_verify_failures_total',
      help: 'Restore drills that failed since this process started, per instance',
      labelNames: ['instance_name'],
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const instance of new Set([...s.instances, ...self.verifyFailures.keys()])) this.inc({ instance_name: instance }, self.verifyFailures.get(instance) ?? 0);
      },
    });
    new Gauge({
      name: 'backvault_backups',
      help: 'Backups in the catalog by instance and status',
      labelNames: ['instance_name', 'status'],
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const instance of s.instances) for (const status of BACKUP_STATUSES) this.set({ instance_name: instance, status }, 0);
        for (const r of s.byStatus) this.set({ instance_name: r.instance, status: r.status }, Number(r.n));
      },
    });
    const jobGauge = (name: string, state: string, help: string) =>
      new Gauge({
        name,
        help,
        labelNames: ['kind'],
        registers: [this.registry],
        async collect() {
          this.reset();
          const s = await self.snapshot();
          for (const kind of JOB_KINDS) this.set({ kind }, 0);
          for (const r of s.jobs) if (r.state === state) this.set({ kind: r.kind }, Number(r.n));
        },
      });
    jobGauge('backvault_jobs_queued', 'queued', 'Jobs waiting for a worker (queue depth), by kind');
    jobGauge('backvault_jobs_running', 'running', 'Jobs running now, by kind');
    new Gauge({
      name: 'backvault_policy_late',
      help: '1 when a policy missed its schedule (no success since a run was due), else 0',
      labelNames: perPolicy,
      registers: [this.registry],
      async collect() {
        this.reset();
        const s = await self.snapshot();
        for (const p of s.policies) this.set({ instance_name: p.instance, policy: p.name }, p.late_since ? 1 : 0);
      },
    });
  }

  start(): this {
    this.ctx.events.on('backup.finished', this.onBackup);
    this.ctx.events.on('verify.finished', this.onVerify);
    return this;
  }

  stop(): void {
    this.ctx.events.off('backup.finished', this.onBackup);
    this.ctx.events.off('verify.finished', this.onVerify);
    this.registry.clear();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format; reads the catalog once per scrape. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** A policy's label is its name; a deleted policy's backups keep its id; by hand is "". */
  private labels(s: Snapshot, instance: string, policyId: string | null): Labels {
    if (!policyId) return { instance_name: instance, policy: '' };
    return { instance_name: instance, policy: s.policies.find((p) => p.id === policyId)?.name ?? policyId };
  }

  /** One catalog read shared by every collect callback of a scrape (they run at once). */
  private snapshot(): Promise<Snapshot> {
    if (!this.loading) {
      this.loading = this.load().finally(() => {
        this.loading = null;
      });
    }
    return this.loading;
  }

  private async load(): Promise<Snapshot> {
    const db = this.ctx.db;
    const newest = db
      .selectFrom('backups')
      .select(['instance', 'policy_id', 'started_at', 'finished_at', 'size'])
      .select((eb) => eb.fn.agg<number>('row_number').over((ob) => ob.partitionBy(['instance', 'policy_id']).orderBy('finished_at', 'desc')).as('rn'))
      .where('status', '=', 'success')
      .where('origin', '!=', 'import')
      .as('newest');
    const [latest, byStatus, jobs, policies, instances] = await Promise.all([
      db.selectFrom(newest).select(['instance', 'policy_id', 'started_at', 'finished_at', 'size']).where('rn', '=', 1).execute(),
      db.selectFrom('backups').select(['instance', 'status']).select((eb) => eb.fn.countAll<number>().as('n')).groupBy(['instance', 'status']).execute(),
      db.selectFrom('jobs').select(['kind', 'state']).select((eb) => eb.fn.countAll<number>().as('n')).where('state', 'in', ['queued', 'running']).groupBy(['kind', 'state']).execute(),
      db.selectFrom('policies').select(['id', 'instance', 'name', 'late_since']).execute(),
      db.selectFrom('instances').select('name').execute(),
    ]);
    return { latest, byStatus, jobs, policies, instances: instances.map((i) => i.name) };
  }
}

const collectors = new WeakMap<ServiceContext, MetricsCollector>();

/** The context's collector, created and listening on first use (main.ts starts it with the server). */
export function startMetrics(ctx: ServiceContext): MetricsCollector {
  let m = collectors.get(ctx);
  if (!m) {
    m = new MetricsCollector(ctx).start();
    collectors.set(ctx, m);
  }
  return m;
}

export function stopMetrics(ctx: ServiceContext): void {
  collectors.get(ctx)?.stop();
  collectors.delete(ctx);
}
