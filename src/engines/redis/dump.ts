// Logical dump: SCAN every key of the selected logical databases, then DUMP
// and PTTL them in bounded batches (one Lua script, which also encodes the
// records, or one MULTI each, see scripts.ts), written as a BVREDIS1 stream
// (format.ts). Memory holds two SCAN pages and one batch, whatever the
// number of keys: the stream is a generator, pulled only as fast as its
// consumer reads. Nothing on the server is reconfigured or restarted, so it
// works on managed servers where BGSAVE/--rdb are out of reach.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Redis } from 'ioredis';
import { AppError } from '../../errors/index.ts';
import type { DumpInfo, DumpOutput, DumpRequest } from '../engine.ts';
import { asAppError, closeClient, openClient, parseConnection, resourceDatabases, serverVersion } from './connection.ts';
import { encodeHeader, encodeTrailerHead, RECORD_OVERHEAD, writeRecord } from './format.ts';
import { redisGlob } from './glob.ts';
import { canScript, DUMP_RECORDS_SCRIPT, packKeys } from './scripts.ts';

/**
 * Batch bounds, shared with restore. Memory holds one batch: its key count
 * adapts so a batch's payloads stay near targetBytes (a few huge values make
 * small batches; many tiny ones make big batches). Tests lower them.
 */
export const tuning = {
  scanCount: 1000,
  minBatchKeys: 1,
  maxBatchKeys: 1000,
  targetBytes: 8 * 1024 * 1024,
  /** false forces the MULTI / pipeline fallback used where scripting is denied */
  useScripts: true,
};

let ioredisVersion = 'unknown';
try {
  ioredisVersion = (createRequire(import.meta.url)('ioredis/package.json') as { version: string }).version;
} catch {
  // informative only
}

export function checkPatterns(list: unknown, what: 'selection' | 'exclude'): string[] {
  if (!Array.isArray(list) || list.some((p) => typeof p !== 'string' || p === '')) {
    throw new AppError('invalid_selection', `A Redis ${what} is a list of non-empty key patterns (SCAN MATCH globs such as "user:*").`);
  }
  return [...new Set(list as string[])];
}

/** Next batch size from how many bytes the last one produced. */
export function adaptBatch(current: number, keys: number, bytes: number): number {
  let next = current;
  if (bytes > tuning.targetBytes && keys > 0) next = Math.floor((keys * tuning.targetBytes) / bytes);
  else if (bytes < tuning.targetBytes / 4 && keys >= current) next = current * 2;
  return Math.max(tuning.minBatchKeys, Math.min(tuning.maxBatchKeys, next));
}

export async function scanPage(client: Redis, cursor: string, pattern: string | null, count: number): Promise<[string, Buffer[]]> {
  const args: (string | number)[] = [cursor];
  if (pattern !== null) args.push('MATCH', pattern);
  args.push('COUNT', count);
  const [next, keys] = (await client.callBuffer('SCAN', ...args)) as [Buffer, Buffer[]];
  return [next.toString('latin1'), keys];
}

