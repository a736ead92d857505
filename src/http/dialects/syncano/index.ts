// The Syncano dialect, /syncano/v1: Syncano's backup and restore API
// (reference/syncano-backup-and-restore.md) translated onto the core
// services. A Syncano instance is a Backvault instance; auth is X-API-KEY
// with a Backvault API key (read keys read, admin keys write).
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as instances from '../../../services/instances.ts';
import * as backups from '../../../services/backups.ts';
import * as restores from '../../../services/restores.ts';
import { AppError, isErrorCode } from '../../../errors/index.ts';
import { NAME_RE, type Selection } from '../../../domain/types.ts';
import type { BackupView } from '../../../services/views.ts';
import { sendDownload } from '../../download.ts';
import { BAD_KEY, NO_CREDENTIALS, NO_PERMISSION, NOT_FOUND, SyncanoError, detail, fieldErrors, sendSyncanoError } from './errors.ts';
import { BackupIndex, allBackups, allRestores, parseSyncanoId, syncanoId } from './ids.ts';
import { backupJson, restoreJson } from './views.ts';
import { backupListMetadata, selectionFromQueryArgs } from './query-args.ts';

export interface SyncanoOptions {
  ctx: ServiceContext;
}

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 500;


type Kind = 'full' | 'partial';
type Scope = 'read' | 'admin';

function publicBase(ctx: ServiceContext, req: FastifyRequest): string {
  if (ctx.config.public_url) return ctx.config.public_url.replace(/\/+$/, '');
  return `${req.protocol}://${req.host}`;
}

/** Syncano paths end in a slash; the document also writes /v1/backups/full without one. Both are served. */
function variants(path: string): string[] {
  return path.endsWith('/') ? [path, path.slice(0, -1)] : [path];
}

function kindOf(value: string): Kind {
  if (value === 'full' || value === 'partial') return value;
  throw detail(404, NOT_FOUND);
}

function idOf(value: string): number {
  const n = parseSyncanoId(value);
  if (n === null) throw detail(404, NOT_FOUND);
  return n;
}

/** The instance must exist; a name that cannot be one is simply not found. */
async function instanceOf(ctx: ServiceContext, name: string): Promise<string> {
  if (!NAME_RE.test(name)) throw detail(404, 'Instance was not found.');
  await instances.getInstanceRow(ctx, name);
  return name;
}

/** JSON, form or multipart fields as one object, as Django REST framework reads them. */
async function readBody(req: FastifyRequest): Promise<Record<string, unknown>> {
  if (req.isMultipart()) {
    const out: Record<string, unknown> = {};
    for await (const part of req.parts()) {
      if (part.type === 'file') {
        part.file.resume();
        throw detail(400, 'Files are not accepted here.');
      }
      out[part.fieldname] = part.value;
    }
    return out;
  }
  const body = req.body;
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) {
    throw fieldErrors({ non_field_errors: [`Invalid data. Expected a dictionary, but got ${Array.isArray(body) ? 'list' : typeof body}.`] });
  }
  return body as Record<string, unknown>;
}

/** A CharField: strings, numbers as text; null and other types refused. */
function textField(body: Record<string, unknown>, field: string, max: number, errors: Record<string, string[]>): string | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  let text: string;
  if (v === null) {
    errors[field] = ['This field may not be null.'];
    return undefined;
  } else if (typeof v === 'string') text = v;
  else if (typeof v === 'number' && Number.isFinite(v)) text = String(v);
  else {
    errors[field] = ['Not a valid string.'];
    return undefined;
  }
  if (text.length > max) {
    errors[field] = [`Ensure this field has no more than ${max} characters.`];
    return undefined;
  }
  return text;
}

interface PageQuery {
  page_size?: string;
  direction?: string;
  last_pk?: string;
  ordering?: string;
}

/**
 * Syncano's cursor pagination over integer ids: {objects, next, prev}, where
 * next and prev are links carrying direction (1 forward, 0 back) and last_pk.
 */
