// The Scalingo dialect, /scalingo/api: Scalingo's database backups API
// (reference/scalingo-database-backups.md) translated onto the core services.
// A Scalingo database is a Backvault instance. Auth: Authorization: Bearer
// <Backvault API key or login token>; both endpoints only read.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as instances from '../../../services/instances.ts';
import * as backups from '../../../services/backups.ts';
import { toAppError } from '../../errors.ts';
import { bearerOf } from '../../auth.ts';
import { sendDownload } from '../../download.ts';
import { NAME_RE } from '../../../domain/types.ts';
import type { BackupView } from '../../../services/views.ts';

export interface ScalingoOptions {
  ctx: ServiceContext;
}

export interface ScalingoBackup {
  id: string;
  created_at: string;
  name: string;
  size: number;
  status: 'pending' | 'done' | 'error';
  database_id: string;
}

const PAGE = 500;
const ID_RE = /^[0-9a-f]{24}$/;

/** Scalingo has three words: whatever has not ended yet is pending. */
export function scalingoStatus(status: string): ScalingoBackup['status'] {
  if (status === 'success') return 'done';
  if (status === 'error') return 'error';
  return 'pending'; // scheduled, running, uploading
}

/** ISO 8601 with milliseconds and an explicit offset, as Scalingo prints it; always UTC here. */
export function scalingoTime(iso: string): string {
  return new Date(iso).toISOString().replace(/Z$/, '+00:00');
}

/** 20181104010000_<database>: the creation time in UTC, then the database. */
export function scalingoName(iso: string, database: string): string {
  return `${new Date(iso).toISOString().slice(0, 19).replace(/[-T:]/g, '')}_${database}`;
}

export function scalingoBackup(b: BackupView): ScalingoBackup {
  const status = scalingoStatus(b.status);
  return {
    id: b.id,
    created_at: scalingoTime(b.created_at),
    name: scalingoName(b.created_at, b.instance),
    size: status === 'done' ? b.size : 0,
    status,
    database_id: b.instance,
  };
}

/** An error with Scalingo's body, {"error": "..."}. */
class ScalingoError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function publicBase(ctx: ServiceContext, req: FastifyRequest): string {
  if (ctx.config.public_url) return ctx.config.public_url.replace(/\/+$/, '');
  return `${req.protocol}://${req.host}`;
}

function sendScalingoError(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  let status: number;
  let message: string;
  if (err instanceof ScalingoError) {
    status = err.status;
    message = err.message;
  } else {
    const app = toAppError(err);
    if (app.code === 'internal') req.log.error({ err }, 'internal error');
    status = app.status;
    message = app.message;
    if (app.code === 'instance_not_found') message = 'database not found';
    else if (app.code === 'backup_not_found') message = 'backup not found';
  }
  return reply.code(status).type('application/json').send({ error: message });
}

export async function scalingoDialect(app: FastifyInstance, options: ScalingoOptions): Promise<void> {
  const { ctx } = options;
  const base = app.prefix; // /scalingo/api

  app.setErrorHandler((err, req, reply) => sendScalingoError(req, reply, err));
  // A catch-all route too: the global auth hook would answer a not-found request without a token with 401.
  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (_req, reply) => reply.code(404).send({ error: 'not found' }));
  app.all('/*', { config: { auth: 'none' } }, async (_req, reply) => reply.code(404).send({ error: 'not found' }));

  const guard = async (req: FastifyRequest) => {
    const bearer = bearerOf(req);
    if (!bearer) throw new ScalingoError(401, 'authentication required: send Authorization: Bearer <token>');
    req.principal = await auth.authenticate(ctx, bearer);
  };

  const database = async (name: string): Promise<string> => {
    if (!NAME_RE.test(name)) throw new ScalingoError(404, 'database not found');
    await instances.getInstanceRow(ctx, name);
    return name;
  };

  /** A backup of this database; another database's backup is not found here. */
  const backupOf = async (db: string, id: string): Promise<BackupView> => {
    if (!ID_RE.test(id)) throw new ScalingoError(404, 'backup not found');
    const b = await backups.getBackup(ctx, id);
    if (b.instance !== db) throw new ScalingoError(404, 'backup not found');
    return b;
  };

  type P = { db: string; backup: string };

  app.get('/databases/:db/backups', { config: { auth: 'none' }, preHandler: guard }, async (req) => {
    const db = await database((req.params as P).db);
    const out: ScalingoBackup[] = [];
    for (let page = 1; ; page++) {
      const { items, total } = await backups.listBackups(ctx, { instance: db, page, perPage: PAGE });
      out.push(...items.map(scalingoBackup));
      if (items.length < PAGE || out.length >= total) break;
    }
    return { database_backups: out }; // newest first, as Scalingo lists them
  });

  app.get('/databases/:db/backups/:backup/archive', { config: { auth: 'none' }, preHandler: guard }, async (req) => {
    const p = req.params as P;
    const db = await database(p.db);
    const b = await backupOf(db, p.backup);
    if (b.status !== 'success') throw new ScalingoError(409, `backup is ${scalingoStatus(b.status)}, only a done backup can be downloaded`);
    const { token } = await auth.signDownloadToken(ctx, b.id, ctx.config.download_link_ttl_seconds);
    return { download_url: `${publicBase(ctx, req)}${base}/databases/${db}/backups/${b.id}/download?token=${encodeURIComponent(token)}` };
  });

  // The pre-signed link: the token alone grants it, until it expires.
  app.get('/databases/:db/backups/:backup/download', { config: { auth: 'none' } }, async (req, reply) => {
    const p = req.params as P;
    const token = (req.query as { token?: string }).token;
    if (!token) throw new ScalingoError(401, 'the download link has no token; ask for a new one');
    // The token first: without a valid one, nothing is told about what exists.
    await auth.verifyDownloadToken(ctx, token, p.backup);
    const db = await database(p.db);
    const b = await backupOf(db, p.backup);
    return sendDownload(req, reply, await backups.openDownload(ctx, b.id));
  });
}
