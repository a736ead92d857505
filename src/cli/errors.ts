// Exit codes and the errors that carry them. Every failure of the CLI ends as
// one of these, so scripts can tell "the job failed" from "the API said no"
// from "no server there".

export const EXIT = {
  ok: 0,
  /** the backup, restore or drill itself ended in error */
  failed: 1,
  usage: 2,
  /** the API (or the catalog, for local commands) answered an error */
  api: 3,
  unreachable: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
  }
}

/** An error answer of the API: `{"error": {"code", "message", "details"}}`. */
export class ApiError extends CliError {
  /** what the user can do about it, when the CLI knows better than the server */
  hint?: string;

  constructor(
    readonly status: number,
    readonly code: string,
    readonly apiMessage: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(`${code}: ${apiMessage}`, EXIT.api);
    this.name = 'ApiError';
  }
}

export class UnreachableError extends CliError {
  constructor(message: string) {
    super(message, EXIT.unreachable);
  }
}

/** The operation ran and failed; its reason was already printed. */
export class OperationFailed extends CliError {
  constructor(message: string) {
    super(message, EXIT.failed);
  }
}
