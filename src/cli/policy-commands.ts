// `backvault policies ...`: schedules with retention, run now, and a preview
// of what retention would keep and delete.
import { Command, Option } from 'commander';
import { COMPRESSIONS } from '../domain/types.ts';
import type { PolicyView } from '../services/policies.ts';
import type { BackupView } from '../services/views.ts';
import type { Ctx } from './commands.ts';
import { waitBackup } from './commands.ts';
import { EXIT, UsageError } from './errors.ts';
import { fields, printJson, table, when } from './format.ts';
import { collect, parseExclude, parseSelection, positiveInt } from './parse.ts';

type Wrap = <A extends unknown[]>(fn: (c: Ctx, ...args: A) => Promise<number>) => (...args: unknown[]) => Promise<void>;

const RULES = ['keep-count', 'retention-days', 'keep-last', 'keep-hourly', 'keep-daily', 'keep-weekly', 'keep-monthly', 'keep-yearly', 'keep-minimum'] as const;

interface PolicyOptions {
  name?: string;
  schedule?: string;
  timezone?: string;
  select?: string[];
  exclude?: string[];
  compression?: string;
  runOnReplica?: boolean;
  verify?: boolean;
  catchUp?: boolean;
  enabled?: boolean;
  [rule: string]: unknown;
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, ch: string) => ch.toUpperCase());
}

/** Turns options into an API body; only what was given is sent (so update patches). */
function policyBody(o: PolicyOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (o.name !== undefined) body.name = o.name;
  if (o.schedule !== undefined) body.schedule = o.schedule;
  if (o.timezone !== undefined) body.timezone = o.timezone;
  if (o.select?.length) {
    body.type = 'partial';
    body.selection = parseSelection(o.select);
  }
  if (o.exclude?.length) body.exclude = parseExclude(o.exclude);
  if (o.compression !== undefined) body.compression = o.compression;
  if (o.runOnReplica !== undefined) body.run_on_replica = o.runOnReplica;
  if (o.verify !== undefined) body.verify = o.verify;
  if (o.catchUp !== undefined) body.catch_up = o.catchUp;
  if (o.enabled !== undefined) body.enabled = o.enabled;
  const retention: Record<string, number> = {};
  for (const rule of RULES) {
    const v = o[camel(rule)];
    if (typeof v === 'number') retention[rule === 'keep-minimum' ? 'minimum' : rule.replace(/-/g, '_')] = v;
  }
  if (Object.keys(retention).length > 0) body.retention = retention;
  return body;
}

function printPolicy(c: Ctx, p: PolicyView): void {
  const rules = Object.entries(p.retention)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  fields(
    [
      ['id', p.id],
      ['instance', p.instance],
      ['name', p.name],
      ['state', p.state],
      ['schedule', `${p.schedule} (${p.timezone})`],
      ['what', p.type === 'full' ? 'full' : JSON.stringify(p.selection)],
      ['exclude', p.exclude ? JSON.stringify(p.exclude) : null],
      ['retention', rules || 'keep everything'],
      ['verify', p.verify],
      ['next run', when(p.next_run_at)],
      ['last run', when(p.last_run_at)],
      ['last success', when(p.last_success_at)],
      ['late since', p.late_since ? when(p.late_since) : null],
    ],
    c.out,
  );
}

function addPolicyOptions(cmd: Command, forUpdate: boolean): Command {
  cmd
    .option('--timezone <tz>', 'IANA time zone of the schedule and calendar rules (default UTC)')
    .option('--select <res[=obj,...]>', 'back up only this resource (objects); makes the policy partial (repeatable)', collect)
    .option('--exclude <res=obj,...>', 'leave these objects out (repeatable)', collect)
    .addOption(new Option('--compression <c>').choices(COMPRESSIONS))
    .option('--run-on-replica', 'dump from replicas where set')
    .option('--verify', 'run a restore drill after each backup')
    .option('--no-catch-up', 'skip, rather than run once, a run missed while the server was down');
  for (const rule of RULES) cmd.option(`--${rule} <n>`, rule === 'keep-minimum' ? 'always keep at least n newest' : 'retention rule', positiveIntOrZero);
  if (forUpdate) {
    cmd.option('--name <name>').option('--schedule <cron>').option('--enable', 'enable the policy').option('--disable', 'disable the policy');
  } else {
    cmd.requiredOption('--name <name>', 'what the policy is called').requiredOption('--schedule <cron>', 'cron expression, e.g. "0 3 * * *"').option('--disabled', 'create it disabled');
  }
  return cmd;
}

