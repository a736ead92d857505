// Reads an exchange archive packed as a zip (the PocketBase dialect's backup
// files) from an untrusted stream, with the contract and rules of
// readExchangeArchive (reader.ts): the manifest must be valid, only the
// artifacts it names may be present, each once, and each is checked against
// its size and sha256 while it streams to the caller.
//
// A zip's authoritative index (the central directory) sits at its end, and
// entries written by streaming zippers give their sizes only after their data
// (data descriptors), so a zip cannot be read safely front to back. The
// upload is therefore first written to a temporary file under the work
// directory (the one full-size copy, which the design allows where a format
// demands a seekable file), then read with random access and deleted.
//
// Because the whole index is known before any data is read, every entry is
// checked (paths, links, names, sizes, compression) before the first
// artifact is handed over: a hostile zip is refused before anything is
// written. manifest.json may sit anywhere in the zip (Backvault writes it
// first; zips re-packed by other tools may order entries differently).
// Entries may be stored or deflated (streamed through zlib); other
// compression methods and encrypted entries are refused.
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { crc32 } from 'node:zlib';
import yauzl from 'yauzl';
import { archiveArtifactPath, manifestProblems, type Manifest, type ManifestResource } from '../domain/manifest.ts';
import { AppError } from '../errors/index.ts';
import { passArtifact, type ReadArchiveOptions } from './reader.ts';

export interface ReadZipOptions extends ReadArchiveOptions {
  /** where the temporary copy of the upload is written; the OS temp directory when absent */
  tempDir?: string;
}

/** More entries than a valid archive can hold (256 resources, their directories, the manifest). */
const MAX_ENTRIES = 1024;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const UNIX = 3;

interface Checked {
  entry: yauzl.Entry;
  raw: string;
  name: string;
  directory: boolean;
}

/**
 * Reads the zip and resolves with its manifest once every artifact the
 * manifest lists has been handed to onArtifact and checked. Rejects with an
 * AppError (invalid_archive, unsafe_path, checksum_mismatch,
 * payload_too_large, or what onArtifact threw) and destroys input on any
 * failure; when it rejects, no onArtifact call is still running. The
 * temporary copy is always removed.
 */
export async function readZipArchive(input: Readable, options: ReadZipOptions): Promise<Manifest> {
  const dir = options.tempDir ?? tmpdir();
  const path = join(dir, `upload-${randomUUID()}.zip`);
  let zip: yauzl.ZipFile | undefined;
  try {
    await mkdir(dir, { recursive: true });
    await spool(input, path, options.maxTotalBytes);
    try {
      zip = await yauzl.openPromise(path, { lazyEntries: true, autoClose: false, decodeStrings: false, validateEntrySizes: true });
    } catch (err) {
      throw new AppError('invalid_archive', `The upload is not a zip archive or is damaged (${(err as Error).message}).`, undefined, { cause: err });
    }
    const entries = await listEntries(zip);
    const manifestEntry = findManifest(entries);
    const manifest = await readManifest(zip, manifestEntry.entry, options.maxManifestBytes);
    const plan = planArtifacts(entries, manifestEntry, manifest);
    const total = plan.reduce((s, p) => s + p.resource.size, 0);
    if (total > options.maxTotalBytes) {
      throw new AppError('payload_too_large', `The archive's artifacts hold ${total} bytes once unpacked, more than the limit of ${options.maxTotalBytes} bytes.`);
    }
    for (const { entry, resource, name } of plan) {
      await passZipArtifact(zip, entry, resource, name, options.onArtifact);
    }
    return manifest;
  } catch (err) {
    input.destroy();
    throw err instanceof AppError ? err : new AppError('invalid_archive', 'The zip archive could not be read.', undefined, { cause: err });
  } finally {
    zip?.close();
    await rm(path, { force: true }).catch(() => undefined);
  }
}

/** Copies the upload to path, refusing more than max bytes. */
async function spool(input: Readable, path: string, max: number): Promise<void> {
  let total = 0;
  const limiter = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      total += chunk.length;
      if (total > max) {
        cb(new AppError('payload_too_large', `The archive is larger than the limit of ${max} bytes.`));
        return;
      }
      cb(null, chunk);
    },
  });
  try {
    await pipeline(input, limiter, createWriteStream(path, { mode: 0o600 }));
  } catch (err) {
    if (err instanceof AppError) throw err;
    // Input errors (network, client gone) may carry URLs; their text stays in cause only.
    throw new AppError('invalid_archive', 'Reading the archive failed before its end; upload it again.', undefined, { cause: err });
  }
}

