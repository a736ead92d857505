// Composition root: reads config, wires catalog, storage, engines, jobs,
// services and HTTP. The only file that imports every layer.
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { catalogPath, storagePath, workPath, type Config } from './config/index.ts';
import { openCatalog, type CatalogDb } from './catalog/db.ts';
import { LocalStorage } from './storage/local.ts';
import { withRetries } from './storage/retry.ts';
import { withEncryption } from './storage/encrypted.ts';
import type { Storage } from './storage/storage.ts';
import { getEngine } from './engines/registry.ts';
import { JobQueue } from './jobs/queue.ts';
import { WorkerPool } from './jobs/pool.ts';
import { systemClock, type Clock } from './platform/clock.ts';
import { workerIdle } from './platform/workers.ts';
import type { Destination, Logger, ServiceContext } from './services/context.ts';
import { ensureInitialAdminKey, loadTokenSecret, type CreatedKey } from './services/auth.ts';
import { backupJobHandler } from './services/backups.ts';
import { restoreJobHandler } from './services/restores.ts';
import { verifyJobHandler } from './services/verify.ts';
import { importJobHandler } from './services/imports.ts';
import { buildApp } from './http/app.ts';
import { startNotifier } from './services/notifications.ts';
import { startMetrics, stopMetrics } from './services/metrics.ts';
import { ServiceEvents } from './services/events.ts';
import { Scheduler } from './scheduler/scheduler.ts';

export interface Server {
  app: FastifyInstance;
  ctx: ServiceContext;
  pool: WorkerPool;
  scheduler: Scheduler;
  /** the admin key created on the first start, to print once; null afterwards */
  initialKey: CreatedKey | null;
  url: string;
  close(): Promise<void>;
}

/**
 * Takes the data directory for this process: one server per directory, since
 * the embedded catalog and in-process workers assume they are alone. A lock
 * left by a dead process is taken over.
 */
export async function lockDataDir(dir: string): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'backvault.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return async () => {
        await rm(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (pid > 0 && pid !== process.pid && isAlive(pid)) {
        throw new Error(`another Backvault server (pid ${pid}) is using ${dir}; stop it or choose another --dir`);
      }
      await rm(path, { force: true });
    }
  }
  throw new Error(`could not lock ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface ServerOptions {
  clock?: Clock;
  logger?: false | { level: string };
  /** listen on the configured host and port; tests may pass port 0 in config */
  listen?: boolean;
}

const silentLog: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * Local storage (the default) or an S3-compatible bucket; the retry wrapper
 * goes around whichever it is, and encryption around that when configured
 * (it checks the master key here, at start). raw skips encryption, for key
 * maintenance (backvault key rotate).
 */
export async function openStorage(config: Config, options: { raw?: boolean } = {}): Promise<Storage> {
  const wrap = (s: Storage): Promise<Storage> => (options.raw ? Promise.resolve(s) : withEncryption(config, s));
  if (config.storage?.startsWith('s3://')) {
    if (!config.s3_access_key || !config.s3_secret_key) {
      throw new Error('S3 storage needs BACKVAULT_S3_ACCESS_KEY and BACKVAULT_S3_SECRET_KEY (or s3_access_key and s3_secret_key in the config file)');
    }
    const env = {
      S3_ACCESS_KEY: config.s3_access_key,
      S3_SECRET_KEY: config.s3_secret_key,
      S3_REGION: config.s3_region,
      ...(config.s3_endpoint ? { S3_ENDPOINT: config.s3_endpoint } : {}),
    };
    // Loaded only when used: the AWS SDK costs tens of MB of memory a local-only server does not need.
    const { S3Storage } = await import('./storage/s3.ts');
    return wrap(withRetries(S3Storage.fromUrl(config.storage, env)));
  }
  const local = new LocalStorage(storagePath(config));
  // Leftovers of puts cut short by a crash; only this process uses the directory.
  await local.cleanupTemp();
  return wrap(withRetries(local));
}

/**
 * The primary storage ("default") and any further destinations from the
 * config, each behind the same retry and encryption wrappers.
 */
export async function openDestinations(config: Config, options: { raw?: boolean } = {}): Promise<Destination[]> {
  const names = new Set(['default']);
  const out: Destination[] = [{ name: 'default', storage: await openStorage(config, options) }];
  for (const d of config.destinations) {
    if (names.has(d.name)) throw new Error(`destination names must be unique and not "default": ${d.name} is used twice`);
    names.add(d.name);
    const derived: Config = {
      ...config,
      storage: d.storage,
      s3_endpoint: d.s3_endpoint ?? config.s3_endpoint,
      s3_region: d.s3_region ?? config.s3_region,
      s3_access_key: d.s3_access_key ?? config.s3_access_key,
      s3_secret_key: d.s3_secret_key ?? config.s3_secret_key,
    };
    out.push({ name: d.name, storage: await openStorage(derived, options) });
  }
  return out;
}

export async function openContext(config: Config, clock: Clock, log: Logger): Promise<{ ctx: ServiceContext; db: CatalogDb }> {
  const db = await openCatalog(catalogPath(config));
  const destinations = await openDestinations(config);
  const storage = destinations[0]!.storage;
  await rm(workPath(config), { recursive: true, force: true });
  const jobs = new JobQueue(db, clock, config.job_lease_seconds);
  const ctx: ServiceContext = { db, config, storage, destinations, clock, engine: getEngine, jobs, log, tokenSecret: await loadTokenSecret(db), events: new ServiceEvents() };
  return { ctx, db };
}

export async function startServer(config: Config, options: ServerOptions = {}): Promise<Server> {
  const unlock = await lockDataDir(config.dir);
  try {
    const clock = options.clock ?? systemClock;
    workerIdle.ms = config.worker_idle_seconds * 1000;
    const app0Logger = options.logger ?? false;
    const { ctx, db } = await openContext(config, clock, silentLog);
    const app = await buildApp(ctx, { logger: app0Logger });
    ctx.log = app.log as unknown as Logger;
    // Before the pool, so outcomes of recovered jobs are announced and counted too.
    const notifier = startNotifier(ctx);
    startMetrics(ctx);
    const pool = new WorkerPool(
      ctx.jobs,
      { backup: backupJobHandler(ctx), restore: restoreJobHandler(ctx), verify: verifyJobHandler(ctx), import: importJobHandler(ctx) },
      { concurrency: config.workers, log: app.log, heartbeatMs: Math.max(1000, (config.job_lease_seconds * 1000) / 4), timeoutSeconds: config.job_timeout_seconds },
    );
    // This process is the only one on the directory: whatever is still running belonged to a dead one.
    const interrupted = await pool.recover(true);
    if (interrupted > 0) app.log.warn({ interrupted }, 'jobs left running by a stopped server were marked as failed');
    const initialKey = await ensureInitialAdminKey(db, clock.now());
    let url = '';
    if (options.listen !== false) {
      url = await app.listen({ host: config.host, port: config.port });
    }
    pool.start();
    const scheduler = new Scheduler(ctx);
    await scheduler.start();
    let closed = false;
    return {
      app,
      ctx,
      pool,
      scheduler,
      initialKey,
      url,
      async close() {
        if (closed) return;
        closed = true;
        await scheduler.stop();
        await pool.stop();
        await notifier.stop();
        stopMetrics(ctx);
        await app.close();
        await db.destroy();
        await unlock();
      },
    };
  } catch (err) {
    await unlock();
    throw err;
  }
}
