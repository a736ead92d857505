// Builds the exchange archive as a zip (the PocketBase dialect's backup
// files): manifest.json first, then resources/<resource>/<artifact> for each
// manifest resource in manifest order, every entry STORED. The artifacts are
// already compressed (zstd/gzip), so deflating them again would only cost
// CPU; storing also makes the size known in advance, so downloads carry a
// Content-Length. Zip64 is used automatically for entries or archives past
// 4 GiB.
import { Readable } from 'node:stream';
import { ZipFile, type EndOptions } from 'yazl';
import { archiveArtifactPath, type Manifest } from '../domain/manifest.ts';
import { VerifiedPassThrough } from '../platform/codec.ts';
import type { OpenArtifact } from './writer.ts';

const FILE_MODE = 0o100644;

function mtimeOf(manifest: Pick<Manifest, 'finished_at'>): Date {
  const ms = Date.parse(manifest.finished_at);
  return Number.isFinite(ms) ? new Date(ms) : new Date(0);
}

type SizeCallback = (size: number) => void;

function endZip(zip: ZipFile, onSize?: SizeCallback): void {
  // The typings omit the size argument and make every end option required.
  (zip.end as (options?: Partial<EndOptions>, cb?: SizeCallback) => void).call(zip, {}, onSize);
}

/**
 * Exact byte length of the zip, from the manifest's length and its resources
 * alone (no artifact is read), so a listing can show the size a download
 * will have. Works by laying the zip out in yazl without ever feeding it data.
 */
export function exchangeZipSize(manifestLength: number, manifest: Pick<Manifest, 'finished_at' | 'resources'>): number {
  const zip = new ZipFile();
  const mtime = mtimeOf(manifest);
  zip.addBuffer(Buffer.alloc(manifestLength), 'manifest.json', { compress: false, mtime, mode: FILE_MODE });
  for (const r of manifest.resources) {
    // Never called back: this ZipFile only computes its layout and is then dropped.
    zip.addReadStreamLazy(archiveArtifactPath(r.name, r.artifact), { compress: false, size: r.size, mtime, mode: FILE_MODE }, () => undefined);
  }
  let size = -1;
  endZip(zip, (n) => {
    size = n;
  });
  if (size < 0) throw new Error('exchange zip: the size could not be computed');
  return size;
}

/**
 * Streams the zip. Each artifact is opened only when its turn comes and is
 * checked against the manifest's size and sha256 as it passes: a damaged
 * stored copy makes the stream error (checksum_mismatch) rather than end as
 * if it were good. Destroying the returned stream closes the open artifact.
 */
export function writeExchangeZip(manifestBytes: Buffer, manifest: Manifest, openArtifact: OpenArtifact): Readable {
  const zip = new ZipFile();
  const out = zip.outputStream as unknown as Readable;
  const mtime = mtimeOf(manifest);
  const open = new Set<Readable>();
  const fail = (err: Error): void => {
    if (!out.destroyed) out.destroy(err);
  };
  // yazl pipes artifact streams with pipe(), which does not forward errors:
  // every error must reach the output by hand or the download would hang.
  zip.on('error', fail);
  out.once('close', () => {
    for (const s of open) s.destroy();
    open.clear();
  });
  zip.addBuffer(manifestBytes, 'manifest.json', { compress: false, mtime, mode: FILE_MODE });
  for (const r of manifest.resources) {
    const path = archiveArtifactPath(r.name, r.artifact);
    zip.addReadStreamLazy(path, { compress: false, size: r.size, mtime, mode: FILE_MODE }, (cb) => {
      if (out.destroyed) return;
      openArtifact(r).then(
        (source) => {
          if (out.destroyed) {
            source.destroy();
            return;
          }
          // Hashed in a codec worker, off the event loop; destroyed with the output like the source, so an aborted download closes its stream in the worker too.
          const checked = new VerifiedPassThrough(r.sha256, r.size, `artifact ${path} in storage`);
          open.add(source);
          open.add(checked);
          source.on('error', fail);
          checked.on('error', fail);
          checked.on('end', () => {
            open.delete(source);
            open.delete(checked);
          });
          source.pipe(checked);
          cb(null, checked);
        },
        (err: unknown) => fail(err instanceof Error ? err : new Error(String(err))),
      );
    });
  }
  endZip(zip);
  return out;
}