export async function dump(req: DumpRequest): Promise<DumpOutput> {
  const { resource, signal } = req;
  // The databases belong to the resource; a replica is only where they are read from.
  const databases = resourceDatabases(resource);
  const addr = parseConnection(req.useReplica && resource.replica ? resource.replica : resource.connection);
  const selection = req.selection === null ? null : checkPatterns(req.selection, 'selection');
  if (selection !== null && selection.length === 0) throw new AppError('invalid_selection', 'A partial Redis backup needs at least one key pattern.');
  const exclude = checkPatterns(req.exclude ?? [], 'exclude');
  const excluded = exclude.map((p) => redisGlob(p));
  const patterns: (string | null)[] = selection ?? [null];
  const matchers = patterns.map((p) => (p === null ? null : redisGlob(p)));

  const client = await openClient(addr, databases[0] as number, signal);
  let version: string;
  try {
    version = await serverVersion(client);
  } catch (err) {
    await closeClient(client);
    throw asAppError(err, addr, signal, 'Reading the server version failed');
  }

  let count = 0;
  let vanished = 0;
  const perPattern = new Array<number>(patterns.length).fill(0);

  let scripts: boolean | null = null;

  /**
   * The records of these keys (the vanished ones left out), each key's PTTL
   * and DUMP read atomically with TIME: one script, or one MULTI where
   * scripting is denied.
   */
  async function dumpBatch(db: number, keys: Buffer[]): Promise<Buffer> {
    scripts ??= await canScript(client, tuning.useScripts);
    if (scripts) {
      const [records, written, gone] = (await DUMP_RECORDS_SCRIPT.run(client, [], [String(db), packKeys(keys)])) as [Buffer, number, number];
      count += written;
      vanished += gone;
      return records;
    }
    const multi = client.multi();
    multi.time();
    for (const k of keys) {
      multi.pttl(k);
      multi.dumpBuffer(k);
    }
    const res = await multi.exec();
    if (!res) throw new AppError('engine_failed', 'Redis aborted a DUMP transaction.');
    for (const [err] of res) if (err) throw err;
    const time = res[0]?.[1] as [string, string];
    const now = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
    let size = 0;
    for (let i = 0; i < keys.length; i++) {
      const payload = res[2 + 2 * i]?.[1] as Buffer | null;
      if (payload && res[1 + 2 * i]?.[1] !== -2) size += RECORD_OVERHEAD + (keys[i] as Buffer).length + payload.length;
    }
    const out = Buffer.allocUnsafe(size);
    let o = 0;
    for (let i = 0; i < keys.length; i++) {
      const ttl = res[1 + 2 * i]?.[1] as number;
      const payload = res[2 + 2 * i]?.[1] as Buffer | null;
      // Deleted or expired since SCAN saw it: not part of the backup.
      if (!payload || ttl === -2) {
        vanished++;
        continue;
      }
      o = writeRecord(out, o, db, keys[i] as Buffer, ttl >= 0 ? now + ttl : -1, payload);
      count++;
    }
    return out;
  }

  async function* generate(): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    const header = encodeHeader({ partial: selection !== null || exclude.length > 0, serverVersion: version, databases });
    hash.update(header);
    yield header;
    let batch = 64;
    for (const db of databases) {
      await client.select(db);
      for (let i = 0; i < patterns.length; i++) {
        const earlier = matchers.slice(0, i).filter((m) => m !== null);
        const scan = (cursor: string) => {
          const page = scanPage(client, cursor, patterns[i] as string | null, tuning.scanCount);
          // Awaited below, unless the consumer stops the dump first.
          page.catch(() => {});
          return page;
        };
        let page = scan('0');
        let cursor: string;
        do {
          if (signal.aborted) throw new AppError('cancelled');
          const [next, keys] = await page;
          cursor = next;
          // The next page is read while this one is dumped: one round trip less per page, one page more in memory.
          if (cursor !== '0') page = scan(cursor);
          // A key matching several patterns goes with the first; SCAN may also repeat a key while the keyspace rehashes (see index.ts).
          const wanted = keys.filter((k) => !earlier.some((m) => m(k)) && !excluded.some((m) => m(k)));
          perPattern[i] = (perPattern[i] as number) + keys.length;
          for (let off = 0; off < wanted.length; ) {
            const slice = wanted.slice(off, off + batch);
            off += slice.length;
            const chunk = await dumpBatch(db, slice);
            batch = adaptBatch(batch, slice.length, chunk.length);
            if (chunk.length > 0) {
              hash.update(chunk);
              yield chunk;
            }
          }
        } while (cursor !== '0');
      }
    }
    const tail = encodeTrailerHead(count);
    hash.update(tail);
    yield Buffer.concat([tail, hash.digest()]);
  }

  async function* guarded(): AsyncGenerator<Buffer> {
    try {
      yield* generate();
    } catch (err) {
      throw asAppError(err, addr, signal, 'The Redis dump failed');
    }
  }

  const iterator = guarded();
  const stream = Readable.from(iterator, { objectMode: false });
  const onAbort = () => stream.destroy(new AppError('cancelled'));
  signal.addEventListener('abort', onAbort, { once: true });

  const info = new Promise<DumpInfo>((resolve, reject) => {
    let ended = false;
    let failure: unknown = null;
    stream.once('end', () => {
      ended = true;
    });
    stream.once('error', (err) => {
      failure = err;
    });
    stream.once('close', () => {
      signal.removeEventListener('abort', onAbort);
      void closeClient(client).finally(() => {
        if (failure !== null) return reject(asAppError(failure, addr, signal, 'The Redis dump failed'));
        if (!ended) return reject(new AppError('cancelled', 'The dump stream was closed before its end.'));
        const warnings: string[] = [];
        if (scripts === false && tuning.useScripts) warnings.push('This server does not allow Lua scripts to this user; the dump used MULTI transactions instead, which is slower.');
        if (vanished > 0) warnings.push(`${vanished} key(s) were deleted or expired between SCAN and DUMP and are not in the backup.`);
        if (selection !== null) {
          selection.forEach((p, i) => {
            if (perPattern[i] === 0) warnings.push(`The key pattern "${p}" matched no key.`);
          });
        }
        resolve({ counts: { keys: count }, serverVersion: version, toolVersion: `backvault BVREDIS1 (ioredis ${ioredisVersion})`, warnings });
      });
    });
  });
  // Callers await info after the stream; an early failure must not count as an unhandled rejection meanwhile.
  info.catch(() => {});
  return { stream, artifactBase: 'keys.bvredis', format: 'BVREDIS1 stream of Redis DUMP payloads (see the Backvault redis engine)', info };
}