async function listEntries(zip: yauzl.ZipFile): Promise<Checked[]> {
  if (zip.entryCount > MAX_ENTRIES) {
    throw new AppError('invalid_archive', `The zip holds ${zip.entryCount} entries; a Backvault archive has at most ${MAX_ENTRIES}.`);
  }
  const out: Checked[] = [];
  try {
    for await (const entry of zip.eachEntry()) out.push(checkEntry(entry));
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError('invalid_archive', `The zip archive is damaged (${(err as Error).message}).`, undefined, { cause: err });
  }
  return out;
}

/** Refuses unsafe entries (absolute, "..", links, devices); returns the name without a leading "./". */
function checkEntry(entry: yauzl.Entry): Checked {
  const rawBytes = entry.fileName as unknown as Buffer;
  const utf8 = (entry.generalPurposeBitFlag & 0x800) !== 0;
  // The name other tools would extract (Info-ZIP Unicode path field first), and the raw bytes as
  // text: both must be safe, so a harmless-looking raw name cannot hide a hostile one.
  const raw = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, rawBytes, entry.extraFields, true);
  const plain = rawBytes.toString(utf8 ? 'utf8' : 'latin1');
  for (const name of new Set([raw, plain])) assertSafeName(name);
  let directory = raw.endsWith('/');
  if (entry.versionMadeBy >>> 8 === UNIX) {
    const type = (entry.externalFileAttributes >>> 16) & S_IFMT;
    if (type !== 0 && type !== S_IFREG && type !== S_IFDIR) {
      const kind = type === S_IFLNK ? 'symlink' : 'special file';
      throw new AppError('unsafe_path', `The archive entry ${JSON.stringify(raw)} is a ${kind}; only regular files are accepted and nothing was written.`);
    }
    if (type === S_IFDIR) directory = true;
  } else if ((entry.externalFileAttributes & 0x10) !== 0) {
    directory = true; // MS-DOS directory attribute
  }
  return { entry, raw, name: raw.replace(/^(\.\/)+/, ''), directory };
}

function assertSafeName(raw: string): void {
  const shown = JSON.stringify(raw);
  if (raw.startsWith('/') || raw.startsWith('\\') || /^[A-Za-z]:/.test(raw)) {
    throw new AppError('unsafe_path', `The archive entry ${shown} has an absolute path; nothing was written.`);
  }
  if (raw.split(/[/\\]/).includes('..')) {
    throw new AppError('unsafe_path', `The archive entry ${shown} climbs out with "..": nothing was written.`);
  }
  if (raw.includes('\0')) throw new AppError('unsafe_path', `The archive entry ${shown} has a NUL byte in its name; nothing was written.`);
}

function findManifest(entries: Checked[]): Checked {
  const found = entries.filter((e) => e.name === 'manifest.json');
  if (found.length === 0) throw new AppError('invalid_archive', 'The zip has no manifest.json.');
  if (found.length > 1) throw new AppError('invalid_archive', 'The zip holds "manifest.json" twice.');
  const m = found[0]!;
  if (m.directory) throw new AppError('invalid_archive', 'manifest.json in the zip is not a regular file.');
  assertReadable(m);
  return m;
}

function assertReadable(c: Checked): void {
  if (c.entry.isEncrypted()) throw new AppError('invalid_archive', `The zip entry ${JSON.stringify(c.raw)} is encrypted; upload an unencrypted zip.`);
  if (c.entry.compressionMethod !== 0 && c.entry.compressionMethod !== 8) {
    throw new AppError(
      'invalid_archive',
      `The zip entry ${JSON.stringify(c.raw)} uses compression method ${c.entry.compressionMethod}; only stored (0) and deflate (8) entries can be read.`,
    );
  }
}

