// Restore of a BVREDIS1 stream with RESTORE ... ABSTTL, in batches (one Lua
// script or one pipeline each, see scripts.ts). Memory holds one read chunk
// and one batch, whatever the size of the backup.
//
// Redis has no transaction that could hold a large restore, and the input may
// fail its checksum at its very end. So the input is first streamed into a
// temp file in workDir (a full-size copy, on purpose) while its structure,
// count and SHA-256 trailer are checked; only then is the target touched.
// Then, reading the temp file back:
//  - the first payload is probed with RESTORE <random key> 1 <payload> ABSTTL:
//    the server checks the payload's RDB version and CRC and, the expiry being
//    long past, writes nothing. A target too old for the backup fails here;
//  - full, in place: FLUSHDB of each target database, then RESTORE without
//    REPLACE. Chosen over "RESTORE ... REPLACE, then delete what the backup
//    lacks", which needs a second SCAN pass and the backup's key set in
//    memory. The target is briefly empty, then fills up;
//  - new target (full or partial): its databases must be empty
//    (target_not_empty otherwise: a "new" target that holds data is more
//    likely a typo than a wish to lose it); if the restore fails they are
//    emptied again;
//  - partial in place: RESTORE ... REPLACE of the backed-up keys only. A
//    partial artifact (header flag) is never restored as full.
// Keys whose absolute expiry has passed (by the target server's clock) are
// skipped and reported in the warnings; they still count in counts.keys, so
// the comparison with the dump's count holds: counts.keys = keys written +
// keys skipped as expired. A full restore then checks that the target's
// DBSIZE equals the distinct keys written (less those that may have expired
// since), which catches other clients writing meanwhile.
import { randomBytes } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { PhaseTimer } from '../../platform/phases.ts';
import { AppError } from '../../errors/index.ts';
import type { RestoreReport, RestoreRequest } from '../engine.ts';
import type { ResourceSpec } from '../../domain/types.ts';
import { asAppError, closeClient, MAX_DB, openClient, parseConnection, resourceDatabases, scrub, serverVersion, type RedisAddress } from './connection.ts';
import { tuning } from './dump.ts';
import { RECORD_OVERHEAD, RecordReader, writeRecord, type Item, type KeyRecord, type StreamHeader } from './format.ts';
import { canScript, RESTORE_RECORDS_SCRIPT } from './scripts.ts';

/** Observations for tests: the largest RESTORE batch sent, in keys and payload bytes. */
export const restoreStats = { maxBatchKeys: 0, maxBatchBytes: 0 };

/**
 * Where each of the backup's databases goes.
 * - new_target: the target URL's ?databases= list, positionally (sorted), or
 *   consecutive databases from the URL's own: a backup of 0, 1, 2 into
 *   redis://other/5 fills 5, 6, 7. options.databases is ignored there (it
 *   describes the source resource, not the new target).
 * - in_place: the same numbers when the resource still covers them, else
 *   positionally onto the resource's databases if there are as many.
 */
export function mapDatabases(backup: number[], mode: RestoreRequest['mode'], target: Pick<ResourceSpec, 'connection' | 'options'>): Map<number, number> {
  const sorted = [...backup].sort((a, b) => a - b);
  let to: number[];
  if (mode === 'new_target') {
    const addr = parseConnection(target.connection);
    if (addr.databases) {
      if (addr.databases.length !== sorted.length) {
        throw new AppError('invalid_request', `The backup holds ${sorted.length} Redis database(s) (${sorted.join(', ')}) but the target URL lists ${addr.databases.length}.`);
      }
      to = addr.databases;
    } else {
      to = sorted.map((_, i) => addr.db + i);
      if ((to[to.length - 1] ?? 0) > MAX_DB) {
        throw new AppError('invalid_request', `The backup holds ${sorted.length} Redis databases; starting at database ${addr.db} they do not fit below ${MAX_DB + 1}. Name a lower database or list them with ?databases=.`);
      }
    }
  } else {
    const own = resourceDatabases(target);
    if (sorted.every((d) => own.includes(d))) to = sorted;
    else if (own.length === sorted.length) to = own;
    else {
      throw new AppError('invalid_request', `The backup holds Redis database(s) ${sorted.join(', ')}, but the resource now covers ${own.join(', ')}; restore into a new target instead.`);
    }
  }
  return new Map(sorted.map((d, i) => [d, to[i] as number]));
}

