// Appwrite's error body: {"message", "code", "type", "version"}, where code is
// the HTTP status and type a stable snake_case name (general_argument_invalid,
// user_unauthorized, backup_archive_not_found, ...). Core errors are mapped
// onto the nearest Appwrite type; messages stay the core's, which say what to do.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ErrorCode } from '../../../errors/index.ts';
import { toAppError } from '../../errors.ts';

/** The Appwrite API version whose response format this dialect speaks (the SDK's X-Appwrite-Response-Format). */
export const APPWRITE_VERSION = '1.9.5';

export interface AppwriteErrorBody {
  message: string;
  code: number;
  type: string;
  version: string;
}

/** An error already in Appwrite's words. */
export class AppwriteError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

export const argumentInvalid = (message: string) => new AppwriteError(400, 'general_argument_invalid', message);
export const paramInvalid = (param: string, why: string) => argumentInvalid(`Invalid \`${param}\` param: ${why}`);
export const paramMissing = (param: string) => argumentInvalid(`Param "${param}" is not optional.`);
export const routeNotFound = () => new AppwriteError(404, 'general_route_not_found', 'The requested route was not found. Please refer to the API docs and try again.');
export const archiveNotFound = () => new AppwriteError(404, 'backup_archive_not_found', 'Backup archive with the requested ID could not be found.');
export const policyNotFound = () => new AppwriteError(404, 'backup_policy_not_found', 'Backup policy with the requested ID could not be found.');
export const restorationNotFound = () => new AppwriteError(404, 'backup_restoration_not_found', 'Backup restoration with the requested ID could not be found.');
export const projectNotFound = () =>
  new AppwriteError(404, 'project_not_found', 'Project with the requested ID could not be found. Please check the value of the X-Appwrite-Project header to ensure the correct project ID is being used.');
export const projectUnknown = () =>
  new AppwriteError(400, 'project_unknown', 'The project ID is either missing or not valid. Please check the value of the X-Appwrite-Project header to ensure the correct project ID is being used.');

/** Core codes onto Appwrite types; the status is Appwrite's where it differs from the core's. */
const MAP: Partial<Record<ErrorCode, { status?: number; type: string; message?: string }>> = {
  invalid_request: { type: 'general_argument_invalid' },
  invalid_connection: { type: 'general_argument_invalid' },
  invalid_selection: { type: 'general_argument_invalid' },
  resource_type_unsupported: { type: 'general_argument_invalid' },
  backup_not_ready: { status: 400, type: 'general_argument_invalid' },
  unauthorized: { type: 'user_unauthorized', message: 'The current user is not authorized to perform the requested action.' },
  invalid_credentials: { type: 'user_unauthorized', message: 'The current user is not authorized to perform the requested action.' },
  token_expired: { type: 'user_unauthorized', message: 'The current user is not authorized to perform the requested action.' },
  // Appwrite answers a missing scope with 401.
  forbidden: { status: 401, type: 'general_unauthorized_scope' },
  instance_not_found: { type: 'project_not_found', message: projectNotFound().message },
  backup_not_found: { type: 'backup_archive_not_found', message: archiveNotFound().message },
  restore_not_found: { type: 'backup_restoration_not_found', message: restorationNotFound().message },
  policy_not_found: { type: 'backup_policy_not_found', message: policyNotFound().message },
  resource_not_found: { status: 400, type: 'general_argument_invalid' },
  already_exists: { type: 'backup_policy_already_exists', message: 'A backup policy with the requested ID already exists. Try again with a different ID or use ID.unique() to generate a unique ID.' },
  // Backups and restores are migrations in Appwrite: a busy archive or project is a migration in progress.
  backup_in_use: { type: 'migration_in_progress' },
  operation_in_progress: { type: 'migration_in_progress' },
  not_cancellable: { type: 'migration_in_progress' },
  cancelled: { type: 'migration_in_progress' },
  instance_not_empty: { type: 'migration_in_progress' },
  target_not_empty: { type: 'general_argument_invalid', status: 409 },
  quota_exceeded: { type: 'backup_archive_limit_exceeded' },
  payload_too_large: { type: 'general_argument_invalid' },
  rate_limited: { type: 'general_rate_limit_exceeded', message: 'Rate limit for the current endpoint has been exceeded. Please try again after some time.' },
  storage_not_found: { type: 'backup_archive_not_found' },
  not_found: { type: 'general_route_not_found' },
};

export function toAppwriteError(err: unknown): { error: AppwriteError; internal: boolean } {
  if (err instanceof AppwriteError) return { error: err, internal: false };
  const app = toAppError(err);
  const m = MAP[app.code];
  if (m) return { error: new AppwriteError(m.status ?? app.status, m.type, m.message ?? app.message), internal: false };
  // Engine, storage, verification and internal failures: a server error with the core's (secret-free) message.
  const internal = app.code === 'internal';
  return { error: new AppwriteError(app.status >= 500 ? app.status : 500, 'general_server_error', app.message), internal };
}

export function appwriteBody(error: AppwriteError): AppwriteErrorBody {
  return { message: error.message, code: error.status, type: error.type, version: APPWRITE_VERSION };
}

export function sendAppwriteError(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { error, internal } = toAppwriteError(err);
  if (internal) req.log.error({ err }, 'internal error');
  return reply.code(error.status).type('application/json').send(appwriteBody(error));
}
