// `backvault notifications ...`: webhook and e-mail channels for backup,
// drill and policy outcomes. Channels are named by id or by name.
import { Command, Option } from 'commander';
import type { ChannelView, DeliveryResult } from '../services/notifications.ts';
import type { Ctx } from './commands.ts';
import { CliError, EXIT, UsageError } from './errors.ts';
import { fields, paginationLine, printJson, table, when } from './format.ts';
import { collect, positiveInt } from './parse.ts';

type Wrap = <A extends unknown[]>(fn: (c: Ctx, ...args: A) => Promise<number>) => (...args: unknown[]) => Promise<void>;

// Kept here rather than imported from the service, so client commands do not load server modules.
const EVENTS = ['backup.success', 'backup.failure', 'verify.failure', 'policy.late'];

interface Page<T> {
  items: T[];
  pagination: { page: number; per_page: number; total: number; pages: number };
}

interface CreateOptions {
  kind: 'webhook' | 'email';
  url?: string;
  secret?: string;
  smtpHost?: string;
  smtpPort?: number;
  smtpSecurity?: string;
  smtpUser?: string;
  smtpPassword?: string;
  from?: string;
  to?: string[];
  event?: string[];
  failuresOnly?: boolean;
  disabled?: boolean;
}

const enc = encodeURIComponent;

/** Where a channel sends to, without secrets (the server has masked them already). */
function target(ch: ChannelView): string {
  const c = ch.config as { url?: string; host?: string; port?: number; to?: string[] };
  return ch.kind === 'webhook' ? String(c.url ?? '') : `${(c.to ?? []).join(',')} via ${c.host}:${c.port}`;
}

/** An id as is; anything else is looked up as a channel name. */
async function resolve(c: Ctx, ref: string): Promise<string> {
  if (/^[0-9a-f]{24}$/.test(ref)) return ref;
  for (let page = 1; ; page++) {
    const res = await c.client.get<Page<ChannelView>>('/notifications', { page, per_page: 500 });
    const hit = res.items.find((ch) => ch.name === ref);
    if (hit) return hit.id;
    if (page >= res.pagination.pages) break;
  }
  throw new CliError(`no notification channel is named ${JSON.stringify(ref)}; see: backvault notifications list`, EXIT.api);
}

