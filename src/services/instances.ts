// Instances and their resources.
import type { ServiceContext } from './context.ts';
import { AppError } from '../errors/index.ts';
import { maskConnection } from '../domain/mask.ts';
import { ACTIVE_STATUSES, type ResourceSpec, type ResourceType, type ObjectInfo } from '../domain/types.ts';
import type { InstanceTable, ResourceTable } from '../catalog/schema.ts';
import type { CatalogDb } from '../catalog/db.ts';

export interface InstanceView {
  name: string;
  description: string;
  max_backups: number | null;
  created_at: string;
  updated_at: string;
}

export interface ResourceView {
  name: string;
  type: ResourceType;
  connection: string;
  replica: string | null;
  options: Record<string, unknown>;
  created_at: string;
  updated_at: string;
}

export function instanceView(row: InstanceTable): InstanceView {
  return { name: row.name, description: row.description, max_backups: row.max_backups, created_at: row.created_at, updated_at: row.updated_at };
}

/** A resource as the API shows it: connection and replica masked. */
export function resourceView(row: ResourceTable): ResourceView {
  return {
    name: row.name,
    type: row.type as ResourceType,
    connection: maskConnection(row.connection),
    replica: row.replica === null ? null : maskConnection(row.replica),
    options: JSON.parse(row.options) as Record<string, unknown>,
    created_at: row.created_at,
    updated_at: row.updated_at,
  };
}

export function resourceSpec(row: ResourceTable): ResourceSpec {
  return { name: row.name, type: row.type as ResourceType, connection: row.connection, replica: row.replica, options: JSON.parse(row.options) as Record<string, unknown> };
}

export async function createInstance(ctx: ServiceContext, input: { name: string; description?: string; max_backups?: number | null }): Promise<InstanceView> {
  const ts = ctx.clock.now().toISOString();
  const row: InstanceTable = { name: input.name, description: input.description ?? '', max_backups: input.max_backups ?? null, created_at: ts, updated_at: ts };
  const res = await ctx.db.insertInto('instances').values(row).onConflict((oc) => oc.column('name').doNothing()).executeTakeFirst();
  if (Number(res.numInsertedOrUpdatedRows ?? 0n) === 0) throw new AppError('already_exists', `An instance named ${input.name} already exists.`);
  return instanceView(row);
}

export async function getInstanceRow(ctx: ServiceContext, name: string): Promise<InstanceTable> {
  const row = await ctx.db.selectFrom('instances').selectAll().where('name', '=', name).executeTakeFirst();
  if (!row) throw new AppError('instance_not_found', `No instance is named ${name}.`);
  return row;
}

export async function listInstances(ctx: ServiceContext, page: number, perPage: number): Promise<{ items: InstanceView[]; total: number }> {
  const total = await ctx.db.selectFrom('instances').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const rows = await ctx.db.selectFrom('instances').selectAll().orderBy('name').limit(perPage).offset((page - 1) * perPage).execute();
  return { items: rows.map(instanceView), total: Number(total.n) };
}

export async function updateInstance(ctx: ServiceContext, name: string, patch: { description?: string; max_backups?: number | null }): Promise<InstanceView> {
  await getInstanceRow(ctx, name);
  const set: Partial<InstanceTable> = { updated_at: ctx.clock.now().toISOString() };
  if (patch.description !== undefined) set.description = patch.description;
  if (patch.max_backups !== undefined) set.max_backups = patch.max_backups;
  await ctx.db.updateTable('instances').set(set).where('name', '=', name).execute();
  return instanceView(await getInstanceRow(ctx, name));
}

/**
 * Deletes an instance and its resources. Its backups stay in storage and the
 * catalog unless force is set, in which case they are deleted too; either way
 * nothing may be running.
 */
export async function deleteInstance(ctx: ServiceContext, name: string, force: boolean, deleteBackup: (id: string) => Promise<void>): Promise<void> {
  await getInstanceRow(ctx, name);
  const active = await ctx.db.selectFrom('jobs').select('id').where('instance', '=', name).where('state', 'in', ['queued', 'running']).limit(1).execute();
  if (active.length > 0) throw new AppError('instance_not_empty', 'The instance has queued or running jobs; wait for them or cancel them first.');
  const backups = await ctx.db.selectFrom('backups').select('id').where('instance', '=', name).execute();
  if (backups.length > 0 && !force) throw new AppError('instance_not_empty', `The instance has ${backups.length} backups; delete them first or pass force=true to delete them with it.`);
  for (const b of backups) await deleteBackup(b.id);
  await ctx.db.deleteFrom('restores').where('instance', '=', name).execute();
  await ctx.db.deleteFrom('resources').where('instance', '=', name).execute();
  await ctx.db.deleteFrom('instances').where('name', '=', name).execute();
}

