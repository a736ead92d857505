// What every service needs, wired once in main.ts.
import type { CatalogDb } from '../catalog/db.ts';
import type { Config } from '../config/index.ts';
import type { Storage } from '../storage/storage.ts';
import type { Clock } from '../platform/clock.ts';
import type { Engine } from '../engines/engine.ts';
import type { ResourceType } from '../domain/types.ts';
import type { JobQueue } from '../jobs/queue.ts';
import type { ServiceEvents } from './events.ts';

export interface Logger {
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

export interface ServiceContext {
  db: CatalogDb;
  config: Config;
  storage: Storage;
  clock: Clock;
  engine(type: ResourceType): Engine;
  jobs: JobQueue;
  log: Logger;
  /** HMAC secret for login and download tokens, kept in the catalog */
  tokenSecret: Uint8Array;
  /** backup, restore, drill and policy outcomes, for notifications and metrics */
  events: ServiceEvents;
}