function list(values: string[] | undefined): string[] {
  return (values ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
}

function configOf(o: CreateOptions): Record<string, unknown> {
  const webhookOnly: [keyof CreateOptions, string][] = [['url', '--url'], ['secret', '--secret']];
  const emailOnly: [keyof CreateOptions, string][] = [
    ['smtpHost', '--smtp-host'],
    ['smtpPort', '--smtp-port'],
    ['smtpSecurity', '--smtp-security'],
    ['smtpUser', '--smtp-user'],
    ['from', '--from'],
    ['to', '--to'],
  ];
  if (o.kind === 'webhook') {
    const stray = emailOnly.filter(([k]) => o[k] !== undefined).map(([, f]) => f);
    if (stray.length) throw new UsageError(`${stray.join(', ')} ${stray.length > 1 ? 'are' : 'is'} for --kind email`);
    if (!o.url) throw new UsageError('--kind webhook needs --url');
    return { url: o.url, ...(o.secret ? { secret: o.secret } : {}) };
  }
  const stray = webhookOnly.filter(([k]) => o[k] !== undefined && !(k === 'secret' && process.env.BACKVAULT_WEBHOOK_SECRET === o.secret)).map(([, f]) => f);
  if (stray.length) throw new UsageError(`${stray.join(', ')} ${stray.length > 1 ? 'are' : 'is'} for --kind webhook`);
  const to = list(o.to);
  if (!o.smtpHost || !o.from || to.length === 0) throw new UsageError('--kind email needs --smtp-host, --from and at least one --to');
  return {
    host: o.smtpHost,
    ...(o.smtpPort !== undefined ? { port: o.smtpPort } : {}),
    ...(o.smtpSecurity !== undefined ? { security: o.smtpSecurity } : {}),
    ...(o.smtpUser !== undefined ? { user: o.smtpUser } : {}),
    ...(o.smtpPassword ? { password: o.smtpPassword } : {}),
    from: o.from,
    to,
  };
}

export async function notificationsList(c: Ctx, o: { page?: number; perPage?: number }): Promise<number> {
  const res = await c.client.get<Page<ChannelView>>('/notifications', { page: o.page, per_page: o.perPage });
  if (c.json) {
    printJson(res, c.out);
    return EXIT.ok;
  }
  table(
    ['ID', 'NAME', 'KIND', 'TARGET', 'EVENTS', 'ENABLED', 'LAST', 'LAST_ATTEMPT'],
    res.items.map((ch) => [ch.id, ch.name, ch.kind, target(ch), `${ch.events.join(',')}${ch.failures_only ? ' (failures only)' : ''}`, ch.enabled ? 'yes' : 'no', ch.last_status, when(ch.last_attempt_at)]),
    c.out,
  );
  const line = paginationLine(res.pagination, 'channels');
  if (line) c.err(line);
  return EXIT.ok;
}

export async function notificationsCreate(c: Ctx, name: string, o: CreateOptions): Promise<number> {
  const body: Record<string, unknown> = { name, kind: o.kind, config: configOf(o) };
  const events = list(o.event);
  const unknown = events.filter((e) => !EVENTS.includes(e));
  if (unknown.length) throw new UsageError(`--event takes ${EVENTS.join(', ')}; got ${unknown.join(', ')}`);
  if (events.length) body.events = [...new Set(events)];
  if (o.failuresOnly) body.failures_only = true;
  if (o.disabled) body.enabled = false;
  const ch = await c.client.post<ChannelView & { secret?: string }>('/notifications', body);
  if (c.json) {
    printJson(ch, c.out);
    return EXIT.ok;
  }
  c.out(`Created ${ch.kind} channel ${ch.name} (${ch.id}) for ${ch.events.join(', ')}${ch.failures_only ? ', failures only' : ''}; try it with: backvault notifications test ${ch.id}`);
  if (ch.secret) {
    c.out('Signing secret (shown once; give it to the receiver to check X-Backvault-Signature):');
    c.out(ch.secret);
  }
  return EXIT.ok;
}

export async function notificationsShow(c: Ctx, ref: string): Promise<number> {
  const ch = await c.client.get<ChannelView>(`/notifications/${enc(await resolve(c, ref))}`);
  if (c.json) {
    printJson(ch, c.out);
    return EXIT.ok;
  }
  fields(
    [
      ['id', ch.id],
      ['name', ch.name],
      ['kind', ch.kind],
      ...Object.entries(ch.config).map(([k, v]): [string, unknown] => [k, Array.isArray(v) ? v.join(', ') : v]),
      ['events', ch.events.join(', ')],
      ['failures_only', ch.failures_only ? 'yes' : 'no'],
      ['enabled', ch.enabled ? 'yes' : 'no'],
      ['last_status', ch.last_status],
      ['last_error', ch.last_error ?? undefined],
      ['last_attempt', when(ch.last_attempt_at)],
      ['created', when(ch.created_at)],
    ],
    c.out,
  );
  return EXIT.ok;
}

export async function notificationsDelete(c: Ctx, ref: string): Promise<number> {
  const id = await resolve(c, ref);
  await c.client.delete(`/notifications/${enc(id)}`);
  if (c.json) printJson({ deleted: id }, c.out);
  else c.out(`Deleted notification channel ${ref}.`);
  return EXIT.ok;
}

export async function notificationsTest(c: Ctx, ref: string): Promise<number> {
  const result = await c.client.post<DeliveryResult>(`/notifications/${enc(await resolve(c, ref))}/test`);
  if (c.json) printJson(result, c.out);
  const how = `${result.status_code !== null ? `HTTP ${result.status_code}, ` : ''}${result.duration_ms} ms`;
  if (!result.ok) {
    c.err(`test message to ${ref} failed (${how}): ${result.error ?? 'unknown error'}`);
    return EXIT.failed;
  }
  if (!c.json) c.out(`Test message delivered to ${ref} (${how}).`);
  return EXIT.ok;
}

export function addNotificationCommands(program: Command, client: Wrap): void {
  const n = program.command('notifications').description('webhook and e-mail channels told about backups, failed drills and late policies');
  n.command('list')
    .option('--page <n>', 'page', positiveInt)
    .option('--per-page <n>', 'items per page', positiveInt)
    .action(client((c, o: { page?: number; perPage?: number }) => notificationsList(c, o)));
  n.command('create')
    .description('add a channel: --kind webhook --url URL, or --kind email --smtp-host H --from A --to B')
    .argument('<name>')
    .addOption(new Option('--kind <kind>').choices(['webhook', 'email']).makeOptionMandatory())
    .option('--url <url>', 'webhook: where the signed JSON is POSTed')
    .addOption(new Option('--secret <secret>', 'webhook: signing secret, 16+ characters (default: generated and printed once)').env('BACKVAULT_WEBHOOK_SECRET'))
    .option('--smtp-host <host>', 'email: SMTP server')
    .option('--smtp-port <port>', 'email: SMTP port (default by --smtp-security: 465, 587 or 25)', positiveInt)
    .addOption(new Option('--smtp-security <mode>', 'email: tls (implicit), starttls (required) or none').choices(['tls', 'starttls', 'none']))
    .option('--smtp-user <user>', 'email: SMTP login')
    .addOption(new Option('--smtp-password <password>', 'email: SMTP password (prefer the environment variable: argv is visible to other users)').env('BACKVAULT_SMTP_PASSWORD'))
    .option('--from <address>', 'email: sender, a@b.c or "Name <a@b.c>"')
    .option('--to <address>', 'email: recipient (repeatable, or comma-separated)', collect)
    .option('--event <event>', `send only these events (repeatable; ${EVENTS.join(', ')}; default all)`, collect)
    .option('--failures-only', 'send only failures: backup.failure, verify.failure, policy.late')
    .option('--disabled', 'create it paused')
    .action(client((c, name: string, o: CreateOptions) => notificationsCreate(c, name, o)));
  n.command('show')
    .argument('<channel>', 'id or name')
    .action(client((c, ref: string) => notificationsShow(c, ref)));
  n.command('delete')
    .argument('<channel>', 'id or name')
    .action(client((c, ref: string) => notificationsDelete(c, ref)));
  n.command('test')
    .description('send a test message now and print the result (exit 1 if it was not delivered)')
    .argument('<channel>', 'id or name')
    .action(client((c, ref: string) => notificationsTest(c, ref)));
}
