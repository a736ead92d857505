import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { escapeGlob, redisGlobMatch } from './glob.ts';

const b = (s: string) => Buffer.from(s, 'utf8');

describe('redis glob', () => {
  it('follows the server rules for *, ?, [..] and backslash', () => {
    const cases: [string, string, boolean][] = [
      ['*', '', true],
      ['*', 'anything', true],
      ['', '', true],
      ['', 'a', false],
      ['a*', 'a', true],
      ['a*', 'abc', true],
      ['a*', 'ba', false],
      ['*a', 'bca', true],
      ['a?c', 'abc', true],
      ['a?c', 'ac', false],
      ['a[bc]d', 'acd', true],
      ['a[bc]d', 'aed', false],
      ['a[^bc]d', 'aed', true],
      ['a[^bc]d', 'abd', false],
      ['a[b-d]', 'ac', true],
      ['a[d-b]', 'ac', true],
      ['a[b-d]', 'ae', false],
      ['a\\*', 'a*', true],
      ['a\\*', 'ab', false],
      ['a\\', 'a\\', true],
      ['a[\\]]b', 'a]b', true],
      ['a[bc', 'ab', true],
      ['a[bc', 'ad', false],
      ['user:*:name', 'user:1:name', true],
      ['user:*:name', 'user:1:mail', false],
      ['a*b*c', 'axxbyyc', true],
      ['a*b*c', 'axxbyy', false],
      ['**a**', 'xax', true],
      ['?', '', false],
      ['a*', '', false],
    ];
    for (const [p, s, want] of cases) assert.equal(redisGlobMatch(p, b(s)), want, `${JSON.stringify(p)} ~ ${JSON.stringify(s)}`);
  });

  it('escapes literals', () => {
    const lit = 'a*b?c[d]e\\f';
    assert.ok(redisGlobMatch(escapeGlob(lit), b(lit)));
    assert.ok(!redisGlobMatch(escapeGlob(lit), b('aXb?c[d]e\\f')));
  });

  it('gives up on pathological patterns quickly, as the server does', () => {
    const t = Date.now();
    assert.equal(redisGlobMatch('a*'.repeat(30) + 'b', b('a'.repeat(60))), false);
    assert.ok(Date.now() - t < 2000);
  });
});
