// The Appwrite dialect, /appwrite/v1: Appwrite's Backups service
// (reference/appwrite-backups.md; the node-appwrite SDK's Backups class)
// translated onto the core services. The project named by X-Appwrite-Project
// is a Backvault instance; X-Appwrite-Key is a Backvault API key (read keys
// read, admin keys write). Archives are backups, policies are policies,
// restorations are restores; services select resources by type (models.ts).
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify';
import type { ServiceContext } from '../../../services/context.ts';
import * as auth from '../../../services/auth.ts';
import * as instances from '../../../services/instances.ts';
import * as backups from '../../../services/backups.ts';
import * as restores from '../../../services/restores.ts';
import * as policies from '../../../services/policies.ts';
import { AppError, isErrorCode } from '../../../errors/index.ts';
import { NAME_RE, type ResourceType, type Selection } from '../../../domain/types.ts';
import { newId } from '../../../platform/ids.ts';
import type { BackupView, RestoreView } from '../../../services/views.ts';
import {
  AppwriteError,
  archiveNotFound,
  argumentInvalid,
  paramInvalid,
  paramMissing,
  policyNotFound,
  projectNotFound,
  projectUnknown,
  restorationNotFound,
  routeNotFound,
  sendAppwriteError,
} from './errors.ts';
import { archiveModel, archiveStatus, parseServices, policyModel, restorationModel, serviceOf, type NewTarget, type ResourceTypes } from './models.ts';
import { applyQueries, parseQueries, readQueries, type QuerySchema } from './queries.ts';
import { assertNewTarget, newResourceIdOf, sameLocation, targetConnection } from './targets.ts';

export interface AppwriteOptions {
  ctx: ServiceContext;
}

/** Appwrite's custom IDs: at most 36 of a-z A-Z 0-9 . - _, not starting with a special char. */
export const UID_RE = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,35}$/;
const UID_RULE = "Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char";
/** Core backup and restore ids: every one is a valid Appwrite ID, but not every Appwrite ID is one. */
const CORE_ID = /^[0-9a-f]{24}$/;
const PAGE = 500;

const ARCHIVE_SCHEMA: QuerySchema = {
  $id: 'string',
  $createdAt: 'date',
  $updatedAt: 'date',
  policyId: 'string',
  size: 'number',
  status: 'string',
  startedAt: 'date',
  migrationId: 'string',
  services: 'array',
  resources: 'array',
  resourceId: 'string',
  resourceType: 'string',
};
const POLICY_SCHEMA: QuerySchema = {
  $id: 'string',
  name: 'string',
  $createdAt: 'date',
  $updatedAt: 'date',
  services: 'array',
  resources: 'array',
  resourceId: 'string',
  resourceType: 'string',
  retention: 'number',
  schedule: 'string',
  type: 'string',
  enabled: 'boolean',
};
const RESTORATION_SCHEMA: QuerySchema = {
  $id: 'string',
  $createdAt: 'date',
  $updatedAt: 'date',
  archiveId: 'string',
  policyId: 'string',
  status: 'string',
  startedAt: 'date',
  migrationId: 'string',
  services: 'array',
  resources: 'array',
  options: 'string',
};

type Body = Record<string, unknown>;
type Params = Record<string, string>;

/** A path id: Appwrite's ID rule first (400), then whether it can name anything here (404). */
function uidParam(value: string | undefined, param: string): string {
  if (value === undefined || !UID_RE.test(value)) throw paramInvalid(param, UID_RULE);
  return value;
}

/** An ID a create call takes: a custom one, or unique() for a generated one. */
function newUid(body: Body, param: string, required: boolean): string | undefined {
  const v = body[param];
  if (v === undefined || v === null) {
    if (required) throw paramMissing(param);
    return undefined;
  }
  if (v === 'unique()') return newId();
  if (typeof v !== 'string' || !UID_RE.test(v)) throw paramInvalid(param, UID_RULE);
  return v;
}

function optionalString(body: Body, param: string, max: number): string | undefined {
  const v = body[param];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > max) throw paramInvalid(param, `Value must be a valid string and at most ${max} chars`);
  return v;
}

/** Appwrite's Boolean validator also takes "true" and "false". */
function optionalBoolean(body: Body, param: string): boolean | undefined {
  const v = body[param];
  if (v === undefined || v === null) return undefined;
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw paramInvalid(param, 'Value must be a valid boolean');
}

