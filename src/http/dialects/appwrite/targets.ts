// newResourceId: where a restoration writes instead of the archived resource.
// One rule per resource type, always beside the original, so a new target
// needs no other configuration:
//   sqlite          <directory of the original>/<newResourceId>.db
//   files           <parent of the original directory>/<newResourceId>
//   postgres, mysql the same server and credentials, database <newResourceId>
//   redis           refused: its databases are numbered, not named
import { lstat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { ResourceType } from '../../../domain/types.ts';
import { maskConnection } from '../../../domain/mask.ts';
import { AppwriteError, paramInvalid } from './errors.ts';

/** The connection of the new target for a resource of this type now at `connection`. */
export function targetConnection(type: ResourceType, connection: string, newResourceId: string): string {
  switch (type) {
    case 'sqlite':
      return join(dirname(connection), `${newResourceId}.db`);
    case 'files': {
      const dir = connection.replace(/\/+$/, '');
      return join(dirname(dir), newResourceId);
    }
    case 'postgres':
    case 'mysql': {
      const url = new URL(connection);
      url.pathname = `/${encodeURIComponent(newResourceId)}`;
      return url.toString();
    }
    case 'redis':
      throw paramInvalid(
        'newResourceId',
        'a redis resource can only be restored in place here (redis databases are numbered, not named); leave newResourceId out, or restore into another redis database with the native API\'s targets.',
      );
  }
}

/** The newResourceId a target connection was made from (the inverse of targetConnection). */
export function newResourceIdOf(type: ResourceType | undefined, connection: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(connection)) {
    try {
      return decodeURIComponent(new URL(connection).pathname.replace(/^\//, ''));
    } catch {
      return '';
    }
  }
  const name = basename(connection);
  return type === 'sqlite' && name.endsWith('.db') ? name.slice(0, -3) : name;
}

/** Whether two connections of one type point at the same data (credentials and options aside). */
export function sameLocation(a: string, b: string): boolean {
  const isUrl = (c: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(c);
  if (isUrl(a) !== isUrl(b)) return false;
  if (!isUrl(a)) return resolve(a) === resolve(b);
  try {
    const x = new URL(a);
    const y = new URL(b);
    return x.protocol === y.protocol && x.host === y.host && x.pathname === y.pathname;
  } catch {
    return a === b;
  }
}

/**
 * Refuses a new target that is not new: a registered resource's location, or
 * (sqlite, files) a path that already exists. The core's sqlite and files
 * engines replace whatever a new target holds, so without this check a
 * newResourceId naming a neighbour would overwrite it.
 */
export async function assertNewTarget(type: ResourceType, connection: string, registered: string[], restoreInPlaceId: string): Promise<void> {
  let taken = registered.some((c) => sameLocation(c, connection));
  if (!taken && (type === 'sqlite' || type === 'files')) taken = (await lstat(connection).catch(() => null)) !== null;
  if (!taken) return;
  const [kind, what] = type === 'files' ? ['storage_bucket_already_exists', 'directory'] : ['database_already_exists', 'database'];
  throw new AppwriteError(
    409,
    kind,
    `A ${what} already exists at ${maskConnection(connection)}; newResourceId must name something new (or be ${restoreInPlaceId}, the archived resource's own ID, to restore it in place).`,
  );
}
