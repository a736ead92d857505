// Round trips against the real PostgreSQL server on 127.0.0.1:5432 (user
// postgres, trust). Every test makes uniquely named databases and the file
// drops them (and any staging leftovers) at the end.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectCounts, ResourceSpec } from '../../domain/types.ts';
import { isErrorCode } from '../../errors/index.ts';
import { compressor, decompressor } from '../../platform/streams.ts';
import type { DumpInfo, DumpOutput, RestoreReport, RestoreRequest } from '../engine.ts';
import { postgresEngine as engine } from './index.ts';
import { splitGucList } from './db.ts';
import { patternRegex } from './selection.ts';
import { findTool, majorKey } from './tools.ts';

const HOST = '127.0.0.1';
const PORT = 5432;
const PREFIX = `bvt_pg_${process.pid}_`;
const never = new AbortController().signal;
let admin: pg.Client;
let root: string;
let n = 0;

const url = (db: string, auth = 'postgres', host = HOST, port = PORT) => `postgres://${auth}@${host}:${port}/${encodeURIComponent(db)}`;
const resource = (connection: string, replica?: string): ResourceSpec => ({ name: 'db', type: 'postgres', connection, replica: replica ?? null, options: {} });

before(async () => {
  admin = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: 'postgres' });
  try {
    await admin.connect();
  } catch (err) {
    throw new Error(`PostgreSQL is not reachable at ${HOST}:${PORT} as user postgres (these tests need the real server): ${(err as Error).message}`);
  }
  root = await mkdtemp(join(tmpdir(), 'bv-pg-'));
});

after(async () => {
  if (admin) {
    const dbs = await admin.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE $1`, [`${PREFIX}%`]);
    for (const { datname } of dbs.rows) await admin.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
    const roles = await admin.query<{ rolname: string }>(`SELECT rolname FROM pg_roles WHERE rolname LIKE $1`, [`${PREFIX}%`]);
    for (const { rolname } of roles.rows) await admin.query(`DROP ROLE IF EXISTS "${rolname}"`);
    await admin.end();
  }
  if (root) await rm(root, { recursive: true, force: true });
});

function dbName(tag: string): string {
  return `${PREFIX}${n++}_${tag}`;
}

async function createDb(tag: string, sql = ''): Promise<string> {
  const name = dbName(tag);
  await admin.query(`CREATE DATABASE "${name}" TEMPLATE template0`);
  if (sql) await withDb(name, (c) => c.query(sql));
  return name;
}

async function withDb<T>(db: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: db });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

const workDir = () => join(root, `w${n++}`);

async function dumpOf(conn: string, opts: { selection?: string[] | null; exclude?: string[]; replica?: string; useReplica?: boolean } = {}): Promise<DumpOutput> {
  return engine.dump({
    resource: resource(conn, opts.replica),
    selection: opts.selection ?? null,
    exclude: opts.exclude ?? [],
    useReplica: opts.useReplica ?? false,
    workDir: workDir(),
    signal: never,
  });
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A backup as the service makes one: the dump stream zstd-compressed, held here in memory (test databases are small). */
async function backup(db: string, opts: Parameters<typeof dumpOf>[1] = {}): Promise<{ zst: Buffer; info: DumpInfo }> {
  const out = await dumpOf(url(db), opts);
  const zst = await collect(out.stream.pipe(compressor('zstd')));
  return { zst, info: await out.info };
}

function restoreFrom(
  zst: Buffer,
  target: string,
  expected: ObjectCounts,
  over: Partial<RestoreRequest> = {},
): Promise<RestoreReport> {
  return engine.restore({
    target: resource(url(target)),
    input: Readable.from([zst]).pipe(decompressor('zstd', 'test artifact')),
    expected,
    mode: 'new_target',
    partial: false,
    workDir: workDir(),
    signal: never,
    ...over,
  });
}

async function exists(db: string): Promise<boolean> {
  return ((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [db])).rowCount ?? 0) > 0;
}

async function tablesOf(db: string): Promise<string[]> {
  return withDb(db, async (c) =>
    (
      await c.query<{ t: string }>(
        `SELECT table_schema || '.' || table_name AS t FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE' ORDER BY 1`,
      )
    ).rows.map((r) => r.t),
  );
}

async function scalar(db: string, sql: string): Promise<unknown> {
  return withDb(db, async (c) => Object.values((await c.query(sql)).rows[0] ?? {})[0]);
}

