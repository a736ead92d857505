// The Engine interface: one per resource type. Engines stream: a dump is a
// Readable of uncompressed bytes, a restore consumes one. Compression,
// hashing and storage are the caller's business, not the engine's, with one
// opening: an engine that lists a compression in `decodes` is handed the
// stored bytes and checks and decompresses them with the platform's
// VerifyingDecoder where it uses them (RestoreRequest.decode).
import type { Readable } from 'node:stream';
import type { Compression, ObjectCounts, ObjectInfo, ResourceSpec, ResourceType } from '../domain/types.ts';
import type { DecodeSpec } from '../platform/decoder.ts';
import type { Phases } from '../platform/phases.ts';

export interface DumpRequest {
  resource: ResourceSpec;
  /** null takes everything; a list names objects (tables, path globs, key patterns) */
  selection: string[] | null;
  /** objects to leave out (tables, path globs) */
  exclude: string[];
  /** dump from resource.replica instead of resource.connection (the backup asked for it and a replica is set) */
  useReplica: boolean;
  /** a private directory for temporary files, removed by the caller afterwards */
  workDir: string;
  signal: AbortSignal;
}

export interface DumpInfo {
  counts: ObjectCounts;
  serverVersion?: string;
  toolVersion?: string;
  warnings: string[];
}

export interface DumpOutput {
  /** the uncompressed dump; it errors if the dump fails */
  stream: Readable;
  /** artifact base name before the compression suffix, e.g. "db.sqlite", "files.tar" */
  artifactBase: string;
  /** how to restore it by hand, e.g. "sqlite database file", "tar archive" */
  format: string;
  /** settles after stream has ended: what was dumped, or why the dump failed */
  info: Promise<DumpInfo>;
}

export interface RestoreRequest {
  /** where to restore: the resource itself (in place) or a new target with the same type */
  target: ResourceSpec;
  /**
   * The uncompressed artifact. It errors at its end if the stored bytes fail
   * their checksum, so an engine must not make its result visible (rename,
   * commit) before the input has ended without error.
   */
  input: Readable;
  /** what the dump recorded; used to check the restore */
  expected: ObjectCounts;
  /**
   * The engine format version the artifact was written in (the manifest's
   * engine.version); absent means the engine's current formatVersion. Never
   * above it: restoreArtifact refuses newer artifacts before an engine runs.
   */
  formatVersion?: number;
  /**
   * in_place makes the target equal to the backup (what the backup lacks is
   * gone); new_target creates it if missing and refuses one that holds data
   * (target_not_empty), so a mistyped target never destroys anything.
   */
  mode: 'in_place' | 'new_target';
  /**
   * true when the backup took only some objects of the resource: an in-place
   * restore then replaces those objects and leaves the others alone; false
   * (full) makes the target equal to the backup.
   */
  partial: boolean;
  /**
   * Set only when the engine's `decodes` lists the artifact's compression:
   * `input` is then the stored bytes as they are, not yet checked, and the
   * engine must pass every byte through a VerifyingDecoder made from this
   * (platform/decoder.ts) and make nothing visible unless its end() passed.
   */
  decode?: DecodeSpec;
  workDir: string;
  signal: AbortSignal;
}

export interface RestoreReport {
  /** what the target holds after the restore, counted the same way as at dump time */
  counts: ObjectCounts;
  warnings: string[];
  /** wall time of the engine's steps in ms (e.g. spool, load, count, swap), in the order they ran */
  phases?: Phases;
}

export interface ScratchTarget {
  connection: string;
  /** removes the scratch target; safe to call twice */
  cleanup(): Promise<void>;
}

export interface Engine {
  readonly type: ResourceType;
  /** version of the artifact format this engine writes */
  readonly formatVersion: number;
  /**
   * Compressions whose stored bytes this engine takes as they are (see
   * RestoreRequest.decode), to check and decompress them in the thread that
   * parses them. Absent: the engine always gets decompressed, checked input.
   */
  readonly decodes?: readonly Compression[];

  /** Checks the form of a connection and options without connecting; throws AppError invalid_connection. */
  checkConnection(connection: string, options: Record<string, unknown>): void;

  /** Lists what a selection can name. */
  listObjects(resource: ResourceSpec): Promise<ObjectInfo[]>;

  dump(request: DumpRequest): Promise<DumpOutput>;

  restore(request: RestoreRequest): Promise<RestoreReport>;

  /**
   * The version of the server a target lives on, for warning when a backup
   * goes to another major version; null when it cannot be told. Optional:
   * engines without a server (files) leave it out.
   */
  serverVersion?(target: ResourceSpec, signal: AbortSignal): Promise<string | null>;

  /** A place to restore into for a verification drill, beside nothing the user owns. */
  scratchTarget(resource: ResourceSpec, workDir: string): Promise<ScratchTarget>;
}
