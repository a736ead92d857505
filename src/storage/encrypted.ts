// Encryption at rest: a Storage wrapper that seals every object with
// AES-256-GCM in fixed-size chunks under a data key per backup, each data key
// wrapped by the master key; plus the passphrase-encrypted export format.
// docs/encryption.md describes the format byte by byte, and recovery.
//
// Why our own framing on node:crypto: node gives AES-GCM one message at a
// time, and no maintained npm library offers a streaming AEAD format with what
// storage needs here: random access by chunk (range gets), the object key
// bound into every chunk, and a plaintext size computable from the stored size
// (stat, list). The framing follows the STREAM construction (Hoang et al.,
// 2015) as Tink's AES-GCM-HKDF streaming AEAD does: a per-object subkey from a
// random salt, the chunk counter in the nonce, and the last chunk marked in
// the authenticated data, so reordering, truncation and extension all fail.
//
// Object layout: header (48 bytes), then chunks of 64 KiB plaintext each
// sealed to 64 KiB + 16-byte tag; the last chunk holds 1..64 KiB (0 only for
// an empty object, which is one tag-only chunk).
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import { AppError, isErrorCode } from '../errors/index.ts';
import {
  checkScryptParams,
  deriveFromPassphrase,
  generateKeyFile,
  isKeyExported,
  keyFileExists,
  keySourceOf,
  MASTER_KEY_BYTES,
  newScryptParams,
  readKeyFile,
  type EncryptionSettings,
  type KeySource,
  type ScryptParams,
} from '../platform/keys.ts';
import { readAll } from '../platform/read-all.ts';
import { assertSafeKey, type ByteRange, type PutOptions, type Storage, type StoredObject } from './storage.ts';

const CHUNK = 64 * 1024;
const TAG = 16;
const SEALED = CHUNK + TAG;
const HEADER = 48;
const EXPORT_HEADER = 64;
const OBJECT_MAGIC = Buffer.from('BVEN', 'latin1');
const EXPORT_MAGIC = Buffer.from('BVEX', 'latin1');
const VERSION = 1;
const MAX_CHUNKS = 2 ** 32;

/** The wrapper's own objects: never listed, never written or read by callers. */
export const MASTER_RECORD_KEY = 'encryption/master.json';
const STORE_KEY_OBJECT = 'encryption/store.key';
const RESERVED_PREFIX = 'encryption/';
const BACKUP_SCOPE = /^(backups\/[^/]+\/)[^]/;
const BACKUP_KEY_OBJECT = /^backups\/[^/]+\/\.key$/;

// ---------------------------------------------------------------------------
// Sizes

/** Stored size of an object of plainSize bytes. */
export function sealedSize(plainSize: number, header = HEADER): number {
  return header + plainSize + Math.max(1, Math.ceil(plainSize / CHUNK)) * TAG;
}

/** Plaintext size of a stored object, or null when no whole object has this stored size (truncated or not ours). */
export function plainSize(storedSize: number, header = HEADER): number | null {
  const n = storedSize - header;
  if (n < TAG) return null;
  const chunks = Math.ceil(n / SEALED);
  const last = n - (chunks - 1) * SEALED;
  if (last < TAG || (last === TAG && chunks > 1)) return null;
  return n - chunks * TAG;
}

/** For stat and list, which report rather than judge: get() is where damage fails. */
function reportedSize(storedSize: number): number {
  const exact = plainSize(storedSize);
  if (exact !== null) return exact;
  const n = Math.max(0, storedSize - HEADER);
  return Math.max(0, n - Math.ceil(n / SEALED) * TAG);
}

/** The encrypted export's size, for Content-Length. */
export function encryptedExportSize(plainBytes: number): number {
  return sealedSize(plainBytes, EXPORT_HEADER);
}

// ---------------------------------------------------------------------------
// Chunk framing, shared by stored objects and exports

interface Frame {
  key: Buffer;
  noncePrefix: Buffer;
  /** index (4 bytes) + final flag (1 byte), rewritten per chunk, then the header and a context (the object key) */
  aad: Buffer;
  /** what the errors name: "stored object <key>" or "encrypted archive" */
  label: string;
}

function hkdf(key: Buffer, salt: Buffer, info: string, length: number): Buffer {
  return Buffer.from(hkdfSync('sha256', key, salt, info, length));
}

function makeFrame(dataKey: Buffer, header: Buffer, salt: Buffer, noncePrefix: Buffer, context: string, label: string): Frame {
  const key = hkdf(dataKey, salt, 'backvault/1 chunk key', 32);
  return { key, noncePrefix, aad: Buffer.concat([Buffer.alloc(5), header, Buffer.from(context, 'utf8')]), label };
}

function nonceOf(frame: Frame, index: number): Buffer {
  const nonce = Buffer.alloc(12);
  frame.noncePrefix.copy(nonce, 0, 0, 8);
  nonce.writeUInt32BE(index, 8);
  return nonce;
}

