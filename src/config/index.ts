// Typed, validated configuration. Sources, later ones winning: defaults, the
// JSON config file (<dir>/config.json or --config), BACKVAULT_* environment
// variables, command-line flags.
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const ConfigSchema = Type.Object(
  {
    dir: Type.String({ minLength: 1 }),
    host: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 0, maximum: 65535 }),
    /** jobs run at once by this process */
    workers: Type.Integer({ minimum: 1, maximum: 64 }),
    /** largest accepted upload (import) in bytes */
    max_upload_bytes: Type.Integer({ minimum: 1024 }),
    /** requests per minute per client (API key, token or address) */
    rate_limit_per_minute: Type.Integer({ minimum: 1 }),
    /** lifetime of a login token in seconds */
    token_ttl_seconds: Type.Integer({ minimum: 60 }),
    /** default and largest lifetime of a download link in seconds */
    download_link_ttl_seconds: Type.Integer({ minimum: 10 }),
    download_link_max_ttl_seconds: Type.Integer({ minimum: 10 }),
    /** let imports fetch from loopback, private and link-local addresses */
    allow_private_import_urls: Type.Boolean(),
    /** cap on backups per instance when the instance sets none; 0 means no cap */
    default_max_backups: Type.Integer({ minimum: 0 }),
    /** a job whose worker stopped heartbeating for this long is taken as dead */
    job_lease_seconds: Type.Integer({ minimum: 5 }),
    log_level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l))),
    /** public base URL used in links; defaults to http://host:port */
    public_url: Type.Union([Type.String(), Type.Null()]),
  },
  { additionalProperties: false },
);

export type Config = Static<typeof ConfigSchema>;

export const DEFAULTS: Config = {
  dir: './backvault-data',
  host: '127.0.0.1',
  port: 8090,
  workers: 2,
  max_upload_bytes: 10 * 1024 ** 3,
  rate_limit_per_minute: 1200,
  token_ttl_seconds: 24 * 3600,
  download_link_ttl_seconds: 15 * 60,
  download_link_max_ttl_seconds: 7 * 24 * 3600,
  allow_private_import_urls: false,
  default_max_backups: 0,
  job_lease_seconds: 60,
  log_level: 'info',
  public_url: null,
};

const compiled = TypeCompiler.Compile(ConfigSchema);

const ENV: Record<string, keyof Config> = {
  BACKVAULT_DIR: 'dir',
  BACKVAULT_HOST: 'host',
  BACKVAULT_PORT: 'port',
  BACKVAULT_WORKERS: 'workers',
  BACKVAULT_MAX_UPLOAD_BYTES: 'max_upload_bytes',
  BACKVAULT_RATE_LIMIT_PER_MINUTE: 'rate_limit_per_minute',
  BACKVAULT_TOKEN_TTL_SECONDS: 'token_ttl_seconds',
  BACKVAULT_DOWNLOAD_LINK_TTL_SECONDS: 'download_link_ttl_seconds',
  BACKVAULT_ALLOW_PRIVATE_IMPORT_URLS: 'allow_private_import_urls',
  BACKVAULT_DEFAULT_MAX_BACKUPS: 'default_max_backups',
  BACKVAULT_JOB_LEASE_SECONDS: 'job_lease_seconds',
  BACKVAULT_LOG_LEVEL: 'log_level',
  BACKVAULT_PUBLIC_URL: 'public_url',
};

function coerce(key: keyof Config, raw: string): unknown {
  const def = DEFAULTS[key];
  if (typeof def === 'number') return /^-?\d+$/.test(raw) ? Number(raw) : raw;
  if (typeof def === 'boolean') return raw === 'true' || raw === '1' ? true : raw === 'false' || raw === '0' ? false : raw;
  return raw;
}

export class ConfigError extends Error {}

/** Parses "HOST:PORT" (or ":PORT", or "[v6]:PORT"). */
export function parseHostPort(value: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  if (!m) throw new ConfigError(`--http must be HOST:PORT, got ${JSON.stringify(value)}`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port: Number(m[3]) };
}

export interface ConfigSources {
  flags?: Partial<Config>;
  env?: NodeJS.ProcessEnv;
  configFile?: string;
}

export function loadConfig(sources: ConfigSources = {}): Config {
  const env = sources.env ?? process.env;
  const fromEnv: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV)) {
    const raw = env[name];
    if (raw !== undefined && raw !== '') fromEnv[key] = coerce(key, raw);
  }
  const dir = (sources.flags?.dir ?? fromEnv.dir ?? DEFAULTS.dir) as string;
  const file = sources.configFile ?? (typeof env.BACKVAULT_CONFIG === 'string' ? env.BACKVAULT_CONFIG : join(dir, 'config.json'));
  let fromFile: Record<string, unknown> = {};
  if (existsSync(file)) {
    try {
      fromFile = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`config file ${file} is not valid JSON: ${(err as Error).message}`);
    }
  } else if (sources.configFile) {
    throw new ConfigError(`config file ${file} does not exist`);
  }
  const merged = { ...DEFAULTS, ...fromFile, ...fromEnv, ...stripUndefined(sources.flags ?? {}) };
  const errors = [...compiled.Errors(merged)];
  if (errors.length > 0) {
    throw new ConfigError(`invalid configuration: ${errors.slice(0, 5).map((e) => `${e.path.slice(1) || '(root)'} ${e.message}`).join('; ')}`);
  }
  return { ...merged, dir: resolve(merged.dir) } as Config;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function catalogPath(config: Config): string {
  return join(config.dir, 'catalog.db');
}

export function storagePath(config: Config): string {
  return join(config.dir, 'storage');
}

export function workPath(config: Config): string {
  return join(config.dir, 'work');
}
