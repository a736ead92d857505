import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import type { ObjectCounts, ResourceSpec } from '../../domain/types.ts';
import { compareCounts } from '../../domain/counts.ts';
import { AppError, isErrorCode } from '../../errors/index.ts';
import type { DumpInfo, RestoreReport, RestoreRequest } from '../engine.ts';
import { type PausePoint, sqliteTestHooks } from './control.ts';
import { LATE_CANCEL_WARNING, sqliteEngine } from './index.ts';
import { sqliteWorkerPool } from './offload.ts';

const run = promisify(execFile);
const never = new AbortController().signal;

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bv-sqlite-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let n = 0;
async function freshDir(): Promise<string> {
  return mkdtemp(join(root, `t${n++}-`));
}

function resource(path: string): ResourceSpec {
  return { name: 'db', type: 'sqlite', connection: path, options: {} };
}

function makeDb(path: string): void {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(`
    CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, email TEXT UNIQUE, avatar BLOB);
    CREATE INDEX users_name ON users(name);
    CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), title TEXT, body TEXT);
    CREATE INDEX posts_user ON posts(user_id);
    CREATE TABLE audit (at INTEGER, what TEXT);
    CREATE TABLE kv (k TEXT PRIMARY KEY, v ANY) STRICT, WITHOUT ROWID;
    CREATE TABLE plain (a, b, total AS (a + b));
    CREATE VIEW user_posts AS SELECT u.name, p.title FROM users u JOIN posts p ON p.user_id = u.id;
    CREATE TRIGGER posts_audit AFTER INSERT ON posts BEGIN INSERT INTO audit VALUES (1, 'post ' || new.title); END;
  `);
  const addUser = db.prepare('INSERT INTO users (name, email, avatar) VALUES (?, ?, ?)');
  const addPost = db.prepare('INSERT INTO posts (user_id, title, body) VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 0; i < 300; i++) {
      const r = addUser.run(`user ${i} — Zoë 日本語 🙂`, `u${i}@example.com`, Buffer.from(createHash('sha256').update(String(i)).digest()));
      addPost.run(r.lastInsertRowid, `title ${i}`, 'x'.repeat(i * 10));
    }
    for (let i = 0; i < 50; i++) db.prepare('INSERT INTO kv VALUES (?, ?)').run(`k${i}`, i % 2 ? i : `v${i}`);
    for (let i = 0; i < 20; i++) db.prepare('INSERT INTO plain (a, b) VALUES (?, ?)').run(i, i * 2);
    // A gap in the AUTOINCREMENT sequence and rowids: both must survive.
    db.exec('DELETE FROM posts WHERE user_id = 300; DELETE FROM users WHERE id = 300');
    db.exec('DELETE FROM plain WHERE a = 3');
  })();
  db.close();
}

