// Authentication at the edge: every route declares the scope it needs in its
// config; only health, openapi and login are open.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AppError } from '../errors/index.ts';
import { authenticate, type Principal } from '../services/auth.ts';
import type { ServiceContext } from '../services/context.ts';

export type RouteAuth = 'none' | 'read' | 'admin' | 'download';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: RouteAuth;
  }
  interface FastifyRequest {
    principal?: Principal;
  }
}

export function bearerOf(request: FastifyRequest): string | null {
  const header = request.headers.authorization;
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}

export function registerAuth(app: FastifyInstance, ctx: ServiceContext): void {
  app.addHook('preHandler', async (request) => {
    const auth = request.routeOptions.config.auth ?? 'admin';
    if (auth === 'none') return;
    const bearer = bearerOf(request);
    if (auth === 'download' && !bearer) return; // the route checks its token itself
    if (!bearer) throw new AppError('unauthorized');
    const principal = await authenticate(ctx, bearer);
    request.principal = principal;
    if (auth === 'admin' && principal.scope !== 'admin') throw new AppError('forbidden');
  });
}
