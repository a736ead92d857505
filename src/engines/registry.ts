// Which engine serves which resource type. A type without an engine here is
// a user error (resource_type_unsupported), not a crash.
import type { ResourceType } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';
import type { Engine } from './engine.ts';
import { filesEngine } from './files/index.ts';
import { sqliteEngine } from './sqlite/index.ts';
import { mysqlEngine } from './mysql/index.ts';
import { redisEngine } from './redis/index.ts';
import { postgresEngine } from './postgres/index.ts';

export const engines: Partial<Record<ResourceType, Engine>> = {
  sqlite: sqliteEngine,
  files: filesEngine,
  mysql: mysqlEngine,
  redis: redisEngine,
  postgres: postgresEngine,
};

/** The resource types this server can back up and restore. */
export function supportedTypes(): ResourceType[] {
  return Object.keys(engines) as ResourceType[];
}

export function getEngine(type: ResourceType): Engine {
  const engine = engines[type];
  if (!engine) {
    throw new AppError('resource_type_unsupported', `Resource type "${type}" is not supported yet; supported: ${supportedTypes().join(', ')}.`, {
      type,
      supported: supportedTypes(),
    });
  }
  return engine;
}
