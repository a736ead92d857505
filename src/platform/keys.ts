// Master key material on this machine: a key file the user provides, a key
// generated into the data directory, or a passphrase (scrypt); and the record
// that a generated key was exported. What lives in storage (salt, key check
// value, wrapped data keys) belongs to src/storage/encrypted.ts.
//
// Key file format: 64 hex characters (or the base64 of 32 bytes) on one line;
// lines starting with '#' are comments. `openssl rand -hex 32 > master.key`
// makes one. A raw 32-byte binary file is accepted too.
import { randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AppError } from '../errors/index.ts';
import { writeFileAtomic } from './fs.ts';

export const MASTER_KEY_BYTES = 32;

/** Where the master key comes from, as configured. */
export type KeySource =
  | { kind: 'key_file'; path: string }
  | { kind: 'generated'; path: string }
  | { kind: 'passphrase'; passphrase: string };

export interface EncryptionSettings {
  dir: string;
  encryption: boolean;
  encryption_key_file: string | null;
  encryption_passphrase: string | null;
}

export function generatedKeyPath(dir: string): string {
  return join(dir, 'master.key');
}

function exportedMarkerPath(dir: string): string {
  return join(dir, 'master.key.exported');
}

/** The configured key source, or null when encryption is off. */
export function keySourceOf(settings: EncryptionSettings): KeySource | null {
  const file = settings.encryption_key_file;
  const passphrase = settings.encryption_passphrase;
  if (file && passphrase) {
    throw new AppError('encryption_key_invalid', 'Both encryption_key_file and an encryption passphrase are set; configure only one of them.');
  }
  if (file) return { kind: 'key_file', path: resolve(file) };
  if (passphrase) return { kind: 'passphrase', passphrase };
  if (settings.encryption) return { kind: 'generated', path: generatedKeyPath(settings.dir) };
  return null;
}

/** Parses a key file's bytes; the message never quotes them. */
export function parseKeyFile(bytes: Buffer, path: string): Buffer {
  const text = bytes.toString('utf8');
  const body = text
    .split(/\r?\n/)
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('')
    .trim();
  if (/^[0-9a-fA-F]{64}$/.test(body)) return Buffer.from(body, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(body)) {
    const key = Buffer.from(body, body.includes('-') || body.includes('_') ? 'base64url' : 'base64');
    if (key.length === MASTER_KEY_BYTES) return key;
  }
  if (bytes.length === MASTER_KEY_BYTES && !/^[\x20-\x7e\r\n]*$/.test(text)) return Buffer.from(bytes);
  throw new AppError('encryption_key_invalid', `The key file ${path} does not hold a 256-bit key: it must contain 64 hex characters (e.g. made by \`openssl rand -hex 32\`).`);
}

export async function readKeyFile(path: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new AppError('encryption_key_invalid', `The master key file ${path} does not exist.`);
    throw new AppError('encryption_key_invalid', `The master key file ${path} cannot be read (${code ?? 'error'}).`);
  }
  return parseKeyFile(bytes, path);
}

export async function keyFileExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return false;
      throw err;
    },
  );
}

/** The text of a key file: a comment naming the key (its id, not secret), then the key in hex. */
export function formatKeyFile(key: Buffer, masterKeyId: string): string {
  return [
    `# Backvault master key ${masterKeyId}. Anyone holding this file can read your backups;`,
    '# without it (or its passphrase) nobody can, Backvault included. Keep a copy off this machine.',
    key.toString('hex'),
    '',
  ].join('\n');
}

/**
 * Creates a new random master key at path (mode 0600, written atomically so a
 * crash never leaves half a key). Refuses to replace an existing file.
 */
export async function generateKeyFile(path: string, keyId: (key: Buffer) => string): Promise<Buffer> {
  if (await keyFileExists(path)) throw new AppError('encryption_key_invalid', `${path} already exists; it is never replaced.`);
  const key = randomBytes(MASTER_KEY_BYTES);
  await writeFileAtomic(path, formatKeyFile(key, keyId(key)), 0o600);
  return key;
}

export interface ExportRecord {
  master_key_id: string;
  how: 'export' | 'confirm-stored';
  at: string;
}

/** Records that the generated key with this id was exported or stored elsewhere. */
export async function markKeyExported(dir: string, masterKeyId: string, how: ExportRecord['how'], at: Date): Promise<void> {
  const record: ExportRecord = { master_key_id: masterKeyId, how, at: at.toISOString() };
  await writeFileAtomic(exportedMarkerPath(dir), `${JSON.stringify(record, null, 2)}\n`, 0o600);
}

/** Whether the generated key with this id (not an earlier one) was exported. */
export async function isKeyExported(dir: string, masterKeyId: string): Promise<boolean> {
  let text: string;
  try {
    text = await readFile(exportedMarkerPath(dir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    return (JSON.parse(text) as Partial<ExportRecord>).master_key_id === masterKeyId;
  } catch {
    return false;
  }
}

/** scrypt parameters as stored next to the data they protect. */
export interface ScryptParams {
  name: 'scrypt';
  /** base64 */
  salt: string;
  log2n: number;
  r: number;
  p: number;
}

// OWASP's recommendation for scrypt (N=2^17, r=8, p=1): 128 MiB and about a
// third of a second per derivation, once per start.
const DEFAULT_LOG2N = 17;

export function newScryptParams(): ScryptParams {
  return { name: 'scrypt', salt: randomBytes(16).toString('base64'), log2n: DEFAULT_LOG2N, r: 8, p: 1 };
}

/** Bounds on parameters read from storage or an archive, so a crafted file cannot ask for gigabytes. */
export function checkScryptParams(params: unknown): params is ScryptParams {
  const p = params as Partial<ScryptParams> | null;
  return (
    typeof p === 'object' && p !== null && p.name === 'scrypt' && typeof p.salt === 'string' && Buffer.from(p.salt, 'base64').length >= 16 &&
    Number.isInteger(p.log2n) && p.log2n! >= 14 && p.log2n! <= 20 &&
    Number.isInteger(p.r) && p.r! >= 1 && p.r! <= 16 &&
    Number.isInteger(p.p) && p.p! >= 1 && p.p! <= 4
  );
}

/** Derives a 256-bit key from a passphrase (in libuv's thread pool, so the event loop stays free). */
export function deriveFromPassphrase(passphrase: string, params: ScryptParams): Promise<Buffer> {
  if (passphrase.length === 0) return Promise.reject(new AppError('invalid_request', 'The passphrase is empty.'));
  const N = 2 ** params.log2n;
  const options: ScryptOptions = { N, r: params.r, p: params.p, maxmem: 256 * N * params.r + 1024 * 1024 };
  return new Promise((resolvePromise, reject) => {
    scryptCb(passphrase.normalize('NFC'), Buffer.from(params.salt, 'base64'), MASTER_KEY_BYTES, options, (err, key) => {
      if (err) reject(err);
      else resolvePromise(key);
    });
  });
}
