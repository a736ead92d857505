import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { excerpt, FieldsError, pickFields } from './fields.ts';

const items = [
  { key: 'pb_backup_20230519162514.zip', modified: '2023-05-19 16:25:57.542Z', size: 251316185 },
  { key: 'b.zip', modified: '2023-05-18 16:25:57.542Z', size: 10 },
];

describe('PocketBase fields parameter', () => {
  it('keeps everything without the parameter, and with *', () => {
    assert.deepEqual(pickFields(items, undefined), items);
    assert.deepEqual(pickFields(items, ''), items);
    assert.deepEqual(pickFields(items, '*'), items);
  });

  it('keeps the listed keys of each item, ignoring unknown ones', () => {
    assert.deepEqual(pickFields(items, 'key, size,nope'), [
      { key: items[0]!.key, size: items[0]!.size },
      { key: 'b.zip', size: 10 },
    ]);
  });

  it('walks nested paths', () => {
    const auth = { token: 't', record: { id: 'x', email: 'a@b.c', collectionName: '_superusers' } };
    assert.deepEqual(pickFields(auth, 'token,record.email'), { token: 't', record: { email: 'a@b.c' } });
    assert.deepEqual(pickFields(auth, 'record.*'), { record: auth.record });
    assert.deepEqual(pickFields(auth, '*,expand.rel.name'), auth);
  });

  it('applies excerpt to strings only, with and without the ellipsis', () => {
    assert.deepEqual(pickFields(items, 'key:excerpt(9,true),size:excerpt(2)'), [
      { key: 'pb_backup...', size: 251316185 },
      { key: 'b.zip', size: 10 },
    ]);
    assert.deepEqual(pickFields(items, '*,key:excerpt(3)'), [
      { ...items[0], key: 'pb_' },
      { ...items[1], key: 'b.z' },
    ]);
    assert.equal(excerpt('<p>Hello <b>big</b>\n  world</p><script>x()</script>', 9, true), 'Hello big...');
    assert.equal(excerpt('ünïcødé', 3, false), 'ünï');
  });

  it('refuses modifiers it does not know and bad arguments', () => {
    for (const bad of ['key:upper()', 'key:excerpt()', 'key:excerpt(x)', 'key:excerpt(1,maybe)', 'a..b']) {
      assert.throws(() => pickFields(items, bad), FieldsError, bad);
    }
  });
});
