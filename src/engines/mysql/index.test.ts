// Round trips against the real MariaDB on 127.0.0.1:3306 (root, no password).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import mysql from 'mysql2/promise';
import { compareCounts } from '../../domain/counts.ts';
import type { ObjectCounts, ResourceSpec } from '../../domain/types.ts';
import { AppError, isErrorCode } from '../../errors/index.ts';
import type { DumpInfo } from '../engine.ts';
import { mysqlEngine } from './index.ts';

const HOST = '127.0.0.1';
const PORT = 3306;
const never = new AbortController().signal;

let admin: mysql.Connection;
let work: string;
const databases: string[] = [];
const users: string[] = [];

async function open(database?: string): Promise<mysql.Connection> {
  return mysql.createConnection({
    host: HOST,
    port: PORT,
    user: 'root',
    database,
    charset: 'UTF8MB4_GENERAL_CI',
    multipleStatements: true,
    dateStrings: true,
    supportBigNumbers: true,
  });
}

before(async () => {
  try {
    admin = await open();
  } catch (err) {
    throw new Error(`MariaDB must run on ${HOST}:${PORT} (user root, no password) for these tests: ${(err as Error).message}`);
  }
  work = await mkdtemp(join(tmpdir(), 'bv-mysql-'));
});

after(async () => {
  if (admin) {
    await admin.query('SET SESSION foreign_key_checks = 0');
    for (const db of databases) await admin.query(`DROP DATABASE IF EXISTS \`${db}\``);
    for (const u of users) await admin.query(`DROP USER IF EXISTS '${u}'@'%'`);
    await admin.end();
  }
  if (work) await rm(work, { recursive: true, force: true });
});

function dbName(): string {
  const name = `bvt_${randomBytes(5).toString('hex')}`;
  databases.push(name);
  return name;
}

async function createDb(sql = ''): Promise<string> {
  const db = dbName();
  await admin.query(`CREATE DATABASE \`${db}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  if (sql) await q(db, sql);
  return db;
}

async function q(db: string, sql: string, values: unknown[] = []): Promise<any[]> {
  const c = await open(db);
  try {
    const [r] = await c.query(sql, values);
    return r as any[];
  } finally {
    await c.end();
  }
}

function url(db: string, user = 'root', password = ''): string {
  return `mysql://${encodeURIComponent(user)}${password ? ':' + encodeURIComponent(password) : ''}@${HOST}:${PORT}/${encodeURIComponent(db)}`;
}

function resource(db: string, user?: string, password?: string): ResourceSpec {
  return { name: 'db', type: 'mysql', connection: url(db, user, password), options: {} };
}

let jobs = 0;
function workDir(): string {
  return join(work, `job${jobs++}`);
}

async function dumpOf(
  res: ResourceSpec,
  opts: { selection?: string[] | null; exclude?: string[]; onChunk?: () => Promise<void> } = {},
): Promise<{ data: Buffer; info: DumpInfo }> {
  const out = await mysqlEngine.dump({ resource: res, selection: opts.selection ?? null, exclude: opts.exclude ?? [], useReplica: false, workDir: workDir(), signal: never });
  assert.equal(out.artifactBase, 'database.sql');
  const chunks: Buffer[] = [];
  for await (const c of out.stream) {
    chunks.push(c as Buffer);
    if (opts.onChunk) await opts.onChunk();
  }
  return { data: Buffer.concat(chunks), info: await out.info };
}

function chunked(data: Buffer, size = 4096): Readable {
  return Readable.from((function* () {
    for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
  })());
}

async function restoreInto(db: string, data: Buffer | Readable, expected: ObjectCounts, mode: 'in_place' | 'new_target', partial: boolean) {
  return mysqlEngine.restore({
    target: resource(db),
    input: Buffer.isBuffer(data) ? chunked(data) : data,
    expected,
    mode,
    partial,
    workDir: workDir(),
    signal: never,
  });
}

/** Everything a database holds, comparable across database names. */
async function snapshot(db: string) {
  const re = new RegExp(`\`${db}\`\\.`, 'g');
  const tables = (await q(db, "SELECT TABLE_NAME AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1", [db])).map((r) => r.n as string);
  const out: Record<string, unknown> = {};
  for (const t of tables) {
    const [create] = await q(db, `SHOW CREATE TABLE \`${t}\``);
    const data = (await q(db, `SELECT * FROM \`${t}\` ORDER BY 1`)).map((row) =>
      Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : v])),
    );
    out[`table ${t}`] = { create: String(create['Create Table']).replace(re, ''), data };
  }
  for (const v of await q(db, 'SELECT TABLE_NAME AS n, VIEW_DEFINITION AS d FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY 1', [db])) {
    out[`view ${v.n}`] = String(v.d).replace(re, '');
  }
  for (const t of await q(
    db,
    'SELECT TRIGGER_NAME AS n, EVENT_OBJECT_TABLE AS t, ACTION_TIMING AS w, EVENT_MANIPULATION AS e, ACTION_STATEMENT AS s FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY 1',
    [db],
  )) {
    out[`trigger ${t.n}`] = [t.t, t.w, t.e, t.s];
  }
  for (const r of await q(db, 'SELECT ROUTINE_NAME AS n, ROUTINE_TYPE AS t, ROUTINE_DEFINITION AS d FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY 1', [db])) {
    out[`routine ${r.n}`] = [r.t, r.d];
  }
  for (const e of await q(db, 'SELECT EVENT_NAME AS n, EVENT_DEFINITION AS d FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY 1', [db])) {
    out[`event ${e.n}`] = e.d;
  }
  return out;
}

