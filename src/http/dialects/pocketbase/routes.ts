// PocketBase's backups API (see docs/dialects/pocketbase.md) on the core
// services: superuser auth, file tokens, and list / create / upload /
// download / delete / restore of backups named by key.
import { readableCopies } from '../../../services/copies.ts';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { MultipartFile } from '@fastify/multipart';
import { AppError } from '../../../errors/index.ts';
import { artifactKey, manifestKey } from '../../../domain/manifest.ts';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as backups from '../../../services/backups.ts';
import { createRestore } from '../../../services/restores.ts';
import { importUpload } from '../../../services/imports.ts';
import { getInstanceRow, isInstanceBusy } from '../../../services/instances.ts';
import type { BackupView } from '../../../services/views.ts';
import { workPath } from '../../../config/index.ts';
import { exchangeZipSize, writeExchangeZip } from '../../../archive/zip-writer.ts';
import { readZipArchive } from '../../../archive/zip-reader.ts';
import { busy, fieldError, forbidden, MSG, notFound, PbError, unauthorized } from './errors.ts';
import { FieldsError, pickFields } from './fields.ts';
import { KEY_RE, MAX_NAME, backupsByKey, generatedName, pbDate } from './keys.ts';
import { instanceOf, type PbAuth } from './request.ts';

/** The _superusers collection's fixed id in PocketBase (the SDK knows it too). */
const SUPERUSERS_ID = 'pbc_3142635823';
/** PocketBase's file tokens live 3 minutes; a download only needs it to start. */
const FILE_TOKEN_TTL_SECONDS = 180;

// auth 'none': the server-wide hook stays out, this dialect authenticates itself. hide: the OpenAPI
// document describes the native API only.
const cfg = (pocketbaseAuth: PbAuth) => ({ config: { auth: 'none' as const, pocketbaseAuth }, schema: { hide: true } });

/** A file token is bound to the instance, not to one backup: PocketBase's tokens open every backup. */
const fileTokenSubject = (instance: string): string => `pocketbase:${instance}`;

function withFields(req: FastifyRequest, value: unknown): unknown {
  const fields = (req.query as { fields?: unknown }).fields;
  if (fields !== undefined && typeof fields !== 'string') throw new PbError(400, 'The fields parameter must be given once.');
  try {
    return pickFields(value, fields);
  } catch (err) {
    if (err instanceof FieldsError) throw new PbError(400, err.message);
    throw err;
  }
}

/**
 * PocketBase refuses a backup or restore while another one of the app waits
 * or runs. Checked early here (before a name is chosen), and again by the core
 * in the transaction that creates the job (requireIdle), so two requests
 * cannot both pass.
 */
async function assertIdle(ctx: ServiceContext, instance: string): Promise<void> {
  if (await isInstanceBusy(ctx, instance)) throw busy();
}

/** Stops waiting (the job goes on) when the client goes away before the answer. */
function abortOnClose(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

async function findBackup(ctx: ServiceContext, instance: string, key: string, successOnly: boolean): Promise<BackupView> {
  if (!KEY_RE.test(key)) throw notFound();
  const backup = (await backupsByKey(ctx, instance)).get(key);
  if (!backup || (successOnly && backup.status !== 'success')) throw notFound();
  return backup;
}

/** The name field of a create request, from JSON, urlencoded or multipart. */
async function nameFromBody(req: FastifyRequest): Promise<unknown> {
  if (req.isMultipart()) {
    let name: unknown;
    for await (const part of req.parts()) {
      if (part.type === 'file') {
        part.file.resume();
        continue;
      }
      if (part.fieldname === 'name') name = part.value;
      if (part.fieldname === '@jsonPayload' && typeof part.value === 'string') {
        try {
          const payload = JSON.parse(part.value) as { name?: unknown };
          if (payload && typeof payload === 'object' && 'name' in payload) name = payload.name;
        } catch {
          throw new PbError(400, MSG.loading);
        }
      }
    }
    return name;
  }
  const body = req.body;
  if (body === undefined || body === null) return undefined;
  if (typeof body !== 'object' || Array.isArray(body)) throw new PbError(400, MSG.loading);
  return (body as { name?: unknown }).name;
}

function checkName(name: string, field: string, message: string): void {
  if (name.length > MAX_NAME) {
    throw fieldError(message, field, 'validation_length_out_of_range', `The length must be between 1 and ${MAX_NAME}.`);
  }
  if (!KEY_RE.test(name)) throw fieldError(message, field, 'validation_match_invalid', 'Must be in a valid format.');
}

/** Reads the first bytes of a stream and gives back a stream of all of it, errors included. */
async function peek(stream: Readable, n: number): Promise<{ head: Buffer; whole: Readable }> {
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const chunks: Buffer[] = [];
  let got = 0;
  let done = false;
  while (got < n) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    chunks.push(r.value);
    got += r.value.length;
  }
  const head = Buffer.concat(chunks);
  async function* all(): AsyncGenerator<Buffer> {
    try {
      if (head.length > 0) yield head;
      while (!done) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      await it.return?.();
    }
  }
  return { head, whole: Readable.from(all(), { objectMode: false }) };
}

