// Notification channels (webhooks and e-mail) and the notifier that sends
// backup, drill and policy outcomes to them. Delivery runs beside the jobs,
// never inside them: a slow or broken receiver cannot hold up a backup.
// Channel configs hold secrets (webhook signing secret, SMTP password); they
// leave this module only masked, and delivery errors are written by us, not
// copied from the URL or the transport.
import { createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { request } from 'undici';
import nodemailer from 'nodemailer';
import type { NotificationChannelTable } from '../catalog/schema.ts';
import { maskConnection } from '../domain/mask.ts';
import { AppError } from '../errors/index.ts';
import { newId, randomSecret } from '../platform/ids.ts';
import type { ServiceContext } from './context.ts';
import type { PolicyRef } from './events.ts';
import type { BackupView } from './views.ts';

export const NOTIFICATION_EVENTS = ['backup.success', 'backup.failure', 'verify.failure', 'policy.late'] as const;
export type NotificationEvent = (typeof NOTIFICATION_EVENTS)[number];
/** what a failures-only channel still receives */
const FAILURE_EVENTS: ReadonlySet<string> = new Set(['backup.failure', 'verify.failure', 'policy.late']);

export const CHANNEL_KINDS = ['webhook', 'email'] as const;
export type ChannelKind = (typeof CHANNEL_KINDS)[number];

export const SMTP_SECURITY = ['tls', 'starttls', 'none'] as const;
export type SmtpSecurity = (typeof SMTP_SECURITY)[number];

/** What a masked secret reads as; sent back unchanged in a PATCH it keeps the stored value. */
export const MASK = '****';

// No CR or LF anywhere a value may reach a mail header.
const ADDRESS = '[^\\s@<>",;:]+@[^\\s@<>",;:]+';
const EmailAddress = Type.String({ pattern: `^${ADDRESS}$`, maxLength: 254 });

export const WebhookConfigSchema = Type.Object(
  {
    url: Type.String({ minLength: 1, maxLength: 2048, description: 'http(s) URL the JSON is POSTed to; private addresses are allowed' }),
    secret: Type.Optional(Type.String({ minLength: 16, maxLength: 256, description: 'HMAC-SHA256 signing key; generated and shown once when left out' })),
  },
  { additionalProperties: false },
);

export const EmailConfigSchema = Type.Object(
  {
    host: Type.String({ minLength: 1, maxLength: 253, pattern: '^[^\\s/]+$' }),
    port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, description: 'default 465 for tls, 587 for starttls, 25 for none' })),
    security: Type.Optional(Type.Union(SMTP_SECURITY.map((s) => Type.Literal(s)), { description: 'tls: implicit TLS; starttls (default): STARTTLS required; none: plain text' })),
    user: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 256, pattern: '^[^\\r\\n]+$' }), Type.Null()])),
    password: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 1024 }), Type.Null()])),
    from: Type.String({ maxLength: 320, pattern: `^(?:${ADDRESS}|[^\\r\\n<>]{1,128} <${ADDRESS}>)$`, description: 'a@b.c or "Name <a@b.c>"' }),
    to: Type.Array(EmailAddress, { minItems: 1, maxItems: 50 }),
  },
  { additionalProperties: false },
);

export type WebhookConfig = Static<typeof WebhookConfigSchema> & { secret: string };
export interface EmailConfig {
  host: string;
  port: number;
  security: SmtpSecurity;
  user: string | null;
  password: string | null;
  from: string;
  to: string[];
}
type ChannelConfig = WebhookConfig | EmailConfig;

const webhookCheck = TypeCompiler.Compile(WebhookConfigSchema);
const emailCheck = TypeCompiler.Compile(EmailConfigSchema);

