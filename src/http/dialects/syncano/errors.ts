// Syncano's error bodies (Django REST framework): {"detail": "..."} for
// request-wide errors, {"<field>": ["..."]} for invalid fields. Syncano
// answers its own conflicts (too many backups, an active backup, a running
// restore) with 400, so core conflicts map to 400 here too.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toAppError } from '../../errors.ts';

export type SyncanoBody = { detail: string } | Record<string, string[]>;

/** An error already in Syncano's words. */
export class SyncanoError extends Error {
  constructor(
    readonly status: number,
    readonly body: SyncanoBody,
  ) {
    super('detail' in body && typeof body.detail === 'string' ? body.detail : JSON.stringify(body));
  }
}

export const detail = (status: number, text: string) => new SyncanoError(status, { detail: text });
export const fieldErrors = (errors: Record<string, string[]>) => new SyncanoError(400, errors);

export const NOT_FOUND = 'Not found.';
export const NO_CREDENTIALS = 'Authentication credentials were not provided.';
export const BAD_KEY = 'No such API Key.';
export const NO_PERMISSION = 'You do not have permission to perform this action.';

/** Framework errors (body parsing, limits) in Syncano's words. */
function frameworkError(err: unknown): SyncanoError | null {
  const fe = err as { code?: string; statusCode?: number; message?: string };
  switch (fe?.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return detail(400, 'JSON parse error - the request body is not valid JSON.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return detail(415, 'Unsupported media type in request; send application/json, application/x-www-form-urlencoded or multipart/form-data.');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_FILES_LIMIT':
    case 'FST_PARTS_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return detail(413, 'Request size limit exceeded.');
  }
  return null;
}

export function toSyncanoError(err: unknown): { error: SyncanoError; internal: boolean } {
  if (err instanceof SyncanoError) return { error: err, internal: false };
  const fw = frameworkError(err);
  if (fw) return { error: fw, internal: false };
  const app = toAppError(err);
  switch (app.code) {
    case 'unauthorized':
    case 'invalid_credentials':
    case 'token_expired':
      return { error: detail(401, BAD_KEY), internal: false };
    case 'invalid_download_token':
      return { error: detail(401, 'Invalid or expired archive link; read the backup again for a fresh archive URL.'), internal: false };
    case 'forbidden':
      return { error: detail(403, NO_PERMISSION), internal: false };
    case 'instance_not_found':
      return { error: detail(404, 'Instance was not found.'), internal: false };
    case 'not_found':
    case 'backup_not_found':
    case 'restore_not_found':
    case 'storage_not_found':
      return { error: detail(404, NOT_FOUND), internal: false };
    case 'backup_in_use':
      return { error: detail(400, 'Cannot delete active backup; wait until it, or a restore that reads it, has finished.'), internal: false };
    case 'operation_in_progress':
      return { error: detail(400, 'You can have only one restore running per instance; wait for the running one to finish.'), internal: false };
    case 'backup_not_ready':
      return { error: detail(400, 'Cannot restore incomplete backup.'), internal: false };
    case 'rate_limited':
      return { error: detail(429, 'Request was throttled; retry later.'), internal: false };
    case 'payload_too_large':
      return { error: detail(413, 'Request size limit exceeded.'), internal: false };
    case 'internal':
      return { error: detail(500, app.message), internal: true };
  }
  // Core conflicts (quota, ...) are 400 in Syncano; everything else keeps the core's status and message.
  const status = app.status === 409 ? 400 : app.status;
  return { error: detail(status, app.message), internal: false };
}

export function sendSyncanoError(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { error, internal } = toSyncanoError(err);
  if (internal) req.log.error({ err }, 'internal error');
  return reply.code(error.status).type('application/json').send(error.body);
}