/** Everything a database holds, in a comparable form: catalog listings object by object, then every table's rows as text. */
async function snapshot(db: string): Promise<Record<string, unknown>> {
  return withDb(db, async (c) => {
    const q = async (sql: string) => (await c.query(sql)).rows;
    const user = `NOT IN ('pg_catalog', 'information_schema', 'pg_toast')`;
    const out: Record<string, unknown> = {
      tables: await q(`SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_schema ${user} ORDER BY 1, 2`),
      columns: await q(
        `SELECT table_schema, table_name, column_name, ordinal_position, data_type, udt_schema, udt_name, is_nullable, column_default, is_identity
           FROM information_schema.columns WHERE table_schema ${user} ORDER BY 1, 2, 4`,
      ),
      views: await q(`SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname ${user} ORDER BY 1, 2`),
      matviews: await q(`SELECT schemaname, matviewname, definition, ispopulated FROM pg_matviews ORDER BY 1, 2`),
      functions: await q(
        `SELECT n.nspname, p.proname, pg_get_functiondef(p.oid) AS def FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname ${user} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1, 2, 3`,
      ),
      triggers: await q(`SELECT tgrelid::regclass::text AS rel, tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2`),
      sequences: await q(`SELECT schemaname, sequencename, last_value, start_value, increment_by FROM pg_sequences ORDER BY 1, 2`),
      indexes: await q(`SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes WHERE schemaname ${user} ORDER BY 1, 2, 3`),
      constraints: await q(
        `SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
          WHERE connamespace::regnamespace::text ${user} ORDER BY 1, 2`,
      ),
      comments: await q(
        `SELECT (pg_identify_object(classoid, objoid, objsubid)).type, (pg_identify_object(classoid, objoid, objsubid)).identity, description
           FROM pg_description WHERE objoid >= 16384 ORDER BY 1, 2`,
      ),
      types: await q(
        `SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text AS labels FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1`,
      ),
      schemas: await q(`SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' ORDER BY 1`),
      extensions: await q(`SELECT extname, extversion FROM pg_extension ORDER BY 1`),
      largeObjects: await q(`SELECT oid::text, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid`),
    };
    const rels = await q(
      `SELECT format('%I.%I', n.nspname, c.relname) AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND n.nspname ${user} ORDER BY 1`,
    );
    const rows: Record<string, string[]> = {};
    for (const { rel } of rels) rows[rel] = (await q(`SELECT x::text AS row FROM ${rel} x ORDER BY 1`)).map((r) => r.row);
    out.rows = rows;
    return out;
  });
}

const FIDELITY_SQL = (ext: string[]) => `
  ${ext.map((e) => `CREATE EXTENSION "${e}";`).join('\n')}
  CREATE SCHEMA app;
  CREATE SCHEMA "ünï";
  COMMENT ON SCHEMA app IS 'the application';
  CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
  CREATE SEQUENCE app.counter START 7 INCREMENT 3;
  SELECT setval('app.counter', 4242);
  CREATE TABLE app.things (
    id serial PRIMARY KEY,
    n numeric(40, 12), t text, b bytea, j json, jb jsonb, arr int[], tags text[],
    r int4range, span tstzrange, m app.mood, u uuid, ts timestamptz, f float8, big bigint
    ${ext.includes('hstore') ? ', h hstore' : ''}
  );
  COMMENT ON TABLE app.things IS 'things ✓';
  COMMENT ON COLUMN app.things.t IS 'free text';
  CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    NEW.ts := coalesce(NEW.ts, '2020-01-01 00:00:00+00');
    RETURN NEW;
  END $$;
  COMMENT ON FUNCTION app.touch() IS 'fills ts';
  CREATE TRIGGER things_touch BEFORE INSERT ON app.things FOR EACH ROW EXECUTE FUNCTION app.touch();
  INSERT INTO app.things (n, t, b, j, jb, arr, tags, r, span, m, u, ts, f, big ${ext.includes('hstore') ? ', h' : ''})
  SELECT i * 12345.678901234567, 'row ' || i || E' Zoë 日本語 🙂 tab\\t nl\\n back\\\\slash ''q'' "dq"',
         decode(md5(i::text), 'hex'), json_build_object('i', i, 'arr', json_build_array(i, 'x')),
         jsonb_build_object('k', i, 'nested', jsonb_build_object('ü', true)), ARRAY[i, i + 1, NULL], ARRAY['a', 'b c', '"q"'],
         int4range(i, i + 10), tstzrange('2024-01-01'::timestamptz + i * interval '1 hour', NULL),
         (ARRAY['sad', 'ok', 'happy']::app.mood[])[1 + i % 3], md5(i::text)::uuid,
         CASE WHEN i % 5 = 0 THEN NULL ELSE '2024-02-29 12:34:56.789+05:30'::timestamptz + i * interval '1 day' END,
         i / 7.0, 9007199254740993 + i
         ${ext.includes('hstore') ? `, hstore('k' || i, 'v')` : ''}
    FROM generate_series(1, 300) i;
  INSERT INTO app.things (t) VALUES (NULL), ('');
  CREATE VIEW app.happy AS SELECT id, t FROM app.things WHERE m = 'happy';
  COMMENT ON VIEW app.happy IS 'only happy';
  CREATE MATERIALIZED VIEW app.summary AS SELECT m, count(*) AS c FROM app.things GROUP BY m;
  CREATE TABLE public."Weird Name" ("Mixed Col" text PRIMARY KEY, "ünï col" int);
  INSERT INTO public."Weird Name" VALUES ('A', 1), ('b', 2), ('ç', NULL);
  CREATE TABLE "ünï"."tâble" (id int PRIMARY KEY, v text, w text REFERENCES public."Weird Name");
  INSERT INTO "ünï"."tâble" VALUES (1, 'één', 'A'), (2, '二', 'b');
  CREATE TABLE app.files (name text PRIMARY KEY, data oid);
  INSERT INTO app.files VALUES ('blob', lo_from_bytea(0, '\\xdeadbeef00ff'::bytea));
  CREATE TABLE app.empty (x int);
  ${ext.includes('pgcrypto') ? `CREATE TABLE app.hashed AS SELECT i, digest(i::text, 'sha256') AS d FROM generate_series(1, 5) i;` : ''}
`;

