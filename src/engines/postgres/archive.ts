// Reads the header and table of contents of a pg_dump custom-format archive
// (pg_backup_archiver.c ReadHead/ReadToc, pg_backup_custom.c). Written to a
// pipe, pg_dump puts header and TOC first and the data blocks after them, so
// the TOC can be read while the stream passes: it tells exactly which tables
// pg_dump is dumping data for, which is what both dump and restore count.
import { open } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';
import { AppError } from '../../errors/index.ts';

export interface TocEntry {
  dumpId: number;
  tag: string;
  desc: string;
  namespace: string | null;
  owner: string | null;
  /** dump ids this entry depends on */
  deps: number[];
}

export interface ArchiveToc {
  /** archive format version, e.g. "1.14" */
  formatVersion: string;
  /** the pg_dump version that wrote it, e.g. "15.20 (Debian 15.20-0+deb12u1)" */
  dumpVersion: string | null;
  serverVersion: string | null;
  entries: TocEntry[];
  /** bytes taken by header and TOC */
  length: number;
}

class NeedMore extends Error {}

const vers = (maj: number, min: number, rev = 0): number => (maj * 256 + min) * 256 + rev;
const K_VERS_1_10 = vers(1, 10);
const K_VERS_1_12 = vers(1, 12);
const K_VERS_1_14 = vers(1, 14);
const K_VERS_1_15 = vers(1, 15);
const K_VERS_1_16 = vers(1, 16);
/** The oldest archive this reader understands: pg_dump 9.5 and later all write 1.12 or newer. */
const OLDEST = K_VERS_1_12;
const ARCH_CUSTOM = 1;

function corrupt(why: string): AppError {
  return new AppError('engine_failed', `The artifact is not a readable pg_dump custom-format archive: ${why}.`);
}

/** Parses header and TOC from buf; throws NeedMore if buf ends first. */
function parse(buf: Buffer): ArchiveToc {
  let pos = 0;
  const byte = (): number => {
    if (pos >= buf.length) throw new NeedMore();
    return buf[pos++]!;
  };
  if (buf.length < 5) throw new NeedMore();
  if (buf.subarray(0, 5).toString('latin1') !== 'PGDMP') throw corrupt('it does not start with PGDMP');
  pos = 5;
  const vmaj = byte();
  const vmin = byte();
  const vrev = vmaj > 1 || (vmaj === 1 && vmin > 0) ? byte() : 0;
  const version = vers(vmaj, vmin, vrev);
  if (version < OLDEST) throw corrupt(`archive version ${vmaj}.${vmin} is older than this reader supports`);
  if (vmaj !== 1 || vmin > 16) throw corrupt(`archive version ${vmaj}.${vmin}.${vrev} is newer than this reader knows; Backvault needs an update`);
  const intSize = byte();
  const offSize = byte();
  if (intSize < 1 || intSize > 8 || offSize < 1 || offSize > 8) throw corrupt('its integer sizes are invalid');
  const format = byte();
  if (format !== ARCH_CUSTOM) throw corrupt(`it has format ${format}, not custom (1)`);

  const int = (): number => {
    const sign = byte();
    let v = 0;
    let mul = 1;
    for (let i = 0; i < intSize; i++) {
      v += byte() * mul;
      mul *= 256;
    }
    return sign ? -v : v;
  };
  const str = (): string | null => {
    const len = int();
    if (len < 0) return null;
    if (len > 1 << 30) throw corrupt('a string length is out of range');
    if (pos + len > buf.length) throw new NeedMore();
    const s = buf.subarray(pos, pos + len).toString('utf8');
    pos += len;
    return s;
  };

  if (version >= K_VERS_1_15) byte(); // compression algorithm
  else int(); // compression level
  for (let i = 0; i < 7; i++) int(); // creation time (struct tm)
  str(); // database name
  let serverVersion: string | null = null;
  let dumpVersion: string | null = null;
  if (version >= K_VERS_1_10) {
    serverVersion = str();
    dumpVersion = str();
  }
  const count = int();
  if (count < 0 || count > 100_000_000) throw corrupt('its TOC entry count is out of range');
  const entries: TocEntry[] = [];
  for (let i = 0; i < count; i++) {
    const dumpId = int();
    if (dumpId <= 0) throw corrupt(`TOC entry ${i} has an invalid id`);
    int(); // hadDumper
    str(); // catalog tableoid
    str(); // catalog oid
    const tag = str() ?? '';
    const desc = str() ?? '';
    int(); // section
    str(); // defn
    str(); // dropStmt
    str(); // copyStmt
    const namespace = str();
    str(); // tablespace
    if (version >= K_VERS_1_14) str(); // table access method
    if (version >= K_VERS_1_16) int(); // relkind
    const owner = str();
    str(); // "false": WITH OIDS
    const deps: number[] = [];
    for (let d = str(); d !== null; d = str()) deps.push(Number(d));
    byte(); // data offset flag (custom format extra TOC data)
    for (let b = 0; b < offSize; b++) byte();
    entries.push({ dumpId, tag, desc, namespace, owner, deps });
  }
  return { formatVersion: `${vmaj}.${vmin}`, dumpVersion, serverVersion, entries, length: pos };
}