async function readManifest(zip: yauzl.ZipFile, entry: yauzl.Entry, max: number): Promise<Manifest> {
  if (entry.uncompressedSize > max) {
    throw new AppError('invalid_archive', `manifest.json is ${entry.uncompressedSize} bytes, more than the ${max} bytes a manifest may have.`);
  }
  const chunks: Buffer[] = [];
  let got = 0;
  try {
    for await (const chunk of await zip.openReadStreamPromise(entry)) {
      got += (chunk as Buffer).length;
      if (got > max) throw new AppError('invalid_archive', `manifest.json is more than the ${max} bytes a manifest may have.`);
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError('invalid_archive', `manifest.json in the zip is damaged (${(err as Error).message}).`, undefined, { cause: err });
  }
  const bytes = Buffer.concat(chunks);
  // yauzl does not check CRC-32s; the artifacts have their sha256, the manifest only this.
  if (crc32(bytes) >>> 0 !== entry.crc32 >>> 0) {
    throw new AppError('invalid_archive', 'manifest.json in the zip does not match its CRC-32: the zip is damaged.');
  }
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new AppError('invalid_archive', `manifest.json is not valid JSON (${(err as Error).message}).`);
  }
  const problems = manifestProblems(value);
  if (problems.length > 0) {
    throw new AppError('invalid_archive', `manifest.json is not a valid Backvault manifest: ${problems.join('; ')}.`, { problems });
  }
  return value as Manifest;
}

interface Planned {
  entry: yauzl.Entry;
  resource: ManifestResource;
  name: string;
}

/** Matches every other entry to the manifest; refuses strangers, doubles, wrong sizes and missing artifacts. */
function planArtifacts(entries: Checked[], manifestEntry: Checked, manifest: Manifest): Planned[] {
  const plan: Planned[] = [];
  const arrived = new Set<string>();
  for (const c of entries) {
    if (c === manifestEntry) continue;
    if (c.directory) {
      const dir = c.name.replace(/\/+$/, '');
      if (dir !== 'resources' && !manifest.resources.some((r) => dir === `resources/${r.name}`)) throw unknownEntry(c.raw);
      continue;
    }
    const resource = manifest.resources.find((r) => c.name === archiveArtifactPath(r.name, r.artifact));
    if (resource === undefined) throw unknownEntry(c.raw);
    if (arrived.has(resource.name)) throw new AppError('invalid_archive', `The archive holds ${JSON.stringify(c.raw)} twice.`);
    arrived.add(resource.name);
    assertReadable(c);
    if (c.entry.uncompressedSize !== resource.size) {
      throw new AppError(
        'checksum_mismatch',
        `Artifact ${c.name} of resource ${resource.name} has ${c.entry.uncompressedSize} bytes in the archive, its manifest says ${resource.size}.`,
      );
    }
    plan.push({ entry: c.entry, resource, name: c.name });
  }
  const missing = manifest.resources.filter((r) => !arrived.has(r.name)).map((r) => archiveArtifactPath(r.name, r.artifact));
  if (missing.length > 0) throw new AppError('invalid_archive', `The archive lacks artifacts its manifest lists: ${missing.join(', ')}.`);
  return plan;
}

function unknownEntry(raw: string): AppError {
  return new AppError('invalid_archive', `The archive holds ${JSON.stringify(raw)}, which its manifest does not list.`);
}

/** Streams one artifact through its checksum to onArtifact and waits for both to finish. */
async function passZipArtifact(
  zip: yauzl.ZipFile,
  entry: yauzl.Entry,
  resource: ManifestResource,
  name: string,
  onArtifact: ReadArchiveOptions['onArtifact'],
): Promise<void> {
  // The first failure wins: later errors are mostly echoes of it (streams torn down because of it).
  let failure: AppError | undefined;
  const record = (err: AppError): AppError => (failure ??= err);
  let source: Readable;
  try {
    source = await zip.openReadStreamPromise(entry);
  } catch (err) {
    throw new AppError('invalid_archive', `Artifact ${name} in the zip cannot be read (${(err as Error).message}).`, undefined, { cause: err });
  }
  const damaged = (err: unknown): AppError =>
    err instanceof AppError ? err : new AppError('invalid_archive', `Artifact ${name} in the zip is damaged (${(err as Error).message}).`, undefined, { cause: err });
  // A damaged entry (bad deflate data, a lying size) explains why the consumer then fails: recorded as it happens.
  source.on('error', (err) => record(damaged(err)));
  await passArtifact(source, resource, name, onArtifact, record, damaged);
  if (failure) throw failure;
}
