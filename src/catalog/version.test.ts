import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openCatalog, type CatalogDb } from './db.ts';
import { catalogVersion } from './version.ts';

describe('catalogVersion', () => {
  let dir: string;
  let path: string;
  let db: CatalogDb;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bv-version-'));
    path = join(dir, 'catalog.db');
    db = await openCatalog(path);
  });
  after(async () => {
    await db.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('stays the same while nothing is written', async () => {
    const v = await catalogVersion(db);
    await db.selectFrom('instances').selectAll().execute();
    assert.equal(await catalogVersion(db), v);
  });

  it('changes with every insert, update and delete through the catalog', async () => {
    const now = new Date().toISOString();
    const seen = new Set([await catalogVersion(db)]);
    await db.insertInto('instances').values({ name: 'a', description: '', max_backups: null, created_at: now, updated_at: now }).execute();
    seen.add(await catalogVersion(db));
    await db.transaction().execute((trx) => trx.updateTable('instances').set({ description: 'x' }).where('name', '=', 'a').execute());
    seen.add(await catalogVersion(db));
    await db.deleteFrom('instances').where('name', '=', 'a').execute();
    seen.add(await catalogVersion(db));
    assert.equal(seen.size, 4);
  });

  it('changes when another connection (a CLI command on the same file) commits', async () => {
    const v = await catalogVersion(db);
    const other = new Database(path);
    other.prepare("insert into settings (key, value) values ('from-cli', '1')").run();
    other.close();
    assert.notEqual(await catalogVersion(db), v);
  });
});