async function writeAll(fh: FileHandle, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off)).bytesWritten;
}

async function dbSizes(client: Redis, dbs: number[]): Promise<number[]> {
  const out: number[] = [];
  for (const db of dbs) {
    await client.select(db);
    out.push(await client.dbsize());
  }
  return out;
}

async function requireEmpty(client: Redis, dbs: number[], addr: RedisAddress): Promise<void> {
  const sizes = await dbSizes(client, dbs);
  const busy = dbs.filter((_, i) => (sizes[i] as number) > 0);
  if (busy.length > 0) {
    throw new AppError(
      'target_not_empty',
      `The new target's Redis database(s) ${busy.join(', ')} at ${addr.label} already hold keys; a new target must be empty. Choose empty databases (or flush them yourself), or restore in place.`,
    );
  }
}

/** A refused RESTORE; the probe (first payload, nothing written yet) tells a too-old target apart. */
function payloadError(err: Error, addr: RedisAddress, probe?: { header: StreamHeader; targetVersion: string }): AppError {
  const msg = scrub(err.message, addr);
  if (probe && /payload version or checksum/i.test(msg)) {
    return new AppError(
      'engine_failed',
      `The target Redis (version ${probe.targetVersion}) cannot read this backup's DUMP payloads, which come from Redis ${probe.header.serverVersion}: restore into Redis ${probe.header.serverVersion} or newer. Nothing was written.`,
    );
  }
  return new AppError('engine_failed', `Redis refused to RESTORE a key: ${msg}`);
}

const HORIZON_S = 86_400;

/**
 * p, or a cancelled error as soon as the signal fires: a stalled input must
 * not hold a cancelled restore. Not Promise.race against one long-lived
 * promise: every race leaves a reaction on that promise holding its result,
 * so each chunk read stayed in memory until the restore ended (the whole
 * artifact, +330 MiB at 1M keys).
 */
