// tar-stream's own header encoder and decoders, without its stream machinery
// (a stream object and several ticks per entry), for the dump and restore
// workers, which pack and parse synchronously. Headers are thus byte for byte
// what tar-stream's pack writes and read exactly as its extract reads them.
// The package's exports do not list the file, so it is loaded by path and
// checked here: a tar-stream release that changes it fails at load, loudly,
// and the dump tests compare our archives with tar-stream's pack().
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export interface EncodeHeader {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Date;
  linkname?: string;
}

export interface DecodedHeader {
  name: string;
  /** file, link, symlink, character-device, block-device, directory, fifo, contiguous-file, pax-header, pax-global-header, gnu-long-path, gnu-long-link-path; null when unknown */
  type: string | null;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Date;
  linkname: string | null;
}

interface TarHeaders {
  encode(h: EncodeHeader): Buffer | null;
  encodePax(h: { name: string; linkname?: string }): Buffer;
  /** null for an all-zero block (the end marker); throws on a bad checksum or an unknown format */
  decode(block: Buffer, filenameEncoding: string, allowUnknownFormat: boolean): DecodedHeader | null;
  decodePax(buf: Buffer): Record<string, string>;
  decodeLongPath(buf: Buffer, encoding: string): string;
}

const requireHere = createRequire(import.meta.url);
export const tarHeaders = requireHere(join(dirname(requireHere.resolve('tar-stream')), 'headers.js')) as TarHeaders;
for (const fn of ['encode', 'encodePax', 'decode', 'decodePax', 'decodeLongPath'] as const) {
  if (typeof tarHeaders[fn] !== 'function') throw new Error(`tar-stream/headers.js has changed: ${fn} is missing`);
}
