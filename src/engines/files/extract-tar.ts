// A synchronous tar reader for the restore worker: bytes go in by push(),
// entries come out through callbacks in the same call, so the worker writes
// each body slice straight from the batch it arrived in (tar-stream's extract
// is a stream with several ticks per entry and a copy of each body). Headers
// are decoded by tar-stream's own decoders (tar-headers.ts); what is written
// here is only the framing around them, as tar-stream's extract does it:
// bodies, padding, pax "path", "linkpath" and "size", GNU long names, with
// its error messages, which index.ts turns into "not a valid tar archive".
import { tarHeaders } from './tar-headers.ts';

export type TarType =
  | 'file'
  | 'link'
  | 'symlink'
  | 'character-device'
  | 'block-device'
  | 'directory'
  | 'fifo'
  | 'contiguous-file'
  | null;

export interface TarHeader {
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** seconds since the epoch */
  mtime: number;
  linkname: string | null;
}

export interface TarSink {
  entry(h: TarHeader): void;
  /** a slice of the current entry's body; only valid during the call */
  body(chunk: Buffer): void;
  entryEnd(): void;
}

const BLOCK = 512;
/** A pax or long-name header larger than this is refused (tar-stream's limit). */
const MAX_META = 4 * 1024 * 1024;

type Meta = 'pax-header' | 'pax-global-header' | 'gnu-long-path' | 'gnu-long-link-path';
const META_TYPES = new Set<string | null>(['pax-header', 'pax-global-header', 'gnu-long-path', 'gnu-long-link-path']);

export class TarReader {
  private readonly head = Buffer.alloc(BLOCK);
  private headFill = 0;
  /** body bytes of the current entry still to come */
  private body = 0;
  /** padding after it */
  private pad = 0;
  private meta: { kind: Meta; parts: Buffer[] } | null = null;
  private pax: Record<string, string> | null = null;
  private paxGlobal: Record<string, string> | null = null;
  private longPath: string | null = null;
  private longLink: string | null = null;

  constructor(private readonly sink: TarSink) {}

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.body > 0) {
        const n = Math.min(this.body, chunk.length - off);
        const piece = chunk.subarray(off, off + n);
        if (this.meta) this.meta.parts.push(Buffer.from(piece)); // copied: the batch is reused
        else this.sink.body(piece);
        this.body -= n;
        off += n;
        if (this.body === 0) this.endBody();
      } else if (this.pad > 0) {
        const n = Math.min(this.pad, chunk.length - off);
        this.pad -= n;
        off += n;
      } else {
        const n = Math.min(BLOCK - this.headFill, chunk.length - off);
        chunk.copy(this.head, this.headFill, off, off + n);
        this.headFill += n;
        off += n;
        if (this.headFill === BLOCK) {
          this.headFill = 0;
          this.header();
        }
      }
    }
  }

  /** The input ended: fails unless it ended between entries. */
  end(): void {
    if (this.body > 0 || this.pad > 0 || this.headFill > 0) throw new Error('Unexpected end of data');
  }

  private endBody(): void {
    if (this.meta) {
      const { kind, parts } = this.meta;
      this.meta = null;
      const buf = Buffer.concat(parts);
      if (kind === 'pax-header') this.pax = { ...(this.paxGlobal ?? {}), ...tarHeaders.decodePax(buf) };
      else if (kind === 'pax-global-header') this.paxGlobal = tarHeaders.decodePax(buf);
      else if (kind === 'gnu-long-path') this.longPath = tarHeaders.decodeLongPath(buf, 'utf-8');
      else this.longLink = tarHeaders.decodeLongPath(buf, 'utf-8');
      return;
    }
    this.sink.entryEnd();
  }

  private header(): void {
    // Throws tar-stream's own errors (bad checksum, unknown format); null is an all-zero block, the end marker.
    const d = tarHeaders.decode(this.head, 'utf-8', false);
    if (d === null) return;
    let size: number = d.size;
    if (META_TYPES.has(d.type)) {
      if (size > MAX_META) throw new Error('Header exceeds max size');
      if (!(size >= 0)) throw new Error('Invalid header');
      this.meta = { kind: d.type as Meta, parts: [] };
      this.startBody(size);
      return;
    }
    let name = d.name;
    let linkname = d.linkname;
    if (this.longPath !== null) name = this.longPath;
    if (this.longLink !== null) linkname = this.longLink;
    this.longPath = this.longLink = null;
    if (this.pax) {
      if (this.pax.path) name = this.pax.path;
      if (this.pax.linkpath) linkname = this.pax.linkpath;
      if (this.pax.size) size = parseInt(this.pax.size, 10);
      this.pax = null;
    }
    if (!(size >= 0)) throw new Error('Invalid header');
    // A directory's size is not a body (as tar-stream reads it).
    if (d.type === 'directory') size = 0;
    this.sink.entry({ name, type: d.type as TarType, mode: d.mode, uid: d.uid, gid: d.gid, size, mtime: d.mtime.getTime() / 1000, linkname });
    this.startBody(size);
  }

  private startBody(size: number): void {
    this.pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size > 0) this.body = size;
    else this.endBody();
  }
}
