// Builds the HTTP server: framework plugins, auth, error mapping, dialects.
import Fastify, { type FastifyInstance } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import { createHash } from 'node:crypto';
import { Ajv } from 'ajv';
import type { ServiceContext } from '../services/context.ts';
import { registerAuth, bearerOf } from './auth.ts';
import { sendError, errorBody } from './errors.ts';
import { nativeRoutes } from './dialects/native/routes.ts';
import { syncanoDialect } from './dialects/syncano/index.ts';
import { scalingoDialect } from './dialects/scalingo/index.ts';
import { pocketbaseDialect } from './dialects/pocketbase/index.ts';
import { cloud66Dialect } from './dialects/cloud66/index.ts';
import { appwriteDialect } from './dialects/appwrite/index.ts';
import { AppError } from '../errors/index.ts';
import { BACKVAULT_VERSION } from '../services/backups.ts';
import { startMetrics } from '../services/metrics.ts';

export interface AppOptions {
  /** false for no request log; otherwise its level. Secrets are always redacted. */
  logger?: false | { level: string };
}

/** Download links carry their token in the query string: keep it out of request logs. */
export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]');
}

interface LoggedRequest {
  method: string;
  url: string;
  ip?: string;
}

function loggerOptions(options: AppOptions): false | object {
  if (!options.logger) return false;
  return {
    level: options.logger.level,
    redact: ['req.headers.authorization', 'req.headers.cookie'],
    serializers: {
      req: (req: LoggedRequest) => ({ method: req.method, url: redactUrl(req.url), remoteAddress: req.ip }),
    },
  };
}

export async function buildApp(ctx: ServiceContext, options: AppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: loggerOptions(options),
    bodyLimit: 1024 * 1024,
    // Ids in routes are validated by schemas; keep query parsing strict and small.
    routerOptions: { maxParamLength: 200 },
  });

  // Query strings and path params are text, so their numbers and booleans are
  // coerced; JSON bodies are checked as sent: {"name": 123} is a type error.
  const strict = new Ajv({ coerceTypes: false, useDefaults: true, removeAdditional: false, allErrors: false, strict: false });
  const coercing = new Ajv({ coerceTypes: 'array', useDefaults: true, removeAdditional: false, allErrors: false, strict: false });
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strict : coercing).compile(schema));

  app.setErrorHandler((err, request, reply) => sendError(request, reply, err));

  await app.register(rateLimit, {
    global: true,
    max: ctx.config.rate_limit_per_minute,
    timeWindow: 60_000,
    // Per credential where there is one (hashed: the key itself never sits in memory maps), else per address.
    keyGenerator: (req) => {
      // Dialects carry their keys in their own headers; each credential gets its own budget.
      const header = req.headers['x-api-key'] ?? req.headers['x-appwrite-key'];
      const bearer = bearerOf(req) ?? (typeof header === 'string' ? header : null);
      return bearer ? `k:${createHash('sha256').update(bearer).digest('hex').slice(0, 32)}` : `ip:${req.ip}`;
    },
    errorResponseBuilder: (_req, context) => {
      const err = new AppError('rate_limited', `Too many requests: the limit is ${context.max} per minute; retry after ${context.after}.`);
      (err as AppError & { statusCode: number }).statusCode = 429;
      return err;
    },
  });

  await app.register(multipart, { limits: { fileSize: ctx.config.max_upload_bytes, files: 1, fields: 10, parts: 20 } });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Backvault API', version: BACKVAULT_VERSION, description: 'Backups and restores of application data. Auth: Authorization: Bearer <api key or login token>.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  // The OpenAPI document describes the native API; dialects follow their platforms' documents.
  app.addHook('onRoute', (route) => {
    if (!route.url.startsWith('/api/v1')) route.schema = { ...(route.schema ?? {}), hide: true };
  });

  registerAuth(app, ctx);

  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (_req, reply) => {
    reply.code(404).send(errorBody('not_found', 'No such endpoint.'));
  });

  // Platform dialects, each under its own prefix with its own auth and error
  // shapes (see src/http/dialects/*/index.ts). One line each.
  // -- dialects begin
  await app.register(syncanoDialect, { prefix: '/syncano/v1', ctx });
  await app.register(scalingoDialect, { prefix: '/scalingo/api', ctx });
  await app.register(pocketbaseDialect(ctx), { prefix: '/pocketbase/:instance' });
  await app.register(cloud66Dialect, { prefix: '/cloud66/api/3', ctx });
  await app.register(appwriteDialect, { prefix: '/appwrite/v1', ctx });
  // -- dialects end

  await app.register(
    async (api) => {
      await nativeRoutes(api, ctx);
      api.get('/openapi.json', { config: { auth: 'none' }, schema: { hide: true } }, async () => app.swagger());
    },
    { prefix: '/api/v1' },
  );
  // Prometheus scrapes outside /api/v1, with a read key unless metrics_public (docs/metrics.md).
  app.get('/metrics', { config: { auth: ctx.config.metrics_public ? 'none' : 'read' }, schema: { hide: true } }, async (_req, reply) => {
    const metrics = startMetrics(ctx);
    return reply.type(metrics.contentType).send(await metrics.render());
  });

  return app;
}
