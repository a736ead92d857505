// Catalog migrations, in code so they ship with the server. Column types are
// portable between SQLite and PostgreSQL (text, integer, bigint); JSON lives
// in text columns.
import { type Kysely, type Migration, type MigrationProvider } from 'kysely';

const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('superusers')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('email', 'text', (c) => c.notNull().unique())
        .addColumn('password_hash', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('api_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('key_hash', 'text', (c) => c.notNull().unique())
        .addColumn('prefix', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('last_used_at', 'text')
        .execute();
      await db.schema
        .createTable('instances')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('description', 'text', (c) => c.notNull().defaultTo(''))
        .addColumn('max_backups', 'integer')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('resources')
        .addColumn('instance', 'text', (c) => c.notNull().references('instances.name').onDelete('cascade'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('connection', 'text', (c) => c.notNull())
        .addColumn('replica', 'text')
        .addColumn('options', 'text', (c) => c.notNull().defaultTo('{}'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('resources_pk', ['instance', 'name'])
        .execute();
      await db.schema
        .createTable('backups')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('instance', 'text', (c) => c.notNull())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('origin', 'text', (c) => c.notNull())
        .addColumn('label', 'text')
        .addColumn('description', 'text')
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_info', 'text')
        .addColumn('compression', 'text', (c) => c.notNull())
        .addColumn('selection', 'text')
        .addColumn('exclude', 'text')
        .addColumn('size', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('resources', 'text', (c) => c.notNull().defaultTo('[]'))
        .addColumn('progress', 'text')
        .addColumn('policy_id', 'text')
        .addColumn('verify_status', 'text')
        .addColumn('verify_result', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text')
        .addColumn('finished_at', 'text')
        .execute();
      await db.schema.createIndex('backups_instance_created').on('backups').columns(['instance', 'created_at']).execute();
      await db.schema.createIndex('backups_created').on('backups').columns(['created_at']).execute();
      await db.schema
        .createTable('restores')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('instance', 'text', (c) => c.notNull())
        .addColumn('backup_id', 'text', (c) => c.notNull())
        .addColumn('resources', 'text')
        .addColumn('targets', 'text')
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_info', 'text')
        .addColumn('result', 'text')
        .addColumn('progress', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text')
        .addColumn('finished_at', 'text')
        .execute();
      await db.schema.createIndex('restores_instance_created').on('restores').columns(['instance', 'created_at']).execute();
      await db.schema
        .createTable('jobs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('instance', 'text', (c) => c.notNull())
        .addColumn('subject_id', 'text', (c) => c.notNull())
        .addColumn('exclusive', 'integer', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('payload', 'text', (c) => c.notNull().defaultTo('{}'))
        .addColumn('lease_owner', 'text')
        .addColumn('lease_expires_at', 'text')
        .addColumn('cancel_requested', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('error', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('jobs_state_created').on('jobs').columns(['state', 'created_at']).execute();
      await db.schema.createIndex('jobs_subject').on('jobs').columns(['subject_id']).execute();
      await db.schema
        .createTable('settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0002_policies_notifications': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('policies')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('instance', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('enabled', 'integer', (c) => c.notNull())
        .addColumn('schedule', 'text', (c) => c.notNull())
        .addColumn('timezone', 'text', (c) => c.notNull())
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('selection', 'text')
        .addColumn('exclude', 'text')
        .addColumn('compression', 'text', (c) => c.notNull())
        .addColumn('run_on_replica', 'integer', (c) => c.notNull())
        .addColumn('verify', 'integer', (c) => c.notNull())
        .addColumn('retention', 'text', (c) => c.notNull())
        .addColumn('catch_up', 'integer', (c) => c.notNull())
        .addColumn('next_run_at', 'text')
        .addColumn('last_run_at', 'text')
        .addColumn('last_success_at', 'text')
        .addColumn('last_backup_id', 'text')
        .addColumn('late_since', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('policies_instance').on('policies').columns(['instance']).execute();
      await db.schema.createIndex('policies_next_run').on('policies').columns(['enabled', 'next_run_at']).execute();
      await db.schema.createIndex('backups_policy').on('backups').columns(['policy_id', 'status']).execute();
      await db.schema
        .createTable('notification_channels')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('config', 'text', (c) => c.notNull())
        .addColumn('events', 'text', (c) => c.notNull())
        .addColumn('failures_only', 'integer', (c) => c.notNull())
        .addColumn('enabled', 'integer', (c) => c.notNull())
        .addColumn('last_status', 'text')
        .addColumn('last_error', 'text')
        .addColumn('last_attempt_at', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0003_backup_copies': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('backup_copies')
        .addColumn('backup_id', 'text', (c) => c.notNull())
        .addColumn('destination', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('status_info', 'text')
        .addColumn('size', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('backup_copies_pk', ['backup_id', 'destination'])
        .execute();
    },
  },
  // Backup lists sort by created_at DESC, id DESC. With (created_at) alone
  // SQLite sorted every equal-time group in a temp b-tree and built each row
  // skipped by OFFSET (page 20 cost 3x page 1); with id in the index it walks
  // the index backwards and stops after the page. One per list filter.
  '0004_backup_list_indexes': {
    async up(db: Kysely<unknown>) {
      await db.schema.createIndex('backups_created_id').on('backups').columns(['created_at', 'id']).execute();
      await db.schema.createIndex('backups_instance_created_id').on('backups').columns(['instance', 'created_at', 'id']).execute();
      await db.schema.createIndex('backups_status_created_id').on('backups').columns(['status', 'created_at', 'id']).execute();
      await db.schema.createIndex('backups_policy_created_id').on('backups').columns(['policy_id', 'created_at', 'id']).execute();
      // the new ones start with the same columns
      await db.schema.dropIndex('backups_created').execute();
      await db.schema.dropIndex('backups_instance_created').execute();
    },
  },
};

export const migrationProvider: MigrationProvider = {
  getMigrations: async () => migrations,
};