/** True while a backup, restore or import of the instance waits or runs. */
export async function isInstanceBusy(ctx: ServiceContext, instance: string, db: CatalogDb = ctx.db): Promise<boolean> {
  const backup = await db.selectFrom('backups').select('id').where('instance', '=', instance).where('status', 'in', ACTIVE_STATUSES).limit(1).executeTakeFirst();
  if (backup) return true;
  const restore = await db.selectFrom('restores').select('id').where('instance', '=', instance).where('status', 'in', ACTIVE_STATUSES).limit(1).executeTakeFirst();
  return restore !== undefined;
}

export async function getResourceRow(ctx: ServiceContext, instance: string, name: string): Promise<ResourceTable> {
  const row = await ctx.db.selectFrom('resources').selectAll().where('instance', '=', instance).where('name', '=', name).executeTakeFirst();
  if (!row) throw new AppError('resource_not_found', `Instance ${instance} has no resource named ${name}.`);
  return row;
}

export async function listResourceRows(ctx: ServiceContext, instance: string): Promise<ResourceTable[]> {
  return ctx.db.selectFrom('resources').selectAll().where('instance', '=', instance).orderBy('name').execute();
}

export async function createResource(
  ctx: ServiceContext,
  instance: string,
  input: { name: string; type: ResourceType; connection: string; replica?: string | null; options?: Record<string, unknown> },
): Promise<ResourceView> {
  await getInstanceRow(ctx, instance);
  const engine = ctx.engine(input.type);
  engine.checkConnection(input.connection, input.options ?? {});
  if (input.replica) engine.checkConnection(input.replica, input.options ?? {});
  const ts = ctx.clock.now().toISOString();
  const row: ResourceTable = {
    instance,
    name: input.name,
    type: input.type,
    connection: input.connection,
    replica: input.replica ?? null,
    options: JSON.stringify(input.options ?? {}),
    created_at: ts,
    updated_at: ts,
  };
  const res = await ctx.db.insertInto('resources').values(row).onConflict((oc) => oc.columns(['instance', 'name']).doNothing()).executeTakeFirst();
  if (Number(res.numInsertedOrUpdatedRows ?? 0n) === 0) throw new AppError('already_exists', `Instance ${instance} already has a resource named ${input.name}.`);
  return resourceView(row);
}

export async function updateResource(
  ctx: ServiceContext,
  instance: string,
  name: string,
  patch: { connection?: string; replica?: string | null; options?: Record<string, unknown> },
): Promise<ResourceView> {
  const row = await getResourceRow(ctx, instance, name);
  const engine = ctx.engine(row.type as ResourceType);
  const options = patch.options ?? (JSON.parse(row.options) as Record<string, unknown>);
  if (patch.connection !== undefined) engine.checkConnection(patch.connection, options);
  if (patch.replica) engine.checkConnection(patch.replica, options);
  const set: Partial<ResourceTable> = { updated_at: ctx.clock.now().toISOString(), options: JSON.stringify(options) };
  if (patch.connection !== undefined) set.connection = patch.connection;
  if (patch.replica !== undefined) set.replica = patch.replica;
  await ctx.db.updateTable('resources').set(set).where('instance', '=', instance).where('name', '=', name).execute();
  return resourceView(await getResourceRow(ctx, instance, name));
}

export async function deleteResource(ctx: ServiceContext, instance: string, name: string): Promise<void> {
  await getResourceRow(ctx, instance, name);
  await ctx.db.deleteFrom('resources').where('instance', '=', instance).where('name', '=', name).execute();
}

export async function listObjects(ctx: ServiceContext, instance: string, name: string): Promise<ObjectInfo[]> {
  const row = await getResourceRow(ctx, instance, name);
  return ctx.engine(row.type as ResourceType).listObjects(resourceSpec(row));
}
