// The manifest: JSON next to a backup's artifacts, and the first entry of an
// exchange archive. Storage is the source of truth, so everything needed to
// restore or re-catalog a backup is here.
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { NAME_PATTERN, RESOURCE_TYPES, COMPRESSIONS } from './types.ts';

export const MANIFEST_FORMAT = 'backvault/1';

/** Artifact file names: a safe single path segment. */
export const ARTIFACT_NAME_PATTERN = '^[a-z0-9][a-z0-9._-]{0,62}$';

const CountsSchema = Type.Object(
  {
    tables: Type.Optional(Type.Record(Type.String(), Type.Integer({ minimum: 0 }))),
    keys: Type.Optional(Type.Integer({ minimum: 0 })),
    files: Type.Optional(Type.Integer({ minimum: 0 })),
    directories: Type.Optional(Type.Integer({ minimum: 0 })),
    symlinks: Type.Optional(Type.Integer({ minimum: 0 })),
    bytes: Type.Optional(Type.Integer({ minimum: 0 })),
    tree_sha256: Type.Optional(Type.String({ pattern: '^[0-9a-f]{64}$' })),
  },
  { additionalProperties: false },
);

export const ManifestResourceSchema = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN }),
    type: Type.Union(RESOURCE_TYPES.map((t) => Type.Literal(t))),
    /** file name under resources/<name>/ in an archive, and under backups/<id>/resources/<name>/ in storage */
    artifact: Type.String({ pattern: ARTIFACT_NAME_PATTERN }),
    compression: Type.Union(COMPRESSIONS.map((c) => Type.Literal(c))),
    /** stored (compressed) bytes */
    size: Type.Integer({ minimum: 0 }),
    /** sha256 of the stored bytes */
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /** uncompressed bytes of the dump stream */
    raw_size: Type.Integer({ minimum: 0 }),
    engine: Type.Object({ name: Type.String(), version: Type.Integer({ minimum: 1 }) }),
    server_version: Type.Optional(Type.String()),
    tool_version: Type.Optional(Type.String()),
    /** how the dump can be restored by hand, e.g. "sqlite database file", "tar archive" */
    format: Type.String(),
    selection: Type.Union([Type.Null(), Type.Array(Type.String())]),
    exclude: Type.Array(Type.String()),
    counts: CountsSchema,
  },
  { additionalProperties: false },
);

export const ManifestSchema = Type.Object(
  {
    format: Type.Literal(MANIFEST_FORMAT),
    backup_id: Type.String({ minLength: 1, maxLength: 64 }),
    instance: Type.String({ pattern: NAME_PATTERN }),
    type: Type.Union([Type.Literal('full'), Type.Literal('partial')]),
    label: Type.Union([Type.String({ maxLength: 64 }), Type.Null()]),
    description: Type.Union([Type.String({ maxLength: 256 }), Type.Null()]),
    created_at: Type.String(),
    finished_at: Type.String(),
    compression: Type.Union(COMPRESSIONS.map((c) => Type.Literal(c))),
    backvault_version: Type.String(),
    resources: Type.Array(ManifestResourceSchema, { maxItems: 256 }),
  },
  { additionalProperties: false },
);

export type ManifestResource = Static<typeof ManifestResourceSchema>;
export type Manifest = Static<typeof ManifestSchema>;

const compiled = TypeCompiler.Compile(ManifestSchema);

/** Returns the problems with a parsed manifest, empty when it is valid (including unique resource names). */
export function manifestProblems(value: unknown): string[] {
  const problems = [...compiled.Errors(value)].slice(0, 20).map((e) => `${e.path || '/'}: ${e.message}`);
  if (problems.length === 0) {
    const names = new Set<string>();
    for (const r of (value as Manifest).resources) {
      if (names.has(r.name)) problems.push(`/resources: resource ${r.name} appears twice`);
      names.add(r.name);
    }
  }
  return problems;
}

/** Key of a backup's manifest in storage. */
export function manifestKey(backupId: string): string {
  return `backups/${backupId}/manifest.json`;
}

/** Key of one artifact in storage; the same relative path it has in an exchange archive. */
export function artifactKey(backupId: string, resource: string, artifact: string): string {
  return `backups/${backupId}/${archiveArtifactPath(resource, artifact)}`;
}

export function archiveArtifactPath(resource: string, artifact: string): string {
  return `resources/${resource}/${artifact}`;
}

export function compressionExtension(c: 'zstd' | 'gzip' | 'none'): string {
  return c === 'zstd' ? '.zst' : c === 'gzip' ? '.gz' : '';
}