/** Schema-qualified names of the tables whose rows are in the archive (the keys of counts.tables). */
export function dataTables(toc: ArchiveToc): { schema: string; name: string }[] {
  return toc.entries.filter((e) => e.desc === 'TABLE DATA').map((e) => ({ schema: e.namespace ?? 'public', name: e.tag }));
}

const LIMIT = 1 << 30;

/** Reads header and TOC from the start of a file (a restore's temp copy). */
export async function readTocFromFile(path: string): Promise<ArchiveToc> {
  const fh = await open(path, 'r');
  try {
    let size = 64 * 1024;
    for (;;) {
      const buf = Buffer.alloc(size);
      const { bytesRead } = await fh.read(buf, 0, size, 0);
      try {
        return parse(buf.subarray(0, bytesRead));
      } catch (err) {
        if (!(err instanceof NeedMore)) throw err;
        if (bytesRead < size) throw corrupt('it ends inside its table of contents');
        if (size >= LIMIT) throw corrupt('its table of contents is implausibly large');
        size *= 4;
      }
    }
  } finally {
    await fh.close();
  }
}

/**
 * Passes bytes through unchanged and, once header and TOC have gone by,
 * calls onToc. Buffers only the TOC's bytes; parse attempts double in size so
 * the work stays linear however large the TOC is.
 */
export class TocSniffer extends Transform {
  toc: ArchiveToc | undefined;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private nextAttempt = 0;

  /**
   * onToc runs once the TOC has passed; beforeEnd runs when the input has
   * ended, and the stream ends only after it resolves (it errors if it rejects).
   */
  constructor(
    private readonly onToc: (toc: ArchiveToc) => void,
    private readonly beforeEnd: () => Promise<void> = async () => {},
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.toc === undefined) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered >= this.nextAttempt) {
        const err = this.attempt();
        if (err) return cb(err);
      }
    }
    cb(null, chunk);
  }

  /** Returns an error if the bytes are not an archive; leaves toc undefined if more are needed. */
  private attempt(): Error | undefined {
    const buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [buf];
    try {
      this.toc = parse(buf);
    } catch (err) {
      if (!(err instanceof NeedMore)) return err as Error;
      if (this.buffered > LIMIT) return corrupt('its table of contents is implausibly large');
      this.nextAttempt = this.buffered * 2;
      return undefined;
    }
    this.chunks = [];
    this.onToc(this.toc);
    return undefined;
  }

  override _flush(cb: TransformCallback): void {
    const err = this.finish();
    // beforeEnd first: when pg_dump failed before writing its TOC, its own
    // message explains more than "the TOC is incomplete".
    this.beforeEnd().then(
      () => cb(err),
      (e: Error) => cb(e),
    );
  }

  /** A final attempt, then an error if the TOC never completed. */
  private finish(): Error | undefined {
    if (this.toc !== undefined) return undefined;
    if (this.buffered === 0) return corrupt('pg_dump wrote nothing');
    const err = this.attempt();
    if (err) return err;
    if (this.toc === undefined) return corrupt('it ends inside its table of contents');
    return undefined;
  }
}
