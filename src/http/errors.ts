// The only place errors become HTTP responses. AppErrors keep their code and
// message; framework errors are mapped to catalog codes; anything else is an
// internal error whose text stays in the log.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, ERRORS, type ErrorCode } from '../errors/index.ts';

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

export function errorBody(code: ErrorCode, message?: string, details?: Record<string, unknown>): ErrorBody {
  return { error: { code, message: message ?? ERRORS[code].message, ...(details ? { details } : {}) } };
}

/** Maps any thrown value to a catalog error. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const fe = err as FastifyError & { validation?: { instancePath?: string; message?: string; params?: unknown }[]; validationContext?: string };
  if (fe && Array.isArray(fe.validation)) {
    const problems = fe.validation.slice(0, 10).map((v) => ({ field: `${fe.validationContext ?? 'body'}${v.instancePath ?? ''}`, problem: v.message ?? 'invalid' }));
    const first = problems[0];
    return new AppError('invalid_request', first ? `${first.field} ${first.problem}` : undefined, { problems });
  }
  switch (fe?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_FILES_LIMIT':
      return new AppError('payload_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new AppError('invalid_request', 'The Content-Type is not supported here; send application/json, or multipart/form-data for uploads.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new AppError('invalid_request', 'The request body is empty; send a JSON object.');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new AppError('invalid_request', 'The request body is not valid JSON.');
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new AppError('invalid_request', 'Send the archive as multipart/form-data with a field named file.');
  }
  if (fe && typeof fe.statusCode === 'number' && fe.statusCode === 429) return new AppError('rate_limited');
  if (fe && typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new AppError('invalid_request', 'The request could not be read.');
  }
  return new AppError('internal', undefined, undefined, { cause: err });
}

export function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const app = toAppError(err);
  if (app.code === 'internal') request.log.error({ err }, 'internal error');
  else if (app.status >= 500) request.log.warn({ code: app.code, msg: app.message }, 'request failed');
  return reply.code(app.status).type('application/json').send(errorBody(app.code, app.message, app.details));
}