function sealChunk(frame: Frame, index: number, final: boolean, plain: Buffer): Buffer {
  if (index >= MAX_CHUNKS) throw new AppError('storage_failed', `${frame.label} is too large to encrypt (over 256 TiB).`);
  frame.aad.writeUInt32BE(index, 0);
  frame.aad[4] = final ? 1 : 0;
  const cipher = createCipheriv('aes-256-gcm', frame.key, nonceOf(frame, index));
  cipher.setAAD(frame.aad);
  return Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
}

const STORED_TAIL = 'the stored copy is damaged or was tampered with. Restore from another copy.';
const ARCHIVE_LABEL = 'encrypted archive';

/** checksum_mismatch: what the codebase reports for damaged stored data, so restores and verifies surface it as such. */
function damaged(label: string, why: string): AppError {
  const tail = label === ARCHIVE_LABEL ? 'the file is damaged or was changed.' : STORED_TAIL;
  return new AppError('checksum_mismatch', `The ${label} ${why}; ${tail}`);
}

function storedLabel(key: string): string {
  return `stored object ${key}`;
}

function openChunk(frame: Frame, index: number, final: boolean, sealed: Buffer): Buffer {
  if (sealed.length < TAG) throw damaged(frame.label, `ends inside chunk ${index} (truncated)`);
  frame.aad.writeUInt32BE(index, 0);
  frame.aad[4] = final ? 1 : 0;
  const decipher = createDecipheriv('aes-256-gcm', frame.key, nonceOf(frame, index));
  decipher.setAAD(frame.aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
  const out = decipher.update(sealed.subarray(0, sealed.length - TAG));
  try {
    decipher.final();
  } catch {
    throw damaged(frame.label, `fails authentication at chunk ${index} (changed, truncated, reordered, or moved from another key)`);
  }
  return out;
}

/** A byte queue that hands out exact-sized pieces. */
class Bytes {
  private parts: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.parts.push(b);
    this.length += b.length;
  }

  take(n: number): Buffer {
    const first = this.parts[0];
    if (first && first.length === n) {
      this.parts.shift();
      this.length -= n;
      return first;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const head = this.parts[0]!;
      const k = Math.min(head.length, n - off);
      head.copy(out, off, 0, k);
      off += k;
      if (k === head.length) this.parts.shift();
      else this.parts[0] = head.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

/** Plaintext in, header + sealed chunks out. Holds at most one chunk, so memory stays flat. */
class SealStream extends Transform {
  plainBytes = 0;
  private readonly queue = new Bytes();
  private index = 0;
  private frame: Frame | undefined;

  constructor(private readonly prepared: Promise<{ frame: Frame; header: Buffer }>) {
    super();
    // Seen by _transform; never an unhandled rejection if no byte ever comes.
    prepared.catch(() => undefined);
  }

  private async ready(): Promise<Frame> {
    if (!this.frame) {
      const { frame, header } = await this.prepared;
      this.frame = frame;
      this.push(header);
    }
    return this.frame;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.ready().then((frame) => {
      this.plainBytes += chunk.length;
      this.queue.push(chunk);
      // One chunk stays behind until we know whether it is the last.
      while (this.queue.length > CHUNK) this.push(sealChunk(frame, this.index++, false, this.queue.take(CHUNK)));
      cb();
    }, cb);
  }

  override _flush(cb: TransformCallback): void {
    this.ready().then((frame) => {
      this.push(sealChunk(frame, this.index++, true, this.queue.take(this.queue.length)));
      cb();
    }, cb);
  }
}

interface OpenOptions {
  label: string;
  headerSize: number;
  /** Parses and checks the header, returns the frame. Absent when the stream starts at a chunk (ranges). */
  resolveHeader?: (header: Buffer) => Promise<Frame>;
  frame?: Frame;
  firstIndex: number;
  /** index of the object's last chunk, when known (ranges); otherwise the last chunk is the one the stream ends with */
  finalIndex?: number;
  /** index of the last chunk this stream must carry (ranges) */
  lastIndex?: number;
  /** plaintext bytes to drop before the first byte emitted, and how many to emit */
  skip: number;
  limit: number;
}

/** Sealed chunks in, authenticated plaintext out; nothing unauthenticated is ever emitted. */
class OpenStream extends Transform {
  private readonly queue = new Bytes();
  private frame: Frame | undefined;
  private index: number;
  /** plaintext offset of the next chunk, relative to the first chunk of this stream */
  private offset = 0;

  constructor(private readonly o: OpenOptions) {
    super();
    this.frame = o.frame;
    this.index = o.firstIndex;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.queue.push(chunk);
    if (this.frame) {
      this.drain(false, cb);
      return;
    }
    if (this.queue.length < this.o.headerSize) {
      cb();
      return;
    }
    this.o.resolveHeader!(this.queue.take(this.o.headerSize)).then((frame) => {
      this.frame = frame;
      this.drain(false, cb);
    }, cb);
  }

  override _flush(cb: TransformCallback): void {
    if (!this.frame) {
      cb(damaged(this.o.label, 'is shorter than its header (truncated, or not encrypted)'));
      return;
    }
    this.drain(true, (err) => {
      if (err) return cb(err);
      // Without a known end, the last chunk was opened as final, which authenticates the end.
      const complete = this.o.lastIndex !== undefined ? this.index === this.o.lastIndex + 1 : this.index > this.o.firstIndex;
      cb(complete ? null : damaged(this.o.label, 'ends early (truncated)'));
    });
  }

  private drain(atEnd: boolean, cb: TransformCallback): void {
    const frame = this.frame!;
    try {
      while (this.queue.length > SEALED || (atEnd && this.queue.length > 0)) {
        const sealed = this.queue.take(Math.min(this.queue.length, SEALED));
        const final = this.o.finalIndex !== undefined ? this.index === this.o.finalIndex : atEnd && this.queue.length === 0;
        if (this.o.lastIndex !== undefined && this.index > this.o.lastIndex) throw damaged(this.o.label, 'is longer than its size says');
        const plain = openChunk(frame, this.index, final, sealed);
        if (!final && plain.length !== CHUNK) throw damaged(this.o.label, `has a short chunk ${this.index}`);
        this.index++;
        const from = Math.max(0, this.o.skip - this.offset);
        const to = Math.min(plain.length, this.o.skip + this.o.limit - this.offset);
        this.offset += plain.length;
        if (to > from) this.push(from === 0 && to === plain.length ? plain : plain.subarray(from, to));
      }
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb();
  }
}

/** source piped into transform; an error on either side destroys both, with the same error. */
function chain(source: Readable, transform: Transform): Readable {
  return pipeline(source, transform, () => undefined);
}

// ---------------------------------------------------------------------------
// Keys

interface DataKey {
  id: Buffer;
  key: Buffer;
}

export interface MasterRecord {
  format: 'backvault-master/1';
  /** key check value: derived from the master key, reveals nothing of it */
  master_key_id: string;
  /** how a passphrase becomes the key; null when the key is a key file (or generated) */
  kdf: ScryptParams | null;
  created_at: string;
  rotated_at?: string;
  /** set while a rotation runs; a crash leaves it, so the next run can finish */
  rotation?: { master_key_id: string; kdf: ScryptParams | null; started_at: string } | null;
}

interface WrappedKey {
  format: 'backvault-data-key/1';
  scope: string;
  key_id: string;
  master_key_id: string;
  nonce: string;
  sealed: string;
}

/** The master key's public id (and key check value): HKDF output, so it tells nothing about the key. */
export function masterKeyId(masterKey: Buffer): string {
  return hkdf(masterKey, Buffer.alloc(0), 'backvault/1 master key id', 16).toString('hex');
}

/** Wraps and unwraps data keys under one master key. */
export class Keyring {
  readonly masterKeyId: string;
  private readonly kek: Buffer;

  constructor(masterKey: Buffer) {
    if (masterKey.length !== MASTER_KEY_BYTES) throw new Error('a master key has 32 bytes');
    this.masterKeyId = masterKeyId(masterKey);
    this.kek = hkdf(masterKey, Buffer.alloc(0), 'backvault/1 key wrapping key', 32);
  }

  private aad(scope: string, keyId: string, masterId: string): Buffer {
    return Buffer.from(`backvault-data-key/1\0${scope}\0${keyId}\0${masterId}`, 'utf8');
  }

  wrap(scope: string, dk: DataKey): Buffer {
    const nonce = randomBytes(12);
    const keyId = dk.id.toString('hex');
    const cipher = createCipheriv('aes-256-gcm', this.kek, nonce);
    cipher.setAAD(this.aad(scope, keyId, this.masterKeyId));
    const sealed = Buffer.concat([cipher.update(dk.key), cipher.final(), cipher.getAuthTag()]);
    const record: WrappedKey = { format: 'backvault-data-key/1', scope, key_id: keyId, master_key_id: this.masterKeyId, nonce: nonce.toString('base64'), sealed: sealed.toString('base64') };
    return Buffer.from(`${JSON.stringify(record, null, 2)}\n`);
  }

  /** Parses a key object's text; throws when it is damaged or not wrapped by this master key. forKey: the object being read, for messages. */
  unwrap(scope: string, objectKey: string, text: Buffer, forKey = objectKey): DataKey {
    const label = `data key ${objectKey}`;
    const record = parseWrapped(label, text);
    if (record.master_key_id !== this.masterKeyId) {
      throw new AppError(
        'encryption_key_invalid',
        `The data key ${objectKey} (needed for ${forKey}) is wrapped by master key ${record.master_key_id}, not by this server's ${this.masterKeyId}: a key rotation was interrupted (run \`backvault key rotate\` again) or the object comes from another storage.`,
      );
    }
    if (record.scope !== scope) throw damaged(label, `belongs to ${record.scope}, not ${scope}, so ${forKey} cannot be decrypted`);
    const sealed = Buffer.from(record.sealed, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', this.kek, Buffer.from(record.nonce, 'base64'));
    decipher.setAAD(this.aad(scope, record.key_id, record.master_key_id));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    const key = decipher.update(sealed.subarray(0, sealed.length - TAG));
    try {
      decipher.final();
    } catch {
      throw damaged(label, `fails authentication (it was changed or moved), so ${forKey} cannot be decrypted`);
    }
    return { id: Buffer.from(record.key_id, 'hex'), key };
  }
}

function parseWrapped(label: string, text: Buffer): WrappedKey {
  let record: Partial<WrappedKey>;
  try {
    record = JSON.parse(text.toString('utf8')) as Partial<WrappedKey>;
  } catch {
    throw damaged(label, 'is not valid JSON');
  }
  if (
    record.format !== 'backvault-data-key/1' || typeof record.scope !== 'string' || !/^[0-9a-f]{32}$/.test(record.key_id ?? '') ||
    typeof record.master_key_id !== 'string' || typeof record.nonce !== 'string' || typeof record.sealed !== 'string' ||
    Buffer.from(record.sealed, 'base64').length !== MASTER_KEY_BYTES + TAG
  ) {
    throw damaged(label, 'is not a Backvault data key');
  }
  return record as WrappedKey;
}

async function readSmall(storage: Storage, key: string): Promise<Buffer | null> {
  try {
    return await readAll(await storage.get(key), 1024 * 1024);
  } catch (err) {
    if (isErrorCode(err, 'storage_not_found')) return null;
    throw err;
  }
}

export async function readMasterRecord(storage: Storage): Promise<MasterRecord | null> {
  const bytes = await readSmall(storage, MASTER_RECORD_KEY);
  if (bytes === null) return null;
  let record: Partial<MasterRecord>;
  try {
    record = JSON.parse(bytes.toString('utf8')) as Partial<MasterRecord>;
  } catch {
    record = {};
  }
  if (record.format !== 'backvault-master/1' || typeof record.master_key_id !== 'string' || !(record.kdf === null || checkScryptParams(record.kdf))) {
    throw new AppError('encryption_key_invalid', `${MASTER_RECORD_KEY} in storage is damaged; restore it from a copy (it holds no secret) or see docs/encryption.md.`);
  }
  return record as MasterRecord;
}

async function writeMasterRecord(storage: Storage, record: MasterRecord): Promise<void> {
  await storage.put(MASTER_RECORD_KEY, Readable.from([Buffer.from(`${JSON.stringify(record, null, 2)}\n`)]));
}

function describeSource(source: KeySource): string {
  if (source.kind === 'passphrase') return 'the configured passphrase';
  return `the key in ${source.path}`;
}

/** The master key a source gives, for an existing record (or a new one). */
async function masterKeyOf(source: KeySource, record: MasterRecord | null, kdfForNew: ScryptParams | null): Promise<{ key: Buffer; kdf: ScryptParams | null }> {
  switch (source.kind) {
    case 'key_file':
      return { key: await readKeyFile(source.path), kdf: null };
    case 'generated':
      if (await keyFileExists(source.path)) return { key: await readKeyFile(source.path), kdf: null };
      if (record) {
        throw new AppError(
          'encryption_key_invalid',
          `This storage is encrypted with master key ${record.master_key_id}, but ${source.path} does not exist and no key file or passphrase is configured: put the master key file there, or set encryption_key_file (see docs/encryption.md, "Recovery").`,
        );
      }
      return { key: await generateKeyFile(source.path, masterKeyId), kdf: null };
    case 'passphrase': {
      if (record && record.kdf === null) {
        throw new AppError('encryption_key_invalid', `This storage's master key (${record.master_key_id}) is a key file, not a passphrase: set encryption_key_file instead.`);
      }
      const kdf = record?.kdf ?? kdfForNew ?? newScryptParams();
      return { key: await deriveFromPassphrase(source.passphrase, kdf), kdf };
    }
  }
}

/**
 * Checks the configured master key against the storage's record (key check
 * value) and returns its keyring; on a storage without a record, writes one.
 * A wrong key fails here, at start, not at the first restore.
 */
export async function openKeyring(storage: Storage, source: KeySource): Promise<Keyring> {
  const record = await readMasterRecord(storage);
  if (!record) {
    // Objects written before encryption was turned on would become unreadable
    // (a plaintext object is refused: accepting one would let anyone with
    // write access to storage plant data), so refuse before creating a key.
    for await (const obj of storage.list('backups/')) {
      throw new AppError(
        'encryption_key_invalid',
        `This storage already holds unencrypted backups (e.g. ${obj.key}); encryption can only start on empty storage. Use a new storage location for encrypted backups (see docs/encryption.md).`,
      );
    }
  }
  if (record?.rotation) {
    throw new AppError(
      'encryption_key_invalid',
      `A master key rotation from ${record.master_key_id} to ${record.rotation.master_key_id} was interrupted: run \`backvault key rotate\` again with the same new key to finish it, then start with the new key.`,
    );
  }
  const { key, kdf } = await masterKeyOf(source, record, null);
  const keyring = new Keyring(key);
  if (record) {
    if (record.master_key_id !== keyring.masterKeyId) {
      throw new AppError(
        'encryption_key_invalid',
        `Wrong master key: this storage is encrypted with master key ${record.master_key_id}, but ${describeSource(source)} is ${keyring.masterKeyId}. Configure the right key file or passphrase (see docs/encryption.md, "Recovery").`,
      );
    }
  } else {
    await writeMasterRecord(storage, { format: 'backvault-master/1', master_key_id: keyring.masterKeyId, kdf, created_at: new Date().toISOString() });
  }
  return keyring;
}

// ---------------------------------------------------------------------------
// The wrapper

function scopeOf(key: string): { scope: string; keyObject: string } {
  const m = BACKUP_SCOPE.exec(key);
  return m ? { scope: m[1]!, keyObject: `${m[1]!}.key` } : { scope: 'store', keyObject: STORE_KEY_OBJECT };
}

function isHidden(key: string): boolean {
  return key.startsWith(RESERVED_PREFIX) || BACKUP_KEY_OBJECT.test(key);
}

function checkKey(key: string): void {
  assertSafeKey(key);
  if (isHidden(key)) throw new Error(`unsafe storage key: ${JSON.stringify(key)} (reserved for encryption)`);
}

export interface EncryptedStorageOptions {
  /** Runs before every write and throws to refuse it (key_not_exported). */
  beforeWrite?: () => Promise<void>;
}

const KEY_CACHE_SIZE = 1024;

/**
 * Encrypts everything written through it; callers see plaintext and plaintext
 * sizes. Objects under backups/<id>/ share that backup's data key, kept
 * wrapped in backups/<id>/.key (hidden from list, removed with the backup's
 * last object); other objects use a store-wide data key (encryption/store.key).
 * No presignGet: a presigned URL would hand out ciphertext, so downloads
 * stream through the server.
 */
export class EncryptedStorage implements Storage {
  readonly description: string;
  private readonly keys = new Map<string, DataKey>();
  private readonly locks = new Map<string, Promise<void>>();
  private readonly writing = new Map<string, number>();

  constructor(
    readonly inner: Storage,
    private readonly keyring: Keyring,
    private readonly options: EncryptedStorageOptions = {},
  ) {
    this.description = `${inner.description} (encrypted, master key ${keyring.masterKeyId})`;
  }

  get masterKeyId(): string {
    return this.keyring.masterKeyId;
  }

  /** Runs fn after every earlier fn of the same scope: key creation and removal never interleave. */
  private lock<T>(scope: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.locks.get(scope) ?? Promise.resolve()).then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(scope, tail);
    void tail.then(() => {
      if (this.locks.get(scope) === tail) this.locks.delete(scope);
    });
    return run;
  }

  private remember(scope: string, dk: DataKey): DataKey {
    this.keys.delete(scope);
    this.keys.set(scope, dk);
    if (this.keys.size > KEY_CACHE_SIZE) this.keys.delete(this.keys.keys().next().value!);
    return dk;
  }

  /** The scope's data key: cached, read from its key object, or (create) made and stored. */
  private dataKey(scope: string, keyObject: string, create: boolean, forKey: string): Promise<DataKey> {
    const cached = this.keys.get(scope);
    if (cached) return Promise.resolve(cached);
    return this.lock(scope, async () => {
      const again = this.keys.get(scope);
      if (again) return again;
      const text = await readSmall(this.inner, keyObject);
      if (text !== null) return this.remember(scope, this.keyring.unwrap(scope, keyObject, text, forKey));
      if (!create) {
        throw new AppError('checksum_mismatch', `The data key ${keyObject} is missing from storage, so ${forKey} cannot be decrypted; ${STORED_TAIL}`);
      }
      const dk = { id: randomBytes(16), key: randomBytes(32) };
      await this.inner.put(keyObject, Readable.from([this.keyring.wrap(scope, dk)]));
      return this.remember(scope, dk);
    });
  }

  /** Removes a backup's data key once no object of the backup is left (and none is being written). */
  private dropKeyIfUnused(scope: string, keyObject: string): Promise<void> {
    return this.lock(scope, async () => {
      if ((this.writing.get(scope) ?? 0) > 0) return;
      for await (const obj of this.inner.list(scope)) if (obj.key !== keyObject) return;
      await this.inner.delete(keyObject);
      this.keys.delete(scope);
    });
  }

  /** Checks a header and builds the frame, reloading a cached data key once if the header names another. */
  private async frameFor(key: string, scope: string, keyObject: string, header: Buffer, dk: DataKey): Promise<Frame> {
    const label = storedLabel(key);
    if (header.length < HEADER || !header.subarray(0, 4).equals(OBJECT_MAGIC)) {
      throw damaged(label, 'has no Backvault encryption header (it was stored unencrypted, or replaced)');
    }
    if (header[4] !== VERSION || header[5] !== 16) throw damaged(label, `has an unknown encryption format (version ${header[4]})`);
    const keyId = header.subarray(8, 24);
    if (!timingSafeEqual(keyId, dk.id)) {
      // The cached key may be stale (the backup was deleted and written again by another process).
      if (this.keys.get(scope) === dk) this.keys.delete(scope);
      dk = await this.dataKey(scope, keyObject, false, key);
      if (!timingSafeEqual(keyId, dk.id)) {
        throw damaged(label, `was encrypted with data key ${keyId.toString('hex')}, but ${scope === 'store' ? 'the store' : scope.slice(0, -1)} uses ${dk.id.toString('hex')}: it was copied or moved from another backup`);
      }
    }
    return makeFrame(dk.key, header, header.subarray(24, 40), header.subarray(40, 48), key, label);
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<{ size: number }> {
    // Listening from the start: a body that fails while the data key loads must not crash the process.
    let bodyError: { err: unknown } | undefined;
    let seal: SealStream | undefined;
    body.on('error', (err) => {
      bodyError ??= { err };
      // The body's own error reaches the backend unchanged, so put rejects with it (the contract).
      seal?.destroy(err);
    });
    try {
      checkKey(key);
      if (options.signal?.aborted) throw new AppError('cancelled', `Writing ${key} was cancelled.`);
      await this.options.beforeWrite?.();
    } catch (err) {
      // With the error, so a caller piping into body reports this cause, not "premature close".
      body.destroy(err as Error);
      throw err;
    }
    const { scope, keyObject } = scopeOf(key);
    this.writing.set(scope, (this.writing.get(scope) ?? 0) + 1);
    let failed = false;
    try {
      const dk = await this.dataKey(scope, keyObject, true, key);
      if (bodyError) throw bodyError.err;
      const header = Buffer.alloc(HEADER);
      OBJECT_MAGIC.copy(header, 0);
      header[4] = VERSION;
      header[5] = 16; // log2 of the chunk size
      dk.id.copy(header, 8);
      randomBytes(24).copy(header, 24); // salt for the object's subkey (16), nonce prefix (8)
      const frame = makeFrame(dk.key, header, header.subarray(24, 40), header.subarray(40, 48), key, storedLabel(key));
      const sealing = new SealStream(Promise.resolve({ frame, header }));
      seal = sealing;
      body.pipe(sealing);
      await this.inner.put(key, sealing, options);
      return { size: sealing.plainBytes };
    } catch (err) {
      failed = true;
      if (!body.destroyed) body.destroy(err as Error);
      throw err;
    } finally {
      this.writing.set(scope, (this.writing.get(scope) ?? 1) - 1);
      if (this.writing.get(scope) === 0) this.writing.delete(scope);
      // A failed first write must not leave a data key behind with nothing to open.
      if (failed && scope !== 'store') await this.dropKeyIfUnused(scope, keyObject).catch(() => undefined);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    checkKey(key);
    if (range) {
      const { start, end } = range;
      if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
        throw new RangeError(`invalid byte range ${start}-${end ?? ''} for ${key}`);
      }
    }
    const { scope, keyObject } = scopeOf(key);
    if (!range) {
      const source = await this.inner.get(key);
      let dk: DataKey;
      try {
        dk = await this.dataKey(scope, keyObject, false, key);
      } catch (err) {
        source.destroy();
        throw err;
      }
      const open = new OpenStream({
        label: storedLabel(key),
        headerSize: HEADER,
        resolveHeader: (header) => this.frameFor(key, scope, keyObject, header, dk),
        firstIndex: 0,
        skip: 0,
        limit: Number.MAX_SAFE_INTEGER,
      });
      return chain(source, open);
    }
    const info = await this.inner.stat(key);
    if (!info) throw new AppError('storage_not_found', `The object ${key} does not exist in storage.`);
    const size = plainSize(info.size);
    if (size === null) throw damaged(storedLabel(key), `has ${info.size} bytes, which no whole encrypted object has (truncated)`);
    if (range.start >= size) throw new RangeError(`byte range starts at ${range.start}, past the end of ${key} (${size} bytes)`);
    const end = Math.min(range.end ?? Infinity, size - 1);
    const first = Math.floor(range.start / CHUNK);
    const last = Math.floor(end / CHUNK);
    const dk = await this.dataKey(scope, keyObject, false, key);
    const header = await readAll(await this.inner.get(key, { start: 0, end: HEADER - 1 }), HEADER);
    const frame = await this.frameFor(key, scope, keyObject, header, dk);
    const source = await this.inner.get(key, { start: HEADER + first * SEALED, end: Math.min(info.size - 1, HEADER + (last + 1) * SEALED - 1) });
    const open = new OpenStream({
      label: storedLabel(key),
      headerSize: HEADER,
      frame,
      firstIndex: first,
      finalIndex: Math.max(1, Math.ceil(size / CHUNK)) - 1,
      lastIndex: last,
      skip: range.start - first * CHUNK,
      limit: end - range.start + 1,
    });
    return chain(source, open);
  }

  async stat(key: string): Promise<StoredObject | null> {
    checkKey(key);
    const info = await this.inner.stat(key);
    return info && { key: info.key, size: reportedSize(info.size), modified: info.modified };
  }

  async *list(prefix: string): AsyncIterable<StoredObject> {
    for await (const obj of this.inner.list(prefix)) {
      if (!isHidden(obj.key)) yield { key: obj.key, size: reportedSize(obj.size), modified: obj.modified };
    }
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    await this.inner.delete(key);
    const { scope, keyObject } = scopeOf(key);
    if (scope !== 'store') await this.dropKeyIfUnused(scope, keyObject);
  }
}

// ---------------------------------------------------------------------------
// Composition: from configuration to storage

export interface StorageEncryptionSettings extends EncryptionSettings {
  storage: string | null;
}

/** Refuses writes while a generated key exists only on this machine. */
function exportGuard(dir: string, path: string, id: string): () => Promise<void> {
  let exported = false;
  return async () => {
    if (exported) return;
    exported = await isKeyExported(dir, id);
    if (exported) return;
    throw new AppError(
      'key_not_exported',
      `The master encryption key was generated into ${path} and exists nowhere else, so no backup is written to remote storage until it is saved elsewhere: run \`backvault key export --dir ${dir}\` and keep the key safe (or \`backvault key confirm-stored --dir ${dir}\` if you already copied the file).`,
    );
  };
}

/**
 * Wraps storage with encryption when the configuration asks for it, after
 * checking the master key against the storage. With encryption off, refuses a
 * storage that is encrypted rather than reading ciphertext as data.
 */
export async function withEncryption(settings: StorageEncryptionSettings, inner: Storage): Promise<Storage> {
  const source = keySourceOf(settings);
  if (!source) {
    let encrypted = false;
    try {
      encrypted = (await inner.stat(MASTER_RECORD_KEY)) !== null;
    } catch {
      // Storage unreachable now: its first real use reports that.
    }
    if (encrypted) {
      throw new AppError(
        'encryption_key_invalid',
        `This storage is encrypted (it holds ${MASTER_RECORD_KEY}) but encryption is not configured: set encryption_key_file or BACKVAULT_ENCRYPTION_PASSPHRASE, or encryption: true with the key in <dir>/master.key (see docs/encryption.md).`,
      );
    }
    return inner;
  }
  const keyring = await openKeyring(inner, source);
  const remote = settings.storage?.startsWith('s3://') ?? false;
  const options: EncryptedStorageOptions = {};
  if (source.kind === 'generated' && remote) options.beforeWrite = exportGuard(settings.dir, source.path, keyring.masterKeyId);
  return new EncryptedStorage(inner, keyring, options);
}

// ---------------------------------------------------------------------------
// Rotation

export interface RotationResult {
  from: string;
  to: string;
  /** data keys re-wrapped by this run */
  rewrapped: number;
  /** data keys an interrupted earlier run had re-wrapped already */
  alreadyDone: number;
}

/**
 * Re-wraps every data key from the current master key to a new one; no
 * encrypted object is rewritten. Run with every server on this storage
 * stopped. Crash-safe: the record notes the rotation first, each key object is
 * replaced atomically, and running again with the same keys finishes the job.
 */
export async function rotateMasterKey(storage: Storage, current: KeySource, next: KeySource, now: () => Date = () => new Date()): Promise<RotationResult> {
  if (next.kind === 'generated') throw new Error('rotate to a key file or a passphrase');
  const record = await readMasterRecord(storage);
  if (!record) throw new AppError('encryption_key_invalid', 'This storage is not encrypted yet (it has no encryption/master.json): there is nothing to rotate.');
  const old = new Keyring((await masterKeyOf(current, record, null)).key);
  if (old.masterKeyId !== record.master_key_id) {
    const hint = record.rotation?.master_key_id === old.masterKeyId ? ' (that is the new key of the interrupted rotation: configure the old key to finish it)' : '';
    throw new AppError('encryption_key_invalid', `Wrong master key: this storage is encrypted with master key ${record.master_key_id}, but ${describeSource(current)} is ${old.masterKeyId}${hint}.`);
  }
  const pending = record.rotation ?? null;
  // A passphrase rotation resumed after a crash must derive with the salt the first run recorded.
  const nextMaterial = await masterKeyOf(next, null, next.kind === 'passphrase' ? (pending?.kdf ?? newScryptParams()) : null);
  const fresh = new Keyring(nextMaterial.key);
  if (fresh.masterKeyId === old.masterKeyId) throw new AppError('invalid_request', 'The new master key is the current one; nothing to rotate.');
  if (pending && pending.master_key_id !== fresh.masterKeyId) {
    throw new AppError('encryption_key_invalid', `An interrupted rotation to master key ${pending.master_key_id} must be finished first: pass that key (${describeSource(next)} is ${fresh.masterKeyId}).`);
  }
  await writeMasterRecord(storage, { ...record, rotation: { master_key_id: fresh.masterKeyId, kdf: nextMaterial.kdf, started_at: pending?.started_at ?? now().toISOString() } });

  const keyObjects: string[] = [];
  for await (const obj of storage.list('backups/')) if (BACKUP_KEY_OBJECT.test(obj.key)) keyObjects.push(obj.key);
  if ((await storage.stat(STORE_KEY_OBJECT)) !== null) keyObjects.push(STORE_KEY_OBJECT);
  let rewrapped = 0;
  let alreadyDone = 0;
  for (const objectKey of keyObjects) {
    const text = await readSmall(storage, objectKey);
    if (text === null) continue; // deleted meanwhile
    const scope = objectKey === STORE_KEY_OBJECT ? 'store' : objectKey.slice(0, -'.key'.length);
    if (parseWrapped(`data key ${objectKey}`, text).master_key_id === fresh.masterKeyId) {
      fresh.unwrap(scope, objectKey, text);
      alreadyDone++;
      continue;
    }
    const dk = old.unwrap(scope, objectKey, text);
    await storage.put(objectKey, Readable.from([fresh.wrap(scope, dk)]));
    rewrapped++;
  }
  const { rotation: _done, ...rest } = record;
  await writeMasterRecord(storage, { ...rest, master_key_id: fresh.masterKeyId, kdf: nextMaterial.kdf, rotated_at: now().toISOString() });
  return { from: old.masterKeyId, to: fresh.masterKeyId, rewrapped, alreadyDone };
}

// ---------------------------------------------------------------------------
// Encrypted export: an exchange archive sealed with a passphrase, for copies
// that leave the user's hands. Same chunk framing; the header carries the
// scrypt parameters and a passphrase check value instead of a data key id.

function exportKeys(passphraseKey: Buffer): { content: Buffer; check: Buffer } {
  return {
    content: hkdf(passphraseKey, Buffer.alloc(0), 'backvault/1 export content key', 32),
    check: hkdf(passphraseKey, Buffer.alloc(0), 'backvault/1 export check', 16),
  };
}

/**
 * Encrypts a stream (an exchange archive) with a passphrase. The output is
 * encryptedExportSize(input bytes) long; decrypt with decryptExport or
 * `backvault archive decrypt`. options.scryptLog2N lowers the passphrase cost
 * (tests); the default is scrypt's recommended N = 2^17.
 */
export function encryptExport(input: Readable, passphrase: string, options: { scryptLog2N?: number } = {}): Readable {
  if (passphrase.length === 0) throw new AppError('invalid_request', 'The passphrase for an encrypted export is empty.');
  const prepared = (async () => {
    const params = { ...newScryptParams(), ...(options.scryptLog2N ? { log2n: options.scryptLog2N } : {}) };
    if (!checkScryptParams(params)) throw new RangeError('scryptLog2N must be between 14 and 20');
    const { content, check } = exportKeys(await deriveFromPassphrase(passphrase, params));
    const header = Buffer.alloc(EXPORT_HEADER);
    EXPORT_MAGIC.copy(header, 0);
    header[4] = VERSION;
    header[5] = 16;
    header[6] = params.log2n;
    header[7] = params.r;
    header[8] = params.p;
    Buffer.from(params.salt, 'base64').copy(header, 12);
    randomBytes(8).copy(header, 28);
    check.copy(header, 36);
    return { frame: makeFrame(content, header, Buffer.alloc(16), header.subarray(28, 36), '', ARCHIVE_LABEL), header };
  })();
  return chain(input, new SealStream(prepared));
}

/** Decrypts what encryptExport wrote; errors (invalid_request) on a wrong passphrase, checksum_mismatch on damage. */
export function decryptExport(input: Readable, passphrase: string): Readable {
  const open = new OpenStream({
    label: ARCHIVE_LABEL,
    headerSize: EXPORT_HEADER,
    firstIndex: 0,
    skip: 0,
    limit: Number.MAX_SAFE_INTEGER,
    async resolveHeader(header) {
      if (!header.subarray(0, 4).equals(EXPORT_MAGIC)) throw new AppError('invalid_archive', 'This file is not a Backvault encrypted archive (the BVEX header is missing).');
      if (header[4] !== VERSION || header[5] !== 16) throw new AppError('invalid_archive', `This encrypted archive has an unknown format version (${header[4]}); use a newer Backvault.`);
      const params = { name: 'scrypt' as const, salt: header.subarray(12, 28).toString('base64'), log2n: header[6]!, r: header[7]!, p: header[8]! };
      if (!checkScryptParams(params)) throw new AppError('invalid_archive', 'This encrypted archive has out-of-range key derivation parameters.');
      const { content, check } = exportKeys(await deriveFromPassphrase(passphrase, params));
      if (!timingSafeEqual(check, header.subarray(36, 52))) throw new AppError('invalid_request', 'The passphrase does not open this encrypted archive.');
      return makeFrame(content, header, Buffer.alloc(16), header.subarray(28, 36), '', ARCHIVE_LABEL);
    },
  });
  return chain(input, open);
}
