// Backup lists are reused while the catalog is unchanged: every change, by the
// server or by another process on the catalog file, must show at once.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startTestServer, waitFor, type TestServer } from '../../../../test/helpers.ts';

describe('native backup lists with the list cache', () => {
  let t: TestServer;
  const raw = async (path: string) => {
    const res = await fetch(t.url + path, { headers: { authorization: `Bearer ${t.adminKey}` } });
    return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
  };
  before(async () => {
    t = await startTestServer();
    const files = join(t.dir, 'src-files');
    await mkdir(files, { recursive: true });
    await writeFile(join(files, 'a.txt'), 'a\n');
    await t.api('POST', '/api/v1/instances', { name: 'app' });
    await t.api('POST', '/api/v1/instances/app/resources', { name: 'files', type: 'files', connection: files });
  });
  after(() => t.close());

  it('answers repeated requests with the same JSON bytes and headers', async () => {
    const created = await t.api('POST', '/api/v1/instances/app/backups', { type: 'full', label: 'one' });
    await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    const first = await raw('/api/v1/backups?per_page=10');
    const second = await raw('/api/v1/backups?per_page=10');
    assert.equal(first.status, 200);
    assert.equal(first.type, 'application/json; charset=utf-8');
    assert.equal(second.type, first.type);
    assert.equal(second.text, first.text);
    const body = JSON.parse(first.text);
    assert.deepEqual(body.pagination, { page: 1, per_page: 10, total: 1, pages: 1 });
    assert.equal(body.items[0].id, created.body.id);
    assert.equal(body.items[0].status, 'success');
    // the same document as the backup itself
    assert.deepEqual(body.items[0], (await t.api('GET', `/api/v1/backups/${created.body.id}`)).body);
  });

  it('shows new, changed and deleted backups at once', async () => {
    const before = (await t.api('GET', '/api/v1/instances/app/backups')).body.pagination.total;
    const created = await t.api('POST', '/api/v1/instances/app/backups', { type: 'full', label: 'two' });
    const listed = (await t.api('GET', '/api/v1/instances/app/backups')).body;
    assert.equal(listed.pagination.total, before + 1);
    assert.equal(listed.items[0].id, created.body.id);
    await waitFor(t.api, `/api/v1/backups/${created.body.id}`);
    assert.equal((await t.api('GET', '/api/v1/instances/app/backups')).body.items[0].status, 'success');
    assert.equal((await t.api('DELETE', `/api/v1/backups/${created.body.id}`)).status, 204);
    const after = (await t.api('GET', '/api/v1/instances/app/backups')).body;
    assert.equal(after.pagination.total, before);
    assert.ok(!after.items.some((b: { id: string }) => b.id === created.body.id));
  });

  it('shows a change another process commits to the catalog file', async () => {
    const list = (await t.api('GET', '/api/v1/backups')).body;
    const id = list.items[0].id as string;
    const other = new Database(join(t.dir, 'catalog.db'));
    other.prepare('update backups set label = ? where id = ?').run('relabelled elsewhere', id);
    other.close();
    const again = (await t.api('GET', '/api/v1/backups')).body;
    assert.equal(again.items.find((b: { id: string }) => b.id === id).label, 'relabelled elsewhere');
  });

  it('does not keep a 404: an instance created afterwards lists', async () => {
    assert.equal((await t.api('GET', '/api/v1/instances/later/backups')).status, 404);
    await t.api('POST', '/api/v1/instances', { name: 'later' });
    const res = await t.api('GET', '/api/v1/instances/later/backups');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body.pagination, { page: 1, per_page: 50, total: 0, pages: 1 });
  });

  it('answers concurrent identical requests alike', async () => {
    const texts = await Promise.all(Array.from({ length: 8 }, () => raw('/api/v1/backups?per_page=5&status=success')));
    for (const r of texts) assert.equal(r.text, texts[0]!.text);
    assert.ok(JSON.parse(texts[0]!.text).items.length > 0);
  });
});