export interface ChannelView {
  id: string;
  name: string;
  kind: ChannelKind;
  /** secrets masked: webhook secret and SMTP password as ****, URL credentials and secret-looking query values too */
  config: Record<string, unknown>;
  events: NotificationEvent[];
  failures_only: boolean;
  enabled: boolean;
  /** success, error, or retrying (a retry is pending) */
  last_status: string | null;
  last_error: string | null;
  last_attempt_at: string | null;
  created_at: string;
  updated_at: string;
  links: { self: string; test: string };
}

export interface CreateChannelInput {
  name: string;
  kind: ChannelKind;
  config: Record<string, unknown>;
  events?: NotificationEvent[];
  failures_only?: boolean;
  enabled?: boolean;
}

export interface UpdateChannelInput {
  name?: string;
  config?: Record<string, unknown>;
  events?: NotificationEvent[];
  failures_only?: boolean;
  enabled?: boolean;
}

// ---------------------------------------------------------------------------
// Channels in the catalog

function parseConfig(row: NotificationChannelTable): ChannelConfig {
  return JSON.parse(row.config) as ChannelConfig;
}

function maskedConfig(kind: ChannelKind, config: ChannelConfig): Record<string, unknown> {
  if (kind === 'webhook') {
    const c = config as WebhookConfig;
    return { url: maskConnection(c.url), secret: MASK };
  }
  const c = config as EmailConfig;
  return { host: c.host, port: c.port, security: c.security, user: c.user, password: c.password ? MASK : null, from: c.from, to: c.to };
}

export function channelView(row: NotificationChannelTable): ChannelView {
  return {
    id: row.id,
    name: row.name,
    kind: row.kind,
    config: maskedConfig(row.kind, parseConfig(row)),
    events: JSON.parse(row.events) as NotificationEvent[],
    failures_only: row.failures_only === 1,
    enabled: row.enabled === 1,
    last_status: row.last_status,
    last_error: row.last_error,
    last_attempt_at: row.last_attempt_at,
    created_at: row.created_at,
    updated_at: row.updated_at,
    links: { self: `/api/v1/notifications/${row.id}`, test: `/api/v1/notifications/${row.id}/test` },
  };
}

function invalid(check: TypeCheck<TSchema>, value: unknown): AppError {
  const problems = [...check.Errors(value)].slice(0, 10).map((e) => ({ field: `body/config${e.path}`, problem: e.message }));
  const first = problems[0];
  return new AppError('invalid_request', first ? `${first.field} ${first.problem}` : undefined, { problems });
}

function checkWebhookUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new AppError('invalid_request', 'body/config/url must be an absolute http or https URL.', { field: 'config.url' });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new AppError('invalid_request', 'body/config/url must use http or https.', { field: 'config.url' });
  }
}

/** Validates a config for its kind and fills defaults; `previous` supplies kept secrets on update. */
function normalizeConfig(kind: ChannelKind, input: Record<string, unknown>, previous?: ChannelConfig): { config: ChannelConfig; generatedSecret: string | null } {
  if (kind === 'webhook') {
    const prev = previous as WebhookConfig | undefined;
    const merged: Record<string, unknown> = { ...(prev ?? {}), ...input };
    // Values read back masked and sent again mean "unchanged".
    if (prev && merged.secret === MASK) merged.secret = prev.secret;
    if (prev && merged.url === maskConnection(prev.url)) merged.url = prev.url;
    if (!webhookCheck.Check(merged)) throw invalid(webhookCheck, merged);
    const c = merged as Static<typeof WebhookConfigSchema>;
    checkWebhookUrl(c.url);
    const generatedSecret = c.secret === undefined ? randomSecret(32) : null;
    return { config: { url: c.url, secret: c.secret ?? generatedSecret! }, generatedSecret };
  }
  const prev = previous as EmailConfig | undefined;
  const merged: Record<string, unknown> = { ...(prev ?? {}), ...input };
  if (prev && merged.password === MASK) merged.password = prev.password;
  // A changed security mode without an explicit port takes that mode's default port.
  if (prev && input.security !== undefined && input.port === undefined && prev.port === defaultSmtpPort(prev.security)) delete merged.port;
  if (!emailCheck.Check(merged)) throw invalid(emailCheck, merged);
  const c = merged as Static<typeof EmailConfigSchema>;
  const security = c.security ?? 'starttls';
  if (!c.password !== !c.user) {
    const missing = c.user ? 'password' : 'user';
    throw new AppError('invalid_request', `body/config/${missing} is missing: the SMTP login needs both user and password, or neither.`, { field: `config.${missing}` });
  }
  return {
    config: { host: c.host, port: c.port ?? defaultSmtpPort(security), security, user: c.user ?? null, password: c.password ?? null, from: c.from, to: c.to },
    generatedSecret: null,
  };
}

