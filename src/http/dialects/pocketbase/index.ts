// The PocketBase dialect: PocketBase's backups API under
// /pocketbase/{instance}, so `new PocketBase("http://host:8090/pocketbase/myapp")`
// works unchanged; the app is a Backvault instance. Translation only: every
// route calls the same core services as the native API.
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { authenticate } from '../../../services/auth.ts';
import type { ServiceContext } from '../../../services/context.ts';
import { notFound, sendPbError, unauthorized, forbidden, PbError, MSG } from './errors.ts';
import { pocketbaseRoutes } from './routes.ts';
import { credentialOf, instanceOf } from './request.ts';

export function pocketbaseDialect(ctx: ServiceContext): FastifyPluginAsync {
  return async (app: FastifyInstance) => {
    app.setErrorHandler((err, req, reply) => sendPbError(req, reply, err));
    app.setNotFoundHandler({ preHandler: app.rateLimit() }, (req, reply) => sendPbError(req, reply, notFound()));

    // PocketBase binds JSON, urlencoded and multipart bodies alike, and an empty JSON body is {}.
    app.removeContentTypeParser('application/json');
    app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
      const text = String(body);
      if (text.trim() === '') return done(null, {});
      try {
        done(null, JSON.parse(text));
      } catch {
        done(new PbError(400, MSG.loading), undefined);
      }
    });
    app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
      done(null, Object.fromEntries(new URLSearchParams(String(body))));
    });

    app.addHook('preHandler', async (req) => {
      instanceOf(req);
      const level = req.routeOptions.config.pocketbaseAuth ?? 'admin';
      if (level === 'public') return;
      const credential = credentialOf(req);
      if (!credential) {
        if (level === 'download') return; // the route checks its ?token= itself
        throw unauthorized();
      }
      try {
        req.principal = await authenticate(ctx, credential);
      } catch {
        // PocketBase answers any missing, invalid or expired token alike.
        throw unauthorized();
      }
      if (level === 'admin' && req.principal.scope !== 'admin') throw forbidden();
    });

    await pocketbaseRoutes(app, ctx);
    // A catch-all route rather than only the not-found handler: the server-wide auth hook
    // also runs for not-found answers and would turn them into native-shaped 401s.
    app.all('/*', { config: { auth: 'none', pocketbaseAuth: 'public' }, schema: { hide: true } }, async () => {
      throw notFound();
    });
  };
}