async function leftovers(): Promise<string[]> {
  const r = await q('mysql', "SELECT SCHEMA_NAME AS n FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'bvstage\\_%' OR SCHEMA_NAME LIKE 'bvtrash\\_%'");
  return r.map((x) => x.n as string);
}

const FIDELITY = `
CREATE TABLE items (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  body TEXT,
  data BLOB,
  price DECIMAL(14,4),
  big BIGINT UNSIGNED,
  d DATE,
  dt DATETIME(6),
  ts TIMESTAMP NULL DEFAULT NULL,
  doc JSON,
  name_len INT AS (CHAR_LENGTH(name)) STORED,
  name_up VARCHAR(100) AS (UPPER(name)) VIRTUAL,
  KEY by_name (name)
) ENGINE=InnoDB;
CREATE TABLE audit (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  item_id INT,
  note VARCHAR(50),
  CONSTRAINT fk_audit_item FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE
) ENGINE=InnoDB;
CREATE TABLE empty_table (id INT PRIMARY KEY) ENGINE=InnoDB;
CREATE VIEW item_names AS SELECT id, name, name_len FROM items;
CREATE TRIGGER items_ai AFTER INSERT ON items FOR EACH ROW INSERT INTO audit (item_id, note) VALUES (NEW.id, CONCAT('added ', NEW.name));
CREATE PROCEDURE add_item(IN n VARCHAR(100)) BEGIN INSERT INTO items (name) VALUES (n); END;
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM audit WHERE id < 0;
`;

async function fillFidelity(db: string): Promise<void> {
  const blob = Buffer.from([0x00, 0xff, 0x27, 0x5c, 0x22, 0x0a, 0x0d, 0x1a, 0x00, 0x3b, 0x28, 0x29]);
  const rows: unknown[][] = [
    ['emoji 😀 café ñ 日本 𝄞', "it's; a \\ test\n(1),(2);\r\n-- not a comment", blob, '12345678.1234', '18446744073709551615', '2024-02-29', '2024-02-29 23:59:59.123456', '2024-03-01 12:00:00', '{"a": [1, 2, {"b": "😀"}], "c": null}'],
    ['zeros', '', Buffer.alloc(1000, 0), '-0.0001', '0', '1000-01-01', '9999-12-31 23:59:59.999999', '1970-01-02 00:00:01', '[]'],
    ['nulls', null, null, null, null, null, null, null, null],
  ];
  for (const r of rows) await q(db, 'INSERT INTO items (name, body, data, price, big, d, dt, ts, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', r);
  await q(db, "INSERT INTO items (name, data) VALUES ('random', ?)", [randomBytes(60000)]);
  await q(db, 'DELETE FROM items WHERE name = ?', ['zeros']);
  // The counter moves past the largest id and must survive as it is.
  await q(db, 'ALTER TABLE items AUTO_INCREMENT = 1000');
}

