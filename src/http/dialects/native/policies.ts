// Native routes for policies: schedule + what + retention, run now, and a
// preview of what retention would keep and delete.
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { COMPRESSIONS, NAME_PATTERN } from '../../../domain/types.ts';
import type { ServiceContext } from '../../../services/context.ts';
import * as policies from '../../../services/policies.ts';

const Name = Type.String({ pattern: NAME_PATTERN });
const ObjectList = Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { maxItems: 10000 });
const Count = Type.Union([Type.Integer({ minimum: 0, maximum: 100000 }), Type.Null()]);

const RuleFields = {
  keep_count: Type.Optional(Count),
  retention_days: Type.Optional(Count),
  keep_last: Type.Optional(Count),
  keep_hourly: Type.Optional(Count),
  keep_daily: Type.Optional(Count),
  keep_weekly: Type.Optional(Count),
  keep_monthly: Type.Optional(Count),
  keep_yearly: Type.Optional(Count),
  minimum: Type.Optional(Count),
};

export const RetentionSchema = Type.Object(
  {
    ...RuleFields,
    destinations: Type.Optional(
      Type.Record(Type.String({ pattern: NAME_PATTERN }), Type.Object(RuleFields, { additionalProperties: false }), {
        description: 'rules of their own for some destinations (by name); the others follow the rules above',
      }),
    ),
  },
  { additionalProperties: false, description: 'restic-style rules; a backup is kept when any rule keeps it; the newest is always kept' },
);

const PolicyFields = {
  name: Type.String({ minLength: 1, maxLength: 128 }),
  enabled: Type.Optional(Type.Boolean()),
  schedule: Type.String({ minLength: 1, maxLength: 256, description: 'cron expression (5 or 6 fields)' }),
  timezone: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'IANA time zone; UTC by default' })),
  type: Type.Optional(Type.Union([Type.Literal('full'), Type.Literal('partial')])),
  selection: Type.Optional(Type.Union([Type.Record(Type.String({ pattern: NAME_PATTERN }), Type.Union([Type.Null(), ObjectList])), Type.Null()])),
  exclude: Type.Optional(Type.Union([Type.Record(Type.String({ pattern: NAME_PATTERN }), ObjectList), Type.Null()])),
  compression: Type.Optional(Type.Union(COMPRESSIONS.map((c) => Type.Literal(c)))),
  run_on_replica: Type.Optional(Type.Boolean()),
  verify: Type.Optional(Type.Boolean({ description: 'run a restore drill after each successful backup' })),
  retention: Type.Optional(RetentionSchema),
  catch_up: Type.Optional(Type.Boolean({ description: 'run once at start when a run was missed while the server was down (default true)' })),
};
const CreatePolicyBody = Type.Object(PolicyFields, { additionalProperties: false });
const UpdatePolicyBody = Type.Partial(Type.Object(PolicyFields), { additionalProperties: false });

export async function policyRoutes(app: FastifyInstance, ctx: ServiceContext): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const Pagination = Type.Object({ page: Type.Integer({ minimum: 1, default: 1 }), per_page: Type.Integer({ minimum: 1, maximum: 500, default: 50 }) });
  const page = <T>(items: T[], total: number, p: number, perPage: number) => ({ items, pagination: { page: p, per_page: perPage, total, pages: Math.max(1, Math.ceil(total / perPage)) } });
  const PolicyParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

  r.post(
    '/instances/:instance/policies',
    { schema: { tags: ['policies'], summary: 'Create a backup policy', params: Type.Object({ instance: Name }), body: CreatePolicyBody } },
    async (req, reply) => reply.code(201).send(await policies.createPolicy(ctx, req.params.instance, req.body as Static<typeof CreatePolicyBody>)),
  );
  r.get('/instances/:instance/policies', { config: { auth: 'read' }, schema: { tags: ['policies'], params: Type.Object({ instance: Name }), querystring: Pagination } }, async (req) => {
    const { items, total } = await policies.listPolicies(ctx, { instance: req.params.instance, page: req.query.page, perPage: req.query.per_page });
    return page(items, total, req.query.page, req.query.per_page);
  });
  r.get('/policies', { config: { auth: 'read' }, schema: { tags: ['policies'], querystring: Pagination } }, async (req) => {
    const { items, total } = await policies.listPolicies(ctx, { page: req.query.page, perPage: req.query.per_page });
    return page(items, total, req.query.page, req.query.per_page);
  });
  r.get('/policies/:id', { config: { auth: 'read' }, schema: { tags: ['policies'], params: PolicyParams } }, async (req) => policies.getPolicy(ctx, req.params.id));
  r.patch('/policies/:id', { schema: { tags: ['policies'], params: PolicyParams, body: UpdatePolicyBody } }, async (req) =>
    policies.updatePolicy(ctx, req.params.id, req.body as Partial<policies.PolicyInput>),
  );
  r.delete('/policies/:id', { schema: { tags: ['policies'], params: PolicyParams } }, async (req, reply) => {
    await policies.deletePolicy(ctx, req.params.id);
    return reply.code(204).send();
  });
  r.post('/policies/:id/run', { schema: { tags: ['policies'], summary: 'Run the policy now (202 with the backup)', params: PolicyParams } }, async (req, reply) =>
    reply.code(202).send(await policies.runPolicy(ctx, await policies.getPolicyRow(ctx, req.params.id))),
  );
  r.get(
    '/policies/:id/retention-preview',
    { config: { auth: 'read' }, schema: { tags: ['policies'], summary: 'What retention would keep and delete now, and why', params: PolicyParams } },
    async (req) => policies.retentionPreview(ctx, req.params.id),
  );
}