function defaultSmtpPort(security: SmtpSecurity): number {
  return security === 'tls' ? 465 : security === 'starttls' ? 587 : 25;
}

async function assertNameFree(ctx: ServiceContext, name: string, exceptId?: string): Promise<void> {
  let q = ctx.db.selectFrom('notification_channels').select('id').where('name', '=', name);
  if (exceptId) q = q.where('id', '!=', exceptId);
  if (await q.executeTakeFirst()) throw new AppError('already_exists', `A notification channel named ${JSON.stringify(name)} already exists.`);
}

function uniqueEvents(events: NotificationEvent[] | undefined): NotificationEvent[] {
  const list = events ?? [...NOTIFICATION_EVENTS];
  if (list.length === 0) throw new AppError('invalid_request', `events must name at least one of ${NOTIFICATION_EVENTS.join(', ')}; to pause a channel set enabled to false.`, { field: 'events' });
  return NOTIFICATION_EVENTS.filter((e) => list.includes(e));
}

export async function getChannelRow(ctx: ServiceContext, id: string): Promise<NotificationChannelTable> {
  const row = await ctx.db.selectFrom('notification_channels').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw new AppError('notification_not_found', `No notification channel has id ${id}.`);
  return row;
}

/** Creates a channel. A webhook secret left out is generated and returned here, once, as `secret`. */
export async function createChannel(ctx: ServiceContext, input: CreateChannelInput): Promise<ChannelView & { secret?: string }> {
  const { config, generatedSecret } = normalizeConfig(input.kind, input.config);
  await assertNameFree(ctx, input.name);
  const ts = ctx.clock.now().toISOString();
  const row: NotificationChannelTable = {
    id: newId(),
    name: input.name,
    kind: input.kind,
    config: JSON.stringify(config),
    events: JSON.stringify(uniqueEvents(input.events)),
    failures_only: input.failures_only ? 1 : 0,
    enabled: input.enabled === false ? 0 : 1,
    last_status: null,
    last_error: null,
    last_attempt_at: null,
    created_at: ts,
    updated_at: ts,
  };
  await ctx.db.insertInto('notification_channels').values(row).execute();
  return { ...channelView(row), ...(generatedSecret ? { secret: generatedSecret } : {}) };
}

export async function listChannels(ctx: ServiceContext, page: number, perPage: number): Promise<{ items: ChannelView[]; total: number }> {
  const total = await ctx.db.selectFrom('notification_channels').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const rows = await ctx.db.selectFrom('notification_channels').selectAll().orderBy('created_at').orderBy('id').limit(perPage).offset((page - 1) * perPage).execute();
  return { items: rows.map(channelView), total: Number(total.n) };
}

export async function getChannel(ctx: ServiceContext, id: string): Promise<ChannelView> {
  return channelView(await getChannelRow(ctx, id));
}

