// Native routes for storage administration: a check of storage against the
// catalog (a dry run unless asked to remove orphans) and usage per instance.
// The catalog rebuild is a CLI command: it needs the catalog to itself.
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { NAME_PATTERN } from '../../../domain/types.ts';
import type { ServiceContext } from '../../../services/context.ts';
import { checkStorage, storageUsage } from '../../../services/storage-admin.ts';

const CheckBody = Type.Object(
  {
    remove_orphans: Type.Optional(
      Type.Boolean({
        default: false,
        description: 'remove the orphans marked removable; false (the default) is a dry run. Complete backups and backups in progress are never removed.',
      }),
    ),
  },
  { additionalProperties: false },
);

export async function storageRoutes(app: FastifyInstance, ctx: ServiceContext): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();

  r.post(
    '/storage/check',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['storage'],
        summary: 'Compare storage with the catalog: orphans, missing objects, backups in progress; removes orphans only on request',
        body: CheckBody,
      },
      // A bodiless POST is the plain dry run.
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) req.body = {};
      },
    },
    async (req) => checkStorage(ctx, { removeOrphans: req.body.remove_orphans === true }),
  );

  r.get(
    '/storage/usage',
    {
      config: { auth: 'read' },
      schema: {
        tags: ['storage'],
        summary: 'Storage used per instance and destination: successful backups and the bytes listed in storage',
        querystring: Type.Object({ instance: Type.Optional(Type.String({ pattern: NAME_PATTERN })) }),
      },
    },
    async (req) => {
      const usage = await storageUsage(ctx, req.query.instance !== undefined ? { instance: req.query.instance } : {});
      const n = usage.items.length;
      // One page holds every item: there is one per instance and destination.
      return { ...usage, pagination: { page: 1, per_page: Math.max(1, n), total: n, pages: 1 } };
    },
  );
}
