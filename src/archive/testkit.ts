// Test helpers for the archive tests: a backup with real artifacts in a real
// LocalStorage, and small stream utilities. Not used by the product code.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import {
  MANIFEST_FORMAT,
  artifactKey,
  manifestProblems,
  type Manifest,
  type ManifestResource,
} from '../domain/manifest.ts';
import { LocalStorage } from '../storage/local.ts';
import type { OpenArtifact } from './writer.ts';

export interface ArtifactSpec {
  name: string;
  /** the stored bytes; random bytes of size when absent */
  data?: Buffer;
  size?: number;
  compression?: 'zstd' | 'gzip' | 'none';
  rawSize?: number;
}

export interface TestBackup {
  dir: string;
  storage: LocalStorage;
  manifest: Manifest;
  manifestBytes: Buffer;
  /** resource name -> stored bytes */
  artifacts: Map<string, Buffer>;
  open: OpenArtifact;
  cleanup(): Promise<void>;
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function resourceFor(spec: ArtifactSpec, data: Buffer): ManifestResource {
  const compression = spec.compression ?? 'zstd';
  const ext = compression === 'zstd' ? '.zst' : compression === 'gzip' ? '.gz' : '';
  return {
    name: spec.name,
    type: 'sqlite',
    artifact: `db.sqlite${ext}`,
    compression,
    size: data.length,
    sha256: sha256(data),
    raw_size: spec.rawSize ?? data.length,
    engine: { name: 'sqlite', version: 1 },
    format: 'sqlite database file',
    selection: null,
    exclude: [],
    counts: { tables: { t: 1 } },
  };
}

/** A manifest; with manifestLength, its JSON is padded (via description) to exactly that many bytes. */
export function makeManifest(resources: ManifestResource[], manifestLength?: number): { manifest: Manifest; manifestBytes: Buffer } {
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    backup_id: '018f4b2c3d4e5f60718293a4',
    instance: 'app',
    type: 'full',
    label: null,
    description: '',
    created_at: '2024-05-06T07:00:00.000Z',
    finished_at: '2024-05-06T07:08:09.000Z',
    compression: 'zstd',
    backvault_version: '0.1.0',
    resources,
  };
  if (manifestLength !== undefined) {
    const base = Buffer.byteLength(JSON.stringify(manifest));
    const pad = manifestLength - base;
    if (pad < 0 || pad > 256) throw new Error(`cannot pad manifest from ${base} to ${manifestLength} bytes`);
    manifest.description = 'x'.repeat(pad);
  }
  const problems = manifestProblems(manifest);
  if (problems.length > 0) throw new Error(`test manifest invalid: ${problems.join('; ')}`);
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  if (manifestLength !== undefined && manifestBytes.length !== manifestLength) throw new Error('padding failed');
  return { manifest, manifestBytes };
}

/** Stores the artifacts in a fresh LocalStorage and returns the backup around them. */
export async function makeBackup(specs: ArtifactSpec[], manifestLength?: number): Promise<TestBackup> {
  const dir = await mkdtemp(join(tmpdir(), 'backvault-archive-'));
  const storage = new LocalStorage(join(dir, 'storage'));
  const artifacts = new Map<string, Buffer>();
  const resources: ManifestResource[] = [];
  for (const spec of specs) {
    const data = spec.data ?? randomBytes(spec.size ?? 0);
    artifacts.set(spec.name, data);
    resources.push(resourceFor(spec, data));
  }
  const { manifest, manifestBytes } = makeManifest(resources, manifestLength);
  for (const r of resources) {
    await storage.put(artifactKey(manifest.backup_id, r.name, r.artifact), Readable.from([artifacts.get(r.name)!]));
  }
  const open: OpenArtifact = (r, range) => storage.get(artifactKey(manifest.backup_id, r.name, r.artifact), range);
  return { dir, storage, manifest, manifestBytes, artifacts, open, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Feeds buf in pieces of chunkSize, like a network upload. */
export function chunked(buf: Buffer, chunkSize = 1000): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= buf.length) {
        this.push(null);
        return;
      }
      this.push(buf.subarray(offset, offset + chunkSize));
      offset += chunkSize;
    },
  });
}
