// Builds the exchange archive: a ustar stream with manifest.json first, then
// resources/<resource>/<artifact> for each manifest resource in manifest
// order. Its layout is known from the manifest alone, so the exact size and
// any byte range can be produced without reading what comes before: a resumed
// download opens only the artifacts (and byte ranges of them) it needs.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { archiveArtifactPath, type Manifest, type ManifestResource } from '../domain/manifest.ts';
import { AppError } from '../errors/index.ts';
import { END_OF_ARCHIVE_SIZE, paddingFor, ustarHeader } from './ustar.ts';

export type OpenArtifact = (resource: ManifestResource, range?: { start: number; end?: number }) => Promise<Readable>;

type Segment =
  | { offset: number; length: number; kind: 'bytes'; bytes: Buffer }
  | { offset: number; length: number; kind: 'artifact'; resource: ManifestResource };

const ZEROS = Buffer.alloc(END_OF_ARCHIVE_SIZE);

function mtimeOf(manifest: Manifest): number {
  const ms = Date.parse(manifest.finished_at);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : 0;
}

/** The archive as consecutive segments; their lengths sum to the archive size. */
function layout(manifestBytes: Buffer, manifest: Manifest): { segments: Segment[]; size: number } {
  const segments: Segment[] = [];
  let offset = 0;
  const bytes = (b: Buffer): void => {
    if (b.length === 0) return;
    segments.push({ offset, length: b.length, kind: 'bytes', bytes: b });
    offset += b.length;
  };
  const mtime = mtimeOf(manifest);
  bytes(ustarHeader({ path: 'manifest.json', size: manifestBytes.length, mtime }));
  bytes(manifestBytes);
  bytes(ZEROS.subarray(0, paddingFor(manifestBytes.length)));
  for (const r of manifest.resources) {
    if (r.name.length > 63 || r.artifact.length > 63) {
      throw new Error(`exchange archive: resource ${r.name} or its artifact name is longer than 63 characters`);
    }
    bytes(ustarHeader({ path: archiveArtifactPath(r.name, r.artifact), size: r.size, mtime }));
    if (r.size > 0) {
      segments.push({ offset, length: r.size, kind: 'artifact', resource: r });
      offset += r.size;
    }
    bytes(ZEROS.subarray(0, paddingFor(r.size)));
  }
  bytes(ZEROS);
  return { segments, size: offset };
}

/** Exact byte length of the archive, without reading any artifact. */
export function exchangeArchiveSize(manifestBytes: Buffer, manifest: Manifest): number {
  return layout(manifestBytes, manifest).size;
}

/**
 * Streams the archive, or exactly the bytes start..end (inclusive) of it.
 * Throws RangeError at once when the range is not within the archive; the
 * HTTP layer checks ranges against exchangeArchiveSize first. The stream
 * errors with checksum_mismatch when an artifact in storage does not have the
 * manifest's size (or, when read whole, its sha256), so a damaged copy is
 * never sent as a good one.
 */
export function writeExchangeArchive(
  manifestBytes: Buffer,
  manifest: Manifest,
  openArtifact: OpenArtifact,
  range?: { start: number; end: number },
): Readable {
  const { segments, size } = layout(manifestBytes, manifest);
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end >= size) {
    throw new RangeError(`range ${start}-${end} is not within the archive's ${size} bytes`);
  }
  const state: ProduceState = {};
  const out = Readable.from(produce(segments, openArtifact, start, end, state), { objectMode: false, highWaterMark: 64 * 1024 });
  // Readable.from's destroy waits for the generator's next step, which waits
  // on the open artifact stream (possibly a stalled network read); closing
  // that stream first makes a client going away stop storage reads at once.
  const destroyGenerator = out._destroy.bind(out);
  out._destroy = (err, cb) => {
    state.current?.destroy();
    destroyGenerator(err, cb);
  };
  return out;
}

interface ProduceState {
  /** the artifact stream being read, if any */
  current?: Readable;
}

async function* produce(
  segments: Segment[],
  openArtifact: OpenArtifact,
  start: number,
  end: number,
  state: ProduceState,
): AsyncGenerator<Buffer> {
  for (const seg of segments) {
    const last = seg.offset + seg.length - 1;
    if (last < start) continue;
    if (seg.offset > end) break;
    const from = Math.max(start, seg.offset) - seg.offset;
    const to = Math.min(end, last) - seg.offset;
    if (seg.kind === 'bytes') yield seg.bytes.subarray(from, to + 1);
    else yield* artifactBytes(seg.resource, from, to, openArtifact, state);
  }
}

/** Bytes from..to (inclusive) of one artifact, checked against the manifest. */
async function* artifactBytes(
  r: ManifestResource,
  from: number,
  to: number,
  openArtifact: OpenArtifact,
  state: ProduceState,
): AsyncGenerator<Buffer> {
  const label = `artifact ${archiveArtifactPath(r.name, r.artifact)}`;
  const whole = from === 0 && to === r.size - 1;
  const expected = to - from + 1;
  // Only a whole read can be checked against the sha256; a part is checked by length.
  const hash = whole ? createHash('sha256') : undefined;
  const stream = await openArtifact(r, whole ? undefined : { start: from, end: to });
  state.current = stream;
  let got = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      got += chunk.length;
      if (got > expected) throw new AppError('checksum_mismatch', `${label} in storage is larger than its manifest says (${r.size} bytes)`);
      hash?.update(chunk);
      yield chunk;
    }
  } finally {
    state.current = undefined;
    stream.destroy();
  }
  if (got !== expected) {
    throw new AppError('checksum_mismatch', `${label} in storage is shorter than its manifest says (${r.size} bytes)`);
  }
  if (hash && hash.digest('hex') !== r.sha256) {
    throw new AppError('checksum_mismatch', `${label} in storage does not match its sha256 in the manifest: the stored copy is damaged`);
  }
}