describe('mysql engine', () => {
  it('checks connection URLs without connecting and never echoes the password', () => {
    for (const ok of ['mysql://u:p@h/db', 'mariadb://u@h:3307/db', 'mysql://u:p%40x@[::1]:3306/d%20b', 'mysql://u@localhost/db?socket=/run/mysqld/mysqld.sock']) {
      assert.doesNotThrow(() => mysqlEngine.checkConnection(ok, {}), ok);
    }
    for (const bad of ['postgres://u:sekret@h/db', 'mysql://u:sekret@h', 'mysql://u:sekret@h/', 'mysql://:sekret@h/db', 'mysql://u:sekret@h/a/b', 'not a url sekret', '']) {
      assert.throws(
        () => mysqlEngine.checkConnection(bad, {}),
        (err: unknown) => isErrorCode(err, 'invalid_connection') && !(err as AppError).message.includes('sekret'),
        bad,
      );
    }
  });

  it('round-trips types, blobs, generated columns, views, triggers, routines, events and AUTO_INCREMENT', async () => {
    const src = await createDb(FIDELITY);
    await fillFidelity(src);
    const { data, info } = await dumpOf(resource(src));
    assert.deepEqual(info.counts.tables, { audit: 3, empty_table: 0, items: 3 });
    assert.match(info.serverVersion ?? '', /MariaDB|^\d+\.\d+/);
    assert.match(info.toolVersion ?? '', /Distrib|Ver/);
    assert.doesNotMatch(data.toString('latin1'), /CREATE DATABASE|^USE /m);

    const dst = dbName();
    const report = await restoreInto(dst, data, info.counts, 'new_target', false);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.deepEqual(Object.keys(report.phases ?? {}), ['load', 'count', 'swap', 'objects'], 'the steps the restore took, timed, in order');
    assert.deepEqual(await snapshot(dst), await snapshot(src));
    const [ai] = await q('information_schema', 'SELECT AUTO_INCREMENT AS a FROM TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?', [dst, 'items']);
    assert.equal(Number(ai.a), 1000);

    // A new target that exists and holds tables is refused and left as it was.
    const before = await snapshot(dst);
    await assert.rejects(restoreInto(dst, data, info.counts, 'new_target', false), (e: any) => e.code === 'target_not_empty');
    assert.deepEqual(await snapshot(dst), before);

    // The restored objects work: the procedure inserts, the trigger fires, the function answers.
    await q(dst, "CALL add_item('after restore')");
    const [added] = await q(dst, "SELECT id, twice(id) AS t FROM items WHERE name = 'after restore'");
    assert.equal(added.id, 1000);
    assert.equal(Number(added.t), 2000);
    assert.equal((await q(dst, "SELECT COUNT(*) AS n FROM audit WHERE note = 'added after restore'"))[0].n, 1);
    assert.deepEqual(await leftovers(), []);

    // Deterministic: dumping unchanged data twice gives the same bytes.
    const again = await dumpOf(resource(src));
    assert.ok(again.data.equals(data));

    const objects = await mysqlEngine.listObjects(resource(src));
    assert.deepEqual(
      objects.map((o) => `${o.kind} ${o.name}`).sort(),
      ['table audit', 'table empty_table', 'table items', 'view item_names'],
    );
    assert.equal(typeof objects.find((o) => o.name === 'items')?.size, 'number');
  });

  it('counts the snapshot it dumps while money keeps moving between accounts', async () => {
    const src = await createDb(`
      CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
      CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, from_id INT, to_id INT, amount INT) ENGINE=InnoDB;
      CREATE TABLE filler (id INT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(255)) ENGINE=InnoDB;
    `);
    const values = Array.from({ length: 200 }, (_, i) => `(${i + 1}, 1000)`).join(',');
    await q(src, `INSERT INTO accounts VALUES ${values}`);
    await q(src, `INSERT INTO filler (pad) SELECT REPEAT('x', 200) FROM seq_1_to_20000`);

    const writer = await open(src);
    let stop = false;
    let commits = 0;
    const loop = (async () => {
      let k = 0;
      while (!stop) {
        const a = (k * 7) % 200 + 1;
        const b = (k * 13 + 5) % 200 + 1;
        const amount = (k % 50) + 1;
        k++;
        if (a === b) continue;
        await writer.beginTransaction();
        await writer.query('UPDATE accounts SET balance = balance - ? WHERE id = ?', [amount, a]);
        await writer.query('INSERT INTO ledger (from_id, to_id, amount) VALUES (?, ?, ?)', [a, b, amount]);
        await writer.query('UPDATE accounts SET balance = balance + ? WHERE id = ?', [amount, b]);
        await writer.commit();
        commits++;
      }
    })();
    try {
      while (commits < 20) await sleep(5);
      const before = commits;
      // A slow reader keeps the dump open while transfers go on.
      const { data, info } = await dumpOf(resource(src), { onChunk: () => sleep(3) });
      const during = commits - before;
      stop = true;
      await loop;
      assert.ok(during > 0, 'transfers must have committed during the dump');

      const dst = dbName();
      const report = await restoreInto(dst, data, info.counts, 'new_target', false);
      assert.deepEqual(compareCounts(info.counts, report.counts), []);
      const [sum] = await q(dst, 'SELECT SUM(balance) AS s, COUNT(*) AS n FROM accounts');
      assert.equal(Number(sum.s), 200 * 1000);
      assert.equal(info.counts.tables?.filler, 20000);
      const [ledger] = await q(dst, 'SELECT COUNT(*) AS n FROM ledger');
      assert.equal(ledger.n, info.counts.tables?.ledger);
      // Every ledger row of the snapshot matches the balances of the snapshot.
      const [net] = await q(dst, 'SELECT (SELECT SUM(balance) FROM accounts WHERE id = 1) - 1000 + COALESCE((SELECT SUM(amount) FROM ledger WHERE from_id = 1), 0) - COALESCE((SELECT SUM(amount) FROM ledger WHERE to_id = 1), 0) AS d');
      assert.equal(Number(net.d), 0);
    } finally {
      stop = true;
      await loop.catch(() => {});
      await writer.end();
    }
  });

  it('takes a selection or leaves exclusions out, and refuses unknown tables', async () => {
    const src = await createDb(`
      CREATE TABLE a (id INT PRIMARY KEY) ENGINE=InnoDB;
      CREATE TABLE b (id INT PRIMARY KEY, a_id INT, CONSTRAINT fk_b_a FOREIGN KEY (a_id) REFERENCES a (id)) ENGINE=InnoDB;
      CREATE TABLE c (id INT PRIMARY KEY) ENGINE=InnoDB;
      INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (10, 1), (11, 2), (12, NULL); INSERT INTO c VALUES (7);
      CREATE PROCEDURE noop() BEGIN END;
    `);
    const sel = await dumpOf(resource(src), { selection: ['b'] });
    assert.deepEqual(sel.info.counts.tables, { b: 3 });
    assert.doesNotMatch(sel.data.toString(), /CREATE TABLE `a`|PROCEDURE/);

    const exc = await dumpOf(resource(src), { exclude: ['c'] });
    assert.deepEqual(exc.info.counts.tables, { a: 2, b: 3 });
    assert.match(exc.data.toString(), /PROCEDURE `noop`/);

    await assert.rejects(mysqlEngine.dump({ resource: resource(src), selection: ['a', 'nope'], exclude: [], useReplica: false, workDir: workDir(), signal: never }), (err: unknown) =>
      isErrorCode(err, 'invalid_selection') && /nope/.test((err as Error).message),
    );

    // In place, partial: only the backed-up table is replaced, and foreign keys still point at this database.
    await q(src, 'DELETE FROM b; INSERT INTO c VALUES (8); CREATE TABLE d (id INT)');
    const report = await restoreInto(src, sel.data, sel.info.counts, 'in_place', true);
    assert.deepEqual(report.counts, { tables: { b: 3 } });
    assert.equal((await q(src, 'SELECT COUNT(*) AS n FROM b'))[0].n, 3);
    assert.equal((await q(src, 'SELECT COUNT(*) AS n FROM c'))[0].n, 2);
    assert.equal((await q(src, "SELECT COUNT(*) AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'd'", [src]))[0].n, 1);
    const [createB] = await q(src, 'SHOW CREATE TABLE b');
    assert.match(createB['Create Table'], /REFERENCES `a` \(`id`\)/);
    await assert.rejects(q(src, 'INSERT INTO b VALUES (13, 99)'), /foreign key constraint fails/);

    // Replacing only the parent keeps the kept child's key on the new parent.
    const parent = await dumpOf(resource(src), { selection: ['a'] });
    await restoreInto(src, parent.data, parent.info.counts, 'in_place', true);
    const [createB2] = await q(src, 'SHOW CREATE TABLE b');
    assert.match(createB2['Create Table'], /REFERENCES `a` \(`id`\)/);
    await assert.rejects(q(src, 'DELETE FROM a WHERE id = 1'), /foreign key constraint fails/);
    assert.deepEqual(await leftovers(), []);
  });

  it('makes the target equal to a full backup in place', async () => {
    const src = await createDb(FIDELITY);
    await fillFidelity(src);
    const before = await snapshot(src);
    const { data, info } = await dumpOf(resource(src));

    await q(src, `
      CREATE TABLE later (id INT PRIMARY KEY); INSERT INTO later VALUES (1);
      CREATE VIEW later_view AS SELECT 1 AS one;
      CREATE PROCEDURE later_proc() BEGIN END;
      DROP TRIGGER items_ai; DROP VIEW item_names; DROP FUNCTION twice;
      DELETE FROM audit; UPDATE items SET name = 'changed';
    `);
    const report = await restoreInto(src, data, info.counts, 'in_place', false);
    assert.deepEqual(compareCounts(info.counts, report.counts), []);
    assert.deepEqual(await snapshot(src), before);
    assert.deepEqual(await leftovers(), []);
  });

  it('leaves the target unchanged when the input fails at its end, is corrupt or disagrees with its manifest', async () => {
    const src = await createDb(FIDELITY);
    await fillFidelity(src);
    const { data, info } = await dumpOf(resource(src));
    await q(src, "UPDATE items SET name = 'current'; CREATE TABLE later (id INT)");
    const current = await snapshot(src);

    // 1. the checksum fails at the very end of the input
    const failing = Readable.from((async function* () {
      yield data.subarray(0, data.length - 10);
      throw new AppError('checksum_mismatch', 'artifact checksum mismatch');
    })());
    await assert.rejects(restoreInto(src, failing, info.counts, 'in_place', false), (err: unknown) => isErrorCode(err, 'checksum_mismatch'));
    assert.deepEqual(await snapshot(src), current);

    // 2. a statement in the middle is broken: the client's error line is reported
    const text = data.toString('latin1');
    const broken = Buffer.from(text.replace('INSERT INTO `items` VALUES', 'INSERT INTO `items` VALUEZ'), 'latin1');
    await assert.rejects(restoreInto(src, broken, info.counts, 'in_place', false), (err: unknown) => {
      assert.ok(isErrorCode(err, 'engine_failed'), String(err));
      assert.match((err as Error).message, /ERROR 1064 .*at line \d+/);
      assert.match((err as Error).message, /was not changed/);
      return true;
    });
    assert.deepEqual(await snapshot(src), current);

    // 3. the manifest records other counts
    await assert.rejects(restoreInto(src, data, { tables: { ...info.counts.tables, items: 4 } }, 'in_place', false), (err: unknown) => isErrorCode(err, 'verification_failed'));
    assert.deepEqual(await snapshot(src), current);

    // 4. a failed new target is not left behind
    const dst = dbName();
    await assert.rejects(restoreInto(dst, broken, info.counts, 'new_target', false));
    assert.equal((await q('mysql', 'SELECT COUNT(*) AS n FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [dst]))[0].n, 0);
    assert.deepEqual(await leftovers(), []);
  });

  it('never puts the password in argv or in error messages', async () => {
    const src = await createDb('CREATE TABLE big (id INT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(255)) ENGINE=InnoDB');
    await q(src, "INSERT INTO big (pad) SELECT REPEAT('y', 200) FROM seq_1_to_20000");
    const user = `bvu_${randomBytes(4).toString('hex')}`;
    const password = `pw"'\\# ${randomBytes(6).toString('hex')}`;
    users.push(user);
    await admin.query(`CREATE USER ?@'%' IDENTIFIED BY ?`, [user, password]);
    await admin.query(`GRANT ALL PRIVILEGES ON *.* TO ?@'%'`, [user]);
    const res = resource(src, user, password);

    let seenTool = false;
    let optionMode = -1;
    const leaks: string[] = [];
    const poll = async () => {
      for (const pid of await readdir('/proc')) {
        if (!/^\d+$/.test(pid)) continue;
        let cmd: string;
        try {
          cmd = (await readFile(`/proc/${pid}/cmdline`)).toString().replace(/\0/g, ' ');
        } catch {
          continue;
        }
        if (cmd.includes(password) || cmd.includes(encodeURIComponent(password))) leaks.push(cmd);
        const m = /(?:mariadb-dump|mysqldump) --defaults-extra-file=(\S+)/.exec(cmd);
        if (m) {
          seenTool = true;
          try {
            optionMode = (await stat(m[1]!)).mode & 0o777;
          } catch {
            // already removed
          }
        }
      }
    };
    const { info } = await dumpOf(res, { onChunk: async () => { await poll(); await sleep(2); } });
    assert.equal(info.counts.tables?.big, 20000);
    assert.ok(seenTool, 'the dump tool was observed running');
    assert.equal(optionMode, 0o600);
    assert.deepEqual(leaks, []);

    // Failures report the tool's or server's words, never the password.
    const failures = [
      () => mysqlEngine.dump({ resource: resource(`${src}_missing`, user, password), selection: null, exclude: [], useReplica: false, workDir: workDir(), signal: never }),
      () => mysqlEngine.restore({
        target: res,
        input: Readable.from([Buffer.from(`CREATE TABLE x (id INT);\nSELECT '${password.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}' FROM nowhere;\n`)]),
        expected: {},
        mode: 'in_place',
        partial: true,
        workDir: workDir(),
        signal: never,
      }),
      () => mysqlEngine.listObjects(resource(src, user, 'wrong' + password)),
    ];
    for (const f of failures) {
      await assert.rejects(f(), (err: unknown) => {
        assert.ok(err instanceof AppError, String(err));
        assert.ok(!err.message.includes(password), err.message);
        return true;
      });
    }
  });

  it('stops dump and restore when cancelled, leaving nothing behind', async () => {
    const src = await createDb('CREATE TABLE big (id INT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(255)) ENGINE=InnoDB');
    await q(src, "INSERT INTO big (pad) SELECT REPEAT('z', 200) FROM seq_1_to_20000");
    const { data, info: full } = await dumpOf(resource(src));

    const ac = new AbortController();
    const out = await mysqlEngine.dump({ resource: resource(src), selection: null, exclude: [], useReplica: false, workDir: workDir(), signal: ac.signal });
    await assert.rejects(
      (async () => {
        for await (const _ of out.stream) {
          ac.abort();
          await sleep(5);
        }
      })(),
      (err: unknown) => isErrorCode(err, 'cancelled'),
    );
    await assert.rejects(out.info, (err: unknown) => isErrorCode(err, 'cancelled'));

    await q(src, "UPDATE big SET pad = 'current' WHERE id = 1");
    const current = await snapshot(src);
    const ac2 = new AbortController();
    const slow = Readable.from((async function* () {
      yield data.subarray(0, 100000);
      ac2.abort();
      await sleep(50);
      yield data.subarray(100000);
    })());
    await assert.rejects(
      mysqlEngine.restore({ target: resource(src), input: slow, expected: full.counts, mode: 'in_place', partial: false, workDir: workDir(), signal: ac2.signal }),
      (err: unknown) => isErrorCode(err, 'cancelled'),
    );
    assert.deepEqual(await snapshot(src), current);
    assert.deepEqual(await leftovers(), []);
  });

  it('gives and removes a scratch database', async () => {
    const src = await createDb();
    const scratch = await mysqlEngine.scratchTarget(resource(src), workDir());
    const name = decodeURIComponent(new URL(scratch.connection).pathname.slice(1));
    assert.match(name, /^bvscratch_/);
    const exists = async () => (await q('mysql', 'SELECT COUNT(*) AS n FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [name]))[0].n;
    try {
      assert.equal(await exists(), 1);
    } finally {
      await scratch.cleanup();
    }
    await scratch.cleanup();
    assert.equal(await exists(), 0);
  });
});
