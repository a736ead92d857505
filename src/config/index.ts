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
    /** seconds between scheduler passes over due policies */
    scheduler_tick_seconds: Type.Integer({ minimum: 1 }),
    /** how long an idle worker thread (compression, files dump and restore) waits for its next job before it leaves */
    worker_idle_seconds: Type.Integer({ minimum: 1, maximum: 86_400 }),
    /** a policy is late when no success came this long after a run was due */
    policy_late_grace_seconds: Type.Integer({ minimum: 0 }),
    /** retention always keeps at least this many newest successful backups of a policy */
    retention_min_keep: Type.Integer({ minimum: 1 }),
    /** jobs running longer than this are stopped; per job kind, in seconds */
    job_timeout_seconds: Type.Object(
      { backup: Type.Integer({ minimum: 1 }), restore: Type.Integer({ minimum: 1 }), verify: Type.Integer({ minimum: 1 }), import: Type.Integer({ minimum: 1 }) },
      { additionalProperties: false },
    ),
    /** where backups live: file:///path (default <dir>/storage) or s3://BUCKET/PREFIX */
    storage: Type.Union([Type.String({ pattern: '^(file|s3)://' }), Type.Null()]),
    /** S3-compatible endpoint (omit for AWS), region and keys; the keys are secrets and never logged */
    s3_endpoint: Type.Union([Type.String(), Type.Null()]),
    s3_region: Type.String(),
    s3_access_key: Type.Union([Type.String(), Type.Null()]),
    s3_secret_key: Type.Union([Type.String(), Type.Null()]),
    /** encrypt everything in storage; also on when a key file or passphrase is set (see docs/encryption.md) */
    encryption: Type.Boolean(),
    /** file holding the 256-bit master key (64 hex characters); without it and a passphrase, <dir>/master.key is generated */
    encryption_key_file: Type.Union([Type.String({ minLength: 1 }), Type.Null()]),
    /** passphrase the master key is derived from (scrypt); a secret, never logged: prefer BACKVAULT_ENCRYPTION_PASSPHRASE */
    encryption_passphrase: Type.Union([Type.String({ minLength: 1 }), Type.Null()]),
    /** Syncano dialect: most backups per account (the whole server); 0 means no limit */
    syncano_max_backups: Type.Integer({ minimum: 0 }),
    /** Cloud66 dialect: backups larger than this are listed as parts of this size */
    cloud66_part_bytes: Type.Integer({ minimum: 1024 }),
    /**
     * More places every backup is written to, besides `storage` (named
     * "default"): one dump is streamed to all of them. Each has a name and a
     * storage URL, and for S3 its own endpoint and keys (else the s3_* above).
     */
    destinations: Type.Array(
      Type.Object(
        {
          name: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$' }),
          storage: Type.String({ pattern: '^(file|s3)://' }),
          s3_endpoint: Type.Optional(Type.Union([Type.String(), Type.Null()])),
          s3_region: Type.Optional(Type.String()),
          s3_access_key: Type.Optional(Type.Union([Type.String(), Type.Null()])),
          s3_secret_key: Type.Optional(Type.Union([Type.String(), Type.Null()])),
        },
        { additionalProperties: false },
      ),
      { maxItems: 8 },
    ),
    log_level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l))),
    /** public base URL used in links; defaults to http://host:port */
    public_url: Type.Union([Type.String(), Type.Null()]),
    /** serve GET /metrics without an API key (for scrapers on a trusted network) */
    metrics_public: Type.Boolean(),
    /** tries per notification (the first included) before it is given up */
    notification_max_attempts: Type.Integer({ minimum: 1, maximum: 20 }),
    /** wait before the first retry of a notification; doubles on each retry */
    notification_retry_base_ms: Type.Integer({ minimum: 10, maximum: 600_000 }),
    /** how long one notification attempt (HTTP request or SMTP session step) may take */
    notification_timeout_ms: Type.Integer({ minimum: 100, maximum: 300_000 }),
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
  scheduler_tick_seconds: 15,
  worker_idle_seconds: 5,
  policy_late_grace_seconds: 3600,
  retention_min_keep: 1,
  job_timeout_seconds: { backup: 12 * 3600, restore: 12 * 3600, verify: 12 * 3600, import: 6 * 3600 },
  storage: null,
  s3_endpoint: null,
  s3_region: 'us-east-1',
  s3_access_key: null,
  s3_secret_key: null,
  encryption: false,
  encryption_key_file: null,
  encryption_passphrase: null,
  syncano_max_backups: 25,
  cloud66_part_bytes: 250 * 1024 * 1024,
  destinations: [],
  log_level: 'info',
  public_url: null,
  metrics_public: false,
  notification_max_attempts: 5,
  notification_retry_base_ms: 2000,
  notification_timeout_ms: 10_000,
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
  BACKVAULT_SCHEDULER_TICK_SECONDS: 'scheduler_tick_seconds',
  BACKVAULT_WORKER_IDLE_SECONDS: 'worker_idle_seconds',
  BACKVAULT_POLICY_LATE_GRACE_SECONDS: 'policy_late_grace_seconds',
  BACKVAULT_RETENTION_MIN_KEEP: 'retention_min_keep',
  BACKVAULT_STORAGE: 'storage',
  BACKVAULT_S3_ENDPOINT: 's3_endpoint',
  BACKVAULT_S3_REGION: 's3_region',
  BACKVAULT_S3_ACCESS_KEY: 's3_access_key',
  BACKVAULT_S3_SECRET_KEY: 's3_secret_key',
  BACKVAULT_ENCRYPTION: 'encryption',
  BACKVAULT_ENCRYPTION_KEY_FILE: 'encryption_key_file',
  BACKVAULT_ENCRYPTION_PASSPHRASE: 'encryption_passphrase',
  BACKVAULT_SYNCANO_MAX_BACKUPS: 'syncano_max_backups',
  BACKVAULT_CLOUD66_PART_BYTES: 'cloud66_part_bytes',
  BACKVAULT_LOG_LEVEL: 'log_level',
  BACKVAULT_PUBLIC_URL: 'public_url',
  BACKVAULT_METRICS_PUBLIC: 'metrics_public',
  BACKVAULT_NOTIFICATION_MAX_ATTEMPTS: 'notification_max_attempts',
  BACKVAULT_NOTIFICATION_RETRY_BASE_MS: 'notification_retry_base_ms',
  BACKVAULT_NOTIFICATION_TIMEOUT_MS: 'notification_timeout_ms',
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
  // Per-kind timeouts merge key by key, so a file may set just one kind.
  const timeouts = [fromFile.job_timeout_seconds, sources.flags?.job_timeout_seconds].filter((t) => t && typeof t === 'object');
  merged.job_timeout_seconds = Object.assign({}, DEFAULTS.job_timeout_seconds, ...timeouts);
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

/** The local storage directory, when storage is local. */
export function storagePath(config: Config): string {
  if (config.storage?.startsWith('file://')) return resolve(new URL(config.storage).pathname);
  return join(config.dir, 'storage');
}

export function workPath(config: Config): string {
  return join(config.dir, 'work');
}