/** Everything a database holds, in a comparable form: schema, and rows (with rowids) of every table. */
function snapshot(path: string, only?: string[]): Record<string, unknown> {
  const db = new Database(path, { readonly: true });
  try {
    const out: Record<string, unknown> = {};
    const schema = db.prepare(`SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name`).all() as { type: string; name: string; tbl_name: string }[];
    out.schema = schema.filter((s) => !only || only.includes(s.tbl_name));
    for (const s of schema) {
      if (s.type !== 'table' || s.name.startsWith('sqlite_') || (only && !only.includes(s.name))) continue;
      const wr = (db.pragma('table_list') as { name: string; wr: number }[]).find((t) => t.name === s.name)!.wr;
      const q = wr ? `SELECT * FROM "${s.name}" ORDER BY 1` : `SELECT rowid AS __rowid, * FROM "${s.name}" ORDER BY rowid`;
      out[s.name] = (db.prepare(q).all() as Record<string, unknown>[]).map((r) =>
        Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Buffer.isBuffer(v) ? `blob:${v.toString('hex')}` : v])),
      );
    }
    const seq = db.prepare(`SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'`).get();
    if (seq) out.sqlite_sequence = db.prepare('SELECT * FROM sqlite_sequence ORDER BY name').all();
    return out;
  } finally {
    db.close();
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** Dumps into a file, as the service would store it, and returns the file and info. */
async function dumpToFile(path: string, opts: { selection?: string[] | null; exclude?: string[] } = {}): Promise<{ file: string; info: DumpInfo }> {
  const dir = await freshDir();
  const out = await sqliteEngine.dump({
    resource: resource(path),
    selection: opts.selection ?? null,
    exclude: opts.exclude ?? [],
    useReplica: false,
    workDir: join(dir, 'work'),
    signal: never,
  });
  assert.equal(out.artifactBase, 'database.sqlite');
  assert.equal(out.format, 'sqlite database file');
  const file = join(dir, 'artifact');
  await pipeline(out.stream, createWriteStream(file));
  const info = await out.info;
  // The dump's temporary copy is gone once the stream ended.
  assert.deepEqual(await readdir(join(dir, 'work')), []);
  return { file, info };
}

function restoreReq(target: string, file: string, expected: ObjectCounts, over: Partial<RestoreRequest> = {}): RestoreRequest {
  return {
    target: resource(target),
    input: createReadStream(file),
    expected,
    mode: 'in_place',
    partial: false,
    workDir: join(root, 'restore-work'),
    signal: never,
    ...over,
  };
}

/** Emits the artifact's bytes, then fails, as a checksum check at the end of the input does. */
function failingAtEnd(file: string): Readable {
  return Readable.from(
    (async function* () {
      for await (const c of createReadStream(file)) yield c as Buffer;
      throw new AppError('checksum_mismatch', 'test: bad checksum at end');
    })(),
    { objectMode: false },
  );
}

describe('sqlite engine', () => {
  it('checks connections', () => {
    assert.throws(() => sqliteEngine.checkConnection('data.db', {}), (e) => isErrorCode(e, 'invalid_connection'));
    assert.throws(() => sqliteEngine.checkConnection('', {}), (e) => isErrorCode(e, 'invalid_connection'));
    sqliteEngine.checkConnection('/srv/app/data.db', {});
  });

  it('lists tables with row counts and views', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const objects = await sqliteEngine.listObjects(resource(src));
    assert.deepEqual(objects, [
      { name: 'audit', kind: 'table', size: 300 },
      { name: 'kv', kind: 'table', size: 50 },
      { name: 'plain', kind: 'table', size: 19 },
      { name: 'posts', kind: 'table', size: 299 },
      { name: 'user_posts', kind: 'view' },
      { name: 'users', kind: 'table', size: 299 },
    ]);
  });

  it('round-trips a full dump in place and to a new path', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const before = snapshot(src);
    const { file, info } = await dumpToFile(src);
    assert.deepEqual(info.counts.tables, { audit: 300, kv: 50, plain: 19, posts: 299, users: 299 });
    assert.match(info.serverVersion ?? '', /^3\.\d+\.\d+$/);

    // New target in a directory that does not exist yet.
    const newPath = join(dir, 'a', 'b', 'restored.db');
    const r1 = await sqliteEngine.restore(restoreReq(newPath, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r1.counts), []);
    assert.deepEqual(Object.keys(r1.phases ?? {}), ['spool', 'check', 'swap'], 'the steps the restore took, timed, in order');
    assert.deepEqual(snapshot(newPath), before);

    // In place, after the source changed: the change is undone.
    const db = new Database(src);
    db.exec(`DELETE FROM posts WHERE id < 100; CREATE TABLE extra (x); DROP VIEW user_posts;`);
    db.close();
    await chmod(src, 0o640);
    const r2 = await sqliteEngine.restore(restoreReq(src, file, info.counts));
    assert.equal((await stat(src)).mode & 0o7777, 0o640, 'the restored file keeps the old mode');
    // Nothing left beside the target but the database itself (the old -wal/-shm are gone too).
    assert.deepEqual((await readdir(dir)).sort(), ['a', 'src.db']);
    assert.deepEqual(compareCounts(info.counts, r2.counts), []);
    assert.deepEqual(snapshot(src), before);

    // The restored file opens in the standard sqlite3 tool.
    const { stdout } = await run('sqlite3', [newPath, 'PRAGMA integrity_check; SELECT count(*) FROM users; SELECT count(*) FROM user_posts;']);
    assert.equal(stdout.trim(), 'ok\n299\n299');
    // And triggers came along.
    const db2 = new Database(newPath);
    db2.exec(`INSERT INTO posts (user_id, title) VALUES (1, 'new')`);
    assert.equal((db2.prepare(`SELECT count(*) AS n FROM audit WHERE what = 'post new'`).get() as { n: number }).n, 1);
    db2.close();
  });

  it('takes a consistent copy while another process keeps writing', async () => {
    const dir = await freshDir();
    const src = join(dir, 'bank.db');
    const db = new Database(src);
    db.pragma('journal_mode = WAL');
    db.exec(`CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
             CREATE TABLE transfers (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, memo BLOB);
             CREATE TABLE journal (transfer_id INTEGER PRIMARY KEY);`);
    db.transaction(() => {
      for (let i = 0; i < 100; i++) db.prepare('INSERT INTO accounts VALUES (?, 1000)').run(i);
      // Some bulk so the copy takes a while.
      const ins = db.prepare('INSERT INTO transfers (src, dst, amount, memo) VALUES (0, 0, 0, randomblob(2000))');
      const jr = db.prepare('INSERT INTO journal VALUES (?)');
      for (let i = 0; i < 5000; i++) jr.run(ins.run().lastInsertRowid);
    })();
    db.close();

    // Each transaction moves money between two accounts (the total stays
    // 100000) and writes one row in each of transfers and journal.
    const writer = join(dir, 'writer.cjs');
    await writeFile(
      writer,
      `const Database = require(${JSON.stringify(createRequire(import.meta.url).resolve('better-sqlite3'))});
       const db = new Database(process.argv[2], { timeout: 10000 });
       db.pragma('journal_mode = WAL');
       const move = db.transaction((a, b, amt) => {
         db.prepare('UPDATE accounts SET balance = balance - ? WHERE id = ?').run(amt, a);
         const id = db.prepare('INSERT INTO transfers (src, dst, amount, memo) VALUES (?, ?, ?, randomblob(500))').run(a, b, amt).lastInsertRowid;
         db.prepare('UPDATE accounts SET balance = balance + ? WHERE id = ?').run(amt, b);
         db.prepare('INSERT INTO journal VALUES (?)').run(id);
       });
       let i = 0;
       for (;;) {
         move(i % 100, (i * 7 + 3) % 100, (i % 13) + 1);
         if (++i === 50) process.stdout.write('ready\\n');
       }`,
    );
    const child = spawn(process.execPath, [writer, src], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`writer exited with ${code}`)));
      });
      const { file, info } = await dumpToFile(src);
      assert.equal(child.exitCode, null, 'the writer kept running during the dump');
      const tables = info.counts.tables!;
      assert.equal(tables.transfers, tables.journal);
      assert.ok(tables.journal! >= 5050, 'the copy includes what the writer committed before the dump');

      const target = join(dir, 'restored.db');
      await sqliteEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target' }));
      const r = new Database(target, { readonly: true });
      assert.deepEqual(r.pragma('integrity_check'), [{ integrity_check: 'ok' }]);
      assert.equal((r.prepare('SELECT sum(balance) AS s FROM accounts').get() as { s: number }).s, 100000);
      assert.equal(
        (r.prepare('SELECT count(*) AS n FROM transfers t LEFT JOIN journal j ON j.transfer_id = t.id WHERE j.transfer_id IS NULL').get() as { n: number }).n,
        0,
      );
      assert.equal((r.prepare('SELECT count(*) AS n FROM journal').get() as { n: number }).n, tables.journal);
      r.close();
    } finally {
      child.kill('SIGKILL');
      await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
    }
    // The writer really wrote during and after the copy.
    const s = new Database(src, { readonly: true });
    assert.ok((s.prepare('SELECT count(*) AS n FROM journal').get() as { n: number }).n > 5050);
    s.close();
  });

  it('takes only the selected tables, or all but the excluded ones', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const before = snapshot(src);

    const sel = await dumpToFile(src, { selection: ['users', 'POSTS'] });
    assert.deepEqual(sel.info.counts.tables, { posts: 299, users: 299 });
    const t1 = join(dir, 'sel.db');
    await sqliteEngine.restore(restoreReq(t1, sel.file, sel.info.counts, { mode: 'new_target' }));
    const s1 = snapshot(t1);
    assert.deepEqual(s1.users, before.users);
    assert.deepEqual(s1.posts, before.posts);
    assert.equal(s1.audit, undefined);
    // The view over users and posts stays; the trigger writing into audit stays
    // too (it is attached to posts), the other tables are gone.
    const names = (s1.schema as { name: string }[]).map((s) => s.name).sort();
    assert.deepEqual(names, ['posts', 'posts_audit', 'posts_user', 'sqlite_autoindex_users_1', 'sqlite_sequence', 'user_posts', 'users', 'users_name']);
    // The artifact holds only the selection: smaller than the full database.
    const full = await dumpToFile(src);
    assert.ok((await readFile(sel.file)).length < (await readFile(full.file)).length);

    const exc = await dumpToFile(src, { exclude: ['users', 'nonexistent'] });
    assert.deepEqual(exc.info.counts.tables, { audit: 300, kv: 50, plain: 19, posts: 299 });
    assert.equal(exc.info.warnings.length, 1);
    const t2 = join(dir, 'exc.db');
    await sqliteEngine.restore(restoreReq(t2, exc.file, exc.info.counts, { mode: 'new_target' }));
    const names2 = (snapshot(t2).schema as { name: string }[]).map((s) => s.name).sort();
    // user_posts read users, so it went with it.
    assert.deepEqual(names2, ['audit', 'kv', 'plain', 'posts', 'posts_audit', 'posts_user']);
  });

  it('refuses a new target that already exists, touching nothing', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const part = await dumpToFile(src, { selection: ['users'] });

    // A database someone mistyped as the new target, with a -wal beside it.
    const other = join(dir, 'other.db');
    const o = new Database(other);
    o.exec(`CREATE TABLE precious (x); INSERT INTO precious VALUES ('keep me');`);
    o.close();
    await writeFile(`${other}-wal`, 'not ours to remove');
    const notes = join(dir, 'notes.txt');
    await writeFile(notes, 'some text, not a database');
    const sub = join(dir, 'sub');
    await mkdir(sub);
    await writeFile(join(sub, 'x'), 'x');
    const link = join(dir, 'link.db');
    await symlink(other, link);

    const state = async () => {
      const out: Record<string, string> = {};
      for (const name of (await readdir(dir)).sort()) {
        const p = join(dir, name);
        const st = await lstat(p);
        out[name] = st.isSymbolicLink() ? `link:${await readlink(p)}` : st.isDirectory() ? `dir:${(await readdir(p)).join(',')}` : `${st.mode & 0o7777}:${await sha256File(p)}`;
      }
      return out;
    };
    const before = await state();
    for (const target of [other, notes, sub, link]) {
      for (const [f, counts, partial] of [
        [file, info.counts, false],
        [part.file, part.info.counts, true],
      ] as const) {
        await assert.rejects(
          sqliteEngine.restore(restoreReq(target, f, counts, { mode: 'new_target', partial })),
          (e) => isErrorCode(e, 'target_not_empty') && e.status === 409 && e.message.includes(target) && /choose a new path/i.test(e.message) && /restore in place/.test(e.message),
        );
        assert.deepEqual(await state(), before, target);
      }
    }
    // Refused before reading: the input was never consumed (nothing written, not even a temp file).
    const input = createReadStream(file);
    await assert.rejects(sqliteEngine.restore(restoreReq(other, file, info.counts, { mode: 'new_target', input })), (e) => isErrorCode(e, 'target_not_empty'));
    assert.equal(input.bytesRead, 0);
    input.destroy();
    assert.deepEqual(await state(), before);
    // In place, the same file is still replaced.
    await sqliteEngine.restore(restoreReq(other, file, info.counts));
    assert.deepEqual(snapshot(other), snapshot(src));
  });

  it('restores a new target into an empty (0-byte) file, keeping its mode', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const target = join(dir, 'placeholder.db');
    await writeFile(target, '');
    await chmod(target, 0o640);
    const r = await sqliteEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    assert.deepEqual(snapshot(target), snapshot(src));
    assert.equal((await stat(target)).mode & 0o7777, 0o640);
  });

  it('refuses a new target that appears while the input streams, leaving it as it is', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const tdir = await freshDir();
    const target = join(tdir, 'late.db');
    const input = Readable.from(
      (async function* () {
        let first = true;
        for await (const c of createReadStream(file, { highWaterMark: 16 * 1024 })) {
          yield c as Buffer;
          if (first) await writeFile(target, 'written by someone else meanwhile');
          first = false;
        }
      })(),
      { objectMode: false },
    );
    await assert.rejects(sqliteEngine.restore(restoreReq(target, file, info.counts, { mode: 'new_target', input })), (e) => isErrorCode(e, 'target_not_empty') && e.message.includes(target));
    assert.equal(await readFile(target, 'utf8'), 'written by someone else meanwhile');
    assert.deepEqual(await readdir(tdir), ['late.db']);
  });

  it('refuses a selection naming a table that does not exist', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const work = join(dir, 'work');
    await assert.rejects(
      sqliteEngine.dump({ resource: resource(src), selection: ['users', 'nope', 'user_posts'], exclude: [], useReplica: false, workDir: work, signal: never }),
      (e) => isErrorCode(e, 'invalid_selection') && /"nope"/.test(e.message) && /"user_posts"/.test(e.message),
    );
    assert.deepEqual(await readdir(work), []);
  });

  it('reports a missing database as engine_failed', async () => {
    const dir = await freshDir();
    await assert.rejects(
      sqliteEngine.dump({ resource: resource(join(dir, 'missing.db')), selection: null, exclude: [], useReplica: false, workDir: join(dir, 'w'), signal: never }),
      (e) => isErrorCode(e, 'engine_failed') && e.message.includes('missing.db'),
    );
  });

  it('leaves the target untouched when the input fails at its end', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const part = await dumpToFile(src, { selection: ['users'] });
    const db = new Database(src);
    db.exec(`UPDATE users SET name = 'x' WHERE id < 50; PRAGMA wal_checkpoint(TRUNCATE);`);
    db.close();
    const hash = await sha256File(src);
    const listing = (await readdir(dir)).sort();

    for (const [f, counts, partial] of [
      [file, info.counts, false],
      [part.file, part.info.counts, true],
    ] as const) {
      await assert.rejects(
        sqliteEngine.restore(restoreReq(src, f, counts, { input: failingAtEnd(f), partial })),
        (e) => isErrorCode(e, 'checksum_mismatch'),
      );
      assert.equal(await sha256File(src), hash);
      assert.deepEqual((await readdir(dir)).sort(), listing);
    }
  });

  it('refuses to restore a file that is not the database it claims to be', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const hash = await sha256File(src);
    // Counts that do not match: verification fails and nothing is replaced.
    await assert.rejects(
      sqliteEngine.restore(restoreReq(src, file, { tables: { ...info.counts.tables, users: 1 } })),
      (e) => isErrorCode(e, 'verification_failed'),
    );
    // Not a database at all.
    const junk = join(dir, 'junk');
    await writeFile(junk, Buffer.alloc(8192, 7));
    await assert.rejects(sqliteEngine.restore(restoreReq(src, junk, info.counts)), (e) => isErrorCode(e, 'verification_failed'));
    assert.equal(await sha256File(src), hash);
    assert.ok(!(await readdir(dir)).some((f) => f.includes('.tmp-')));
  });

  it('restores a partial backup in place: only the backed-up tables change', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const before = snapshot(src);
    const { file, info } = await dumpToFile(src, { selection: ['users', 'plain', 'kv'] });

    const db = new Database(src);
    db.pragma('foreign_keys = ON');
    db.exec(`
      DELETE FROM posts WHERE id > 250;
      UPDATE users SET name = 'changed';
      INSERT INTO users (name, email) VALUES ('newcomer', 'new@example.com');
      DROP INDEX users_name;
      DELETE FROM kv;
      DELETE FROM plain;
      INSERT INTO audit VALUES (2, 'kept');
      CREATE TABLE other (x); INSERT INTO other VALUES (1);
    `);
    db.close();
    const changed = snapshot(src);

    const r = await sqliteEngine.restore(restoreReq(src, file, info.counts, { partial: true }));
    assert.deepEqual(r.counts.tables, { kv: 50, plain: 19, users: 299 });
    const after = snapshot(src);
    for (const t of ['users', 'kv', 'plain', 'sqlite_sequence']) assert.deepEqual(after[t], before[t], t);
    for (const t of ['posts', 'audit', 'other']) assert.deepEqual(after[t], changed[t], t);
    // The dropped index is back (schema of the backed-up table).
    const names = (after.schema as { name: string }[]).map((s) => s.name);
    assert.ok(names.includes('users_name'));
    assert.ok(names.includes('user_posts'));
    const check = new Database(src, { readonly: true });
    assert.deepEqual(check.pragma('integrity_check'), [{ integrity_check: 'ok' }]);
    check.close();
  });

  it('restores virtual (fts5) tables', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    const db = new Database(src);
    db.exec(`CREATE VIRTUAL TABLE docs USING fts5(body); CREATE TABLE notes (x);`);
    for (let i = 0; i < 100; i++) db.prepare('INSERT INTO docs VALUES (?)').run(`document number ${i} about ${i % 2 ? 'cats' : 'dogs'}`);
    db.close();
    const { file, info } = await dumpToFile(src, { selection: ['docs'] });
    assert.equal(info.counts.tables?.docs_content, 100);
    const d2 = new Database(src);
    d2.exec(`DELETE FROM docs; INSERT INTO notes VALUES (1)`);
    d2.close();
    await sqliteEngine.restore(restoreReq(src, file, info.counts, { partial: true }));
    const r = new Database(src, { readonly: true });
    assert.equal((r.prepare(`SELECT count(*) AS n FROM docs WHERE docs MATCH 'cats'`).get() as { n: number }).n, 50);
    assert.equal((r.prepare(`SELECT count(*) AS n FROM notes`).get() as { n: number }).n, 1);
    r.close();
  });

  it('honours cancellation and cleans up', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const hash = await sha256File(src);
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(
      sqliteEngine.dump({ resource: resource(src), selection: null, exclude: [], useReplica: false, workDir: join(dir, 'w'), signal: ac.signal }),
      (e) => isErrorCode(e, 'cancelled'),
    );
    // Abort while the input is still flowing.
    const ac2 = new AbortController();
    const slow = Readable.from(
      (async function* () {
        for await (const c of createReadStream(file, { highWaterMark: 4096 })) {
          yield c as Buffer;
          ac2.abort();
        }
      })(),
      { objectMode: false },
    );
    await assert.rejects(sqliteEngine.restore(restoreReq(src, file, info.counts, { input: slow, signal: ac2.signal })), (e) => isErrorCode(e, 'cancelled'));
    assert.equal(await sha256File(src), hash);
    assert.ok(!(await readdir(dir)).some((f) => f.includes('.tmp-')));
  });

  /** A database with a table "big" of n rows and an empty "small"; dumps big, then deletes most of it, so a restore visibly changes the target. */
  async function restoreFixture(rows: number): Promise<{ dir: string; src: string; file: string; info: DumpInfo; hash: string }> {
    const dir = await freshDir();
    const src = join(dir, 'big.db');
    const db = new Database(src);
    db.exec(`CREATE TABLE big (a, b); CREATE TABLE small (x);`);
    db.prepare(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT INTO big SELECT i, randomblob(100) FROM n`).run(rows);
    db.close();
    const { file, info } = await dumpToFile(src, { selection: ['big'] });
    const d = new Database(src);
    // VACUUM: no free pages, whose bytes a rolled-back transaction may leave
    // changed, so an untouched target keeps its hash.
    d.exec('DELETE FROM big WHERE a > 10; VACUUM');
    d.close();
    return { dir, src, file, info, hash: await sha256File(src) };
  }

  const bigRows = (path: string) => {
    const db = new Database(path, { readonly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM big').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };

  /** The target is as it was, holds no lock, and no temp file is left beside it. */
  async function assertUntouched(f: { dir: string; src: string; hash: string }): Promise<void> {
    assert.equal(await sha256File(f.src), f.hash);
    const w = new Database(f.src, { timeout: 0 });
    w.exec('BEGIN IMMEDIATE; INSERT INTO small VALUES (1); ROLLBACK;');
    w.close();
    assert.ok(!(await readdir(f.dir)).some((x) => x.includes('.tmp-')));
  }

  /** Runs fn with the test pause hook set, and always unsets it. */
  async function withPause<T>(hook: (point: PausePoint) => void | Promise<void>, fn: () => Promise<T>): Promise<T> {
    sqliteTestHooks.pause = hook;
    try {
      return await fn();
    } finally {
      delete sqliteTestHooks.pause;
    }
  }

  const outcome = (p: Promise<RestoreReport>) => p.then((r) => r, (e: unknown) => (isErrorCode(e, 'cancelled') ? ('cancelled' as const) : Promise.reject(e)));

  it('cancels a restore while SQLite works: cancelled changes nothing, done changed everything', async () => {
    const f = await restoreFixture(300_000);
    for (const delay of [50, 400, 800, 1500]) {
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), delay);
      const result = await outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true, signal: ac.signal })));
      clearTimeout(t);
      if (result === 'cancelled') {
        await assertUntouched(f);
        continue;
      }
      // Whenever the cancel came, a restore reported done did happen, and says whether a cancel was ignored.
      assert.equal(bigRows(f.src), 300_000);
      assert.equal(result.warnings.includes(LATE_CANCEL_WARNING), ac.signal.aborted);
      break; // the target is restored now; later rounds would find nothing to change
    }
  });

  it('a cancel just before the COMMIT of a partial restore cancels it, leaving the target unchanged and unlocked', async () => {
    const f = await restoreFixture(1000);
    const ac = new AbortController();
    const seen: PausePoint[] = [];
    const result = await withPause(
      (point) => {
        seen.push(point);
        if (point === 'before-commit') ac.abort();
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true, signal: ac.signal }))),
    );
    assert.equal(result, 'cancelled');
    assert.deepEqual(seen, ['before-commit']);
    await assertUntouched(f);
  });

  it('a cancel just after the COMMIT of a partial restore is ignored: reported restored, as it is', async () => {
    const f = await restoreFixture(1000);
    const ac = new AbortController();
    const seen: PausePoint[] = [];
    const result = await withPause(
      (point) => {
        seen.push(point);
        if (point === 'after-commit') ac.abort();
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true, signal: ac.signal }))),
    );
    assert.deepEqual(seen, ['before-commit', 'after-commit']);
    assert.ok(result !== 'cancelled');
    assert.deepEqual(result.counts.tables, { big: 1000 });
    assert.ok(result.warnings.includes(LATE_CANCEL_WARNING));
    assert.equal(bigRows(f.src), 1000);
    assert.ok(!(await readdir(f.dir)).some((x) => x.includes('.tmp-')));
  });

  it('terminates a cancelled worker that does not stop by itself, before its COMMIT', async () => {
    const f = await restoreFixture(1000);
    const ac = new AbortController();
    const result = await withPause(
      (point) => {
        if (point !== 'before-commit') return;
        ac.abort();
        return new Promise<void>(() => {}); // holds the worker inside its transaction for good
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true, signal: ac.signal }))),
    );
    assert.equal(result, 'cancelled');
    await assertUntouched(f);
  });

  /** Files under dir this process (worker threads included) holds open. */
  async function openFilesUnder(dir: string): Promise<string[]> {
    const out: string[] = [];
    for (const fd of await readdir('/proc/self/fd')) {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      if (target.startsWith(dir + '/')) out.push(target);
    }
    return out;
  }

  it('reuses its worker across tasks, and each task has closed its files when it settles', async () => {
    await sqliteWorkerPool.terminateAll();
    const started = sqliteWorkerPool.started;
    const f = await restoreFixture(1000); // one dump
    for (let i = 0; i < 3; i++) assert.deepEqual((await sqliteEngine.listObjects(resource(f.src))).length, 2);
    const r = await sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true }));
    assert.deepEqual(r.counts.tables, { big: 1000 });
    // Five tasks, one worker, still alive for the next one.
    assert.equal(sqliteWorkerPool.started, started + 1);
    assert.equal(sqliteWorkerPool.live(), 1);
    // The worker lives on, but no connection does: the files may be removed or written at once.
    assert.deepEqual(await openFilesUnder(f.dir), []);
  });

  it('runs concurrent tasks on at most two workers', async () => {
    await sqliteWorkerPool.terminateAll();
    const started = sqliteWorkerPool.started;
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const lists = await Promise.all(Array.from({ length: 5 }, () => sqliteEngine.listObjects(resource(src))));
    for (const l of lists) assert.deepEqual(l, lists[0]);
    assert.equal(sqliteWorkerPool.started, started + 2);
    assert.equal(sqliteWorkerPool.live(), 2);
  });

  it('replaces a worker terminated after a cancel it did not stop for, and the next task succeeds', async () => {
    const f = await restoreFixture(1000);
    await sqliteWorkerPool.terminateAll();
    const started = sqliteWorkerPool.started;
    const ac = new AbortController();
    const result = await withPause(
      (point) => {
        if (point !== 'before-commit') return;
        ac.abort();
        return new Promise<void>(() => {}); // holds the worker inside its transaction for good
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true, signal: ac.signal }))),
    );
    assert.equal(result, 'cancelled');
    assert.equal(sqliteWorkerPool.live(), 0); // the stuck worker is gone
    await assertUntouched(f);
    const r = await sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true }));
    assert.deepEqual(r.counts.tables, { big: 1000 });
    assert.equal(bigRows(f.src), 1000);
    assert.equal(sqliteWorkerPool.started, started + 2);
  });

  it('fails the task of a worker that dies, saying whether it was committing, and replaces the worker', async () => {
    for (const point of ['before-commit', 'after-commit'] as const) {
      const f = await restoreFixture(1000);
      const result = await withPause(
        async (p) => {
          if (p === point) await sqliteWorkerPool.terminateAll(); // as if the thread crashed here
        },
        () => sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { partial: true })).then(
          () => assert.fail('a task whose worker died must not succeed'),
          (e: unknown) => e,
        ),
      );
      assert.ok(isErrorCode(result, 'engine_failed'));
      const committing = ' while committing; its changes may have been applied';
      assert.equal(result.message, `The SQLite worker stopped without an answer${point === 'after-commit' ? committing : ''}.`);
      if (point === 'before-commit') await assertUntouched(f);
      else assert.equal(bigRows(f.src), 1000);
      const again = await sqliteEngine.listObjects(resource(f.src));
      assert.deepEqual(again.map((o) => o.name), ['big', 'small']);
    }
  });

  it('a full restore is cancelled up to its rename, and not after it', async () => {
    const f = await restoreFixture(1000);
    const { file, info } = await dumpToFile(f.src); // the current, trimmed state
    const before = new AbortController();
    const r1 = await withPause(
      (point) => {
        if (point === 'before-rename') before.abort();
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { signal: before.signal }))),
    );
    assert.equal(r1, 'cancelled');
    await assertUntouched(f);

    const late = new AbortController();
    const r2 = await withPause(
      (point) => {
        if (point === 'after-rename') late.abort();
      },
      () => outcome(sqliteEngine.restore(restoreReq(f.src, f.file, f.info.counts, { signal: late.signal }))),
    );
    assert.ok(r2 !== 'cancelled');
    assert.ok(r2.warnings.includes(LATE_CANCEL_WARNING));
    assert.equal(bigRows(f.src), 1000);
    assert.ok(!(await readdir(f.dir)).some((x) => x.includes('.tmp-')));
    // Without a cancel, no such warning.
    const r3 = await sqliteEngine.restore(restoreReq(f.src, file, info.counts));
    assert.deepEqual(r3.warnings, []);
    assert.equal(bigRows(f.src), 10);
  });

  it('dumps from the replica when asked to', async () => {
    const dir = await freshDir();
    const primary = join(dir, 'primary.db');
    const replica = join(dir, 'replica.db');
    makeDb(primary);
    const r = new Database(replica);
    r.exec('CREATE TABLE only_in_replica (x); INSERT INTO only_in_replica VALUES (1), (2);');
    r.close();
    const spec = { ...resource(primary), replica };
    for (const [useReplica, want] of [
      [true, { only_in_replica: 2 }],
      [false, { audit: 300, kv: 50, plain: 19, posts: 299, users: 299 }],
    ] as const) {
      const out = await sqliteEngine.dump({ resource: spec, selection: null, exclude: [], useReplica, workDir: join(dir, 'w'), signal: never });
      out.stream.resume();
      assert.deepEqual((await out.info).counts.tables, want);
    }
  });

  it('gives a scratch target inside workDir', async () => {
    const dir = await freshDir();
    const src = join(dir, 'src.db');
    makeDb(src);
    const { file, info } = await dumpToFile(src);
    const work = join(dir, 'work');
    const scratch = await sqliteEngine.scratchTarget(resource(src), work);
    assert.ok(scratch.connection.startsWith(work + '/'));
    const r = await sqliteEngine.restore(restoreReq(scratch.connection, file, info.counts, { mode: 'new_target' }));
    assert.deepEqual(compareCounts(info.counts, r.counts), []);
    await scratch.cleanup();
    await scratch.cleanup();
    assert.deepEqual(await readdir(work), []);
  });
});
