// The parameters of POST /stacks/{stack_id}/backups, read the way Cloud66's
// Rails API reads them (query string, JSON or form body, text or typed
// values), and a backup task translated into a core policy.
import type { FastifyRequest } from 'fastify';
import type { ResourceTable } from '../../../catalog/schema.ts';
import type { PolicyInput } from '../../../services/policies.ts';
import type { ResourceType } from '../../../domain/types.ts';
import { Cloud66Error, invalidRequest } from './errors.ts';
import { RESOURCE_TYPE_OF, TABLE_TYPES, parseCloud66Id } from './views.ts';

export type Params = Record<string, unknown>;

/** Query string, then body fields over it: Rails merges both into params. */
export async function readParams(req: FastifyRequest): Promise<Params> {
  const out: Params = { ...(req.query as Params) };
  if (req.isMultipart()) {
    for await (const part of req.parts()) {
      if (part.type === 'file') {
        part.file.resume();
        throw invalidRequest('Files are not accepted here; give remote_url to import a backup.');
      }
      out[part.fieldname] = part.value;
    }
    return out;
  }
  const body = req.body;
  if (body === undefined || body === null) return out;
  if (typeof body !== 'object' || Array.isArray(body)) throw invalidRequest('The request body must be a JSON object or a form.');
  return { ...out, ...(body as Params) };
}

function present(p: Params, key: string): boolean {
  return p[key] !== undefined && p[key] !== null && p[key] !== '';
}

export function text(p: Params, key: string, max: number): string | undefined {
  if (!present(p, key)) return undefined;
  const v = p[key];
  if (typeof v !== 'string' && typeof v !== 'number') throw invalidRequest(`${key} must be a string.`);
  const s = String(v).trim();
  if (s.length > max) throw invalidRequest(`${key} must have at most ${max} characters.`);
  return s;
}

const TRUE = new Set(['true', '1', 't', 'yes', 'on']);
const FALSE = new Set(['false', '0', 'f', 'no', 'off']);

export function bool(p: Params, key: string): boolean | undefined {
  if (!present(p, key)) return undefined;
  const v = p[key];
  if (typeof v === 'boolean') return v;
  const s = String(v).trim().toLowerCase();
  if (TRUE.has(s)) return true;
  if (FALSE.has(s)) return false;
  throw invalidRequest(`${key} must be true or false.`);
}

export function integer(p: Params, key: string, min: number, max: number): number | undefined {
  if (!present(p, key)) return undefined;
  const v = p[key];
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d{1,12}\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw invalidRequest(`${key} must be a whole number from ${min} to ${max}.`);
  return n;
}

/** A comma separated list (a JSON array is taken too). */
function list(p: Params, key: string): string[] | undefined {
  if (!present(p, key)) return undefined;
  const v = p[key];
  const items = Array.isArray(v) ? v : typeof v === 'string' ? v.split(',') : null;
  if (!items || items.some((x) => typeof x !== 'string')) throw invalidRequest(`${key} must be a comma separated list.`);
  const out = [...new Set((items as string[]).map((x) => x.trim()).filter((x) => x !== ''))];
  return out.length > 0 ? out : undefined;
}

const DB_TYPES = ['mysql', 'postgresql', 'redis', 'mongodb', 'sqlite', 'files'];

/** db_type: 'all', or the listed Cloud66 types; MongoDB is refused: Backvault has no engine for it. */
export function dbTypes(p: Params, allowAll: boolean): string[] | 'all' | undefined {
  const items = list(p, 'db_type')?.map((x) => x.toLowerCase());
  if (!items) return undefined;
  if (items.includes('all')) {
    if (!allowAll) throw invalidRequest(`db_type must list database types (${DB_TYPES.join(', ')}).`);
    if (items.length > 1) throw invalidRequest('db_type "all" takes every database; list no other type with it.');
    return 'all';
  }
  for (const t of items) {
    if (t === 'mongodb') {
      throw new Cloud66Error(400, 'unsupported_db_type', 'Backvault cannot back up MongoDB databases; it backs up mysql, postgresql, redis and sqlite databases and file directories.');
    }
    if (!DB_TYPES.includes(t)) throw invalidRequest(`db_type ${JSON.stringify(t)} is not known; valid options: all, ${DB_TYPES.join(', ')}.`);
  }
  return items;
}

