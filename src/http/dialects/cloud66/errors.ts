// Cloud66's error bodies: {"error": "<code>", "error_description": "<text>"},
// the shape its API (an OAuth2 provider) answers with and its clients read
// (the Go SDK shows error_description). Auth failures use the OAuth2 bearer
// words: invalid_token (401) and insufficient_scope (403).
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toAppError } from '../../errors.ts';

export class Cloud66Error extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    description: string,
  ) {
    super(description);
  }
}

export const invalidRequest = (text: string) => new Cloud66Error(400, 'invalid_request', text);
export const notFound = (text = 'Not found.') => new Cloud66Error(404, 'not_found', text);
export const NO_TOKEN = 'No access token: send Authorization: Bearer <Backvault API key or login token>.';
export const BAD_TOKEN = 'The access token is invalid.';
export const INSUFFICIENT_SCOPE = 'The request requires higher privileges than provided by the access token: this needs the admin scope (an admin API key or a superuser login token).';

/** Framework errors (body parsing, limits) in Cloud66's shape. */
function frameworkError(err: unknown): Cloud66Error | null {
  const fe = err as { code?: string };
  switch (fe?.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return invalidRequest('The request body is not valid JSON.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new Cloud66Error(415, 'unsupported_media_type', 'Send parameters in the query string, as JSON or as a form.');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_FILES_LIMIT':
    case 'FST_PARTS_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new Cloud66Error(413, 'payload_too_large', 'The request is larger than the server accepts.');
  }
  return null;
}

export function toCloud66Error(err: unknown): { error: Cloud66Error; internal: boolean } {
  if (err instanceof Cloud66Error) return { error: err, internal: false };
  const fw = frameworkError(err);
  if (fw) return { error: fw, internal: false };
  const app = toAppError(err);
  switch (app.code) {
    case 'unauthorized':
    case 'invalid_credentials':
      return { error: new Cloud66Error(401, 'invalid_token', BAD_TOKEN), internal: false };
    case 'token_expired':
      return { error: new Cloud66Error(401, 'invalid_token', 'The access token expired.'), internal: false };
    case 'invalid_download_token':
      return { error: new Cloud66Error(401, 'invalid_token', 'The public URL is invalid or has expired; ask for the backup file again for a fresh one.'), internal: false };
    case 'forbidden':
      return { error: new Cloud66Error(403, 'insufficient_scope', INSUFFICIENT_SCOPE), internal: false };
    case 'instance_not_found':
      return { error: new Cloud66Error(404, 'stack_not_found', 'No stack has this id.'), internal: false };
    case 'not_found':
    case 'backup_not_found':
    case 'storage_not_found':
      return { error: notFound('Backup not found.'), internal: false };
    case 'policy_not_found':
      return { error: notFound('Backup group not found.'), internal: false };
    case 'internal':
      return { error: new Cloud66Error(500, 'internal_error', app.message), internal: true };
  }
  return { error: new Cloud66Error(app.status, app.code, app.message), internal: false };
}

export function sendCloud66Error(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { error, internal } = toCloud66Error(err);
  if (internal) req.log.error({ err }, 'internal error');
  if (error.status === 401) reply.header('WWW-Authenticate', `Bearer realm="Backvault", error="${error.code}"`);
  if (error.status === 403 && error.code === 'insufficient_scope') reply.header('WWW-Authenticate', 'Bearer realm="Backvault", error="insufficient_scope", scope="admin"');
  return reply.code(error.status).type('application/json').send({ error: error.code, error_description: error.message });
}
