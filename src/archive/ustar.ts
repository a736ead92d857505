// A minimal ustar header encoder for the exchange archive writer. Written here
// rather than taken from tar-stream because tar-stream exports only pack() and
// extract(): its header encoder is private, and pack() can only produce a whole
// archive from the start, while downloads must resume at any byte offset. The
// writer needs headers as plain 512-byte buffers it can slice.

export const BLOCK = 512;

/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE_SIZE = 2 * BLOCK;

/** Largest size the 11-digit octal field holds (8 GiB - 1); larger sizes use GNU base-256. */
const MAX_OCTAL_SIZE = 0o77777777777;

export interface UstarFile {
  /** '/'-separated relative path, ASCII */
  path: string;
  size: number;
  /** seconds since the epoch */
  mtime: number;
}

/** Zero bytes that follow size bytes of data to fill its last block. */
export function paddingFor(size: number): number {
  const rest = size % BLOCK;
  return rest === 0 ? 0 : BLOCK - rest;
}

/** Splits path into ustar's name (<=100 bytes) and prefix (<=155 bytes) fields, or throws. */
export function splitUstarPath(path: string): { name: string; prefix: string } {
  // Names are ours (resource and artifact patterns), so anything outside
  // printable ASCII is a bug upstream, not a case to encode.
  if (!/^[\x21-\x7e]+$/.test(path) || path.startsWith('/') || path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new Error(`ustar: path not encodable: ${JSON.stringify(path)}`);
  }
  if (path.length <= 100) return { name: path, prefix: '' };
  // Split at the last '/' that leaves a name of at most 100 bytes.
  for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (name.length <= 100 && prefix.length <= 155) return { name, prefix };
  }
  throw new Error(`ustar: path too long for a ustar header: ${path}`);
}

function writeOctal(buf: Buffer, offset: number, fieldLength: number, value: number): void {
  // digits, then a NUL terminator: the form GNU tar writes
  const digits = fieldLength - 1;
  const text = value.toString(8).padStart(digits, '0');
  if (text.length > digits) throw new Error(`ustar: ${value} does not fit ${digits} octal digits`);
  buf.write(text, offset, digits, 'ascii');
  buf[offset + digits] = 0;
}

function writeSize(buf: Buffer, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new Error(`ustar: bad size ${size}`);
  if (size <= MAX_OCTAL_SIZE) {
    writeOctal(buf, 124, 12, size);
    return;
  }
  // GNU base-256: 0x80 marker then a big-endian number in the remaining 11
  // bytes; read by GNU tar, bsdtar, busybox and tar-stream.
  buf[124] = 0x80;
  let rest = size;
  for (let i = 135; i > 124; i--) {
    buf[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
}

/** Encodes the 512-byte ustar header of a regular file: mode 0644, uid/gid 0, no user names. */
export function ustarHeader(file: UstarFile): Buffer {
  const { name, prefix } = splitUstarPath(file.path);
  const buf = Buffer.alloc(BLOCK);
  buf.write(name, 0, 100, 'ascii');
  writeOctal(buf, 100, 8, 0o644);
  writeOctal(buf, 108, 8, 0); // uid
  writeOctal(buf, 116, 8, 0); // gid
  writeSize(buf, file.size);
  writeOctal(buf, 136, 12, Math.max(0, Math.floor(file.mtime)));
  buf[156] = 0x30; // typeflag '0': regular file
  buf.write('ustar\x0000', 257, 8, 'ascii'); // magic "ustar\0", version "00"
  writeOctal(buf, 329, 8, 0); // devmajor
  writeOctal(buf, 337, 8, 0); // devminor
  buf.write(prefix, 345, 155, 'ascii');
  // The checksum is computed with its own field taken as eight spaces.
  buf.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of buf) sum += byte;
  writeOctal(buf, 148, 7, sum);
  buf[155] = 0x20;
  return buf;
}
