// The redis engine: a logical dump (SCAN + DUMP + PTTL, see dump.ts) in the
// BVREDIS1 format (format.ts), restored with RESTORE ... ABSTTL (restore.ts).
// It needs nothing but a client connection: no restart, no CONFIG, no RDB
// access. Redis Cluster is not supported.
//
// Counting: counts.keys is the number of key records the dump wrote. SCAN may
// return a key twice while the keyspace is being resized; the dump keeps no
// set of seen keys (memory must stay flat), so such a key is stored twice and
// counted twice, and the restore counts both records too (and tolerates the
// repeat in its DBSIZE check).
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { ObjectInfo, ResourceSpec } from '../../domain/types.ts';
import { AppError } from '../../errors/index.ts';
import type { Engine, ScratchTarget } from '../engine.ts';
import { asAppError, closeClient, MAX_DB, openClient, parseConnection, resourceDatabases, serverVersion } from './connection.ts';
import { dump, scanPage } from './dump.ts';
import { escapeGlob } from './glob.ts';
import { restore } from './restore.ts';

const SAMPLE_KEYS = 10_000;

/** A selection pattern that matches exactly these bytes; bytes that are not UTF-8 become ? (one byte each). */
export function patternForBytes(bytes: Buffer): string {
  const text = bytes.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(bytes)) return escapeGlob(text);
  let out = '';
  for (const b of bytes) out += b >= 0x20 && b < 0x7f ? escapeGlob(String.fromCharCode(b)) : '?';
  return out;
}

/**
 * Key prefixes, from a sample of at most 10,000 keys: keys are grouped by the
 * part before their first ':' ("user:*"); a key without ':' is its own group.
 * size = keys of the sample in the group.
 */
async function listObjects(resource: ResourceSpec): Promise<ObjectInfo[]> {
  const addr = parseConnection(resource.connection);
  const dbs = resourceDatabases(resource);
  const signal = AbortSignal.timeout(60_000);
  const client = await openClient(addr, dbs[0] as number, signal);
  const groups = new Map<string, number>();
  let seen = 0;
  try {
    for (const db of dbs) {
      await client.select(db);
      let cursor = '0';
      do {
        const [next, keys] = await scanPage(client, cursor, null, 1000);
        cursor = next;
        for (const key of keys) {
          if (seen >= SAMPLE_KEYS) break;
          seen++;
          const colon = key.indexOf(0x3a);
          const name = colon >= 0 ? `${patternForBytes(key.subarray(0, colon + 1))}*` : patternForBytes(key);
          groups.set(name, (groups.get(name) ?? 0) + 1);
        }
      } while (cursor !== '0' && seen < SAMPLE_KEYS);
      if (seen >= SAMPLE_KEYS) break;
    }
  } catch (err) {
    throw asAppError(err, addr, signal, 'Listing keys failed');
  } finally {
    await closeClient(client);
  }
  return [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, size]) => ({ name, kind: 'key_prefix' as const, size }));
}

const CLAIM_PREFIX = 'backvault-scratch-';

/** Databases other Backvault drills hold, from the connection names in CLIENT LIST; null when the server denies it. */
async function claimedByOthers(client: Redis, myId: number): Promise<Set<number> | null> {
  let list: string;
  try {
    list = (await client.call('CLIENT', 'LIST')) as string;
  } catch {
    return null;
  }
  const out = new Set<number>();
  for (const line of list.split('\n')) {
    const id = Number(/(?:^|\s)id=(\d+)/.exec(line)?.[1]);
    const name = /(?:^|\s)name=(\S*)/.exec(line)?.[1] ?? '';
    if (id === myId || !name.startsWith(CLAIM_PREFIX)) continue;
    for (const d of name.slice(CLAIM_PREFIX.length).split('-')[1]?.split('.') ?? []) out.add(Number(d));
  }
  return out;
}

/**
 * Empty logical databases on the resource's server, as many as the resource
 * covers, picked from 15 downwards (applications mostly use the low ones).
 * Redis cannot create databases, so a drill borrows empty ones. The claim is
 * the name of a connection held open until cleanup (CLIENT SETNAME, seen by
 * other drills in CLIENT LIST): it writes nothing and dies with the process.
 * Limitations: it needs that many empty databases; an application that
 * starts using a borrowed database during the drill loses what it wrote
 * there at cleanup (FLUSHDB); where CLIENT LIST is denied, concurrent drills
 * are not kept apart.
 */
async function scratchTarget(resource: ResourceSpec, _workDir: string): Promise<ScratchTarget> {
  const addr = parseConnection(resource.connection);
  const own = new Set(resourceDatabases(resource));
  const need = own.size;
  const signal = new AbortController().signal;
  const holder = await openClient(addr, addr.db, signal);
  const token = randomBytes(6).toString('hex');
  let claimed: number[] = [];
  try {
    const myId = Number(await holder.client('ID'));
    for (let attempt = 0; claimed.length === 0; attempt++) {
      const others = await claimedByOthers(holder, myId);
      const picks: number[] = [];
      for (let db = MAX_DB; db >= 1 && picks.length < need; db--) {
        if (own.has(db) || others?.has(db)) continue;
        await holder.select(db);
        if ((await holder.dbsize()) === 0) picks.push(db);
      }
      if (picks.length < need) {
        throw new AppError('engine_failed', `A restore drill needs ${need} empty Redis logical database(s) at ${addr.label} (searched 1-${MAX_DB}) and found ${picks.length}.`);
      }
      if (others === null) {
        claimed = picks;
        break;
      }
      await holder.call('CLIENT', 'SETNAME', `${CLAIM_PREFIX}${token}-${picks.join('.')}`);
      const now = await claimedByOthers(holder, myId);
      if (now && picks.some((d) => now.has(d))) {
        // Another drill claimed the same database at the same moment: both step back and try again.
        await holder.call('CLIENT', 'SETNAME', '');
        if (attempt >= 5) throw new AppError('engine_failed', `Other restore drills keep claiming the same Redis databases at ${addr.label}; try again later.`);
        await new Promise((r) => setTimeout(r, 20 + Math.random() * 200));
        continue;
      }
      claimed = picks;
    }
  } catch (err) {
    await closeClient(holder);
    throw asAppError(err, addr, signal, 'Finding an empty database for the drill failed');
  }

  const url = new URL(resource.connection);
  url.pathname = `/${claimed[0]}`;
  url.search = claimed.length > 1 ? `?databases=${claimed.join(',')}` : '';
  url.hash = '';
  let done: Promise<void> | null = null;
  return {
    connection: url.toString(),
    cleanup() {
      done ??= (async () => {
        const client = holder.status === 'ready' ? holder : await openClient(addr, addr.db, signal).catch(() => null);
        try {
          if (client) {
            for (const db of claimed) {
              await client.select(db);
              await client.flushdb();
            }
          }
        } finally {
          if (client && client !== holder) await closeClient(client);
          await closeClient(holder);
        }
      })();
      return done;
    },
  };
}

export const redisEngine: Engine = {
  type: 'redis',
  formatVersion: 1,
  checkConnection(connection: string, options: Record<string, unknown>): void {
    resourceDatabases({ connection, options: options ?? {} });
  },
  listObjects,
  dump,
  restore,
  scratchTarget,
  async serverVersion(target, signal) {
    const client = await openClient(parseConnection(target.connection), 0, signal);
    try {
      const v = await serverVersion(client);
      return v === 'unknown' ? null : v;
    } finally {
      client.disconnect();
    }
  },
};
