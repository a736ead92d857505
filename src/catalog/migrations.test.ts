// The backup list's queries must be served by an index in their sort order:
// a temp b-tree sort means every row of the filter is read and built, and
// OFFSET pages cost more the further they are (page 20 was 3x page 1).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CompiledQuery } from 'kysely';
import { openCatalog, type CatalogDb } from './db.ts';

describe('catalog indexes for backup lists', () => {
  let dir: string;
  let db: CatalogDb;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bv-migrations-'));
    db = await openCatalog(join(dir, 'catalog.db'));
  });
  after(async () => {
    await db.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  // the shapes listBackups builds: no filter, or one of its filters
  for (const filter of [null, 'instance', 'status', 'policy_id'] as const) {
    it(`lists ${filter === null ? 'all backups' : `by ${filter}`} newest first straight from an index`, async () => {
      let q = db.selectFrom('backups').selectAll();
      if (filter !== null) q = q.where(filter, '=', 'x');
      const compiled = q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(50).offset(950).compile();
      const plan = await db.executeQuery<{ detail: string }>(CompiledQuery.raw(`explain query plan ${compiled.sql}`, [...compiled.parameters]));
      const text = plan.rows.map((r) => r.detail).join(' | ');
      assert.match(text, /USING INDEX backups_\w*created_id/, text);
      assert.doesNotMatch(text, /TEMP B-TREE/, text);
    });
  }
});