function unlessCancelled<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new AppError('cancelled'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new AppError('cancelled'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

export async function restore(req: RestoreRequest): Promise<RestoreReport> {
  const { signal } = req;
  const addr = parseConnection(req.target.connection);
  let full = !req.partial;
  if (signal.aborted) throw new AppError('cancelled');
  await mkdir(req.workDir, { recursive: true });
  const temp = join(req.workDir, `redis-restore-${randomBytes(6).toString('hex')}.bvredis`);
  const onAbort = () => req.input.destroy(new AppError('cancelled'));
  signal.addEventListener('abort', onAbort, { once: true });

  let client: Redis | null = null;
  let map: Map<number, number> | null = null;
  let phase: 'staging' | 'writing' = 'staging';
  let staged: ReadStream | null = null;
  const phases = new PhaseTimer();
  try {
    client = await openClient(addr, addr.db, signal);
    const c = client;

    // 1. Stage the input in a temp file and check all of it on the way.
    let header: StreamHeader;
    let total: number;
    const fh = await open(temp, 'wx', 0o600);
    const inputs = req.input[Symbol.asyncIterator]();
    async function* tee(): AsyncGenerator<Buffer> {
      try {
        for (;;) {
          const r = await unlessCancelled(inputs.next(), signal);
          if (r.done) return;
          const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
          await writeAll(fh, b);
          yield b;
        }
      } finally {
        // Not awaited: a stalled source may never settle.
        void inputs.return?.()?.catch(() => {});
      }
    }
    const source = tee();
    try {
      const reader = new RecordReader(source, { keepData: false });
      header = await reader.readHeader();
      // A partial artifact never empties a target, whatever the caller says: keys it did not take would be lost.
      if (header.partial) full = false;
      map = mapDatabases(header.databases, req.mode, req.target);
      // Fail fast, before reading a large input, when a new target is not empty; checked again before writing.
      if (req.mode === 'new_target') await requireEmpty(c, [...map.values()], addr);
      let item: Item;
      do item = await reader.next();
      while (item.kind === 'record');
      total = item.count;
    } finally {
      await source.return(undefined).catch(() => {});
      await fh.close();
    }
    if (req.expected.keys !== undefined && req.expected.keys !== total) {
      throw new AppError('verification_failed', `The Redis artifact holds ${total} keys but its manifest records ${req.expected.keys}; nothing was written.`);
    }
    const targetDbs = [...map.values()];
    phases.lap('spool');

    // 2. Read it back and write it.
    staged = createReadStream(temp, { highWaterMark: 1 << 20 });
    const reader = new RecordReader(staged, { keepData: true });
    await reader.readHeader();
    let item = await reader.next();
    const targetVersion = await serverVersion(c);
    if (item.kind === 'record') {
      const probeKey = Buffer.from(`backvault:probe:${randomBytes(12).toString('hex')}`);
      await c.select(map.get(item.record.db) as number);
      try {
        await c.call('RESTORE', probeKey, 1, item.record.payload as Buffer, 'ABSTTL');
      } catch (err) {
        if (signal.aborted) throw err;
        throw payloadError(err as Error, addr, { header, targetVersion });
      } finally {
        await c.del(probeKey).catch(() => {});
      }
    }
    if (req.mode === 'new_target') await requireEmpty(c, targetDbs, addr);

    // The target server's clock decides what has expired, as it will for the keys we write.
    const t0 = Date.now();
    const [sec, usec] = await c.time();
    const offset = Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - Math.round((t0 + Date.now()) / 2);
    const serverNow = () => Date.now() + offset;
    const start = serverNow();
    // Written keys per second of expiry from now on: how many may have gone by the DBSIZE check.
    const expiring = full ? new Uint32Array(HORIZON_S) : null;
    let expiringLater = 0;

    phase = 'writing';
    if (req.mode === 'in_place' && full) {
      for (const db of targetDbs) {
        await c.select(db);
        await c.flushdb();
      }
    }

    let written = 0;
    let duplicates = 0;
    let expired = 0;
    let batch: KeyRecord[] = [];
    let batchBytes = 0;
    const useScripts = await canScript(c, tuning.useScripts);
    const noteWritten = (r: KeyRecord) => {
      written++;
      if (expiring && r.expiry !== -1) {
        const idx = Math.max(0, Math.floor((r.expiry - start) / 1000));
        if (idx < HORIZON_S) expiring[idx] = (expiring[idx] as number) + 1;
        else expiringLater++;
      }
    };
    /** RESTOREs a batch; returns the records whose key already existed (only possible without replace). */
    const restoreBatch = async (records: KeyRecord[], replace: boolean): Promise<KeyRecord[]> => {
      if (useScripts) {
        let size = 0;
        for (const r of records) size += RECORD_OVERHEAD + (r.key as Buffer).length + r.payloadLength;
        const blob = Buffer.allocUnsafe(size);
        let o = 0;
        for (const r of records) o = writeRecord(blob, o, r.db, r.key as Buffer, r.expiry, r.payload as Buffer);
        try {
          const busy = (await RESTORE_RECORDS_SCRIPT.run(c, [], [replace ? '1' : '0', blob])) as number[];
          return busy.map((i) => records[i - 1] as KeyRecord);
        } catch (err) {
          if (signal.aborted) throw err;
          throw payloadError(err as Error, addr);
        }
      }
      const p = c.pipeline();
      for (const r of records) {
        const args: (string | Buffer | number)[] = [r.key as Buffer, r.expiry === -1 ? 0 : r.expiry, r.payload as Buffer];
        if (replace) args.push('REPLACE');
        if (r.expiry !== -1) args.push('ABSTTL');
        p.call('RESTORE', ...args);
      }
      const res = (await p.exec()) ?? [];
      const busy: KeyRecord[] = [];
      records.forEach((r, i) => {
        const err = res[i]?.[0];
        if (err && !replace && /^BUSYKEY/.test(err.message)) busy.push(r);
        else if (err) throw payloadError(err, addr);
      });
      return busy;
    };
    const flush = async () => {
      if (batch.length === 0) return;
      restoreStats.maxBatchKeys = Math.max(restoreStats.maxBatchKeys, batch.length);
      restoreStats.maxBatchBytes = Math.max(restoreStats.maxBatchBytes, batchBytes);
      // Full restores write into empty databases, so REPLACE is left out: a BUSYKEY then reveals a key the backup holds twice.
      const again = await restoreBatch(batch, !full);
      if (again.length > 0) {
        // SCAN may return a key twice while Redis rehashes; the later copy is the newer one.
        const still = await restoreBatch(again, true);
        if (still.length > 0) throw new Error('RESTORE ... REPLACE reported an existing key');
        duplicates += again.length;
      }
      for (const r of batch) noteWritten(r);
      batch = [];
      batchBytes = 0;
    };

    let currentDb = -1;
    for (; item.kind === 'record'; item = await reader.next()) {
      if (signal.aborted) throw new AppError('cancelled');
      const r = item.record;
      const db = map.get(r.db) as number;
      if (db !== currentDb) {
        await flush();
        await c.select(db);
        currentDb = db;
      }
      if (r.expiry !== -1 && r.expiry <= serverNow()) {
        expired++;
        continue;
      }
      batch.push(r);
      batchBytes += (r.key as Buffer).length + r.payloadLength;
      if (batch.length >= tuning.maxBatchKeys || batchBytes >= tuning.targetBytes) await flush();
    }
    await flush();
    phases.lap('write');

    if (expiring) {
      const size = (await dbSizes(c, targetDbs)).reduce((a, b) => a + b, 0);
      const upTo = Math.floor((serverNow() + 1000 - start) / 1000);
      let mayHaveExpired = upTo >= HORIZON_S ? expiringLater : 0;
      for (let i = 0; i <= Math.min(upTo, HORIZON_S - 1); i++) mayHaveExpired += expiring[i] as number;
      const distinct = written - duplicates;
      if (size > distinct || size < distinct - mayHaveExpired) {
        throw new AppError(
          'verification_failed',
          `After the restore the target Redis database(s) ${targetDbs.join(', ')} hold ${size} keys, but ${distinct} were restored: another client wrote to or deleted from them meanwhile.`,
        );
      }
      phases.lap('count');
    }

    const warnings: string[] = [];
    if (expired > 0) {
      warnings.push(`${expired} key(s) had expired by the time of the restore and were not written; they are counted as restored, since the source would have dropped them too.`);
    }
    if (duplicates > 0) warnings.push(`The backup held ${duplicates} key(s) twice (SCAN repeats keys while Redis resizes its tables); the later copy was kept.`);
    return { counts: { keys: written + expired }, warnings, phases: phases.result() };
  } catch (err) {
    let e = asAppError(err, addr, signal, 'The Redis restore failed');
    if (phase === 'writing') {
      if (req.mode === 'new_target' && map) {
        // The new target was empty before: empty it again rather than leave half a restore behind
        // (on a fresh connection when cancelling has closed ours).
        const cleaner = client?.status === 'ready' ? client : await openClient(addr, addr.db, new AbortController().signal).catch(() => null);
        if (cleaner) {
          for (const db of new Set(map.values())) await cleaner.select(db).then(() => cleaner.flushdb()).catch(() => {});
          if (cleaner !== client) await closeClient(cleaner);
        }
      } else if (req.mode === 'in_place' && e.code !== 'verification_failed') {
        const state = full ? 'the target database(s) were emptied and hold only part of the backup' : 'some of the backed-up keys were already replaced';
        e = new AppError(e.code, `${e.message} (${state}; fix the cause and run the restore again)`, e.details);
      }
    }
    throw e;
  } finally {
    signal.removeEventListener('abort', onAbort);
    staged?.destroy();
    if (client) await closeClient(client);
    await rm(temp, { force: true });
  }
}
