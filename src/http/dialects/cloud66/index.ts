// The Cloud66 dialect, /cloud66/api/3: Cloud66's managed backups API
// (reference/cloud66-backups.md) translated onto the core services. A
// Cloud66 stack is a Backvault instance (the stack id is the instance name),
// a backup group (backup task) is a policy. Auth: Authorization: Bearer
// <Backvault API key or login token>; the document's public scope is a read
// key, its admin scope an admin key. Every answer is wrapped in
// {"response": ...}; errors are {"error", "error_description"}.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import parseRange from 'range-parser';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as instances from '../../../services/instances.ts';
import * as backups from '../../../services/backups.ts';
import * as restores from '../../../services/restores.ts';
import * as imports from '../../../services/imports.ts';
import * as policies from '../../../services/policies.ts';
import type { BackupView, RestoreView } from '../../../services/views.ts';
import type { ResourceTable } from '../../../catalog/schema.ts';
import { AppError } from '../../../errors/index.ts';
import { NAME_RE } from '../../../domain/types.ts';
import { bearerOf } from '../../auth.ts';
import { Cloud66Error, INSUFFICIENT_SCOPE, NO_TOKEN, invalidRequest, notFound, sendCloud66Error } from './errors.ts';
import { dbTypeFilter, importParams, integer, policyFromTask, readParams, text, type Params } from './params.ts';
import {
  backupFiles,
  backupJson,
  backupResources,
  backupStatus,
  cloud66Id,
  dbTypesOf,
  fileBase,
  parseCloud66Id,
  type BackupFile,
  type Cloud66Backup,
} from './views.ts';

export interface Cloud66Options {
  ctx: ServiceContext;
}

type Scope = 'read' | 'admin';

const PAGE = 500; // core page size when reading a whole list
const PER_PAGE = 30; // Cloud66's page size
const MAX_PER_PAGE = 100;
const HEX_ID = /^[0-9a-f]{24}$/;
const MESSAGE_TASK = 'queued for creation';
const MESSAGE_IMPORT = 'Your external backup queued for upload';

function publicBase(ctx: ServiceContext, req: FastifyRequest): string {
  if (ctx.config.public_url) return ctx.config.public_url.replace(/\/+$/, '');
  return `${req.protocol}://${req.host}`;
}

interface PageQuery {
  page: number;
  perPage: number;
}

function pageOf(q: Params): PageQuery {
  return { page: integer(q, 'page', 1, 1_000_000) ?? 1, perPage: integer(q, 'per_page', 1, MAX_PER_PAGE) ?? PER_PAGE };
}

/** Cloud66's list envelope: the page's items, the total count, and page numbers. */
function listEnvelope<T>(all: T[], { page, perPage }: PageQuery) {
  const total = all.length;
  const pages = Math.max(1, Math.ceil(total / perPage));
  return {
    response: all.slice((page - 1) * perPage, page * perPage),
    count: total,
    pagination: { previous: page > 1 ? page - 1 : null, next: page < pages ? page + 1 : null, current: page, per_page: perPage, count: total, pages },
  };
}