/** Reads a refused upload to its end (as PocketBase would), so the client gets the answer on a sane connection. */
async function drain(stream: Readable): Promise<void> {
  try {
    for await (const _ of stream) void _;
  } catch {
    // a cut or over-limit upload: nothing more to read
  }
}

const ZIP_MAGIC = [Buffer.from('PK\x03\x04', 'latin1'), Buffer.from('PK\x05\x06', 'latin1')];

export async function pocketbaseRoutes(app: FastifyInstance, ctx: ServiceContext): Promise<void> {
  // -- auth
  app.post('/api/collections/:collection/auth-with-password', cfg('public'), async (req) => {
    const instance = instanceOf(req);
    await getInstanceRow(ctx, instance);
    const { collection } = req.params as { collection: string };
    // Backvault's superusers are the only auth collection here.
    if (collection !== '_superusers' && collection !== SUPERUSERS_ID) throw notFound();
    const body = (req.body ?? {}) as Record<string, unknown>;
    if (typeof body !== 'object' || Array.isArray(body)) throw new PbError(400, MSG.loading);
    const data: Record<string, { code: string; message: string }> = {};
    for (const field of ['identity', 'password'] as const) {
      const v = body[field];
      if (v === undefined || v === null || v === '') data[field] = { code: 'validation_required', message: 'Cannot be blank.' };
      else if (typeof v !== 'string') throw new PbError(400, MSG.loading);
      else if (v.length > 255) data[field] = { code: 'validation_length_out_of_range', message: 'The length must be between 1 and 255.' };
    }
    if (Object.keys(data).length > 0) throw new PbError(400, MSG.validation, data);
    const identity = body.identity as string;
    const { token } = await auth.login(ctx, identity, body.password as string, { type: 'auth', collectionId: SUPERUSERS_ID });
    const principal = await auth.authenticate(ctx, token);
    const record = {
      collectionId: SUPERUSERS_ID,
      collectionName: '_superusers',
      id: principal.id,
      email: identity.toLowerCase(),
      emailVisibility: false,
      verified: true,
    };
    return withFields(req, { token, record });
  });

  app.post('/api/files/token', cfg('read'), async (req) => {
    const instance = instanceOf(req);
    await getInstanceRow(ctx, instance);
    const { token } = await auth.signDownloadToken(ctx, fileTokenSubject(instance), FILE_TOKEN_TTL_SECONDS);
    return withFields(req, { token });
  });

  // -- backups
  app.get('/api/backups', cfg('read'), async (req) => {
    const instance = instanceOf(req);
    const byKey = await backupsByKey(ctx, instance);
    const items: { key: string; modified: string; size: number }[] = [];
    for (const [key, b] of byKey) {
      if (b.status !== 'success') continue; // PocketBase lists files, and only a finished backup is one
      const copy = (await readableCopies(ctx, b.id))[0];
      const stored = copy ? await copy.storage.stat(manifestKey(b.id)) : null;
      if (!stored) continue; // the manifest marks a complete backup; without it there is nothing to download
      items.push({ key, modified: pbDate(b.finished_at ?? b.updated_at), size: exchangeZipSize(stored.size, { finished_at: b.finished_at ?? '', resources: b.resources }) });
    }
    items.sort((a, b) => b.modified.localeCompare(a.modified) || a.key.localeCompare(b.key));
    return withFields(req, items);
  });

  app.post('/api/backups', cfg('admin'), async (req, reply) => {
    const instance = instanceOf(req);
    await getInstanceRow(ctx, instance);
    const raw = await nameFromBody(req);
    if (raw !== undefined && raw !== null && typeof raw !== 'string') throw new PbError(400, MSG.loading);
    await assertIdle(ctx, instance);
    const taken = await backupsByKey(ctx, instance);
    let name: string;
    if (typeof raw === 'string' && raw !== '') {
      checkName(raw, 'name', MSG.validation);
      if (taken.has(raw)) throw fieldError(MSG.validation, 'name', 'validation_backup_name_exists', 'The backup file name is invalid or already exists.');
      name = raw;
    } else {
      name = generatedName(ctx.clock.now(), taken);
    }
    const created = await backups.createBackup(ctx, instance, { type: 'full', label: name, requireIdle: true });
    // PocketBase answers once the backup file exists.
    const done = await backups.waitForBackupEnd(ctx, created.id, { signal: abortOnClose(reply) });
    if (done.status !== 'success') {
      throw new PbError(400, done.status_info ? `${MSG.create} ${done.status_info}` : MSG.create);
    }
    return reply.code(204).send();
  });

  app.post('/api/backups/upload', cfg('admin'), async (req, reply) => {
    const instance = instanceOf(req);
    await getInstanceRow(ctx, instance);
    if (!req.isMultipart()) throw fieldError(MSG.validation, 'file', 'validation_required', 'Cannot be blank.');
    const file: MultipartFile | undefined = await req.file({ limits: { fileSize: ctx.config.max_upload_bytes, files: 1 } });
    if (!file || file.fieldname !== 'file') {
      file?.file.resume();
      throw fieldError(MSG.validation, 'file', 'validation_required', 'Cannot be blank.');
    }
    const upload = file;
    const tooLarge = () => fieldError(MSG.upload, 'file', 'validation_file_size_limit', `The file is larger than the limit of ${ctx.config.max_upload_bytes} bytes.`);
    // The parser cuts a file at the limit; make that an error of the stream, so a short archive is never read as whole.
    upload.file.on('limit', () => upload.file.destroy(new AppError('payload_too_large')));

    // PocketBase checks the content, not the declared type: a zip starts with a local file header (or is empty).
    const { head, whole } = await peek(upload.file, 4);
    if (!ZIP_MAGIC.some((m) => head.length >= 4 && head.subarray(0, 4).equals(m))) {
      await drain(whole);
      throw fieldError(MSG.upload, 'file', 'validation_invalid_mime_type', 'The file must be a zip archive.');
    }

    // The key is the uploaded file's name when it is a valid one; a nameless upload (a bare Blob) gets a generated one.
    const taken = await backupsByKey(ctx, instance);
    const given = upload.filename ?? '';
    let name: string;
    if (given.toLowerCase().endsWith('.zip')) {
      try {
        checkName(given, 'file', MSG.validation);
      } catch (err) {
        await drain(whole);
        throw err;
      }
      if (taken.has(given)) {
        await drain(whole);
        throw fieldError(MSG.validation, 'file', 'validation_backup_name_exists', 'Backup file with the specified name already exists.');
      }
      name = given;
    } else {
      name = generatedName(ctx.clock.now(), taken);
    }

    const tempDir = join(workPath(ctx.config), 'pocketbase-uploads');
    let view: BackupView;
    try {
      view = await importUpload(
        ctx,
        instance,
        whole,
        () => {
          if (upload.file.truncated) throw new AppError('payload_too_large');
        },
        { reader: (input, options) => readZipArchive(input, { ...options, tempDir }), label: name },
      );
    } catch (err) {
      // Refused before the archive was read (the quota, say): still read the upload to its end.
      if (!whole.destroyed && !whole.readableEnded) await drain(whole);
      if (upload.file.truncated || (err instanceof AppError && err.code === 'payload_too_large')) throw tooLarge();
      if (err instanceof AppError && ['invalid_archive', 'unsafe_path', 'checksum_mismatch'].includes(err.code)) {
        throw fieldError(MSG.upload, 'file', `validation_${err.code}`, err.message);
      }
      throw err;
    }
    // PocketBase answers once the file is stored; here that is once the import job has checked every artifact.
    const done = await backups.waitForBackupEnd(ctx, view.id, { signal: abortOnClose(reply) });
    if (done.status !== 'success') {
      // A refused upload leaves nothing behind in PocketBase; the name stays free for a retry.
      await backups.deleteBackup(ctx, done.id).catch(() => undefined);
      throw fieldError(MSG.upload, 'file', 'validation_invalid_archive', done.status_info ?? 'The archive could not be checked.');
    }
    return reply.code(204).send();
  });

  app.get('/api/backups/:key', cfg('download'), async (req, reply) => {
    const instance = instanceOf(req);
    const { key } = req.params as { key: string };
    if (!req.principal) {
      const token = (req.query as { token?: unknown }).token;
      if (typeof token !== 'string' || token === '') throw unauthorized();
      try {
        await auth.verifyDownloadToken(ctx, token, fileTokenSubject(instance));
      } catch {
        throw forbidden();
      }
    }
    const backup = await findBackup(ctx, instance, key, true);
    const { bytes, manifest, storage } = await backups.readStoredManifest(ctx, backup.id);
    reply.header('Content-Type', 'application/zip');
    reply.header('Content-Disposition', `attachment; filename="${key}"`);
    reply.header('Content-Length', exchangeZipSize(bytes.length, manifest));
    reply.header('Cache-Control', 'no-store');
    // Fastify answers HEAD with the GET handler and keeps Content-Length only for a stream payload: send an empty one.
    if (req.method === 'HEAD') return reply.send(Readable.from([]));
    return reply.send(writeExchangeZip(bytes, manifest, (r, range) => storage.get(artifactKey(backup.id, r.name, r.artifact), range)));
  });

  app.delete('/api/backups/:key', cfg('admin'), async (req, reply) => {
    const instance = instanceOf(req);
    const backup = await findBackup(ctx, instance, (req.params as { key: string }).key, false);
    await backups.deleteBackup(ctx, backup.id);
    return reply.code(204).send();
  });

  app.post('/api/backups/:key/restore', cfg('admin'), async (req, reply) => {
    const instance = instanceOf(req);
    const backup = await findBackup(ctx, instance, (req.params as { key: string }).key, true);
    await assertIdle(ctx, instance);
    // Every resource of the backup, in place. PocketBase restarts itself here; Backvault runs a restore job,
    // answered at once as PocketBase does; its progress is at /api/v1/instances/{instance}/restores.
    await createRestore(ctx, instance, { backup: backup.id, requireIdle: true });
    return reply.code(204).send();
  });
}
