// Native routes for notification channels: /api/v1/notifications. Writing
// (and sending a test) needs an admin key; reading shows secrets masked.
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ServiceContext } from '../../../services/context.ts';
import * as notifications from '../../../services/notifications.ts';

const Id = Type.String({ pattern: '^[0-9a-f]{24}$' });
const ChannelName = Type.String({ minLength: 1, maxLength: 128, pattern: '^[^\\r\\n\\t]+$' });
const Events = Type.Array(Type.Union(notifications.NOTIFICATION_EVENTS.map((e) => Type.Literal(e))), {
  minItems: 1,
  maxItems: notifications.NOTIFICATION_EVENTS.length,
  description: 'events sent to the channel; default all',
});
// The config is checked against its kind in the service, which names the wrong field; one loose schema here keeps those messages.
const Config = Type.Record(Type.String(), Type.Unknown(), {
  description:
    'webhook: {url, secret?} (secret: 16+ characters; generated and returned once as `secret` when left out). ' +
    'email: {host, port?, security?: tls|starttls|none (default starttls), user?, password?, from, to: [addresses]}. ' +
    'Secrets read back as ****; sending **** back keeps the stored value.',
});
const Pagination = {
  page: Type.Integer({ minimum: 1, default: 1 }),
  per_page: Type.Integer({ minimum: 1, maximum: 500, default: 50 }),
};
const Params = Type.Object({ id: Id });

const ChannelView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: Type.Union(notifications.CHANNEL_KINDS.map((k) => Type.Literal(k))),
  config: Type.Record(Type.String(), Type.Unknown()),
  events: Type.Array(Type.String()),
  failures_only: Type.Boolean(),
  enabled: Type.Boolean(),
  last_status: Type.Union([Type.String(), Type.Null()], { description: 'success, error, or retrying' }),
  last_error: Type.Union([Type.String(), Type.Null()]),
  last_attempt_at: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String(),
  updated_at: Type.String(),
  links: Type.Object({ self: Type.String(), test: Type.String() }),
});
const Created = Type.Composite([ChannelView, Type.Object({ secret: Type.Optional(Type.String({ description: 'the generated webhook secret, shown only here' })) })]);
const DeliveryResult = Type.Object({
  ok: Type.Boolean(),
  attempts: Type.Integer(),
  status_code: Type.Union([Type.Integer(), Type.Null()], { description: "the receiver's HTTP status (webhooks)" }),
  error: Type.Union([Type.String(), Type.Null()]),
  duration_ms: Type.Integer(),
});
const ErrorSchema = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }),
});
const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema };

export async function notificationRoutes(app: FastifyInstance, ctx: ServiceContext): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const tags = ['notifications'];

  r.post(
    '/notifications',
    {
      schema: {
        tags,
        summary: 'Create a notification channel (webhook or e-mail)',
        body: Type.Object(
          {
            name: ChannelName,
            kind: Type.Union(notifications.CHANNEL_KINDS.map((k) => Type.Literal(k))),
            config: Config,
            events: Type.Optional(Events),
            failures_only: Type.Optional(Type.Boolean({ description: 'send only backup.failure, verify.failure and policy.late' })),
            enabled: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false },
        ),
        response: { 201: Created, ...errors },
      },
    },
    async (req, reply) => reply.code(201).send(await notifications.createChannel(ctx, req.body)),
  );

  r.get(
    '/notifications',
    { config: { auth: 'read' }, schema: { tags, summary: 'List notification channels (secrets masked)', querystring: Type.Object(Pagination) } },
    async (req) => {
      const { items, total } = await notifications.listChannels(ctx, req.query.page, req.query.per_page);
      return { items, pagination: { page: req.query.page, per_page: req.query.per_page, total, pages: Math.max(1, Math.ceil(total / req.query.per_page)) } };
    },
  );

  r.get(
    '/notifications/:id',
    { config: { auth: 'read' }, schema: { tags, summary: 'A notification channel (secrets masked)', params: Params, response: { 200: ChannelView, ...errors } } },
    async (req) => notifications.getChannel(ctx, req.params.id),
  );

  r.patch(
    '/notifications/:id',
    {
      schema: {
        tags,
        summary: 'Change a channel; config fields left out keep their values',
        params: Params,
        body: Type.Object(
          { name: Type.Optional(ChannelName), config: Type.Optional(Config), events: Type.Optional(Events), failures_only: Type.Optional(Type.Boolean()), enabled: Type.Optional(Type.Boolean()) },
          { additionalProperties: false },
        ),
        response: { 200: ChannelView, ...errors },
      },
    },
    async (req) => notifications.updateChannel(ctx, req.params.id, req.body),
  );

  r.delete('/notifications/:id', { schema: { tags, summary: 'Delete a channel', params: Params } }, async (req, reply) => {
    await notifications.deleteChannel(ctx, req.params.id);
    return reply.code(204).send();
  });

  r.post(
    '/notifications/:id/test',
    {
      schema: {
        tags,
        summary: 'Send a test message now (one attempt, no retries) and answer with the delivery result',
        params: Params,
        response: { 200: DeliveryResult, ...errors },
      },
    },
    async (req) => notifications.testChannel(ctx, req.params.id),
  );
}
