// The one catalog of errors. Every error a user can see has a stable code, an
// HTTP status and a message that says what to do. Only the HTTP layer turns
// these into responses; everything else throws AppError.

export const ERRORS = {
  invalid_request: { status: 400, message: 'The request is not valid; see details for the fields to fix.' },
  invalid_connection: { status: 400, message: 'The connection is not valid for this resource type.' },
  resource_type_unsupported: { status: 400, message: 'This resource type is not supported by this server yet; see details for the supported types.' },
  invalid_selection: { status: 400, message: 'The selection names objects or resources that do not exist.' },
  invalid_archive: { status: 400, message: 'The uploaded archive is not a valid Backvault exchange archive.' },
  checksum_mismatch: { status: 400, message: 'An artifact does not match the checksum recorded in its manifest.' },
  unsafe_path: { status: 400, message: 'The archive holds a path that escapes its target (absolute, .., or a link); nothing was written.' },
  import_url_refused: { status: 400, message: 'The import URL is refused: only public http(s) addresses may be fetched.' },
  import_fetch_failed: { status: 502, message: 'The archive could not be fetched from the given URL.' },
  payload_too_large: { status: 413, message: 'The upload is larger than the configured limit.' },
  unauthorized: { status: 401, message: 'Authentication is required: send Authorization: Bearer <api key or login token>.' },
  invalid_credentials: { status: 401, message: 'The email or password is wrong.' },
  token_expired: { status: 401, message: 'The token has expired; log in again or create a new link.' },
  invalid_download_token: { status: 401, message: 'The download token is invalid, expired or for another backup; create a new download link.' },
  forbidden: { status: 403, message: 'This API key has read scope only; use an admin key for this operation.' },
  not_found: { status: 404, message: 'The requested item does not exist.' },
  instance_not_found: { status: 404, message: 'No instance has this name.' },
  resource_not_found: { status: 404, message: 'The instance has no resource with this name.' },
  backup_not_found: { status: 404, message: 'No backup has this id.' },
  restore_not_found: { status: 404, message: 'No restore has this id.' },
  key_not_found: { status: 404, message: 'No API key has this id.' },
  notification_not_found: { status: 404, message: 'No notification channel has this id.' },
  policy_not_found: { status: 404, message: 'No policy has this id.' },
  already_exists: { status: 409, message: 'An item with this name already exists.' },
  target_not_empty: { status: 409, message: 'The restore target already holds data; choose an empty target or restore in place.' },
  operation_in_progress: { status: 409, message: 'Another operation on this instance is already waiting or running; wait for it to finish.' },
  backup_in_use: { status: 409, message: 'A job is using this backup; wait for it to finish or cancel it first.' },
  backup_not_ready: { status: 409, message: 'The backup has not finished successfully, so it cannot be used for this.' },
  not_cancellable: { status: 409, message: 'The backup has already finished; there is nothing to cancel.' },
  instance_not_empty: { status: 409, message: 'The instance still has backups or running jobs; delete them first or pass force=true.' },
  quota_exceeded: { status: 409, message: 'The instance has reached its max_backups limit; delete old backups or raise the limit.' },
  rate_limited: { status: 429, message: 'Too many requests; slow down and retry after the period in Retry-After.' },
  tool_missing: { status: 500, message: 'A tool needed for this resource type is not installed on the server.' },
  engine_failed: { status: 500, message: 'The database or file operation failed.' },
  storage_failed: { status: 500, message: 'The storage backend failed.' },
  storage_not_found: { status: 404, message: 'The object does not exist in storage.' },
  key_not_exported: { status: 409, message: 'The master encryption key was generated on this server and exists nowhere else; run `backvault key export` (or `backvault key confirm-stored`) before backups are written to remote storage.' },
  encryption_key_invalid: { status: 500, message: 'The encryption key does not fit this storage; see the message for which key is expected.' },
  format_unsupported: { status: 409, message: 'The backup was written in a newer artifact format than this server reads; restore it with a newer Backvault.' },
  verification_failed: { status: 500, message: 'What was restored does not match the manifest.' },
  cancelled: { status: 409, message: 'The operation was cancelled.' },
  job_timeout: { status: 500, message: 'The job ran longer than its configured timeout and was stopped.' },
  interrupted: { status: 500, message: 'The server stopped while this job was running; run it again.' },
  internal: { status: 500, message: 'An internal error occurred; the server log has the details.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message ?? ERRORS[code].message, options);
    this.name = 'AppError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.details = details;
  }
}

export function isAppError(err: unknown): err is AppError {
  return err instanceof AppError;
}

export function isErrorCode(err: unknown, code: ErrorCode): err is AppError {
  return err instanceof AppError && err.code === code;
}

/** A message safe to show a user: AppError messages are ours; anything else is hidden behind the generic text. */
export function publicMessage(err: unknown): string {
  if (err instanceof AppError) return err.message;
  return ERRORS.internal.message;
}