/** Retention in days: a whole number from 1 (the core's retention_days). */
function retentionDays(body: Body, required: boolean): number | undefined {
  const v = body.retention;
  if (v === undefined || v === null) {
    if (required) throw paramMissing('retention');
    return undefined;
  }
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 100_000) throw paramInvalid('retention', 'Value must be a valid range between 1 and 100,000');
  return n;
}

function requiredServices(body: Body) {
  if (body.services === undefined || body.services === null) throw paramMissing('services');
  return parseServices(body.services);
}

/** The schedule: the core checks the cron expression; its complaint becomes Appwrite's param error. */
function scheduleOf(body: Body, required: boolean): string | undefined {
  const v = body.schedule;
  if (v === undefined || v === null) {
    if (required) throw paramMissing('schedule');
    return undefined;
  }
  if (typeof v !== 'string' || v.trim() === '' || v.length > 256) throw paramInvalid('schedule', 'Value must be a valid cron expression, e.g. "0 3 * * *"');
  try {
    policies.parseSchedule(v, 'UTC');
  } catch (err) {
    if (err instanceof AppError) throw paramInvalid('schedule', err.message);
    throw err;
  }
  return v;
}

export async function appwriteDialect(app: FastifyInstance, options: AppwriteOptions): Promise<void> {
  const { ctx } = options;
  const projects = new WeakMap<FastifyRequest, string>();

  // The SDK sends DELETE with a JSON content type and "{}"; plain clients send it empty.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body).trim();
    if (text === '') return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch {
      done(argumentInvalid('The request body is not valid JSON.'), undefined);
    }
  });

  app.setErrorHandler((err, req, reply) => sendAppwriteError(req, reply, err));
  app.setNotFoundHandler({ preHandler: app.rateLimit() }, (req, reply) => sendAppwriteError(req, reply, routeNotFound()));

  /**
   * Key, then project, then scope. Appwrite names scopes per collection
   * (archives.read, policies.write, ...) and answers a missing one with 401.
   */
  const guard = (scope: string, write: boolean) => async (req: FastifyRequest) => {
    const header = req.headers['x-appwrite-key'];
    const key = typeof header === 'string' ? header.trim() : '';
    if (!key) throw new AppwriteError(401, 'general_unauthorized_scope', `User (role: guests) missing scope (${scope})`);
    try {
      req.principal = await auth.authenticate(ctx, key);
    } catch (err) {
      if (err instanceof AppError && err.status === 401) {
        throw new AppwriteError(401, 'user_unauthorized', 'The API key in X-Appwrite-Key is not valid; use a Backvault API key (read scope to read, admin scope to write).');
      }
      throw err;
    }
    const p = req.headers['x-appwrite-project'];
    const project = typeof p === 'string' ? p.trim() : '';
    if (!project) throw projectUnknown();
    if (!NAME_RE.test(project)) throw projectNotFound();
    await instances.getInstanceRow(ctx, project);
    if (write && req.principal.scope !== 'admin') {
      throw new AppwriteError(401, 'general_unauthorized_scope', `app.${project}@service.${req.hostname} (role: applications) missing scope (${scope}); this Backvault API key has read scope only, use an admin key to write`);
    }
    projects.set(req, project);
  };
  const projectOf = (req: FastifyRequest): string => projects.get(req)!;

  const route = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, scope: string, handler: RouteHandlerMethod) => {
    app.route({ method, url, config: { auth: 'none' }, preHandler: guard(scope, !scope.endsWith('.read')), handler });
  };

  const bodyOf = (req: FastifyRequest): Body => {
    const b = req.body;
    if (b === undefined || b === null) return {};
    if (typeof b !== 'object' || Array.isArray(b)) throw argumentInvalid('The request body must be a JSON object.');
    return b as Body;
  };

  const resourceTypes = async (instance: string): Promise<ResourceTypes> =>
    new Map((await instances.listResourceRows(ctx, instance)).map((r) => [r.name, r.type as ResourceType]));

  /** Every item of a paged core list. */
  const everything = async <T>(page: (p: number) => Promise<{ items: T[]; total: number }>): Promise<T[]> => {
    const out: T[] = [];
    for (let p = 1; ; p++) {
      const { items, total } = await page(p);
      out.push(...items);
      if (items.length < PAGE || out.length >= total) return out;
    }
  };

  const cursorNotFound = (what: string) => (id: string) => new AppwriteError(400, 'general_cursor_not_found', `${what} '${id}' for the 'cursor' value not found.`);

  /**
   * What services (and maybe one resourceId) take, as the core's backup
   * type and selection: every resource of the services' types; a full
   * backup when that is every resource of the project.
   */
  const whatToTake = async (instance: string, body: Body): Promise<{ type: 'full' | 'partial'; selection: Selection | null }> => {
    const { services, types } = requiredServices(body);
    const rows = await instances.listResourceRows(ctx, instance);
    const rid = body.resourceId;
    if (rid !== undefined && rid !== null) {
      if (typeof rid !== 'string') throw paramInvalid('resourceId', 'Value must be a valid string');
      const row = rows.find((r) => r.name === rid);
      if (!row) {
        throw paramInvalid('resourceId', `Project ${instance} has no resource named "${rid}"; its resources are: ${rows.map((r) => r.name).join(', ') || 'none'}.`);
      }
      if (!types.has(row.type as ResourceType)) {
        throw paramInvalid('resourceId', `Resource ${rid} is a ${row.type} resource of the ${serviceOf(row.type as ResourceType)} service, which services [${services.join(', ')}] do not include.`);
      }
      return { type: 'partial', selection: { [rid]: null } };
    }
    const chosen = rows.filter((r) => types.has(r.type as ResourceType));
    if (chosen.length === 0) {
      throw paramInvalid(
        'services',
        `Project ${instance} has no resources of services [${services.join(', ')}]; its resources are: ${rows.map((r) => `${r.name} (${r.type}, ${serviceOf(r.type as ResourceType)})`).join(', ') || 'none'}.`,
      );
    }
    if (chosen.length === rows.length) return { type: 'full', selection: null };
    return { type: 'partial', selection: Object.fromEntries(chosen.map((r) => [r.name, null])) };
  };

  // --- Archives -------------------------------------------------------------

  const archiveOf = async (instance: string, id: string | undefined): Promise<BackupView> => {
    const archiveId = uidParam(id, 'archiveId');
    if (!CORE_ID.test(archiveId)) throw archiveNotFound();
    const b = await backups.getBackup(ctx, archiveId).catch((err: unknown) => {
      throw isErrorCode(err, 'backup_not_found') ? archiveNotFound() : err;
    });
    if (b.instance !== instance) throw archiveNotFound();
    return b;
  };

  route('GET', '/backups/archives', 'archives.read', async (req) => {
    const q = parseQueries(readQueries(req.url), ARCHIVE_SCHEMA);
    const instance = projectOf(req);
    const types = await resourceTypes(instance);
    const all = await everything((page) => backups.listBackups(ctx, { instance, page, perPage: PAGE }));
    const { total, items } = applyQueries(all.map((b) => archiveModel(b, types)), q, cursorNotFound('Archive'));
    return { total, archives: items };
  });

  route('POST', '/backups/archives', 'archives.write', async (req, reply) => {
    const instance = projectOf(req);
    const what = await whatToTake(instance, bodyOf(req));
    const b = await backups.createBackup(ctx, instance, { type: what.type, selection: what.selection });
    return reply.code(202).send(archiveModel(b, await resourceTypes(instance)));
  });

  route('GET', '/backups/archives/:archiveId', 'archives.read', async (req) => {
    const instance = projectOf(req);
    return archiveModel(await archiveOf(instance, (req.params as Params).archiveId), await resourceTypes(instance));
  });

  route('DELETE', '/backups/archives/:archiveId', 'archives.write', async (req, reply) => {
    const b = await archiveOf(projectOf(req), (req.params as Params).archiveId);
    // An archive that has not started yet is withdrawn; the core wants it cancelled before deleting.
    if (b.status === 'scheduled') {
      await backups.cancelBackup(ctx, b.id).catch((err: unknown) => {
        if (!isErrorCode(err, 'not_cancellable')) throw err;
      });
    }
    await backups.deleteBackup(ctx, b.id);
    return reply.code(204).send();
  });

  // --- Policies -------------------------------------------------------------

  const policyOf = async (instance: string, id: string | undefined): Promise<policies.PolicyView> => {
    const policyId = uidParam(id, 'policyId');
    const p = await policies.getPolicy(ctx, policyId).catch((err: unknown) => {
      throw isErrorCode(err, 'policy_not_found') ? policyNotFound() : err;
    });
    if (p.instance !== instance) throw policyNotFound();
    return p;
  };

  route('GET', '/backups/policies', 'policies.read', async (req) => {
    const q = parseQueries(readQueries(req.url), POLICY_SCHEMA);
    const instance = projectOf(req);
    const types = await resourceTypes(instance);
    const all = await everything((page) => policies.listPolicies(ctx, { instance, page, perPage: PAGE }));
    const { total, items } = applyQueries(all.map((p) => policyModel(p, types)), q, cursorNotFound('Policy'));
    return { total, policies: items };
  });

  route('POST', '/backups/policies', 'policies.write', async (req, reply) => {
    const instance = projectOf(req);
    const body = bodyOf(req);
    const id = newUid(body, 'policyId', true)!;
    const name = optionalString(body, 'name', 128);
    const enabled = optionalBoolean(body, 'enabled') ?? true;
    const retention = retentionDays(body, true)!;
    const schedule = scheduleOf(body, true)!;
    const what = await whatToTake(instance, body);
    const view = await policies.createPolicy(
      ctx,
      instance,
      {
        // The core wants a name; Appwrite's is optional, so an unnamed policy is called by its ID.
        name: name && name.trim() !== '' ? name : id,
        enabled,
        schedule,
        timezone: 'UTC', // Appwrite's cron schedules are in UTC
        type: what.type,
        selection: what.selection,
        retention: { retention_days: retention },
      },
      id,
    );
    return reply.code(201).send(policyModel(view, await resourceTypes(instance)));
  });

  route('GET', '/backups/policies/:policyId', 'policies.read', async (req) => {
    const instance = projectOf(req);
    return policyModel(await policyOf(instance, (req.params as Params).policyId), await resourceTypes(instance));
  });

  route('PATCH', '/backups/policies/:policyId', 'policies.write', async (req) => {
    const instance = projectOf(req);
    const current = await policyOf(instance, (req.params as Params).policyId);
    const body = bodyOf(req);
    const name = optionalString(body, 'name', 128);
    const retention = retentionDays(body, false);
    const schedule = scheduleOf(body, false);
    const enabled = optionalBoolean(body, 'enabled');
    const patch: Partial<policies.PolicyInput> = {};
    if (name !== undefined && name.trim() !== '') patch.name = name;
    if (schedule !== undefined) patch.schedule = schedule;
    if (enabled !== undefined) patch.enabled = enabled;
    // Only the days change; other retention rules set natively are kept.
    if (retention !== undefined) patch.retention = { ...current.retention, retention_days: retention };
    const view = await policies.updatePolicy(ctx, current.id, patch);
    return policyModel(view, await resourceTypes(instance));
  });

  route('DELETE', '/backups/policies/:policyId', 'policies.write', async (req, reply) => {
    const p = await policyOf(projectOf(req), (req.params as Params).policyId);
    await policies.deletePolicy(ctx, p.id);
    return reply.code(204).send();
  });

  // --- Restorations ---------------------------------------------------------

  /** The restoration model of a restore, reading its archive (cached per request) for policy and types. */
  const restorationOf = async (r: RestoreView, archives: Map<string, BackupView | null>, newResourceName?: string) => {
    if (!archives.has(r.backup)) archives.set(r.backup, await backups.getBackup(ctx, r.backup).catch(() => null));
    const archive = archives.get(r.backup) ?? null;
    let target: NewTarget | null = null;
    const entry = Object.entries(r.targets ?? {})[0];
    if (entry) {
      const [name, t] = entry;
      const type = archive?.resources.find((x) => x.name === name)?.type;
      target = { resourceId: name, newResourceId: newResourceIdOf(type, t.connection), target: t.connection };
      if (newResourceName !== undefined) target.newResourceName = newResourceName;
    }
    return restorationModel(r, archive, target);
  };

  /** Where every resource of every instance lives: a new target must be none of them. */
  const registeredConnections = async (): Promise<string[]> => {
    const all = await everything((page) => instances.listInstances(ctx, page, PAGE));
    const out: string[] = [];
    for (const inst of all) for (const r of await instances.listResourceRows(ctx, inst.name)) out.push(r.connection);
    return out;
  };

  const restoreOf = async (instance: string, id: string | undefined): Promise<RestoreView> => {
    const rid = uidParam(id, 'restorationId');
    if (!CORE_ID.test(rid)) throw restorationNotFound();
    const r = await restores.getRestore(ctx, rid).catch((err: unknown) => {
      throw isErrorCode(err, 'restore_not_found') ? restorationNotFound() : err;
    });
    if (r.instance !== instance) throw restorationNotFound();
    return r;
  };

  route('POST', '/backups/restoration', 'restorations.write', async (req, reply) => {
    const instance = projectOf(req);
    const body = bodyOf(req);
    if (body.archiveId === undefined || body.archiveId === null) throw paramMissing('archiveId');
    if (typeof body.archiveId !== 'string') throw paramInvalid('archiveId', UID_RULE);
    const archive = await archiveOf(instance, body.archiveId);
    const { services, types } = requiredServices(body);
    const newResourceName = optionalString(body, 'newResourceName', 128);
    const newResourceId = newUid(body, 'newResourceId', false);
    if (newResourceName !== undefined && newResourceId === undefined) {
      throw paramInvalid('newResourceName', 'newResourceName names the new target of newResourceId; pass newResourceId too (ID.unique() for a generated one), or leave both out to restore in place.');
    }
    if (archive.status !== 'success') {
      throw argumentInvalid(`Archive ${archive.id} is ${archiveStatus(archive.status)}; only a completed archive can be restored.`);
    }
    const chosen = archive.resources.filter((r) => types.has(r.type));
    if (chosen.length === 0) {
      throw paramInvalid(
        'services',
        `Archive ${archive.id} holds no resources of services [${services.join(', ')}]; it holds: ${archive.resources.map((r) => `${r.name} (${serviceOf(r.type)})`).join(', ')}.`,
      );
    }
    let targets: Record<string, { connection: string }> | null = null;
    if (newResourceId !== undefined) {
      if (chosen.length !== 1) {
        throw paramInvalid(
          'newResourceId',
          `newResourceId restores one resource into a new target, but services [${services.join(', ')}] select ${chosen.length} resources of archive ${archive.id} (${chosen.map((r) => r.name).join(', ')}); pass services that select exactly one.`,
        );
      }
      const entry = chosen[0]!;
      // The archived resource's own ID overwrites it: that is a restore in place.
      if (newResourceId !== entry.name) {
        const row = (await instances.listResourceRows(ctx, instance)).find((r) => r.name === entry.name);
        if (!row || row.type !== entry.type) {
          throw paramInvalid(
            'newResourceId',
            `Resource ${entry.name} is no longer a ${entry.type} resource of project ${instance}, so there is no location to put ${newResourceId} beside; restore it with the native API's targets.`,
          );
        }
        const connection = targetConnection(entry.type, row.connection, newResourceId);
        if (!sameLocation(connection, row.connection)) {
          await assertNewTarget(entry.type, connection, await registeredConnections(), entry.name);
          targets = { [entry.name]: { connection } };
        }
      }
    }
    const all = chosen.length === archive.resources.length;
    const view = await restores.createRestore(ctx, instance, { backup: archive.id, resources: all ? null : chosen.map((r) => r.name), targets });
    const model = await restorationOf(view, new Map([[archive.id, archive]]), newResourceName);
    return reply.code(202).send(model);
  });

  route('GET', '/backups/restorations', 'restorations.read', async (req) => {
    const q = parseQueries(readQueries(req.url), RESTORATION_SCHEMA);
    const instance = projectOf(req);
    const all = await everything((page) => restores.listRestores(ctx, instance, page, PAGE));
    const cache = new Map<string, BackupView | null>();
    const models = [];
    for (const r of all) models.push(await restorationOf(r, cache));
    const { total, items } = applyQueries(models, q, cursorNotFound('Restoration'));
    return { total, restorations: items };
  });

  route('GET', '/backups/restorations/:restorationId', 'restorations.read', async (req) => {
    const r = await restoreOf(projectOf(req), (req.params as Params).restorationId);
    return restorationOf(r, new Map());
  });

  // A catch-all route as well as the not-found handler: the server-wide auth hook would
  // otherwise answer unknown paths without a Bearer token with a native-shaped 401.
  app.all('/*', { config: { auth: 'none' } }, async (_req: FastifyRequest, _reply: FastifyReply) => {
    throw routeNotFound();
  });
}