describe('postgres engine', () => {
  it('checks connection URLs without revealing passwords', () => {
    engine.checkConnection('postgres://u:p@db.example:5433/app', {});
    engine.checkConnection('postgresql://u@%2Fvar%2Frun%2Fpostgresql/app?sslmode=require', {});
    engine.checkConnection('postgres://u:p@[::1]:5432/app', {});
    for (const bad of ['', 'mysql://u:hunter2@h/db', 'postgres://u:hunter2@h:99999/db', 'postgres://u:hunter2@h/', 'postgres://u:hunter2@h/db?foo=1', 'not a url hunter2']) {
      assert.throws(
        () => engine.checkConnection(bad, {}),
        (e: any) => isErrorCode(e, 'invalid_connection') && !e.message.includes('hunter2'),
        bad,
      );
    }
  });

  it('translates name patterns like pg_dump does', () => {
    assert.deepEqual(patternRegex('public.users'), { schema: 'public', name: 'users' });
    assert.deepEqual(patternRegex('Users*'), { schema: null, name: 'users.*' });
    assert.deepEqual(patternRegex('"My.Schema"."A""b?"'), { schema: 'My\\.Schema', name: 'A"b\\?' });
    assert.deepEqual(splitGucList('"$user", public, "a ""b"""'), ['$user', 'public', 'a "b"']);
  });

  it('fails before starting when no pg_dump is new enough, naming the package', async () => {
    await assert.rejects(findTool('pg_dump', majorKey('99')!), (e: any) => {
      assert.equal(e.code, 'tool_missing');
      assert.match(e.message, /pg_dump 99 or newer/);
      assert.match(e.message, /postgresql-client-99/);
      return true;
    });
    const found = await findTool('pg_restore', majorKey(150000)!);
    assert.equal(majorKey('9.6.24'), 90600);
    assert.equal(majorKey(90624), 90600);
    assert.match(found.version, /PostgreSQL\) 1[5-9]/);
  });

  it('round-trips a database object by object and row by row', async () => {
    const available = (await admin.query<{ name: string }>(`SELECT name FROM pg_available_extensions WHERE name IN ('pgcrypto', 'hstore')`)).rows.map((r) => r.name);
    // Extensions are optional on a server; only the parts that need a missing one are skipped.
    const src = await createDb('fid_src', FIDELITY_SQL(available));
    await withDb(src, (c) => c.query(`CREATE TABLE app.later (x int); INSERT INTO app.later SELECT generate_series(1, 10); SELECT nextval('app.things_id_seq')`));
    const before = await snapshot(src);

    const out = await dumpOf(url(src));
    assert.equal(out.artifactBase, 'database.pgdump');
    const dst = dbName('fid_dst');
    // Dump piped straight into the restore, through the compression the service uses.
    const restoring = engine.restore({
      target: resource(url(dst)),
      input: out.stream.pipe(compressor('zstd')).pipe(decompressor('zstd', 'test')),
      expected: {},
      mode: 'new_target',
      partial: false,
      workDir: workDir(),
      signal: never,
    });
    const [report, info] = await Promise.all([restoring, out.info]);
    assert.match(info.serverVersion ?? '', /^\d+/);
    assert.match(info.toolVersion ?? '', /pg_dump \(PostgreSQL\) \d+/);
    assert.equal(info.counts.tables?.['app.things'], 302);
    assert.equal(info.counts.tables?.['public.Weird Name'], 3);
    assert.equal(info.counts.tables?.['ünï.tâble'], 2);
    assert.equal(info.counts.tables?.['app.empty'], 0);
    assert.equal(info.counts.tables?.['app.later'], 10);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);

    const afterRestore = await snapshot(dst);
    assert.deepEqual(afterRestore, before);
    // The pieces the comparison must have covered, so an empty listing cannot pass.
    assert.ok((before.largeObjects as unknown[]).length === 1);
    assert.ok((before.triggers as unknown[]).length === 1);
    assert.deepEqual((before.sequences as any[]).find((s) => s.sequencename === 'counter').last_value, '4242');
    if (available.length) assert.ok((before.extensions as any[]).some((e) => available.includes(e.extname)));
    assert.ok((before.comments as unknown[]).length >= 5);

    const objects = await engine.listObjects(resource(url(src)));
    assert.ok(objects.some((o) => o.name === 'schema:app' && o.kind === 'schema'));
    assert.ok(objects.some((o) => o.name === 'schema:ünï' && o.kind === 'schema'));
    assert.ok(objects.some((o) => o.name === 'app.things' && o.kind === 'table'));
    assert.ok(objects.some((o) => o.name === 'public.Weird Name' && o.kind === 'table'));
    assert.ok(objects.some((o) => o.name === 'app.happy' && o.kind === 'view'));
    assert.ok(!objects.some((o) => o.name.startsWith('pg_catalog.')));
    await withDb(src, (c) => c.query('ANALYZE'));
    const analyzed = await engine.listObjects(resource(url(src)));
    assert.equal(analyzed.find((o) => o.name === 'app.things')?.size, 302);
  });

  it('takes a consistent backup while money keeps moving', async () => {
    const src = await createDb(
      'money',
      `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, transfers int NOT NULL DEFAULT 0);
       INSERT INTO accounts (id, balance) SELECT i, 1000 FROM generate_series(1, 100) i;
       CREATE TABLE ledger (id bigserial PRIMARY KEY, src int, dst int, amount int);
       CREATE TABLE filler AS SELECT i, repeat(md5(i::text), 8) AS pad FROM generate_series(1, 20000) i;`,
    );
    const mover = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: src });
    await mover.connect();
    let moving = true;
    let moved = 0;
    const moving$ = (async () => {
      while (moving) {
        const a = 1 + Math.floor(Math.random() * 100);
        const b = 1 + ((a + Math.floor(Math.random() * 98)) % 100);
        const amt = 1 + Math.floor(Math.random() * 50);
        await mover.query('BEGIN');
        await mover.query('UPDATE accounts SET balance = balance - $2, transfers = transfers + 1 WHERE id = $1', [a, amt]);
        await mover.query('INSERT INTO ledger (src, dst, amount) VALUES ($1, $2, $3)', [a, b, amt]);
        await mover.query('UPDATE accounts SET balance = balance + $2 WHERE id = $1', [b, amt]);
        await mover.query('COMMIT');
        moved++;
      }
    })();
    try {
      while (moved < 20) await new Promise((r) => setTimeout(r, 5));
      const out = await dumpOf(url(src));
      // A slow reader keeps pg_dump running while transfers go on.
      const slow = new Transform({
        transform(chunk, _e, cb) {
          setTimeout(() => cb(null, chunk), 15);
        },
      });
      const startMoved = moved;
      const zst = await collect(out.stream.pipe(slow).pipe(compressor('zstd')));
      const info = await out.info;
      assert.ok(moved > startMoved + 5, `transfers ran during the dump (${moved - startMoved})`);
      moving = false;
      await moving$;
      const dst = dbName('money_dst');
      const report = await restoreFrom(zst, dst, info.counts);
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.equal(await scalar(dst, 'SELECT sum(balance)::int FROM accounts'), 100_000);
      // Both tables come from one instant: every ledger row has its transfer counted.
      assert.equal(await scalar(dst, 'SELECT sum(transfers)::int FROM accounts'), await scalar(dst, 'SELECT count(*)::int FROM ledger'));
      assert.equal(report.counts.tables?.['public.ledger'], await scalar(dst, 'SELECT count(*)::int FROM ledger'));
      assert.ok((report.counts.tables?.['public.ledger'] ?? 0) < (await scalar(src, 'SELECT count(*)::int FROM ledger') as number));
    } finally {
      moving = false;
      await moving$.catch(() => {});
      await mover.end();
    }
  });

  describe('partial backups', () => {
    const PARTIAL_SQL = `
      CREATE TABLE users (id serial PRIMARY KEY, name text);
      INSERT INTO users (name) SELECT 'u' || i FROM generate_series(1, 20) i;
      CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users, title text);
      INSERT INTO posts (user_id, title) SELECT 1 + i % 20, 'p' || i FROM generate_series(1, 50) i;
      CREATE TABLE audit (id serial PRIMARY KEY, what text);
      INSERT INTO audit (what) SELECT 'a' || i FROM generate_series(1, 30) i;
      CREATE TABLE "Mixed Case" (x int);
      INSERT INTO "Mixed Case" VALUES (1), (2);
      CREATE SCHEMA app;
      CREATE TYPE app.color AS ENUM ('red', 'green');
      CREATE TABLE app.items (id int PRIMARY KEY, c app.color);
      INSERT INTO app.items VALUES (1, 'red'), (2, 'green'), (3, 'red');
      CREATE FUNCTION app.double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
      CREATE SCHEMA other;
      CREATE TABLE other.x (v int);
      INSERT INTO other.x VALUES (1);
    `;
    let src: string;
    before(async () => {
      src = await createDb('part_src', PARTIAL_SQL);
    });

    it('takes only the selected tables', async () => {
      const { zst, info } = await backup(src, { selection: ['users', 'public.Mixed Case'] });
      assert.deepEqual(Object.keys(info.counts.tables!).sort(), ['public.Mixed Case', 'public.users']);
      const dst = dbName('part_t');
      const report = await restoreFrom(zst, dst, info.counts);
      assert.deepEqual(report.counts, info.counts);
      assert.deepEqual(await tablesOf(dst), ['public.Mixed Case', 'public.users']);
      assert.equal(await scalar(dst, 'SELECT count(*)::int FROM users'), 20);
    });

    it('takes a whole schema with schema:', async () => {
      const { zst, info } = await backup(src, { selection: ['schema:app'] });
      assert.deepEqual(info.counts.tables, { 'app.items': 3 });
      const dst = dbName('part_s');
      await restoreFrom(zst, dst, info.counts);
      assert.deepEqual(await tablesOf(dst), ['app.items']);
      assert.equal(await scalar(dst, 'SELECT app.double(21)'), 42);
    });

    it('takes patterns, and tables plus a schema together (with a warning)', async () => {
      const { info } = await backup(src, { selection: ['po*'] });
      assert.deepEqual(Object.keys(info.counts.tables!), ['public.posts']);
      const mixed = await backup(src, { selection: ['public.users', 'schema:other'] });
      assert.deepEqual(Object.keys(mixed.info.counts.tables!).sort(), ['other.x', 'public.users']);
      assert.ok(mixed.info.warnings.some((w) => w.includes('schema:other')));
    });

    it('excludes tables, and only the data of data: tables', async () => {
      const { zst, info } = await backup(src, { exclude: ['posts', 'data:audit', 'schema:other', 'nothing_like_this'] });
      assert.ok(!('public.posts' in info.counts.tables!));
      // A table whose rows are excluded is not counted, at dump time or after a restore.
      assert.ok(!('public.audit' in info.counts.tables!));
      assert.equal(info.counts.tables!['public.users'], 20);
      assert.ok(info.warnings.some((w) => w.includes('nothing_like_this')));
      const dst = dbName('part_x');
      const report = await restoreFrom(zst, dst, info.counts);
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.deepEqual(await tablesOf(dst), ['app.items', 'public.Mixed Case', 'public.audit', 'public.users']);
      assert.equal(await scalar(dst, 'SELECT count(*)::int FROM audit'), 0);
    });

    it('refuses a selection naming what does not exist', async () => {
      for (const selection of [['nope'], ['users', 'schema:nowhere'], ['public.nope*']]) {
        await assert.rejects(dumpOf(url(src), { selection }), (e: any) => {
          assert.equal(e.code, 'invalid_selection');
          assert.ok(e.message.includes(selection.at(-1)!.replace('schema:', '')), e.message);
          return true;
        });
      }
    });

    it('restores in place only the backed-up tables, keeping data-excluded rows', async () => {
      const db = await createDb('part_ip', PARTIAL_SQL);
      const { zst, info } = await backup(db, { selection: ['users', 'audit'], exclude: ['data:audit'] });
      assert.deepEqual(Object.keys(info.counts.tables!), ['public.users']);
      await withDb(db, (c) =>
        c.query(`INSERT INTO users (name) VALUES ('new'); INSERT INTO posts (user_id, title) VALUES (21, 'new post');
                 INSERT INTO audit (what) VALUES ('later'); CREATE TABLE newer (x int)`),
      );
      // posts references users: its foreign key would stop users from being dropped, as it should.
      await assert.rejects(restoreFrom(zst, db, info.counts, { mode: 'in_place', partial: true }), (e: any) => {
        assert.equal(e.code, 'engine_failed');
        assert.match(e.message, /users/);
        return true;
      });
      assert.equal(await scalar(db, 'SELECT count(*)::int FROM users'), 21, 'a failed restore changes nothing');
      await withDb(db, (c) => c.query(`ALTER TABLE posts DROP CONSTRAINT posts_user_id_fkey`));

      const report = await restoreFrom(zst, db, info.counts, { mode: 'in_place', partial: true });
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      assert.equal(await scalar(db, 'SELECT count(*)::int FROM users'), 20);
      assert.equal(await scalar(db, 'SELECT count(*)::int FROM posts'), 51, 'tables not in the backup are left alone');
      assert.equal(await scalar(db, 'SELECT count(*)::int FROM audit'), 31, 'rows the backup does not hold are kept');
      assert.equal(await scalar(db, `SELECT last_value::int FROM pg_sequences WHERE sequencename = 'audit_id_seq'`), 31);
      assert.ok((await tablesOf(db)).includes('public.newer'));
      assert.ok(report.warnings.some((w) => w.includes('public.audit')));
    });
  });

  it('restores a full backup in place: later objects are gone, the database keeps its settings', async () => {
    const db = await createDb('inplace', `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;`);
    await admin.query(`COMMENT ON DATABASE "${db}" IS 'keep me'`);
    await admin.query(`ALTER DATABASE "${db}" SET search_path = "$user", public, "Other Schema"`);
    await admin.query(`ALTER DATABASE "${db}" SET work_mem = '7MB'`);
    await admin.query(`REVOKE ALL ON DATABASE "${db}" FROM PUBLIC; GRANT CONNECT ON DATABASE "${db}" TO pg_read_all_data WITH GRANT OPTION`);
    const dbProps = `SELECT datacl::text, pg_get_userbyid(datdba) AS owner, encoding, datcollate, datctype, datconnlimit FROM pg_database WHERE datname = $1`;
    const propsBefore = (await admin.query(dbProps, [db])).rows;
    const { zst, info } = await backup(db);
    await withDb(db, (c) => c.query(`CREATE TABLE extra (x int); DELETE FROM t WHERE id > 50; UPDATE t SET v = 'changed'`));
    const session = new pg.Client({ host: HOST, port: PORT, user: 'postgres', database: db });
    session.on('error', () => {});
    await session.connect();

    const report = await restoreFrom(zst, db, info.counts, { mode: 'in_place' });
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.deepEqual(await tablesOf(db), ['public.t']);
    assert.equal(await scalar(db, `SELECT count(*)::int FROM t WHERE v <> 'changed'`), 100);
    assert.equal(await scalar(db, `SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()`), 'keep me');
    assert.equal(await scalar(db, 'SHOW work_mem'), '7MB');
    assert.equal(await scalar(db, 'SHOW search_path'), '"$user", public, "Other Schema"');
    assert.deepEqual((await admin.query(dbProps, [db])).rows, propsBefore);
    await assert.rejects(session.query('SELECT 1'), 'sessions on the replaced database were ended');
    await session.end().catch(() => {});
    const leftovers = await admin.query(`SELECT datname FROM pg_database WHERE datname LIKE $1`, [`${db}_%`]);
    assert.deepEqual(leftovers.rows, []);
  });

  it('takes the stored artifact as it is (decode): checked and decompressed into its spool by a codec worker; damage changes nothing', async () => {
    assert.deepEqual(engine.decodes, ['zstd', 'none']);
    const db = await createDb('stored', `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 3000) i;`);
    const { zst, info } = await backup(db);
    const sha256 = createHash('sha256').update(zst).digest('hex');
    const decode = { compression: 'zstd' as const, sha256, size: zst.length, label: 'artifact resources/db/database.pgdump.zst' };
    const copy = `${db}_copy`;
    const fromStored = (bytes: Buffer, target: string, mode: 'new_target' | 'in_place') =>
      engine.restore({ target: resource(url(target)), input: Readable.from([bytes]), expected: info.counts, mode, partial: false, decode, workDir: workDir(), signal: never });
    const report = await fromStored(zst, copy, 'new_target');
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.equal(await scalar(copy, 'SELECT count(*)::int FROM t'), 3000);
    assert.deepEqual(Object.keys(report.phases ?? {}), ['spool', 'create_staging', 'pg_restore', 'count', 'swap']);

    await withDb(db, (c) => c.query(`DELETE FROM t WHERE id > 10`));
    const before = await snapshot(db);
    const flipped = Buffer.from(zst);
    flipped[flipped.length >> 1]! ^= 0xff;
    for (const bad of [flipped, zst.subarray(0, zst.length - 7), Buffer.concat([zst, Buffer.from('x')])]) {
      await assert.rejects(fromStored(bad, db, 'in_place'), (e: any) => isErrorCode(e, 'checksum_mismatch') && e.message.includes(decode.label));
      assert.deepEqual(await snapshot(db), before);
    }
    await admin.query(`DROP DATABASE IF EXISTS ${copy} WITH (FORCE)`);
  });

  it('fails on a damaged artifact and leaves the target unchanged', async () => {
    const db = await createDb('corrupt', `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 5000) i;`);
    const { zst, info } = await backup(db);
    await withDb(db, (c) => c.query(`CREATE TABLE after_backup (x int)`));
    const beforeRestore = await snapshot(db);

    const flipped = Buffer.from(zst);
    for (let i = 0; i < 16; i++) flipped[Math.floor(flipped.length / 2) + i]! ^= 0xff;
    await assert.rejects(restoreFrom(flipped, db, info.counts, { mode: 'in_place' }), (e: any) => ['checksum_mismatch', 'engine_failed'].includes(e.code));
    assert.deepEqual(await snapshot(db), beforeRestore);

    // Damage zstd cannot see: the archive itself cut short.
    const raw = await collect(Readable.from([zst]).pipe(decompressor('zstd', 'test')));
    const cut = await collect(Readable.from([raw.subarray(0, Math.floor(raw.length * 0.6))]).pipe(compressor('zstd')));
    await assert.rejects(restoreFrom(cut, db, info.counts, { mode: 'in_place' }), (e: any) => {
      assert.equal(e.code, 'engine_failed');
      assert.match(e.message, /pg_restore/);
      return true;
    });
    assert.deepEqual(await snapshot(db), beforeRestore);
    const garbage = Buffer.from(raw);
    garbage.write('XXXXX', 0);
    await assert.rejects(restoreFrom(await collect(Readable.from([garbage]).pipe(compressor('zstd'))), db, info.counts, { mode: 'in_place' }), (e: any) =>
      isErrorCode(e, 'engine_failed'),
    );
    assert.deepEqual(await snapshot(db), beforeRestore);
    const leftovers = await admin.query(`SELECT datname FROM pg_database WHERE datname LIKE $1`, [`${db}_%`]);
    assert.deepEqual(leftovers.rows, []);
    assert.deepEqual(await readdir(root).then(async (dirs) => (await Promise.all(dirs.map((d) => readdir(join(root, d)).catch(() => [])))).flat().filter((f) => f.endsWith('.pgdump'))), []);
  });

  it('dumps from the replica when asked, and only from it', async () => {
    const db = await createDb('replica', `CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3);`);
    // The primary URL points at a port where nothing listens: only the replica can serve the dump.
    const primary = url(db, 'postgres', HOST, 1);
    const replica = url(db, 'postgres', 'localhost', PORT);
    const out = await dumpOf(primary, { replica, useReplica: true });
    await collect(out.stream);
    assert.deepEqual((await out.info).counts.tables, { 'public.t': 3 });
    await assert.rejects(dumpOf(primary, { replica, useReplica: false }), (e: any) => e.code === 'engine_failed' && /127\.0\.0\.1:1\b/.test(e.message));
  });

  it('keeps passwords out of argv and error messages', async () => {
    const role = `${PREFIX}role_${randomBytes(3).toString('hex')}`;
    const secret = `S3cret-${randomBytes(8).toString('hex')}`;
    await admin.query(`CREATE ROLE "${role}" LOGIN CREATEDB PASSWORD '${secret}'`);
    const db = dbName('pw');
    await admin.query(`CREATE DATABASE "${db}" OWNER "${role}" TEMPLATE template0`);
    await withDb(db, (c) => c.query(`SET ROLE "${role}"; CREATE TABLE t AS SELECT i, repeat(md5(i::text), 20) AS pad FROM generate_series(1, 5000) i;`));
    const auth = `${encodeURIComponent(role)}:${secret}`;

    let polling = true;
    let seenTools = 0;
    const leaks: string[] = [];
    const poll = (async () => {
      while (polling) {
        for (const pid of await readdir('/proc').catch(() => [] as string[])) {
          if (!/^\d+$/.test(pid)) continue;
          const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
          if (/pg_dump|pg_restore/.test(cmd)) seenTools++;
          if (cmd.includes(secret)) leaks.push(cmd.replace(/\0/g, ' '));
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    try {
      const out = await dumpOf(url(db, auth));
      const slow = new Transform({
        transform(chunk, _e, cb) {
          setTimeout(() => cb(null, chunk), 20);
        },
      });
      const zst = await collect(out.stream.pipe(slow).pipe(compressor('zstd')));
      const info = await out.info;
      const dst = dbName('pw_dst');
      const report = await engine.restore({
        target: resource(url(dst, auth)),
        input: Readable.from([zst]).pipe(decompressor('zstd', 'test')),
        expected: info.counts,
        mode: 'new_target',
        partial: false,
        workDir: workDir(),
        signal: never,
      });
      assert.deepEqual(report.counts, info.counts);
    } finally {
      polling = false;
      await poll;
    }
    assert.ok(seenTools > 0, 'the poller saw pg_dump or pg_restore running');
    assert.deepEqual(leaks, []);

    const failures = [
      () => dumpOf(url(db, auth, HOST, 1)),
      () => engine.listObjects(resource(url(`${PREFIX}missing`, auth))),
      () => restoreFrom(Buffer.alloc(0), `${PREFIX}missing`, {}, { target: resource(url(`${PREFIX}missing`, auth, HOST, 1)) }),
      () => dumpOf(url(db, auth), { selection: ['no_such_table'] }),
    ];
    for (const f of failures) {
      await assert.rejects(f(), (e: any) => {
        assert.ok(!String(e.message).includes(secret), e.message);
        assert.ok(!JSON.stringify(e.details ?? {}).includes(secret));
        return true;
      });
    }
  });

  it('fails the dump stream with pg_dump\'s own message', async () => {
    const role = `${PREFIX}weak_${randomBytes(3).toString('hex')}`;
    await admin.query(`CREATE ROLE "${role}" LOGIN`);
    const db = dbName('denied');
    await admin.query(`CREATE DATABASE "${db}" OWNER "${role}" TEMPLATE template0`);
    // A table the dumping role may not read: pg_dump stops with "permission denied".
    await withDb(db, (c) => c.query(`CREATE TABLE secret (x int); REVOKE ALL ON secret FROM PUBLIC`));
    const out = await dumpOf(url(db, encodeURIComponent(role)));
    await assert.rejects(collect(out.stream), (e: any) => e.code === 'engine_failed' && /permission denied/.test(e.message));
    await assert.rejects(out.info, (e: any) => e.code === 'engine_failed' && /permission denied/.test(e.message));
  });

  it('gives a scratch database that the restore creates and cleanup drops', async () => {
    const db = await createDb('scratch_src', `CREATE TABLE t (x int); INSERT INTO t VALUES (1);`);
    const { zst, info } = await backup(db);
    const scratch = await engine.scratchTarget(resource(url(db)), workDir());
    const name = decodeURIComponent(new URL(scratch.connection).pathname.slice(1));
    try {
      const report = await engine.restore({
        target: resource(scratch.connection),
        input: Readable.from([zst]).pipe(decompressor('zstd', 'test')),
        expected: info.counts,
        mode: 'new_target',
        partial: false,
        workDir: workDir(),
        signal: never,
      });
      assert.deepEqual(report.counts, info.counts);
      assert.ok(await exists(name));
    } finally {
      await scratch.cleanup();
      await scratch.cleanup();
    }
    assert.equal(await exists(name), false);
  });

  it('stops pg_dump when cancelled', async () => {
    const db = await createDb('cancel', `CREATE TABLE t AS SELECT i, repeat('x', 500) AS pad FROM generate_series(1, 20000) i;`);
    const ac = new AbortController();
    const out = await engine.dump({ resource: resource(url(db)), selection: null, exclude: [], useReplica: false, workDir: workDir(), signal: ac.signal });
    const reading = (async () => {
      for await (const _ of out.stream) await new Promise((r) => setTimeout(r, 20));
    })();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(reading);
    await assert.rejects(out.info, (e: any) => e.code === 'cancelled');
    const still = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [db]);
    for (let i = 0; i < 50 && still.rows[0].n > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      still.rows[0].n = (await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1`, [db])).rows[0].n;
    }
    assert.equal(still.rows[0].n, 0, 'no session of the dump is left');
  });
});
