import { test } from 'node:test';
import assert from 'node:assert/strict';
import { maskConnection } from './mask.ts';

test('a URL password is masked and the rest kept', () => {
  assert.equal(maskConnection('postgres://app:s3cret@db:5432/main'), 'postgres://app:****@db:5432/main');
  assert.equal(maskConnection('redis://:pw@127.0.0.1:6379/0'), 'redis://:****@127.0.0.1:6379/0');
});

test('secret-looking query values are masked', () => {
  const masked = maskConnection('mysql://root@h/db?password=x&sslmode=require');
  assert.ok(!masked.includes('password=x'));
  assert.ok(masked.includes('sslmode=require'));
});

test('paths are shown as they are', () => {
  assert.equal(maskConnection('/var/lib/app/data.db'), '/var/lib/app/data.db');
});
