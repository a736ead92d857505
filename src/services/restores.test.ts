import { test } from 'node:test';
import assert from 'node:assert/strict';
import { majorOf } from './restores.ts';

test('major versions as each server counts them', () => {
  assert.equal(majorOf('15.4 (Debian 15.4-1)', 'postgres'), '15');
  assert.equal(majorOf('9.6.24', 'postgres'), '9.6');
  assert.equal(majorOf('10.11.6-MariaDB-0+deb12u1', 'mysql'), '10.11');
  assert.equal(majorOf('8.0.36', 'mysql'), '8.0');
  assert.equal(majorOf('7.0.15', 'redis'), '7');
  assert.notEqual(majorOf('10.6.1-MariaDB', 'mysql'), majorOf('10.11.6-MariaDB', 'mysql'));
});
