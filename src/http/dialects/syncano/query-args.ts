// Partial backups: Syncano's query_args translated into a core selection, and
// the JSON schema of query_args for an instance (the OPTIONS answer).
//
// Syncano's keys are kinds of objects (class, data_object, user, ...); an
// instance here is made of resources instead, so:
//   - a key that names a resource of the instance selects in that resource:
//     null takes all of it, a list names its objects (tables of a database,
//     path globs of a files resource, key patterns of redis);
//   - "class" (a Syncano class is a table) names tables across the instance's
//     database resources (postgres, mysql, sqlite): null takes every database
//     resource whole, a list takes each named table from whichever database
//     resources hold it. A resource literally named "class" wins over this.
// Backvault objects have no numeric ids, so a number in a list is taken as the
// name written in digits (a directory "2024", a table "1").
import type { ServiceContext } from '../../../services/context.ts';
import * as instances from '../../../services/instances.ts';
import type { Selection } from '../../../domain/types.ts';
import type { ResourceTable } from '../../../catalog/schema.ts';
import { fieldErrors } from './errors.ts';

const DATABASE_TYPES = new Set(['postgres', 'mysql', 'sqlite']);
const CLASS_KEY = 'class';
const MAX_OBJECTS = 10000;
const MAX_NAME = 1024;

function classKeyApplies(resources: ResourceTable[]): boolean {
  return !resources.some((r) => r.name === CLASS_KEY) && resources.some((r) => DATABASE_TYPES.has(r.type));
}

/** The keys query_args accepts for these resources, in schema order. */
export function queryArgKeys(resources: ResourceTable[]): string[] {
  const keys = resources.map((r) => r.name);
  if (classKeyApplies(resources)) keys.push(CLASS_KEY);
  return keys;
}

const valueSchema = () => ({
  anyOf: [{ type: 'null' }, { items: { anyOf: [{ type: 'integer' }, { type: 'string' }] }, type: 'array' }],
});

export function queryArgsSchema(resources: ResourceTable[]) {
  return {
    additionalProperties: false,
    type: 'object',
    properties: Object.fromEntries(queryArgKeys(resources).map((k) => [k, valueSchema()])),
  };
}

const problem = (text: string) => fieldErrors({ query_args: [text] });

/** Checks the shape (what the schema says) and returns the lists as names. */
function readShape(raw: unknown, keys: string[]): Map<string, string[] | null> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw problem(`${JSON.stringify(raw)} is not of type 'object'.`);
  const entries = Object.entries(raw as Record<string, unknown>);
  const unexpected = entries.map(([k]) => k).filter((k) => !keys.includes(k));
  if (unexpected.length > 0) {
    throw problem(`Additional properties are not allowed (${unexpected.map((k) => `'${k}'`).join(', ')} ${unexpected.length === 1 ? 'was' : 'were'} unexpected); allowed: ${keys.join(', ')}.`);
  }
  if (entries.length === 0) throw problem(`Name at least one of ${keys.join(', ')} to back up; a full backup takes everything.`);
  const out = new Map<string, string[] | null>();
  for (const [key, value] of entries) {
    if (value === null) {
      out.set(key, null);
      continue;
    }
    if (!Array.isArray(value) || value.length > MAX_OBJECTS) throw problem(`${key}: ${JSON.stringify(value)} is not valid under any of the given schemas (null, or a list of ids or names).`);
    const names: string[] = [];
    for (const item of value) {
      if (typeof item === 'number' && Number.isInteger(item)) names.push(String(item));
      else if (typeof item === 'string' && item.length > 0 && item.length <= MAX_NAME) names.push(item);
      else throw problem(`${key}: ${JSON.stringify(item)} is not an id or a name.`);
    }
    if (names.length === 0) throw problem(`${key}: an empty list selects nothing; use null for all of it, or leave the key out.`);
    out.set(key, names);
  }
  return out;
}

function add(selection: Selection, resource: string, objects: string[] | null): void {
  const had = selection[resource];
  if (!(resource in selection)) selection[resource] = objects === null ? null : [...new Set(objects)];
  else if (had === null || objects === null) selection[resource] = null;
  else selection[resource] = [...new Set([...had!, ...objects])];
}

/** True when a listed object is the table a class names (postgres lists schema.table). */
function isTable(objectName: string, className: string): boolean {
  return objectName === className || objectName.endsWith(`.${className}`);
}

export async function selectionFromQueryArgs(ctx: ServiceContext, instance: string, raw: unknown): Promise<Selection> {
  const resources = await instances.listResourceRows(ctx, instance);
  const keys = queryArgKeys(resources);
  const shape = readShape(raw, keys);
  const selection: Selection = {};
  for (const [key, names] of shape) {
    if (key !== CLASS_KEY || !classKeyApplies(resources)) {
      add(selection, key, names);
      continue;
    }
    const databases = resources.filter((r) => DATABASE_TYPES.has(r.type));
    if (names === null) {
      for (const db of databases) add(selection, db.name, null);
      continue;
    }
    const found = new Set<string>();
    for (const db of databases) {
      const tables = (await instances.listObjects(ctx, instance, db.name)).filter((o) => o.kind === 'table');
      const chosen = tables.filter((t) => names.some((n) => isTable(t.name, n)));
      for (const t of chosen) for (const n of names) if (isTable(t.name, n)) found.add(n);
      if (chosen.length > 0) add(selection, db.name, chosen.map((t) => t.name));
    }
    const missing = names.filter((n) => !found.has(n));
    if (missing.length > 0) throw problem(`class: no database of instance ${instance} has a table named ${missing.join(', ')}.`);
  }
  return selection;
}

const readOnly = (type: string, label: string) => ({ type, required: false, read_only: true, label });

/** The OPTIONS answer (Django REST framework metadata) of a backups list endpoint. */
export function backupListMetadata(kind: 'full' | 'partial', resources: ResourceTable[] | null) {
  const post: Record<string, unknown> = {
    id: readOnly('integer', 'ID'),
    instance: readOnly('field', 'Instance'),
    created_at: readOnly('datetime', 'Created at'),
    updated_at: readOnly('datetime', 'Updated at'),
    archive: readOnly('file upload', 'Archive'),
    size: readOnly('integer', 'Size'),
    status: readOnly('choice', 'Status'),
    status_info: readOnly('string', 'Status info'),
    description: { type: 'string', required: false, read_only: false, label: 'Description', max_length: 256 },
    label: { type: 'string', required: false, read_only: false, label: 'Label', max_length: 64 },
  };
  if (kind === 'partial') {
    post.query_args = { type: 'field', required: true, read_only: false, label: 'Query args', schema: queryArgsSchema(resources ?? []) };
  }
  post.links = { links: [{ type: 'detail', name: 'self' }] };
  return {
    name: kind === 'full' ? 'Full Backup List' : 'Partial Backup List',
    description: '',
    // Only JSON is rendered here (Syncano also listed its browsable HTML).
    renders: ['application/json'],
    parses: ['application/json', 'application/x-www-form-urlencoded', 'multipart/form-data'],
    actions: { POST: post },
  };
}