function paginate<T extends { id: number }>(items: T[], query: PageQuery, path: string) {
  const malformed = () => detail(400, 'Incorrect page parameter provided.');
  let size = DEFAULT_PAGE_SIZE;
  if (query.page_size !== undefined) {
    if (!/^\d+$/.test(query.page_size)) throw malformed();
    size = Math.min(Number(query.page_size), MAX_PAGE_SIZE);
  }
  let direction: 0 | 1 | null = null;
  if (query.direction !== undefined) {
    if (query.direction !== '0' && query.direction !== '1') throw malformed();
    direction = query.direction === '1' ? 1 : 0;
  }
  let lastPk: number | null = null;
  if (query.last_pk !== undefined) {
    lastPk = parseSyncanoId(query.last_pk);
    if (lastPk === null) throw malformed();
  }
  const ordering = query.ordering?.toLowerCase() === 'desc' ? 'desc' : 'asc';
  const sorted = [...items].sort((a, b) => (ordering === 'asc' ? a.id - b.id : b.id - a.id));
  const after = (x: T) => lastPk === null || (ordering === 'asc' ? x.id > lastPk : x.id < lastPk);
  const before = (x: T) => lastPk === null || (ordering === 'asc' ? x.id < lastPk : x.id > lastPk);
  let start: number;
  let end: number;
  if (direction === 0) {
    const candidates = sorted.filter(before);
    end = candidates.length;
    start = Math.max(0, end - size);
  } else {
    start = direction === 1 ? sorted.findIndex(after) : 0;
    if (start < 0) start = sorted.length;
    end = Math.min(sorted.length, start + size);
  }
  const objects = sorted.slice(start, end);
  const link = (dir: 0 | 1, pk: number) => {
    const params = new URLSearchParams();
    if (query.page_size !== undefined) params.set('page_size', query.page_size);
    if (query.ordering !== undefined) params.set('ordering', query.ordering);
    params.set('direction', String(dir));
    params.set('last_pk', String(pk));
    return `${path}?${params.toString()}`;
  };
  const next = end < sorted.length && objects.length > 0 ? link(1, objects[objects.length - 1]!.id) : null;
  const prev = start > 0 && objects.length > 0 ? link(0, objects[0]!.id) : null;
  return { objects, next, prev };
}

