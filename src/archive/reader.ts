// Reads an exchange archive from an untrusted stream (upload or import URL).
// Nothing in it is believed: the manifest must come first and be valid, then
// only the artifacts it names may follow, each once, each checked against its
// size and sha256 while it streams to the caller. Entries arrive one at a time
// and the next is not parsed before the caller has finished with the current
// one, so memory stays flat and a refused archive stops at the bad entry.
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { archiveArtifactPath, manifestProblems, type Manifest, type ManifestResource } from '../domain/manifest.ts';
import { AppError } from '../errors/index.ts';
import { VerifiedPassThrough } from '../platform/codec.ts';

export interface ReadArchiveOptions {
  /** largest manifest.json accepted, in bytes */
  maxManifestBytes: number;
  /** largest input accepted, in bytes; more fails with payload_too_large */
  maxTotalBytes: number;
  /**
   * Receives each artifact's bytes. It must read data to its end and settle
   * once data has ended or errored: data errors at its end (checksum_mismatch)
   * when the bytes differ from the manifest, so commit nothing before a clean
   * end. The next entry is read only after the returned promise settles.
   */
  onArtifact(resource: ManifestResource, data: Readable): Promise<void>;
}

const LINK_TYPES = new Set(['symlink', 'link', 'character-device', 'block-device', 'fifo']);

/**
 * Reads the archive and resolves with its manifest once every artifact the
 * manifest lists has been handed to onArtifact and checked. Rejects with an
 * AppError (invalid_archive, unsafe_path, checksum_mismatch,
 * payload_too_large, or what onArtifact threw) and destroys input on any
 * failure; when it rejects, no onArtifact call is still running.
 */
export async function readExchangeArchive(input: Readable, options: ReadArchiveOptions): Promise<Manifest> {
  // The first failure wins: later errors are mostly its echoes (streams torn
  // down because of it), so they must not mask the cause.
  let failure: AppError | undefined;
  const record = (err: AppError): AppError => (failure ??= err);

  const extract = tarStream.extract();
  let total = 0;
  const limiter = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      total += chunk.length;
      if (total > options.maxTotalBytes) {
        cb(new AppError('payload_too_large', `The archive is larger than the limit of ${options.maxTotalBytes} bytes.`));
        return;
      }
      cb(null, chunk);
    },
  });
  const stop = (err: AppError): void => {
    record(err);
    extract.destroy(err);
  };
  input.on('error', (err) => {
    // Input errors (network, client gone) may carry URLs; their text stays in cause only.
    stop(err instanceof AppError ? err : new AppError('invalid_archive', 'Reading the archive failed before its end; upload it again.', undefined, { cause: err }));
  });
  limiter.on('error', (err) => stop(err instanceof AppError ? err : new AppError('internal', undefined, undefined, { cause: err })));
  extract.on('error', (err: Error) => record(tarError(err)));
  input.pipe(limiter).pipe(extract);

  let manifest: Manifest | undefined;
  const arrived = new Set<string>();
  try {
    for await (const entry of extract) {
      const header = entry.header;
      const name = checkEntryName(header.name, header.type);
      if (manifest === undefined) {
        if (name !== 'manifest.json' || header.type !== 'file') {
          throw new AppError('invalid_archive', `The first entry must be manifest.json, but it is ${JSON.stringify(header.name)}.`);
        }
        manifest = await readManifest(entry, header.size ?? 0, options.maxManifestBytes);
        continue;
      }
      if (header.type === 'directory') {
        const dir = name.replace(/\/+$/, '');
        if (dir !== 'resources' && !manifest.resources.some((r) => dir === `resources/${r.name}`)) {
          throw unknownEntry(header.name);
        }
        entry.resume();
        continue;
      }
      const resource = manifest.resources.find((r) => name === archiveArtifactPath(r.name, r.artifact));
      if (resource === undefined || header.type !== 'file') throw unknownEntry(header.name);
      if (arrived.has(resource.name)) {
        throw new AppError('invalid_archive', `The archive holds ${JSON.stringify(header.name)} twice.`);
      }
      arrived.add(resource.name);
      if (header.size !== resource.size) {
        throw new AppError(
          'checksum_mismatch',
          `Artifact ${name} of resource ${resource.name} has ${header.size} bytes in the archive, its manifest says ${resource.size}.`,
        );
      }
      await passArtifact(Readable.from(entry), resource, name, options.onArtifact, record, tarError);
    }
    if (failure) throw failure;
    if (manifest === undefined) throw new AppError('invalid_archive', 'The archive is empty: it has no manifest.json.');
    const missing = manifest.resources.filter((r) => !arrived.has(r.name)).map((r) => archiveArtifactPath(r.name, r.artifact));
    if (missing.length > 0) {
      throw new AppError('invalid_archive', `The archive lacks artifacts its manifest lists: ${missing.join(', ')}.`);
    }
    return manifest;
  } catch (err) {
    const cause = record(err instanceof AppError ? err : tarError(err));
    input.destroy();
    limiter.destroy();
    extract.destroy();
    throw cause;
  }
}