/** The list's db_type filter: one type; mongodb is a valid filter that nothing here matches. */
export function dbTypeFilter(value: unknown): string | undefined {
  if (value === undefined || value === '') return undefined;
  const t = typeof value === 'string' ? value.trim().toLowerCase() : '';
  if (!DB_TYPES.includes(t)) throw invalidRequest(`db_type filters on one database type: ${DB_TYPES.join(', ')}.`);
  return t;
}

export const DEFAULT_FREQUENCY = '0 0 * * *';

/**
 * A backup task as a policy. db_type "all" (or none) is a full backup of the
 * stack; listed types become a partial backup of every resource of those
 * types. excluded_tables applies to each table database (mysql, postgresql,
 * sqlite) the task takes: the rows of those tables in postgresql, the whole
 * tables in mysql and sqlite. gzip true compresses with gzip, false stores the
 * dumps uncompressed (the document's "compress your backups with gzip"),
 * and leaving it out keeps Backvault's default, zstd.
 */
export function policyFromTask(stack: string, resources: ResourceTable[], p: Params): PolicyInput {
  const types = dbTypes(p, true) ?? 'all';
  const frequency = text(p, 'frequency', 256) ?? DEFAULT_FREQUENCY;
  const keepCount = integer(p, 'keep_count', 1, 100000);
  const gzip = bool(p, 'gzip');
  const runOnReplica = bool(p, 'run_on_replica_server');
  const excluded = list(p, 'excluded_tables');
  if (excluded && excluded.some((t) => t.length > 1024)) throw invalidRequest('excluded_tables names a table longer than 1024 characters.');
  if (resources.length === 0) throw invalidRequest(`Stack ${stack} has no databases yet; add resources to the Backvault instance first.`);

  let chosen: ResourceTable[];
  if (types === 'all') chosen = resources;
  else {
    chosen = [];
    for (const t of types) {
      const type: ResourceType = RESOURCE_TYPE_OF[t]!;
      const found = resources.filter((r) => r.type === type);
      if (found.length === 0) throw invalidRequest(`Stack ${stack} has no ${t} database.`);
      chosen.push(...found);
    }
  }
  let exclude: Record<string, string[]> | null = null;
  if (excluded) {
    const tableDbs = chosen.filter((r) => TABLE_TYPES.has(r.type));
    if (tableDbs.length === 0) throw invalidRequest('excluded_tables applies to mysql, postgresql and sqlite databases; this backup task takes none.');
    // PostgreSQL keeps the tables' definitions and leaves out their rows (the engine's data: form, as
    // Cloud66 dumps it); the mysql and sqlite engines leave excluded tables out whole.
    exclude = Object.fromEntries(tableDbs.map((r) => [r.name, r.type === 'postgres' ? excluded.map((t) => `data:${t}`) : excluded]));
  }
  const label = types === 'all' ? 'all' : types.join(',');
  return {
    name: `Cloud66 backup task: ${label} (${frequency})`.slice(0, 128),
    schedule: frequency,
    type: types === 'all' ? 'full' : 'partial',
    selection: types === 'all' ? null : Object.fromEntries(chosen.map((r) => [r.name, null])),
    exclude,
    ...(gzip === undefined ? {} : { compression: gzip ? 'gzip' : 'none' }),
    ...(runOnReplica === undefined ? {} : { run_on_replica: runOnReplica }),
    ...(keepCount === undefined ? {} : { retention: { keep_count: keepCount } }),
  };
}

export interface ImportParams {
  group: number;
  dbTypes: string[] | 'all';
  remoteUrl: string;
}

export function importParams(p: Params): ImportParams {
  const missing = ['group', 'db_type', 'remote_url'].filter((k) => !present(p, k));
  if (missing.length > 0) throw invalidRequest(`An import needs ${missing.join(', ')}.`);
  const group = parseCloud66Id(typeof p.group === 'string' ? p.group.trim() : p.group);
  if (group === null) throw invalidRequest('group must be a backup group id (a positive whole number).');
  return { group, dbTypes: dbTypes(p, true)!, remoteUrl: text(p, 'remote_url', 8192)! };
}
