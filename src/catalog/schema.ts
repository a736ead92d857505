// Row types of the catalog tables. JSON columns are stored as text and
// parsed by the stores; times are ISO-8601 UTC strings.
export interface SuperuserTable {
  id: string;
  email: string;
  password_hash: string;
  created_at: string;
  updated_at: string;
}

export interface ApiKeyTable {
  id: string;
  name: string;
  scope: 'read' | 'admin';
  /** sha256 of the secret; the secret itself is shown once and never stored */
  key_hash: string;
  /** the first characters of the secret, to recognise a key in a list */
  prefix: string;
  created_at: string;
  last_used_at: string | null;
}

export interface InstanceTable {
  name: string;
  description: string;
  max_backups: number | null;
  created_at: string;
  updated_at: string;
}

export interface ResourceTable {
  instance: string;
  name: string;
  type: string;
  connection: string;
  replica: string | null;
  options: string;
  created_at: string;
  updated_at: string;
}

export interface BackupTable {
  id: string;
  instance: string;
  type: 'full' | 'partial';
  origin: 'api' | 'import' | 'policy';
  label: string | null;
  description: string | null;
  status: string;
  status_info: string | null;
  compression: string;
  selection: string | null;
  exclude: string | null;
  size: number;
  resources: string;
  progress: string | null;
  policy_id: string | null;
  verify_status: string | null;
  verify_result: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface RestoreTable {
  id: string;
  instance: string;
  backup_id: string;
  resources: string | null;
  targets: string | null;
  status: string;
  status_info: string | null;
  result: string | null;
  progress: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export type JobKind = 'backup' | 'restore' | 'verify' | 'import';
export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface JobTable {
  id: string;
  kind: JobKind;
  instance: string;
  /** the backup or restore row this job works on */
  subject_id: string;
  /** 1 when the job holds the instance's lock (backups, restores, imports) */
  exclusive: number;
  state: JobState;
  payload: string;
  lease_owner: string | null;
  lease_expires_at: string | null;
  cancel_requested: number;
  error: string | null;
  created_at: string;
  updated_at: string;
}

export interface PolicyTable {
  id: string;
  instance: string;
  name: string;
  enabled: number;
  /** cron expression, validated */
  schedule: string;
  /** IANA time zone the schedule and calendar retention use */
  timezone: string;
  type: 'full' | 'partial';
  selection: string | null;
  exclude: string | null;
  compression: string;
  run_on_replica: number;
  /** run a restore drill after each successful backup */
  verify: number;
  /** JSON RetentionRules */
  retention: string;
  /** run once at start when a run was missed while the server was down */
  catch_up: number;
  next_run_at: string | null;
  last_run_at: string | null;
  last_success_at: string | null;
  last_backup_id: string | null;
  /** when the policy was found late (and notified); null when on time */
  late_since: string | null;
  created_at: string;
  updated_at: string;
}

export interface NotificationChannelTable {
  id: string;
  name: string;
  kind: 'webhook' | 'email';
  /** JSON; holds secrets (webhook signing secret, SMTP password): masked when read back */
  config: string;
  /** JSON list of event names */
  events: string;
  failures_only: number;
  enabled: number;
  last_status: string | null;
  last_error: string | null;
  last_attempt_at: string | null;
  created_at: string;
  updated_at: string;
}

/** One backup's copy in one destination. */
export interface BackupCopyTable {
  backup_id: string;
  destination: string;
  status: 'success' | 'error' | 'deleted';
  status_info: string | null;
  size: number;
  updated_at: string;
}

export interface SettingTable {
  key: string;
  value: string;
}

export interface Database {
  superusers: SuperuserTable;
  api_keys: ApiKeyTable;
  instances: InstanceTable;
  resources: ResourceTable;
  backups: BackupTable;
  restores: RestoreTable;
  jobs: JobTable;
  settings: SettingTable;
  policies: PolicyTable;
  notification_channels: NotificationChannelTable;
  backup_copies: BackupCopyTable;
}