export async function cloud66Dialect(app: FastifyInstance, options: Cloud66Options): Promise<void> {
  const { ctx } = options;
  const base = app.prefix; // /cloud66/api/3
  const part = ctx.config.cloud66_part_bytes;

  // Rails reads JSON (an empty body is no parameters) and forms alike; multipart comes from the global plugin.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const raw = String(body).trim();
    if (raw === '') return done(null, {});
    try {
      done(null, JSON.parse(raw));
    } catch {
      done(Object.assign(new Error('invalid JSON'), { statusCode: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY' }), undefined);
    }
  });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(String(body))));
  });

  app.setErrorHandler((err, req, reply) => sendCloud66Error(req, reply, err));
  // A catch-all route as well: the server-wide auth hook would answer a not-found request without a token in the native shape.
  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (req, reply) => sendCloud66Error(req, reply, notFound('No such endpoint.')));
  app.all('/*', { config: { auth: 'none' } }, async () => {
    throw notFound('No such endpoint.');
  });

  const guard = (scope: Scope) => async (req: FastifyRequest) => {
    const bearer = bearerOf(req);
    if (!bearer) throw new Cloud66Error(401, 'invalid_token', NO_TOKEN);
    req.principal = await auth.authenticate(ctx, bearer);
    if (scope === 'admin' && req.principal.scope !== 'admin') throw new Cloud66Error(403, 'insufficient_scope', INSUFFICIENT_SCOPE);
  };
  const read = { config: { auth: 'none' as const }, preHandler: guard('read') };
  const admin = { config: { auth: 'none' as const }, preHandler: guard('admin') };

  /** The stack must exist; an id that cannot be an instance name is simply not found. */
  const stackOf = async (req: FastifyRequest): Promise<string> => {
    const name = (req.params as { stack: string }).stack;
    if (!NAME_RE.test(name)) throw new Cloud66Error(404, 'stack_not_found', 'No stack has this id.');
    await instances.getInstanceRow(ctx, name);
    return name;
  };

  /** Every backup of the stack, newest first (the core's order). */
  const allBackups = async (stack: string): Promise<BackupView[]> => {
    const out: BackupView[] = [];
    for (let page = 1; ; page++) {
      const { items, total } = await backups.listBackups(ctx, { instance: stack, page, perPage: PAGE });
      out.push(...items);
      if (items.length < PAGE || out.length >= total) return out;
    }
  };

  /** backup id -> its latest restore. */
  const latestRestores = async (stack: string): Promise<Map<string, RestoreView>> => {
    const latest = new Map<string, RestoreView>();
    for (let page = 1, seen = 0; ; page++) {
      const { items, total } = await restores.listRestores(ctx, stack, page, PAGE);
      for (const r of items) if (!latest.has(r.backup)) latest.set(r.backup, r); // newest first
      seen += items.length;
      if (items.length < PAGE || seen >= total) return latest;
    }
  };

  /** The stack's backup groups: policy integer id -> policy id. */
  const groupsOf = async (stack: string): Promise<Map<number, string>> => {
    const groups = new Map<number, string>();
    for (let page = 1, seen = 0; ; page++) {
      const { items, total } = await policies.listPolicies(ctx, { instance: stack, page, perPage: PAGE });
      for (const p of items) groups.set(cloud66Id(p.id), p.id);
      seen += items.length;
      if (items.length < PAGE || seen >= total) return groups;
    }
  };

  const shown = (b: BackupView, resources: ResourceTable[], latest: Map<string, RestoreView>): Cloud66Backup =>
    backupJson(b, backupResources(b, resources), latest.get(b.id));

  /**
   * A backup of the stack by its integer id. Cloud66 knows a backup once it
   * has been taken (its status is ok or failed), so one still being made is
   * not found yet.
   */
  const findBackup = async (stack: string, raw: string): Promise<BackupView> => {
    const n = parseCloud66Id(raw);
    if (n === null) throw notFound('Backup not found.');
    const b = (await allBackups(stack)).find((x) => cloud66Id(x.id) === n && backupStatus(x.status) !== null);
    if (!b) throw notFound('Backup not found.');
    return b;
  };

  const filesOf = async (b: BackupView): Promise<BackupFile[]> => {
    if (b.status !== 'success') return []; // a failed backup left no file
    const download = await backups.openDownload(ctx, b.id);
    return backupFiles(fileBase(b), download.size, part);
  };

  type P = { stack: string; id: string; file: string };

  // Backups list, with the group and db_type filters.
  app.get('/stacks/:stack/backups', read, async (req) => {
    const stack = await stackOf(req);
    const q = req.query as Params;
    const paging = pageOf(q);
    let group: number | undefined;
    if (q.group !== undefined && q.group !== '') {
      const n = parseCloud66Id(q.group);
      if (n === null) throw invalidRequest('group must be a backup group id (a positive whole number).');
      group = n; // matched on the backups themselves, so a deleted task's backups still filter
    }
    const dbType = dbTypeFilter(q.db_type);
    const resources = await instances.listResourceRows(ctx, stack);
    const latest = await latestRestores(stack);
    const list = (await allBackups(stack))
      .filter((b) => backupStatus(b.status) !== null)
      .filter((b) => group === undefined || (b.policy_id !== null && cloud66Id(b.policy_id) === group))
      .filter((b) => dbType === undefined || dbTypesOf(backupResources(b, resources)).includes(dbType));
    return listEnvelope(
      list.map((b) => shown(b, resources, latest)),
      paging,
    );
  });

  // New backup task (a policy), or import of an external backup when remote_url is given.
  app.post('/stacks/:stack/backups', admin, async (req, reply) => {
    const stack = await stackOf(req);
    const p = await readParams(req);
    if (p.remote_url !== undefined && p.remote_url !== null && p.remote_url !== '') {
      const ip = importParams(p);
      const policyId = (await groupsOf(stack)).get(ip.group);
      if (!policyId) throw notFound(`Stack ${stack} has no backup group ${ip.group}.`);
      await imports.importFromUrl(ctx, stack, ip.remoteUrl, { policy_id: policyId });
      return reply.code(200).send({ response: { ok: true, message: MESSAGE_IMPORT } });
    }
    const input = policyFromTask(stack, await instances.listResourceRows(ctx, stack), p);
    try {
      await policies.createPolicy(ctx, stack, input);
    } catch (err) {
      // The core names its own field; the client sent frequency.
      if (err instanceof AppError && err.code === 'invalid_request' && err.details?.field === 'schedule') {
        throw invalidRequest(err.message.replace(/^schedule/, 'frequency'));
      }
      throw err;
    }
    return reply.code(200).send({ response: { ok: true, message: MESSAGE_TASK } });
  });

  // One backup.
  app.get('/stacks/:stack/backups/:id', read, async (req) => {
    const stack = await stackOf(req);
    const b = await findBackup(stack, (req.params as P).id);
    const resources = await instances.listResourceRows(ctx, stack);
    return { response: shown(b, resources, await latestRestores(stack)) };
  });

  // The files of a backup: its tar, or the tar's parts when it is larger than the part size.
  app.get('/stacks/:stack/backups/:id/files', read, async (req) => {
    const stack = await stackOf(req);
    const paging = pageOf(req.query as Params);
    const b = await findBackup(stack, (req.params as P).id);
    return listEnvelope(
      (await filesOf(b)).map((f) => ({ id: f.id, name: f.name, size: f.size })),
      paging,
    );
  });

  // The public URL of one file: a signed link that expires, served below.
  app.get('/stacks/:stack/backups/:id/files/:file', read, async (req) => {
    const stack = await stackOf(req);
    const p = req.params as P;
    const b = await findBackup(stack, p.id);
    const file = (await filesOf(b)).find((f) => f.id === p.file);
    if (!file) throw notFound('Backup file not found.');
    const { token } = await auth.signDownloadToken(ctx, b.id, ctx.config.download_link_ttl_seconds);
    const url = `${publicBase(ctx, req)}${base}/public/backups/${b.id}/${file.id}/${encodeURIComponent(file.name)}?token=${encodeURIComponent(token)}`;
    return { response: { ok: true, public_url: url } };
  });

  // The public URL itself: the token alone grants it, until it expires. Streams the file's byte
  // range of the exchange archive; a Range request within the file is answered with 206.
  app.get('/public/backups/:backup/:file/:name', { config: { auth: 'none' } }, async (req, reply) => {
    const p = req.params as { backup: string; file: string; name: string };
    const token = text(req.query as Params, 'token', 4096);
    // The token first: without a valid one nothing is told about what exists.
    if (!token || !HEX_ID.test(p.backup)) throw new AppError('invalid_download_token');
    await auth.verifyDownloadToken(ctx, token, p.backup);
    const b = await backups.getBackup(ctx, p.backup);
    const download = await backups.openDownload(ctx, b.id);
    const file = backupFiles(fileBase(b), download.size, part).find((f) => f.id === p.file && f.name === p.name);
    if (!file) throw notFound('Backup file not found.');
    return sendPart(req, reply, file, (start, end) => download.stream({ start: file.start + start, end: file.start + end }));
  });

}

function sendPart(req: FastifyRequest, reply: FastifyReply, file: BackupFile, open: (start: number, end: number) => Readable): FastifyReply {
  reply.header('Content-Type', file.id === 'tar' ? 'application/x-tar' : 'application/octet-stream');
  reply.header('Content-Disposition', `attachment; filename="${file.name}"`);
  reply.header('Accept-Ranges', 'bytes');
  reply.header('Cache-Control', 'no-store');
  const header = req.headers.range;
  if (header) {
    const ranges = parseRange(file.size, header, { combine: true });
    if (ranges === -1) {
      reply.header('Content-Range', `bytes */${file.size}`);
      return reply.code(416).send({ error: 'invalid_range', error_description: 'The requested range is outside the file.' });
    }
    if (ranges !== -2 && ranges.type === 'bytes' && ranges.length === 1) {
      const { start, end } = ranges[0]!;
      reply.code(206);
      reply.header('Content-Range', `bytes ${start}-${end}/${file.size}`);
      reply.header('Content-Length', end - start + 1);
      return reply.send(open(start, end));
    }
    // Malformed or multiple ranges: the whole file, as RFC 9110 allows.
  }
  reply.header('Content-Length', file.size);
  return reply.send(open(0, file.size - 1));
}