function positiveIntOrZero(value: string): number {
  return value === '0' ? 0 : positiveInt(value);
}

export function addPolicyCommands(program: Command, client: Wrap): void {
  const policies = program.command('policies').description('schedules that back up an instance and apply retention');
  policies
    .command('list')
    .option('--instance <name>')
    .action(
      client(async (c, o: { instance?: string }) => {
        const path = o.instance ? `/instances/${encodeURIComponent(o.instance)}/policies` : '/policies';
        const res = await c.client.get<{ items: PolicyView[] }>(path, { per_page: 500 });
        if (c.json) return printJson(res, c.out), EXIT.ok;
        table(['ID', 'INSTANCE', 'NAME', 'STATE', 'SCHEDULE', 'NEXT RUN', 'LAST SUCCESS'], res.items.map((p) => [p.id, p.instance, p.name, p.state, `${p.schedule} ${p.timezone}`, when(p.next_run_at), when(p.last_success_at)]), c.out);
        return EXIT.ok;
      }),
    );
  addPolicyOptions(policies.command('create').argument('<instance>'), false).action(
    client(async (c, instance: string, o: PolicyOptions & { disabled?: boolean }) => {
      const body = policyBody({ ...o, enabled: o.disabled ? false : undefined, catchUp: o.catchUp === false ? false : undefined });
      const p = await c.client.post<PolicyView>(`/instances/${encodeURIComponent(instance)}/policies`, body);
      if (c.json) return printJson(p, c.out), EXIT.ok;
      c.out(`Created policy ${p.id} (${p.name}); next run ${when(p.next_run_at)}.`);
      return EXIT.ok;
    }),
  );
  policies
    .command('show')
    .argument('<id>')
    .action(
      client(async (c, id: string) => {
        const p = await c.client.get<PolicyView>(`/policies/${encodeURIComponent(id)}`);
        if (c.json) return printJson(p, c.out), EXIT.ok;
        printPolicy(c, p);
        return EXIT.ok;
      }),
    );
  addPolicyOptions(policies.command('update').argument('<id>'), true).action(
    client(async (c, id: string, o: PolicyOptions & { enable?: boolean; disable?: boolean }) => {
      if (o.enable && o.disable) throw new UsageError('--enable and --disable exclude each other');
      const body = policyBody({ ...o, enabled: o.enable ? true : o.disable ? false : undefined, catchUp: o.catchUp === false ? false : undefined });
      if (Object.keys(body).length === 0) throw new UsageError('nothing to change: give at least one option');
      const p = await c.client.call<PolicyView>('PATCH', `/policies/${encodeURIComponent(id)}`, { body });
      if (c.json) return printJson(p, c.out), EXIT.ok;
      printPolicy(c, p);
      return EXIT.ok;
    }),
  );
  policies
    .command('delete')
    .argument('<id>')
    .action(
      client(async (c, id: string) => {
        await c.client.delete(`/policies/${encodeURIComponent(id)}`);
        if (c.json) return printJson({ deleted: id }, c.out), EXIT.ok;
        c.out(`Deleted policy ${id}; its backups are kept.`);
        return EXIT.ok;
      }),
    );
  policies
    .command('run')
    .description('back up now, as a scheduled run would')
    .argument('<id>')
    .option('--wait', 'wait for the backup to end')
    .action(
      client(async (c, id: string, o: { wait?: boolean }) => {
        const b = await c.client.post<BackupView>(`/policies/${encodeURIComponent(id)}/run`);
        if (o.wait) return waitBackup(c, b, 'backup');
        if (c.json) return printJson(b, c.out), EXIT.ok;
        c.out(`Backup ${b.id} started; follow it with: backvault backups show ${b.id}`);
        return EXIT.ok;
      }),
    );
  policies
    .command('preview')
    .description('what retention would keep and delete now, and why')
    .argument('<id>')
    .action(
      client(async (c, id: string) => {
        type D = { id: string; taken_at: string; reasons: string[] };
        const res = await c.client.get<{ keep: D[]; delete: D[] }>(`/policies/${encodeURIComponent(id)}/retention-preview`);
        if (c.json) return printJson(res, c.out), EXIT.ok;
        table(
          ['BACKUP', 'TAKEN', 'DECISION', 'WHY'],
          [...res.keep.map((d) => [d.id, when(d.taken_at), 'keep', d.reasons.join(', ')]), ...res.delete.map((d) => [d.id, when(d.taken_at), 'delete', ''])],
          c.out,
        );
        return EXIT.ok;
      }),
    );
}
