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

/** One place backups are written to; the first destination is the primary. */
export interface Destination {
  name: string;
  storage: Storage;
}

export interface ServiceContext {
  db: CatalogDb;
  config: Config;
  /** the primary destination's storage (destinations[0].storage) */
  storage: Storage;
  /** every destination a backup is written to, primary first; at least one */
  destinations: Destination[];
  clock: Clock;
  engine(type: ResourceType): Engine;
  jobs: JobQueue;
  log: Logger;
  /** HMAC secret for login and download tokens, kept in the catalog */
  tokenSecret: Uint8Array;
  /** backup, restore, drill and policy outcomes, for notifications and metrics */
  events: ServiceEvents;
}