/** Refuses unsafe entries; returns the name without a leading "./". */
function checkEntryName(raw: string, type: string | null | undefined): string {
  const shown = JSON.stringify(raw);
  if (raw.startsWith('/') || /^[A-Za-z]:/.test(raw)) {
    throw new AppError('unsafe_path', `The archive entry ${shown} has an absolute path; nothing was written.`);
  }
  if (raw.split(/[/\\]/).includes('..')) {
    throw new AppError('unsafe_path', `The archive entry ${shown} climbs out with "..": nothing was written.`);
  }
  if (type != null && LINK_TYPES.has(type)) {
    throw new AppError('unsafe_path', `The archive entry ${shown} is a ${type}; only regular files are accepted and nothing was written.`);
  }
  return raw.replace(/^(\.\/)+/, '');
}

function unknownEntry(raw: string): AppError {
  return new AppError('invalid_archive', `The archive holds ${JSON.stringify(raw)}, which its manifest does not list.`);
}

/** Maps a failure of the tar parser (or of an entry stream it tore down) to invalid_archive. */
function tarError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const text = err instanceof Error ? err.message : String(err);
  const message = /unexpected end of data/i.test(text)
    ? 'The archive ends in the middle of an entry: it is truncated.'
    : /invalid tar header|unknown format/i.test(text)
      ? `The upload is not a tar archive or is damaged (${text}).`
      : 'The archive could not be read as a tar file.';
  return new AppError('invalid_archive', message, undefined, { cause: err });
}

async function readManifest(entry: AsyncIterable<unknown>, size: number, max: number): Promise<Manifest> {
  if (size > max) {
    throw new AppError('invalid_archive', `manifest.json is ${size} bytes, more than the ${max} bytes a manifest may have.`);
  }
  const chunks: Buffer[] = [];
  let got = 0;
  for await (const item of entry) {
    const chunk = item as Buffer;
    got += chunk.length;
    if (got > max) throw new AppError('invalid_archive', `manifest.json is more than the ${max} bytes a manifest may have.`);
    chunks.push(chunk);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new AppError('invalid_archive', `manifest.json is not valid JSON (${(err as Error).message}).`);
  }
  const problems = manifestProblems(value);
  if (problems.length > 0) {
    throw new AppError('invalid_archive', `manifest.json is not a valid Backvault manifest: ${problems.join('; ')}.`, { problems });
  }
  return value as Manifest;
}

/**
 * Streams one artifact through its checksum to onArtifact and waits for both
 * to finish; shared by the tar and zip readers. record keeps the first
 * failure; pumpFailure names a failure of the source in the format's words.
 */
export async function passArtifact(
  source: Readable,
  resource: ManifestResource,
  name: string,
  onArtifact: ReadArchiveOptions['onArtifact'],
  record: (err: AppError) => AppError,
  pumpFailure: (err: unknown) => AppError,
): Promise<void> {
  // Hashed in a codec worker, off the event loop.
  const data = new VerifiedPassThrough(resource.sha256, resource.size, `Artifact ${name} of resource ${resource.name}`);
  // A size or checksum error is recorded as it happens: it explains why the
  // consumer then fails, so it must win over the consumer's error.
  data.on('error', (err) => {
    if (err instanceof AppError) record(err);
  });
  const pumped = pipeline(source, data).then(
    () => undefined,
    (err: unknown) => err,
  );
  let consumerFailed = false;
  try {
    await onArtifact(resource, data);
  } catch (err) {
    consumerFailed = true;
    record(err instanceof AppError ? err : new AppError('internal', undefined, undefined, { cause: err }));
  }
  const consumed = data.readableEnded;
  if (!consumed) {
    if (!consumerFailed) record(new AppError('internal', `onArtifact returned before reading all of ${name}`));
    // Tearing the pump down makes the parser fail too; the cause is recorded above.
    data.destroy();
    source.destroy();
  }
  const pumpError = await pumped;
  // record() returns the first failure, which is set above in both cases.
  if (!consumed || consumerFailed) throw record(new AppError('internal'));
  if (pumpError !== undefined) throw record(pumpFailure(pumpError));
}
