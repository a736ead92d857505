// The native dialect, /api/v1: thin handlers that validate a small form (the
// schemas, which also generate the OpenAPI document) and call one service.
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { AppError } from '../../../errors/index.ts';
import { COMPRESSIONS, NAME_PATTERN, RESOURCE_TYPES, BACKUP_STATUSES } from '../../../domain/types.ts';
import { ManifestResourceSchema } from '../../../domain/manifest.ts';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as instances from '../../../services/instances.ts';
import * as backups from '../../../services/backups.ts';
import * as restores from '../../../services/restores.ts';
import * as imports from '../../../services/imports.ts';
import { requestVerify } from '../../../services/verify.ts';
import { sendDownload } from '../../download.ts';
import { notificationRoutes } from './notifications.ts';
import { policyRoutes } from './policies.ts';
import { storageRoutes } from './storage.ts';
import { ListCache } from './list-cache.ts';

const Name = Type.String({ pattern: NAME_PATTERN, description: 'lowercase letters, digits, _ and -; at most 63 characters' });
const Id = Type.String({ pattern: '^[0-9a-f]{24}$' });
const Pagination = {
  page: Type.Integer({ minimum: 1, default: 1 }),
  per_page: Type.Integer({ minimum: 1, maximum: 500, default: 50 }),
};
const ObjectList = Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { maxItems: 10000 });
const SelectionSchema = Type.Record(Type.String({ pattern: NAME_PATTERN }), Type.Union([Type.Null(), ObjectList]), {
  description: 'resource name -> null (all of it) or a list of objects (tables, path globs, key patterns)',
});
const ExcludeSchema = Type.Record(Type.String({ pattern: NAME_PATTERN }), ObjectList, { description: 'resource name -> objects to leave out' });
const Connection = Type.String({ minLength: 1, maxLength: 4096, description: 'a URL for network databases; an absolute path for sqlite and files' });
const Options = Type.Record(Type.String(), Type.Unknown(), { maxProperties: 64 });

const ErrorSchema = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }),
});

function page<T>(items: T[], total: number, p: number, perPage: number) {
  return { items, pagination: { page: p, per_page: perPage, total, pages: Math.max(1, Math.ceil(total / perPage)) } };
}

// Response schemas of BackupView (src/services/views.ts): fast-json-stringify
// serializes with them, and it drops what a schema does not name, so every
// field is here. Nullable fields use OpenAPI 3.0's `nullable` and enums plain
// strings: an anyOf would make the serializer validate each value first.
const Nullable = <T extends TSchema>(schema: T) => Type.Unsafe<Static<T> | null>({ ...schema, nullable: true });
const NullableString = Nullable(Type.String());
const BackupResourceView = Type.Object({
  ...ManifestResourceSchema.properties,
  type: Type.String(),
  compression: Type.String(),
  selection: Nullable(Type.Array(Type.String())),
});
const BackupView = Type.Object({
  id: Type.String(),
  instance: Type.String(),
  type: Type.String({ description: 'full or partial' }),
  origin: Type.String(),
  label: NullableString,
  description: NullableString,
  status: Type.String(),
  status_info: NullableString,
  size: Type.Integer(),
  compression: Type.String(),
  selection: Nullable(Type.Record(Type.String(), Nullable(Type.Array(Type.String())))),
  exclude: Nullable(Type.Record(Type.String(), Type.Array(Type.String()))),
  policy_id: NullableString,
  created_at: Type.String(),
  updated_at: Type.String(),
  started_at: NullableString,
  finished_at: NullableString,
  verify_status: NullableString,
  verify_result: Type.Unknown({ description: 'the last restore drill (any JSON), or null' }),
  resources: Type.Array(BackupResourceView),
  progress: Nullable(
    Type.Object(
      {
        phase: Type.String(),
        resource: Type.Optional(Type.String()),
        resources_done: Type.Integer(),
        resources_total: Type.Integer(),
        bytes_done: Type.Optional(Type.Integer()),
      },
      { additionalProperties: true },
    ),
  ),
  copies: Type.Array(Type.Object({ destination: Type.String(), status: Type.String(), status_info: NullableString, size: Type.Integer() })),
  links: Type.Object({ self: Type.String(), download: Type.String() }),
});
const BackupListView = Type.Object({
  items: Type.Array(BackupView),
  pagination: Type.Object({ page: Type.Integer(), per_page: Type.Integer(), total: Type.Integer(), pages: Type.Integer() }),
});