export async function updateChannel(ctx: ServiceContext, id: string, patch: UpdateChannelInput): Promise<ChannelView> {
  const row = await getChannelRow(ctx, id);
  const set: Partial<NotificationChannelTable> = { updated_at: ctx.clock.now().toISOString() };
  if (patch.name !== undefined && patch.name !== row.name) {
    await assertNameFree(ctx, patch.name, id);
    set.name = patch.name;
  }
  if (patch.config !== undefined) set.config = JSON.stringify(normalizeConfig(row.kind, patch.config, parseConfig(row)).config);
  if (patch.events !== undefined) set.events = JSON.stringify(uniqueEvents(patch.events));
  if (patch.failures_only !== undefined) set.failures_only = patch.failures_only ? 1 : 0;
  if (patch.enabled !== undefined) set.enabled = patch.enabled ? 1 : 0;
  await ctx.db.updateTable('notification_channels').set(set).where('id', '=', id).execute();
  return getChannel(ctx, id);
}

export async function deleteChannel(ctx: ServiceContext, id: string): Promise<void> {
  const res = await ctx.db.deleteFrom('notification_channels').where('id', '=', id).executeTakeFirst();
  if (Number(res.numDeletedRows) === 0) throw new AppError('notification_not_found', `No notification channel has id ${id}.`);
}

// ---------------------------------------------------------------------------
// Messages

export interface Message {
  /** unique per event and channel, the same on every retry: receivers dedupe on it */
  id: string;
  event: NotificationEvent | 'test';
  occurred_at: string;
  /** one line, the e-mail subject */
  summary: string;
  /** what happened and what to do, in words; the e-mail body */
  text: string;
  instance: string | null;
  backup: Record<string, unknown> | null;
  policy: Record<string, unknown> | null;
}

/** What an event says, before it is addressed to a channel. */
type Draft = Omit<Message, 'id'>;

function quote(s: string): string {
  return JSON.stringify(s);
}

function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

function humanDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${Math.round(s - m * 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function link(ctx: ServiceContext, path: string): string {
  return ctx.config.public_url ? `${ctx.config.public_url.replace(/\/+$/, '')}${path}` : path;
}

/** The backup fields a receiver needs; not the whole view (no selection or artifact list). */
function backupSummary(ctx: ServiceContext, b: BackupView, durationMs: number | null, withVerify: boolean): Record<string, unknown> {
  return {
    id: b.id,
    instance: b.instance,
    type: b.type,
    origin: b.origin,
    label: b.label,
    status: b.status,
    status_info: b.status_info,
    size: b.size,
    policy_id: b.policy_id,
    created_at: b.created_at,
    started_at: b.started_at,
    finished_at: b.finished_at,
    duration_ms: durationMs,
    verify_status: b.verify_status,
    ...(withVerify ? { verify_result: b.verify_result } : {}),
    url: link(ctx, `/api/v1/backups/${b.id}`),
  };
}

async function policyName(ctx: ServiceContext, id: string | null): Promise<string | null> {
  if (!id) return null;
  try {
    const row = await ctx.db.selectFrom('policies').select('name').where('id', '=', id).executeTakeFirst();
    return row?.name ?? null;
  } catch {
    return null;
  }
}

export async function backupDraft(ctx: ServiceContext, backup: BackupView, durationMs: number | null): Promise<Draft> {
  const ok = backup.status === 'success';
  const name = await policyName(ctx, backup.policy_id);
  const policy = backup.policy_id ? { id: backup.policy_id, name } : null;
  const by = name ? ` (policy ${quote(name)})` : backup.policy_id ? ` (policy ${backup.policy_id})` : '';
  const isImport = backup.origin === 'import';
  const what = isImport ? `Import of backup ${backup.id} into instance ${quote(backup.instance)}` : `Backup ${backup.id} of instance ${quote(backup.instance)}${by}`;
  const details = `Details: ${link(ctx, `/api/v1/backups/${backup.id}`)}`;
  let summary: string;
  let text: string;
  if (ok) {
    summary = `${isImport ? 'Import' : 'Backup'} of ${backup.instance} succeeded`;
    const took = durationMs !== null ? `, took ${humanDuration(durationMs)}` : '';
    text = `${what} succeeded at ${backup.finished_at ?? 'an unknown time'}: ${humanBytes(backup.size)} stored${took}.\n${details}`;
  } else {
    summary = `${isImport ? 'Import' : 'Backup'} of ${backup.instance} FAILED`;
    const reason = backup.status_info ?? 'no reason was recorded';
    const todo = isImport
      ? 'What to do: check the archive (it must be a Backvault exchange archive) and import it again.'
      : `What to do: fix the cause above (the resource's connection, path, credentials or the server's tools and disk space), then take a backup again: backvault backups create ${backup.instance} --wait`;
    text = `${what} failed${backup.finished_at ? ` at ${backup.finished_at}` : ''}: ${reason}\n${todo}\n${details}`;
  }
  return {
    event: ok ? 'backup.success' : 'backup.failure',
    occurred_at: backup.finished_at ?? ctx.clock.now().toISOString(),
    summary,
    text,
    instance: backup.instance,
    backup: backupSummary(ctx, backup, durationMs, false),
    policy,
  };
}

interface DrillResult {
  resources?: { name: string; ok: boolean; differences?: string[]; error?: string }[];
  error?: string;
}

export async function verifyDraft(ctx: ServiceContext, backup: BackupView): Promise<Draft> {
  const result = (backup.verify_result ?? {}) as DrillResult;
  const problems: string[] = [];
  if (typeof result.error === 'string') problems.push(result.error);
  for (const r of result.resources ?? []) {
    if (r.ok) continue;
    const why = r.error ?? (r.differences?.length ? r.differences.slice(0, 5).join('; ') : 'does not match the manifest');
    problems.push(`resource ${r.name}: ${why}`);
  }
  const name = await policyName(ctx, backup.policy_id);
  return {
    event: 'verify.failure',
    occurred_at: ctx.clock.now().toISOString(),
    summary: `Restore drill of a ${backup.instance} backup FAILED`,
    text:
      `The restore drill of backup ${backup.id} (instance ${quote(backup.instance)}${name ? `, policy ${quote(name)}` : ''}) failed: ${problems.join(' | ') || 'no details were recorded'}\n` +
      `This backup may not restore as expected. What to do: take a new backup (backvault backups create ${backup.instance} --wait) and drill it (backvault backups verify <id> --wait); if drills keep failing, check the restore tools on the server.\n` +
      `Details: ${link(ctx, `/api/v1/backups/${backup.id}`)}`,
    instance: backup.instance,
    backup: backupSummary(ctx, backup, null, true),
    policy: backup.policy_id ? { id: backup.policy_id, name } : null,
  };
}

export function lateDraft(ctx: ServiceContext, policy: PolicyRef, dueAt: string, lastSuccessAt: string | null): Draft {
  return {
    event: 'policy.late',
    occurred_at: ctx.clock.now().toISOString(),
    summary: `Policy ${policy.name} of ${policy.instance} is late`,
    text:
      `Policy ${quote(policy.name)} of instance ${quote(policy.instance)} is late: a run was due at ${dueAt} and no backup has succeeded since` +
      ` (last success: ${lastSuccessAt ?? 'never'}).\n` +
      `What to do: check that the server is running and look at the policy's recent backups for the reason: backvault backups list --instance ${policy.instance} --status error`,
    instance: policy.instance,
    backup: null,
    policy: { id: policy.id, name: policy.name, due_at: dueAt, last_success_at: lastSuccessAt },
  };
}

function testDraft(ctx: ServiceContext, channelName: string): Draft {
  return {
    event: 'test',
    occurred_at: ctx.clock.now().toISOString(),
    summary: `Test message for channel ${channelName}`,
    text: `This is a test message from Backvault for the notification channel ${quote(channelName)}. If you can read it, delivery works; nothing needs to be done.`,
    instance: null,
    backup: null,
    policy: null,
  };
}

// ---------------------------------------------------------------------------
// Delivery

/** The webhook signature: hex HMAC-SHA256, keyed by the channel secret, over "<timestamp>.<raw body>". */
export function signWebhook(secret: string, timestamp: number, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

interface Attempt {
  ok: boolean;
  retryable: boolean;
  status_code?: number;
  error?: string;
  retryAfterMs?: number;
}

export interface DeliveryResult {
  ok: boolean;
  attempts: number;
  /** the receiver's last HTTP status (webhooks) */
  status_code: number | null;
  error: string | null;
  duration_ms: number;
}

const MAX_RETRY_DELAY_MS = 5 * 60_000;

function retryAfter(header: string | string[] | undefined, now: number): number | undefined {
  const v = Array.isArray(header) ? header[0] : header;
  if (!v) return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - now) : undefined;
}

function networkReason(err: unknown): string {
  const e = err as { name?: string; code?: string; cause?: { code?: string } };
  if (e?.name === 'TimeoutError' || e?.code === 'UND_ERR_HEADERS_TIMEOUT' || e?.code === 'UND_ERR_BODY_TIMEOUT' || e?.code === 'UND_ERR_CONNECT_TIMEOUT') return 'timed out';
  return e?.code ?? e?.cause?.code ?? e?.name ?? 'network error';
}

/** Secrets must not ride along in a transport's error text. */
function scrub(text: string, secrets: (string | null | undefined)[]): string {
  let out = text;
  for (const s of secrets) if (s && s.length >= 4) out = out.split(s).join(MASK);
  return out.replace(/[\r\n]+/g, ' ').slice(0, 300);
}

async function webhookAttempt(ctx: ServiceContext, config: WebhookConfig, message: Message, signal: AbortSignal): Promise<Attempt> {
  const body = JSON.stringify(message);
  const timestamp = Math.floor(ctx.clock.now().getTime() / 1000);
  const timeout = ctx.config.notification_timeout_ms;
  try {
    const res = await request(config.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'user-agent': 'Backvault-Webhook/1',
        'x-backvault-event': message.event,
        'x-backvault-delivery': message.id,
        'x-backvault-timestamp': String(timestamp),
        'x-backvault-signature': `sha256=${signWebhook(config.secret, timestamp, body)}`,
      },
      body,
      signal: AbortSignal.any([signal, AbortSignal.timeout(timeout)]),
      headersTimeout: timeout,
      bodyTimeout: timeout,
    });
    await res.body.dump().catch(() => undefined);
    const code = res.statusCode;
    if (code >= 200 && code < 300) return { ok: true, retryable: false, status_code: code };
    const retryable = code >= 500 || code === 429 || code === 408;
    const hint = retryable ? '' : code >= 300 && code < 400 ? ' (redirects are not followed; use the final URL)' : '; check the URL and the receiver';
    const ra = retryAfter(res.headers['retry-after'], Date.now());
    return { ok: false, retryable, status_code: code, error: `the receiver answered HTTP ${code}${hint}`, ...(ra !== undefined ? { retryAfterMs: ra } : {}) };
  } catch (err) {
    if (signal.aborted) return { ok: false, retryable: false, error: 'the server stopped before the notification was delivered' };
    return { ok: false, retryable: true, error: `could not reach the receiver (${networkReason(err)})` };
  }
}

