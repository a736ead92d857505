import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect, type Generated } from 'kysely';
import { withStatementCache } from './statement-cache.ts';

async function fileDb(t: import('node:test').TestContext) {
  const dir = await mkdtemp(join(tmpdir(), 'bv-stmt-cache-'));
  const raw = new Database(join(dir, 'test.db'));
  raw.pragma('journal_mode = WAL');
  raw.exec('create table t (id integer primary key, name text not null)');
  const insert = raw.prepare('insert into t (name) values (?)');
  for (let i = 1; i <= 5; i++) insert.run(`n${i}`);
  t.after(async () => {
    if (raw.open) raw.close();
    await rm(dir, { recursive: true, force: true });
  });
  return raw;
}

test('prepare returns one cached statement per SQL text, reusable with new parameters', async (t) => {
  const raw = await fileDb(t);
  const db = withStatementCache(raw);
  const a = db.prepare('select name from t where id = ?');
  const b = db.prepare('select name from t where id = ?');
  assert.equal(a, b);
  assert.notEqual(db.prepare('select name from t where id > ?'), a);
  assert.deepEqual(a.get(2), { name: 'n2' });
  assert.deepEqual(b.get(4), { name: 'n4' });
  // Everything else is the real database.
  assert.equal(db.open, true);
  assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  db.exec("insert into t (name) values ('n6')");
  assert.deepEqual(db.prepare('select count(*) as c from t').get(), { c: 6 });
});

test('the cache is a bounded LRU', async (t) => {
  const raw = await fileDb(t);
  const db = withStatementCache(raw, 2);
  const q1 = db.prepare('select 1');
  const q2 = db.prepare('select 2');
  assert.equal(db.prepare('select 1'), q1); // q1 is now the most recent
  db.prepare('select 3'); // evicts q2, the least recently used
  assert.equal(db.prepare('select 1'), q1);
  assert.notEqual(db.prepare('select 2'), q2);
  assert.throws(() => withStatementCache(raw, 0), RangeError);
});

test('a statement busy in an unfinished iterate() is not handed out again', async (t) => {
  const raw = await fileDb(t);
  const db = withStatementCache(raw);
  const sql = 'select id from t where id >= ? order by id';
  const s1 = db.prepare(sql);
  const it = s1.iterate(1);
  assert.deepEqual(it.next().value, { id: 1 });
  assert.equal(s1.busy, true);
  const s2 = db.prepare(sql);
  assert.notEqual(s2, s1);
  assert.deepEqual(s2.all(4), [{ id: 4 }, { id: 5 }]);
  assert.deepEqual([...it], [{ id: 2 }, { id: 3 }, { id: 4 }, { id: 5 }]);
  assert.equal(s1.busy, false);
  // Once the iteration is done the cached statement is reused again.
  assert.equal(db.prepare(sql), s1);
});

test('through Kysely: queries, a transaction, a stream, and a stream left early', async (t) => {
  const raw = await fileDb(t);
  interface Schema {
    t: { id: Generated<number>; name: string };
  }
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: withStatementCache(raw) }) });
  const byId = (id: number) => db.selectFrom('t').select('name').where('id', '=', id).executeTakeFirst();
  assert.deepEqual(await byId(1), { name: 'n1' });
  assert.deepEqual(await byId(3), { name: 'n3' });
  await db.transaction().execute(async (trx) => {
    await trx.insertInto('t').values({ name: 'n6' }).execute();
    await trx.insertInto('t').values({ name: 'n7' }).execute();
  });
  await assert.rejects(
    db.transaction().execute(async (trx) => {
      await trx.insertInto('t').values({ name: 'n8' }).execute();
      throw new Error('roll back');
    }),
    /roll back/,
  );
  // Kysely holds its one connection for a whole stream, so the same SQL text
  // runs again only after the stream ends, also when it is left early.
  const all = db.selectFrom('t').select('id').where('id', '>', 0).orderBy('id');
  const seen: number[] = [];
  for await (const row of all.stream()) seen.push(row.id);
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7]);
  for await (const row of all.stream()) if (row.id === 2) break;
  assert.deepEqual(
    (await all.execute()).map((r) => r.id),
    [1, 2, 3, 4, 5, 6, 7],
  );
  await db.destroy();
  assert.equal(raw.open, false);
});
