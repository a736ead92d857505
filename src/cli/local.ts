// Commands that work on a data directory rather than through the API: serve,
// superuser upsert, keys create.
import { catalogPath, ConfigError, loadConfig, parseHostPort, type Config } from '../config/index.ts';
import { openCatalog, type CatalogDb } from '../catalog/db.ts';
import { startServer } from '../main.ts';
import { createApiKey, upsertSuperuser, type Scope } from '../services/auth.ts';
import { CliError, EXIT, UsageError } from './errors.ts';
import { stdout, type Out } from './format.ts';

export interface ServeOptions {
  dir?: string;
  http?: string;
  config?: string;
  workers?: number;
  storage?: string;
}

function config(flags: Partial<Config>, configFile?: string): Config {
  try {
    return loadConfig({ flags, ...(configFile ? { configFile } : {}) });
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

export async function serve(options: ServeOptions, out: Out = stdout): Promise<number> {
  const flags: Partial<Config> = {};
  if (options.dir !== undefined) flags.dir = options.dir;
  if (options.workers !== undefined) flags.workers = options.workers;
  if (options.storage !== undefined) flags.storage = options.storage;
  if (options.http !== undefined) {
    try {
      Object.assign(flags, parseHostPort(options.http));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  const cfg = config(flags, options.config);
  const logger = { level: cfg.log_level };
  let server;
  try {
    server = await startServer(cfg, { logger });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE') throw new CliError(`cannot listen on ${cfg.host}:${cfg.port}: the address is in use; stop the other server or pass --http HOST:PORT`, EXIT.failed);
    if (e.code === 'EACCES') throw new CliError(`cannot listen on ${cfg.host}:${cfg.port} or write ${cfg.dir}: permission denied`, EXIT.failed);
    throw new CliError(e.message, EXIT.failed);
  }
  out(`Backvault listening on ${server.url} (data in ${cfg.dir})`);
  if (server.initialKey) {
    // Printed once: only its hash is stored, so this is the one chance to copy it.
    out('');
    out('Initial admin API key (shown once, store it now):');
    out(server.initialKey.key);
    out('');
  }
  const running = server;
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        // A second signal: the user wants out now, even if jobs are still winding down.
        process.exit(EXIT.failed);
      }
      stopping = true;
      running.app.log.info({ signal }, 'shutting down');
      running.close().then(resolve, (err: unknown) => {
        running.app.log.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return EXIT.ok;
}

/**
 * Opens only the catalog of a data directory. A server may be running on the
 * same directory: SQLite's WAL lets both write, and nothing else of the
 * server's (storage temp files, job work directories) is touched.
 */
async function withCatalog<T>(dir: string | undefined, fn: (db: CatalogDb) => Promise<T>): Promise<T> {
  const cfg = config(dir !== undefined ? { dir } : {});
  const db = await openCatalog(catalogPath(cfg));
  try {
    return await fn(db);
  } finally {
    await db.destroy();
  }
}

async function readStdinLine(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return (Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '').trim();
}

export async function superuserUpsert(email: string, password: string, options: { dir?: string }, out: Out = stdout): Promise<number> {
  // "-" reads the password from stdin, so it need not appear in the process list or shell history.
  const pw = password === '-' ? await readStdinLine() : password;
  const { created } = await withCatalog(options.dir, (db) => upsertSuperuser(db, email, pw, new Date()));
  out(`Superuser ${email.toLowerCase()} ${created ? 'created' : 'updated'}.`);
  return EXIT.ok;
}

export async function keysCreate(options: { name: string; scope: Scope; dir?: string }, out: Out = stdout): Promise<number> {
  if (options.name.length < 1 || options.name.length > 128) throw new UsageError('--name must have 1 to 128 characters');
  const key = await withCatalog(options.dir, (db) => createApiKey(db, options.name, options.scope, new Date()));
  out(`Created ${key.scope} API key "${key.name}" (id ${key.id}, prefix ${key.prefix}). It is shown once; store it now:`);
  // The key alone on the last line, so scripts can take it with `tail -n 1`.
  out(key.key);
  return EXIT.ok;
}