async function emailAttempt(ctx: ServiceContext, config: EmailConfig, message: Message): Promise<Attempt> {
  const timeout = ctx.config.notification_timeout_ms;
  const transport = nodemailer.createTransport({
    host: config.host,
    port: config.port,
    secure: config.security === 'tls',
    requireTLS: config.security === 'starttls',
    ignoreTLS: config.security === 'none',
    ...(config.user ? { auth: { user: config.user, pass: config.password ?? '' } } : {}),
    connectionTimeout: timeout,
    greetingTimeout: timeout,
    socketTimeout: timeout * 3,
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  try {
    await transport.sendMail({
      from: config.from,
      to: config.to,
      subject: `[Backvault] ${message.summary}`,
      text: message.text,
      headers: { 'X-Backvault-Event': message.event, 'X-Backvault-Delivery': message.id },
    });
    return { ok: true, retryable: false };
  } catch (err) {
    const e = err as { code?: string; responseCode?: number; message?: string };
    const rc = e.responseCode;
    // 4xx replies are the server's "try later"; 5xx and refused logins will not change by retrying.
    const retryable = rc !== undefined ? rc >= 400 && rc < 500 : e.code !== 'EAUTH' && e.code !== 'EENVELOPE' && e.code !== 'EMESSAGE';
    const what = e.code === 'EAUTH' ? 'the SMTP server refused the login; check user and password' : `the SMTP server failed (${e.code ?? 'error'}${rc ? ` ${rc}` : ''})`;
    return { ok: false, retryable, error: scrub(`${what}: ${e.message ?? ''}`, [config.password]) };
  } finally {
    transport.close();
  }
}

async function attempt(ctx: ServiceContext, row: NotificationChannelTable, message: Message, signal: AbortSignal): Promise<Attempt> {
  const config = parseConfig(row);
  return row.kind === 'webhook' ? webhookAttempt(ctx, config as WebhookConfig, message, signal) : emailAttempt(ctx, config as EmailConfig, message);
}

async function record(ctx: ServiceContext, id: string, status: string, error: string | null): Promise<void> {
  try {
    await ctx.db.updateTable('notification_channels').set({ last_status: status, last_error: error, last_attempt_at: ctx.clock.now().toISOString() }).where('id', '=', id).execute();
  } catch (err) {
    ctx.log.warn({ err: (err as Error)?.message, channel: id }, 'recording a notification result failed');
  }
}

/**
 * Sends one message to one channel, retrying transient failures (network
 * errors, HTTP 5xx/408/429, SMTP 4xx) with exponential backoff and jitter,
 * and records each attempt on the channel.
 */
export async function deliver(ctx: ServiceContext, row: NotificationChannelTable, message: Message, options: { maxAttempts: number; signal: AbortSignal }): Promise<DeliveryResult> {
  const started = Date.now();
  let last: Attempt = { ok: false, retryable: false };
  let n = 0;
  while (n < options.maxAttempts) {
    n++;
    last = await attempt(ctx, row, message, options.signal);
    if (last.ok) {
      await record(ctx, row.id, 'success', null);
      break;
    }
    const canRetry = last.retryable && n < options.maxAttempts && !options.signal.aborted;
    const base = ctx.config.notification_retry_base_ms * 2 ** (n - 1);
    const delay = Math.min(MAX_RETRY_DELAY_MS, Math.max(base * (0.8 + Math.random() * 0.4), last.retryAfterMs ?? 0));
    const error = `attempt ${n} of ${options.maxAttempts}: ${last.error ?? 'failed'}${canRetry ? `; retrying in ${humanDuration(Math.round(delay))}` : ''}`;
    ctx.log.warn({ channel: row.id, name: row.name, kind: row.kind, event: message.event, delivery: message.id, error }, 'notification attempt failed');
    await record(ctx, row.id, canRetry ? 'retrying' : 'error', error);
    if (!canRetry) break;
    try {
      await sleep(delay, undefined, { signal: options.signal });
    } catch {
      await record(ctx, row.id, 'error', `attempt ${n} of ${options.maxAttempts}: ${last.error ?? 'failed'}; given up because the server stopped`);
      break;
    }
  }
  return { ok: last.ok, attempts: n, status_code: last.status_code ?? null, error: last.ok ? null : (last.error ?? 'failed'), duration_ms: Date.now() - started };
}

/** POST /notifications/{id}/test: one attempt, answered with its result. */
export async function testChannel(ctx: ServiceContext, id: string): Promise<DeliveryResult> {
  const row = await getChannelRow(ctx, id);
  const message: Message = { id: newId(), ...testDraft(ctx, row.name) };
  return deliver(ctx, row, message, { maxAttempts: 1, signal: new AbortController().signal });
}

// ---------------------------------------------------------------------------
// The notifier: events in, deliveries out

/** Deliveries (with their pending retries) held at once; beyond it new ones are dropped and logged. */
const MAX_PENDING = 1000;

export class Notifier {
  private readonly controller = new AbortController();
  private readonly pending = new Set<Promise<void>>();
  /** deliveries under way or waiting for a retry */
  private deliveries = 0;
  private stopped = false;

  private readonly onBackup = ({ backup, durationMs }: { backup: BackupView; durationMs: number | null }) => {
    if (backup.status !== 'success' && backup.status !== 'error') return;
    this.dispatch(backup.status === 'success' ? 'backup.success' : 'backup.failure', () => backupDraft(this.ctx, backup, durationMs));
  };

  private readonly onVerify = ({ backup }: { backup: BackupView }) => {
    if (backup.verify_status !== 'error') return;
    this.dispatch('verify.failure', () => verifyDraft(this.ctx, backup));
  };

  private readonly onLate = ({ policy, dueAt, lastSuccessAt }: { policy: PolicyRef; dueAt: string; lastSuccessAt: string | null }) => {
    this.dispatch('policy.late', async () => lateDraft(this.ctx, policy, dueAt, lastSuccessAt));
  };

  constructor(private readonly ctx: ServiceContext) {}

  start(): this {
    this.ctx.events.on('backup.finished', this.onBackup);
    this.ctx.events.on('verify.finished', this.onVerify);
    this.ctx.events.on('policy.late', this.onLate);
    return this;
  }

  /** Stops listening, cancels pending retries and waits for attempts under way (each bounded by the timeout). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.ctx.events.off('backup.finished', this.onBackup);
    this.ctx.events.off('verify.finished', this.onVerify);
    this.ctx.events.off('policy.late', this.onLate);
    this.controller.abort();
    await this.idle();
  }

  /** Resolves when no delivery is pending (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  private dispatch(event: NotificationEvent, draft: () => Promise<Draft>): void {
    if (this.stopped) return;
    const task = this.send(event, draft).catch((err: unknown) => {
      this.ctx.log.error({ err, event }, 'sending notifications failed');
    });
    this.pending.add(task);
    void task.finally(() => this.pending.delete(task));
  }

  private async send(event: NotificationEvent, draft: () => Promise<Draft>): Promise<void> {
    const rows = await this.ctx.db.selectFrom('notification_channels').selectAll().where('enabled', '=', 1).execute();
    const targets = rows.filter((r) => (JSON.parse(r.events) as string[]).includes(event) && (r.failures_only === 0 || FAILURE_EVENTS.has(event)));
    if (targets.length === 0) return;
    const d = await draft();
    await Promise.all(
      targets.map(async (row) => {
        if (this.deliveries >= MAX_PENDING) {
          this.ctx.log.warn({ channel: row.id, name: row.name, event }, 'too many notifications pending; this one was dropped');
          return;
        }
        this.deliveries++;
        try {
          const message: Message = { id: newId(), ...d };
          await deliver(this.ctx, row, message, { maxAttempts: this.ctx.config.notification_max_attempts, signal: this.controller.signal });
        } finally {
          this.deliveries--;
        }
      }),
    );
  }
}

const notifiers = new WeakMap<ServiceContext, Notifier>();

/** Starts sending notifications for ctx's events (once per context). */
export function startNotifier(ctx: ServiceContext): Notifier {
  let n = notifiers.get(ctx);
  if (!n) {
    n = new Notifier(ctx).start();
    notifiers.set(ctx, n);
  }
  return n;
}

export function notifierOf(ctx: ServiceContext): Notifier | undefined {
  return notifiers.get(ctx);
}
