import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyRetention, isoWeek, type RetentionCandidate } from './retention.ts';

const now = new Date('2026-11-21T12:00:00Z');

function daily(days: number, hour = 3): RetentionCandidate[] {
  // One backup a day for `days` days back from 2026-11-21.
  return Array.from({ length: days }, (_, i) => {
    const d = new Date(Date.UTC(2026, 10, 21 - i, hour));
    return { id: `b${String(i).padStart(3, '0')}`, taken_at: d.toISOString() };
  });
}

const kept = (ds: ReturnType<typeof applyRetention>) => ds.filter((d) => d.keep).map((d) => d.id);

test('without rules nothing is deleted', () => {
  assert.equal(kept(applyRetention(daily(10), {}, now)).length, 10);
});

test('the newest backup is always kept, whatever the rules', () => {
  const old = [{ id: 'old', taken_at: '2020-01-01T00:00:00Z' }];
  const ds = applyRetention(old, { retention_days: 7 }, now);
  assert.deepEqual(kept(ds), ['old'], 'days of failed runs must not lead to deleting the last good backup');
  assert.deepEqual(ds[0]!.reasons, ['newest']);
});

test('keep_count and keep_last keep the N newest; minimum keeps more', () => {
  assert.deepEqual(kept(applyRetention(daily(10), { keep_count: 3 }, now)), ['b000', 'b001', 'b002']);
  assert.deepEqual(kept(applyRetention(daily(10), { keep_last: 2 }, now)), ['b000', 'b001']);
  assert.deepEqual(kept(applyRetention(daily(10), { keep_last: 1, minimum: 4 }, now)), ['b000', 'b001', 'b002', 'b003']);
});

test('retention_days keeps what is younger than N days', () => {
  assert.deepEqual(kept(applyRetention(daily(10), { retention_days: 3 }, now)), ['b000', 'b001', 'b002']);
});

test('keep_daily keeps the newest of each of the N most recent days that have backups', () => {
  const bs = [...daily(5, 3), ...daily(5, 15).map((b) => ({ ...b, id: b.id + 'pm' }))].filter((b) => Date.parse(b.taken_at) <= now.getTime());
  // 2026-11-21 has only the 03:00 backup (15:00 is in the future and filtered out).
  assert.deepEqual(kept(applyRetention(bs, { keep_daily: 3 }, now)), ['b000', 'b001pm', 'b002pm']);
});

test('keep_weekly buckets on ISO weeks, Monday to Sunday', () => {
  assert.equal(isoWeek(2026, 11, 16), '2026-W47'); // Monday
  assert.equal(isoWeek(2026, 11, 22), '2026-W47'); // Sunday
  assert.equal(isoWeek(2026, 11, 23), '2026-W48'); // next Monday
  assert.equal(isoWeek(2027, 1, 1), '2026-W53'); // Friday belongs to the last week of 2026
  // 30 daily backups, keep 3 weeks: the newest of this week (Sat 21st), of last week (Sun 15th), of the week before (Sun 8th).
  const ds = applyRetention(daily(30), { keep_weekly: 3 }, now);
  assert.deepEqual(kept(ds).map((id) => ds.find((d) => d.id === id)!.taken_at.slice(0, 10)), ['2026-11-21', '2026-11-15', '2026-11-08']);
});

test('keep_monthly and keep_yearly', () => {
  const bs = [
    { id: 'a', taken_at: '2026-11-02T00:00:00Z' },
    { id: 'b', taken_at: '2026-10-31T00:00:00Z' },
    { id: 'c', taken_at: '2026-10-01T00:00:00Z' },
    { id: 'd', taken_at: '2025-12-31T00:00:00Z' },
    { id: 'e', taken_at: '2024-06-01T00:00:00Z' },
  ];
  assert.deepEqual(kept(applyRetention(bs, { keep_monthly: 2 }, now)), ['a', 'b']);
  assert.deepEqual(kept(applyRetention(bs, { keep_yearly: 3 }, now)), ['a', 'd', 'e']);
});

test('calendar buckets use the policy time zone', () => {
  // 23:30 UTC on the 20th is already the 21st in Berlin.
  const bs = [
    { id: 'late', taken_at: '2026-11-20T23:30:00Z' },
    { id: 'early', taken_at: '2026-11-20T01:00:00Z' },
  ];
  assert.deepEqual(kept(applyRetention(bs, { keep_daily: 1 }, now, 'UTC')), ['late']);
  assert.deepEqual(kept(applyRetention(bs, { keep_daily: 2 }, now, 'UTC')), ['late'], 'both on the 20th in UTC: one bucket');
  assert.deepEqual(kept(applyRetention(bs, { keep_daily: 2 }, now, 'Europe/Berlin')), ['late', 'early']);
});

test('rules combine: kept when any rule keeps it, with every reason', () => {
  const ds = applyRetention(daily(40), { keep_last: 2, keep_weekly: 2, keep_monthly: 2 }, now);
  const byId = Object.fromEntries(ds.map((d) => [d.id, d]));
  assert.ok(byId.b000!.reasons.includes('newest'));
  assert.ok(byId.b000!.reasons.some((r) => r.startsWith('keep_weekly')));
  assert.ok(byId.b001!.reasons.includes('keep_last 2'));
  assert.ok(kept(ds).includes('b021'), 'the newest backup of October (31st) is kept by keep_monthly');
  assert.equal(byId.b020!.keep, false, 'November 1st is neither the newest of its month nor of a kept week');
  assert.equal(byId.b030!.keep, false);
  assert.deepEqual(byId.b030!.reasons, []);
});