const CreateBackupBody = Type.Object(
  {
    type: Type.Union([Type.Literal('full'), Type.Literal('partial')], { default: 'full' }),
    label: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Null()])),
    description: Type.Optional(Type.Union([Type.String({ maxLength: 256 }), Type.Null()])),
    selection: Type.Optional(Type.Union([SelectionSchema, Type.Null()])),
    exclude: Type.Optional(Type.Union([ExcludeSchema, Type.Null()])),
    compression: Type.Optional(Type.Union(COMPRESSIONS.map((c) => Type.Literal(c)))),
    run_on_replica: Type.Optional(Type.Boolean({ description: "dump from each resource's replica where one is set" })),
  },
  { additionalProperties: false },
);

export async function nativeRoutes(app: FastifyInstance, ctx: ServiceContext): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema };

  r.get('/health', { config: { auth: 'none' }, schema: { tags: ['system'], summary: 'Liveness and readiness' } }, async () => {
    await ctx.db.selectFrom('settings').select('key').limit(1).execute();
    return { status: 'ok' };
  });

  r.post(
    '/auth/login',
    {
      config: { auth: 'none' },
      schema: {
        tags: ['auth'],
        summary: 'Log in as a superuser',
        body: Type.Object({ email: Type.String({ maxLength: 254 }), password: Type.String({ maxLength: 1024 }) }, { additionalProperties: false }),
        response: { 200: Type.Object({ token: Type.String(), expires_at: Type.String() }), ...errors },
      },
    },
    async (req) => auth.login(ctx, req.body.email, req.body.password),
  );

  // API keys
  r.post(
    '/keys',
    {
      schema: {
        tags: ['keys'],
        summary: 'Create an API key; the key is shown once',
        body: Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }), scope: Type.Union([Type.Literal('read'), Type.Literal('admin')]) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => reply.code(201).send(await auth.createApiKey(ctx.db, req.body.name, req.body.scope, ctx.clock.now())),
  );
  r.get('/keys', { schema: { tags: ['keys'], summary: 'List API keys (never their secrets)' } }, async () => {
    const items = await auth.listApiKeys(ctx.db);
    return page(items, items.length, 1, Math.max(1, items.length));
  });
  r.delete('/keys/:id', { schema: { tags: ['keys'], params: Type.Object({ id: Type.String({ maxLength: 64 }) }) } }, async (req, reply) => {
    await auth.deleteApiKey(ctx.db, req.params.id);
    return reply.code(204).send();
  });

  // Instances
  const InstanceParams = Type.Object({ instance: Name });
  r.post(
    '/instances',
    {
      schema: {
        tags: ['instances'],
        body: Type.Object(
          { name: Name, description: Type.Optional(Type.String({ maxLength: 1024 })), max_backups: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])) },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => reply.code(201).send(await instances.createInstance(ctx, req.body)),
  );
  r.get('/instances', { config: { auth: 'read' }, schema: { tags: ['instances'], querystring: Type.Object(Pagination) } }, async (req) => {
    const { items, total } = await instances.listInstances(ctx, req.query.page, req.query.per_page);
    return page(items, total, req.query.page, req.query.per_page);
  });
  r.get('/instances/:instance', { config: { auth: 'read' }, schema: { tags: ['instances'], params: InstanceParams } }, async (req) => {
    const inst = instances.instanceView(await instances.getInstanceRow(ctx, req.params.instance));
    const res = await instances.listResourceRows(ctx, req.params.instance);
    return { ...inst, resources: res.map(instances.resourceView) };
  });
  r.patch(
    '/instances/:instance',
    {
      schema: {
        tags: ['instances'],
        params: InstanceParams,
        body: Type.Object(
          { description: Type.Optional(Type.String({ maxLength: 1024 })), max_backups: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])) },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => instances.updateInstance(ctx, req.params.instance, req.body),
  );
  r.delete(
    '/instances/:instance',
    { schema: { tags: ['instances'], params: InstanceParams, querystring: Type.Object({ force: Type.Boolean({ default: false }) }) } },
    async (req, reply) => {
      await instances.deleteInstance(ctx, req.params.instance, req.query.force, (id) => backups.deleteBackup(ctx, id));
      return reply.code(204).send();
    },
  );

  // Resources
  const ResourceParams = Type.Object({ instance: Name, resource: Name });
  r.post(
    '/instances/:instance/resources',
    {
      schema: {
        tags: ['resources'],
        params: InstanceParams,
        body: Type.Object(
          {
            name: Name,
            type: Type.Union(RESOURCE_TYPES.map((t) => Type.Literal(t))),
            connection: Connection,
            replica: Type.Optional(Type.Union([Connection, Type.Null()])),
            options: Type.Optional(Options),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => reply.code(201).send(await instances.createResource(ctx, req.params.instance, req.body)),
  );
  r.get('/instances/:instance/resources', { config: { auth: 'read' }, schema: { tags: ['resources'], params: InstanceParams } }, async (req) => {
    await instances.getInstanceRow(ctx, req.params.instance);
    const rows = await instances.listResourceRows(ctx, req.params.instance);
    return page(rows.map(instances.resourceView), rows.length, 1, Math.max(1, rows.length));
  });
  r.get('/instances/:instance/resources/:resource', { config: { auth: 'read' }, schema: { tags: ['resources'], params: ResourceParams } }, async (req) =>
    instances.resourceView(await instances.getResourceRow(ctx, req.params.instance, req.params.resource)),
  );
  r.patch(
    '/instances/:instance/resources/:resource',
    {
      schema: {
        tags: ['resources'],
        params: ResourceParams,
        body: Type.Object(
          { connection: Type.Optional(Connection), replica: Type.Optional(Type.Union([Connection, Type.Null()])), options: Type.Optional(Options) },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => instances.updateResource(ctx, req.params.instance, req.params.resource, req.body),
  );
  r.delete('/instances/:instance/resources/:resource', { schema: { tags: ['resources'], params: ResourceParams } }, async (req, reply) => {
    await instances.deleteResource(ctx, req.params.instance, req.params.resource);
    return reply.code(204).send();
  });
  r.get('/instances/:instance/resources/:resource/objects', { config: { auth: 'read' }, schema: { tags: ['resources'], params: ResourceParams } }, async (req) => {
    const items = await instances.listObjects(ctx, req.params.instance, req.params.resource);
    return page(items, items.length, 1, Math.max(1, items.length));
  });

  // Backups
  const BackupListQuery = Type.Object({
    ...Pagination,
    status: Type.Optional(Type.Union(BACKUP_STATUSES.map((s) => Type.Literal(s)))),
    type: Type.Optional(Type.Union([Type.Literal('full'), Type.Literal('partial')])),
    policy: Type.Optional(Type.String({ maxLength: 64, description: 'only backups made by this policy' })),
  });
  r.post(
    '/instances/:instance/backups',
    { schema: { tags: ['backups'], summary: 'Start a backup (202; poll the backup until success or error)', params: InstanceParams, body: CreateBackupBody } },
    async (req, reply) => reply.code(202).send(await backups.createBackup(ctx, req.params.instance, req.body as Static<typeof CreateBackupBody>)),
  );
  // Backup lists are polled: answers are reused while the catalog is unchanged (list-cache.ts).
  const backupLists = new ListCache(ctx.db);
  const listBackups = (reply: FastifyReply, f: backups.BackupFilter) =>
    backupLists.send(reply, JSON.stringify([f.instance, f.status, f.type, f.policy, f.page, f.perPage]), async () => {
      const { items, total } = await backups.listBackups(ctx, f);
      return page(items, total, f.page, f.perPage);
    });
  r.get('/instances/:instance/backups', { config: { auth: 'read' }, schema: { tags: ['backups'], params: InstanceParams, querystring: BackupListQuery, response: { 200: BackupListView, ...errors } } }, async (req, reply) =>
    listBackups(reply, { instance: req.params.instance, status: req.query.status, type: req.query.type, policy: req.query.policy, page: req.query.page, perPage: req.query.per_page }),
  );
  r.get('/backups', { config: { auth: 'read' }, schema: { tags: ['backups'], querystring: BackupListQuery, response: { 200: BackupListView, ...errors } } }, async (req, reply) =>
    listBackups(reply, { status: req.query.status, type: req.query.type, policy: req.query.policy, page: req.query.page, perPage: req.query.per_page }),
  );
  const BackupParams = Type.Object({ id: Id });
  r.get('/backups/:id', { config: { auth: 'read' }, schema: { tags: ['backups'], params: BackupParams, response: { 200: BackupView, ...errors } } }, async (req) => backups.getBackup(ctx, req.params.id));
  r.delete('/backups/:id', { schema: { tags: ['backups'], params: BackupParams } }, async (req, reply) => {
    await backups.deleteBackup(ctx, req.params.id);
    return reply.code(204).send();
  });
  r.get('/backups/:id/files', { config: { auth: 'read' }, schema: { tags: ['backups'], params: BackupParams } }, async (req) => {
    const items = await backups.listBackupFiles(ctx, req.params.id);
    return page(items, items.length, 1, Math.max(1, items.length));
  });
  r.post('/backups/:id/cancel', { schema: { tags: ['backups'], params: BackupParams } }, async (req) => backups.cancelBackup(ctx, req.params.id));
  r.post('/backups/:id/verify', { schema: { tags: ['backups'], summary: 'Run a restore drill (202)', params: BackupParams } }, async (req, reply) =>
    reply.code(202).send(await requestVerify(ctx, req.params.id)),
  );
  r.post(
    '/backups/:id/download-link',
    {
      config: { auth: 'read' },
      schema: {
        tags: ['backups'],
        summary: 'A link that downloads the exchange archive without other credentials, until it expires',
        params: BackupParams,
        body: Type.Optional(Type.Object({ expires_in: Type.Optional(Type.Integer({ minimum: 10, description: 'seconds' })) }, { additionalProperties: false })),
      },
    },
    async (req) => {
      const backup = await backups.getBackup(ctx, req.params.id);
      if (backup.status !== 'success') throw new AppError('backup_not_ready');
      const ttl = req.body?.expires_in ?? ctx.config.download_link_ttl_seconds;
      if (ttl > ctx.config.download_link_max_ttl_seconds) {
        throw new AppError('invalid_request', `expires_in may be at most ${ctx.config.download_link_max_ttl_seconds} seconds.`, { field: 'expires_in' });
      }
      const { token, expires_at } = await auth.signDownloadToken(ctx, req.params.id, ttl);
      return { url: `${publicBase(ctx, req)}/api/v1/backups/${req.params.id}/download?token=${encodeURIComponent(token)}`, expires_at };
    },
  );
  r.get(
    '/backups/:id/download',
    {
      config: { auth: 'download' },
      schema: { tags: ['backups'], summary: 'The exchange archive (tar); honours Range', params: BackupParams, querystring: Type.Object({ token: Type.Optional(Type.String({ maxLength: 4096 })) }) },
    },
    async (req, reply) => {
      if (!req.principal) {
        if (!req.query.token) throw new AppError('unauthorized');
        await auth.verifyDownloadToken(ctx, req.query.token, req.params.id);
      }
      return sendDownload(req, reply, await backups.openDownload(ctx, req.params.id));
    },
  );

  r.post(
    '/backups/:id/export',
    {
      config: { auth: 'read' },
      schema: {
        tags: ['backups'],
        summary: 'The exchange archive encrypted with a passphrase, for archives that leave your hands (decrypt with `backvault archive decrypt`)',
        params: BackupParams,
        body: Type.Object({ passphrase: Type.String({ minLength: 12, maxLength: 1024 }) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      // The passphrase comes in the body, never the URL, so it stays out of logs.
      const exported = await backups.openEncryptedExport(ctx, req.params.id, req.body.passphrase);
      reply.header('Content-Type', 'application/octet-stream');
      reply.header('Content-Disposition', `attachment; filename="${exported.filename}"`);
      reply.header('Content-Length', exported.size);
      reply.header('Cache-Control', 'no-store');
      return reply.send(exported.stream);
    },
  );

  // Imports
  r.post(
    '/instances/:instance/backups/import',
    {
      schema: {
        tags: ['backups'],
        summary: 'Import an exchange archive: multipart field "file", or JSON {url}',
        params: InstanceParams,
        // Multipart bodies are read as a stream in the handler; the JSON form is checked there too.
        body: Type.Unknown({ description: 'multipart/form-data with field "file", or JSON {"url": "https://..."}' }),
      },
    },
    async (req, reply) => {
      if (req.isMultipart()) {
        const file = await req.file({ limits: { fileSize: ctx.config.max_upload_bytes, files: 1 } });
        if (!file || file.fieldname !== 'file') throw new AppError('invalid_request', 'Send the archive in a multipart field named file.');
        const tooLarge = () => new AppError('payload_too_large', `The upload is larger than the limit of ${ctx.config.max_upload_bytes} bytes.`);
        // The parser cuts a file at the limit; make that an error of the stream, so the import fails rather than reading a short archive.
        file.file.on('limit', () => file.file.destroy(tooLarge()));
        try {
          const view = await imports.importUpload(ctx, req.params.instance, file.file, () => {
            if (file.file.truncated) throw tooLarge();
          });
          return reply.code(202).send(view);
        } catch (err) {
          if (file.file.truncated) throw tooLarge();
          throw err;
        }
      }
      const body = req.body as { url?: unknown } | null | undefined;
      const keys = body && typeof body === 'object' ? Object.keys(body) : [];
      if (!body || typeof body.url !== 'string' || body.url.length > 8192 || keys.some((k) => k !== 'url')) {
        throw new AppError('invalid_request', 'Send the archive as multipart field file, or JSON {"url": "..."} with nothing else.', { field: 'url' });
      }
      return reply.code(202).send(await imports.importFromUrl(ctx, req.params.instance, body.url));
    },
  );

  // Restores
  r.post(
    '/instances/:instance/restores',
    {
      schema: {
        tags: ['restores'],
        summary: 'Restore a backup in place or into new targets (202)',
        params: InstanceParams,
        body: Type.Object(
          {
            backup: Id,
            resources: Type.Optional(Type.Union([Type.Array(Name, { maxItems: 256 }), Type.Null()])),
            targets: Type.Optional(Type.Union([Type.Record(Type.String({ pattern: NAME_PATTERN }), Type.Object({ connection: Connection }, { additionalProperties: false })), Type.Null()])),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req, reply) => reply.code(202).send(await restores.createRestore(ctx, req.params.instance, req.body)),
  );
  r.get(
    '/instances/:instance/restores',
    { config: { auth: 'read' }, schema: { tags: ['restores'], params: InstanceParams, querystring: Type.Object({ ...Pagination, status: Type.Optional(Type.String({ maxLength: 16 })) }) } },
    async (req) => {
      const { items, total } = await restores.listRestores(ctx, req.params.instance, req.query.page, req.query.per_page, req.query.status);
      return page(items, total, req.query.page, req.query.per_page);
    },
  );
  r.get('/restores/:id', { config: { auth: 'read' }, schema: { tags: ['restores'], params: Type.Object({ id: Id }) } }, async (req) => restores.getRestore(ctx, req.params.id));
  await policyRoutes(app, ctx);
  await notificationRoutes(app, ctx);
  await storageRoutes(app, ctx);
}

function publicBase(ctx: ServiceContext, req: FastifyRequest): string {
  if (ctx.config.public_url) return ctx.config.public_url.replace(/\/+$/, '');
  return `${req.protocol}://${req.host}`;
}

export type { FastifyReply };