export async function syncanoDialect(app: FastifyInstance, options: SyncanoOptions): Promise<void> {
  const { ctx } = options;
  const base = app.prefix; // /syncano/v1: links carry it so they can be fetched from the same host
  // Syncano's per-account limit (config syncano_max_backups); 0 means no limit.
  const maxBackups = ctx.config.syncano_max_backups;
  const index = new BackupIndex();

  // Bodies as Syncano reads them: JSON (an empty body is an empty object), forms, multipart (global plugin).
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body).trim();
    if (text === '') return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch {
      done(Object.assign(new Error('invalid JSON'), { statusCode: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY' }), undefined);
    }
  });
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(String(body))));
  });

  app.setErrorHandler((err, req, reply) => sendSyncanoError(req, reply, err));
  // Unknown paths under the prefix: a catch-all route rather than only a not-found handler, because the
  // global auth hook would answer 401 for a not-found request that carries no Bearer token.
  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (_req, reply) => reply.code(404).send({ detail: NOT_FOUND }));
  app.all('/*', { config: { auth: 'none' } }, async (_req, reply) => reply.code(404).send({ detail: NOT_FOUND }));

  const guard = (scope: Scope) => async (req: FastifyRequest) => {
    const header = req.headers['x-api-key'];
    let key = typeof header === 'string' ? header.trim() : '';
    // Syncano also took the key from Authorization: "<scheme> <key>".
    if (!key && req.headers.authorization) key = /^\S+\s+(\S+)\s*$/.exec(req.headers.authorization)?.[1] ?? '';
    if (!key) throw detail(401, NO_CREDENTIALS);
    let principal: auth.Principal;
    try {
      principal = await auth.authenticate(ctx, key);
    } catch (err) {
      if (err instanceof AppError && err.status === 401) throw detail(401, BAD_KEY);
      throw err;
    }
    req.principal = principal;
    if (scope === 'admin' && principal.scope !== 'admin') throw detail(403, NO_PERMISSION);
  };

  const route = (method: 'GET' | 'POST' | 'DELETE' | 'OPTIONS', path: string, scope: Scope | 'none', handler: RouteHandlerMethod) => {
    for (const url of variants(path)) {
      app.route({ method, url, config: { auth: 'none' }, ...(scope === 'none' ? {} : { preHandler: guard(scope) }), handler });
    }
  };

  const archiveUrl = async (req: FastifyRequest, b: BackupView): Promise<string | null> => {
    if (b.status !== 'success') return null;
    const { token } = await auth.signDownloadToken(ctx, b.id, ctx.config.download_link_ttl_seconds);
    return `${publicBase(ctx, req)}${base}/backups/${b.type}/${syncanoId(b.id)}/archive/?token=${encodeURIComponent(token)}`;
  };
  const show = async (req: FastifyRequest, b: BackupView) => backupJson(b, base, await archiveUrl(req, b));

  /** A backup by integer id, of this kind (and instance, when the path names one). */
  const findBackup = async (kind: Kind, n: number, instance?: string): Promise<BackupView> => {
    const b = await index.find(ctx, n);
    if (!b || b.type !== kind || (instance !== undefined && b.instance !== instance)) throw detail(404, NOT_FOUND);
    return b;
  };

  const list = async (req: FastifyRequest, kind: Kind, instance?: string) => {
    const all = await allBackups(ctx, { type: kind, ...(instance !== undefined ? { instance } : {}) });
    index.rememberAll(all);
    const shown = await Promise.all(all.map((b) => show(req, b)));
    return paginate(shown, req.query as PageQuery, req.url.split('?')[0]!);
  };

  /** Backups that count against the account limit: all but failed ones, on every instance. */
  const countBackups = async (): Promise<number> => {
    const all = await backups.listBackups(ctx, { page: 1, perPage: 1 });
    const failed = await backups.listBackups(ctx, { status: 'error', page: 1, perPage: 1 });
    return all.total - failed.total;
  };

  const create = async (req: FastifyRequest, reply: FastifyReply, kind: Kind, instance: string) => {
    const body = await readBody(req);
    const errors: Record<string, string[]> = {};
    const label = textField(body, 'label', 64, errors);
    const description = textField(body, 'description', 256, errors);
    let queryArgs: unknown;
    if (kind === 'partial') {
      queryArgs = body.query_args;
      if (typeof queryArgs === 'string') {
        try {
          queryArgs = JSON.parse(queryArgs);
        } catch {
          errors.query_args = ['Value must be valid JSON.'];
        }
      }
      if (queryArgs === undefined || queryArgs === null) errors.query_args = ['This field is required.'];
    }
    if (Object.keys(errors).length > 0) throw fieldErrors(errors);
    let selection: Selection | null = null;
    if (kind === 'partial') selection = await selectionFromQueryArgs(ctx, instance, queryArgs);
    if (maxBackups > 0 && (await countBackups()) >= maxBackups) {
      throw detail(400, `Maximum number of backups per account reached (${maxBackups}).`);
    }
    const view = await backups.createBackup(ctx, instance, {
      type: kind,
      label: label ?? null,
      description: description ?? null,
      ...(selection ? { selection } : {}),
    });
    index.remember(view.id);
    return reply.code(201).send(await show(req, view));
  };

  const remove = async (reply: FastifyReply, b: BackupView) => {
    // Syncano deletes a backup that has not started; the core wants it cancelled first.
    if (b.status === 'scheduled') {
      await backups.cancelBackup(ctx, b.id).catch((err: unknown) => {
        if (!isErrorCode(err, 'not_cancellable')) throw err;
      });
    }
    await backups.deleteBackup(ctx, b.id);
    return reply.code(204).send();
  };

  type P = Record<string, string>;

  // Links views, as Syncano had them.
  route('GET', '/backups/', 'read', async () => ({ links: { full: `${base}/backups/full/`, partial: `${base}/backups/partial/` } }));
  route('GET', '/instances/:instance/backups/', 'read', async (req) => {
    const instance = await instanceOf(ctx, (req.params as P).instance!);
    return { links: { full: `${base}/instances/${instance}/backups/full/`, partial: `${base}/instances/${instance}/backups/partial/` } };
  });

  // Across all instances.
  route('GET', '/backups/:kind/', 'read', async (req) => list(req, kindOf((req.params as P).kind!)));
  route('GET', '/backups/:kind/:id/', 'read', async (req) => {
    const p = req.params as P;
    return show(req, await findBackup(kindOf(p.kind!), idOf(p.id!)));
  });
  route('DELETE', '/backups/:kind/:id/', 'admin', async (req, reply) => {
    const p = req.params as P;
    return remove(reply, await findBackup(kindOf(p.kind!), idOf(p.id!)));
  });
  // The archive URL: the exchange archive, for whoever holds the link (a signed, expiring token).
  route('GET', '/backups/:kind/:id/archive/', 'none', async (req, reply) => {
    const p = req.params as P;
    const token = (req.query as { token?: string }).token;
    // Whatever is wrong, the answer is the same without a valid token: nothing is told about what exists.
    const invalid = () => new AppError('invalid_download_token');
    if (!token) throw invalid();
    const b = await findBackup(kindOf(p.kind!), idOf(p.id!)).catch((err: unknown) => {
      throw err instanceof SyncanoError ? invalid() : err;
    });
    await auth.verifyDownloadToken(ctx, token, b.id);
    return sendDownload(req, reply, await backups.openDownload(ctx, b.id));
  });

  // Per instance.
  route('OPTIONS', '/instances/:instance/backups/:kind/', 'read', async (req) => {
    const kind = kindOf((req.params as P).kind!);
    const instance = await instanceOf(ctx, (req.params as P).instance!);
    return backupListMetadata(kind, kind === 'partial' ? await instances.listResourceRows(ctx, instance) : null);
  });
  route('GET', '/instances/:instance/backups/:kind/', 'read', async (req) => {
    const kind = kindOf((req.params as P).kind!);
    return list(req, kind, await instanceOf(ctx, (req.params as P).instance!));
  });
  route('POST', '/instances/:instance/backups/:kind/', 'admin', async (req, reply) => {
    const kind = kindOf((req.params as P).kind!);
    return create(req, reply, kind, await instanceOf(ctx, (req.params as P).instance!));
  });
  route('GET', '/instances/:instance/backups/:kind/:id/', 'read', async (req) => {
    const p = req.params as P;
    const kind = kindOf(p.kind!);
    const instance = await instanceOf(ctx, p.instance!);
    return show(req, await findBackup(kind, idOf(p.id!), instance));
  });
  route('DELETE', '/instances/:instance/backups/:kind/:id/', 'admin', async (req, reply) => {
    const p = req.params as P;
    const kind = kindOf(p.kind!);
    const instance = await instanceOf(ctx, p.instance!);
    return remove(reply, await findBackup(kind, idOf(p.id!), instance));
  });

  // Restores: one per instance at a time (the core refuses a second one).
  route('POST', '/instances/:instance/restores/', 'admin', async (req, reply) => {
    const instance = await instanceOf(ctx, (req.params as P).instance!);
    const body = await readBody(req);
    if (body.archive !== undefined && body.archive !== null) {
      throw fieldErrors({ archive: ['Restoring from an uploaded archive is not supported here; import it with the native API, then restore that backup.'] });
    }
    if (body.backup === undefined || body.backup === null) throw fieldErrors({ backup: ['This field is required.'] });
    const n = parseSyncanoId(body.backup);
    if (n === null) throw fieldErrors({ backup: [`Incorrect type. Expected pk value, received ${typeof body.backup === 'string' ? 'str' : typeof body.backup}.`] });
    const b = await index.find(ctx, n);
    const missing = `Invalid pk "${n}" - object does not exist.`;
    if (!b || b.status !== 'success') throw fieldErrors({ backup: [missing] });
    if (b.instance !== instance) {
      throw fieldErrors({ backup: [`${missing} Backup ${n} is of instance ${b.instance}; a backup can only be restored into its own instance here.`] });
    }
    const restore = await restores.createRestore(ctx, instance, { backup: b.id });
    return reply.code(201).send(restoreJson(restore, base));
  });
  route('GET', '/instances/:instance/restores/', 'read', async (req) => {
    const instance = await instanceOf(ctx, (req.params as P).instance!);
    const shown = (await allRestores(ctx, instance)).map((r) => restoreJson(r, base));
    return paginate(shown, req.query as PageQuery, req.url.split('?')[0]!);
  });
  route('GET', '/instances/:instance/restores/:id/', 'read', async (req) => {
    const p = req.params as P;
    const instance = await instanceOf(ctx, p.instance!);
    const n = idOf(p.id!);
    const r = (await allRestores(ctx, instance)).find((x) => syncanoId(x.id) === n);
    if (!r) throw detail(404, NOT_FOUND);
    return restoreJson(r, base);
  });
}
