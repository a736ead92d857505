// PocketBase's error shape, {status, message, data}, and the mapping of core
// errors onto it. Messages for 401, 403, 404 and "busy" are the documented ones.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toAppError } from '../../errors.ts';

export interface PbErrorBody {
  status: number;
  message: string;
  data: Record<string, unknown>;
}

export class PbError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly data: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'PbError';
  }
}

export const MSG = {
  unauthorized: 'The request requires valid record authorization token.',
  forbidden: 'Only superusers can perform this action.',
  notFound: "The requested resource wasn't found.",
  busy: 'Try again later - another backup/restore process has already been started.',
  validation: 'An error occurred while validating the submitted data.',
  loading: 'An error occurred while loading the submitted data.',
  upload: 'Failed to upload the backup.',
  create: 'Failed to create backup.',
  auth: 'Failed to authenticate.',
  internal: 'Something went wrong while processing your request.',
} as const;

export const unauthorized = (): PbError => new PbError(401, MSG.unauthorized);
export const forbidden = (): PbError => new PbError(403, MSG.forbidden);
export const notFound = (): PbError => new PbError(404, MSG.notFound);
export const busy = (): PbError => new PbError(400, MSG.busy);

/** A field error as PocketBase's validators report it: data.<field> = {code, message}. */
export function fieldError(message: string, field: string, code: string, text: string): PbError {
  return new PbError(400, message, { [field]: { code, message: text } });
}

/** Maps anything thrown under the prefix to PocketBase's shape. */
export function toPbError(err: unknown): { error: PbError; internal: boolean } {
  if (err instanceof PbError) return { error: err, internal: false };
  const app = toAppError(err);
  switch (app.code) {
    case 'unauthorized':
    case 'token_expired':
    case 'invalid_download_token':
      return { error: unauthorized(), internal: false };
    case 'invalid_credentials':
      return { error: new PbError(400, MSG.auth), internal: false };
    case 'forbidden':
      return { error: forbidden(), internal: false };
    case 'not_found':
    case 'instance_not_found':
    case 'backup_not_found':
    case 'restore_not_found':
    case 'storage_not_found':
      return { error: notFound(), internal: false };
    case 'operation_in_progress':
    case 'backup_in_use':
      return { error: busy(), internal: false };
    case 'rate_limited':
      return { error: new PbError(429, 'Too Many Requests.'), internal: false };
    case 'payload_too_large':
      return { error: new PbError(413, app.message), internal: false };
    case 'internal':
      return { error: new PbError(500, MSG.internal), internal: true };
  }
  // Other core errors carry messages written for users (no secrets): keep them.
  if (app.status >= 500) return { error: new PbError(app.status, app.message), internal: false };
  return { error: new PbError(400, app.message), internal: false };
}

export function sendPbError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { error, internal } = toPbError(err);
  if (internal) request.log.error({ err }, 'internal error');
  const body: PbErrorBody = { status: error.status, message: error.message, data: error.data };
  return reply.code(error.status).type('application/json').send(body);
}
