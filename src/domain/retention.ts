// Retention: which of a policy's successful backups to keep. Pure: the caller
// passes only successful backups made by the policy (failed ones are never
// counted, other policies' backups never touched) and the time.
//
// Rules follow restic's `forget` semantics: a backup is kept when any rule
// keeps it. keep_last N keeps the N newest. keep_hourly/daily/weekly/monthly/
// yearly N keep the newest backup of each of the N most recent calendar
// buckets that hold a backup (hours, days, ISO weeks Monday to Sunday, months,
// years, in the policy's time zone). keep_count (Cloud66) is keep_last under
// another name; retention_days (Appwrite) keeps backups younger than N days.
// On top of the rules, the newest backup and the `minimum` newest are always
// kept, so no run of rules can delete every good backup.

export interface RetentionRules {
  keep_count?: number | null;
  retention_days?: number | null;
  keep_last?: number | null;
  keep_hourly?: number | null;
  keep_daily?: number | null;
  keep_weekly?: number | null;
  keep_monthly?: number | null;
  keep_yearly?: number | null;
  /** always keep at least this many newest successful backups (default 1) */
  minimum?: number | null;
}

export interface RetentionCandidate {
  id: string;
  /** when the backup was taken (its start or creation time), ISO-8601 */
  taken_at: string;
}

export interface RetentionDecision {
  id: string;
  taken_at: string;
  keep: boolean;
  /** why it is kept, e.g. "keep_daily 2026-11-20", "newest"; empty when deleted */
  reasons: string[];
}

const CALENDAR_RULES = ['keep_hourly', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_yearly'] as const;

/** True when the rules say anything at all; without rules nothing is deleted. */
export function hasRules(rules: RetentionRules): boolean {
  return (['keep_count', 'retention_days', 'keep_last', ...CALENDAR_RULES] as const).some((k) => typeof rules[k] === 'number' && rules[k]! > 0);
}

interface ZonedParts {
  year: number;
  month: number;
  day: number;
  hour: number;
  weekday: number; // 1 = Monday ... 7 = Sunday
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function zonedParts(date: Date, timeZone: string): ZonedParts {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', hourCycle: 'h23', weekday: 'short' });
    formatters.set(timeZone, f);
  }
  const parts = Object.fromEntries(f.formatToParts(date).map((p) => [p.type, p.value]));
  const weekdays: Record<string, number> = { Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6, Sun: 7 };
  return { year: Number(parts.year), month: Number(parts.month), day: Number(parts.day), hour: Number(parts.hour), weekday: weekdays[parts.weekday!]! };
}

/** The ISO week (Monday to Sunday) a calendar day belongs to, as "YYYY-Www". */
export function isoWeek(year: number, month: number, day: number): string {
  // Work on the calendar date alone (UTC arithmetic), independent of time zones.
  const d = new Date(Date.UTC(year, month - 1, day));
  const weekday = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - weekday); // Thursday of this week decides its year
  const weekYear = d.getUTCFullYear();
  const week = Math.ceil(((d.getTime() - Date.UTC(weekYear, 0, 1)) / 86_400_000 + 1) / 7);
  return `${weekYear}-W${String(week).padStart(2, '0')}`;
}

function bucketOf(rule: (typeof CALENDAR_RULES)[number], p: ZonedParts): string {
  const mm = String(p.month).padStart(2, '0');
  const dd = String(p.day).padStart(2, '0');
  switch (rule) {
    case 'keep_hourly':
      return `${p.year}-${mm}-${dd} ${String(p.hour).padStart(2, '0')}h`;
    case 'keep_daily':
      return `${p.year}-${mm}-${dd}`;
    case 'keep_weekly':
      return isoWeek(p.year, p.month, p.day);
    case 'keep_monthly':
      return `${p.year}-${mm}`;
    case 'keep_yearly':
      return `${p.year}`;
  }
}

export function applyRetention(backups: RetentionCandidate[], rules: RetentionRules, now: Date, timeZone = 'UTC'): RetentionDecision[] {
  // Newest first; ties broken by id so the outcome does not depend on input order.
  const sorted = [...backups].sort((a, b) => Date.parse(b.taken_at) - Date.parse(a.taken_at) || (a.id < b.id ? 1 : -1));
  const decisions = sorted.map((b) => ({ id: b.id, taken_at: b.taken_at, keep: false, reasons: [] as string[] }));
  if (!hasRules(rules)) {
    for (const d of decisions) {
      d.keep = true;
      d.reasons.push('no retention rules');
    }
    return decisions;
  }
  const keep = (d: RetentionDecision, reason: string) => {
    d.keep = true;
    d.reasons.push(reason);
  };
  const minimum = Math.max(1, rules.minimum ?? 1);
  decisions.forEach((d, i) => {
    if (i === 0) keep(d, 'newest');
    else if (i < minimum) keep(d, `minimum ${minimum}`);
  });
  for (const [rule, n] of [['keep_last', rules.keep_last], ['keep_count', rules.keep_count]] as const) {
    if (!n || n <= 0) continue;
    decisions.slice(0, n).forEach((d) => keep(d, `${rule} ${n}`));
  }
  if (rules.retention_days && rules.retention_days > 0) {
    const cutoff = now.getTime() - rules.retention_days * 86_400_000;
    for (const d of decisions) if (Date.parse(d.taken_at) >= cutoff) keep(d, `retention_days ${rules.retention_days}`);
  }
  for (const rule of CALENDAR_RULES) {
    const n = rules[rule];
    if (!n || n <= 0) continue;
    const seen = new Set<string>();
    for (const d of decisions) {
      const bucket = bucketOf(rule, zonedParts(new Date(d.taken_at), timeZone));
      if (seen.has(bucket)) continue;
      // The newest backup of each bucket, for the n newest buckets.
      seen.add(bucket);
      keep(d, `${rule} ${bucket}`);
      if (seen.size >= n) break;
    }
  }
  return decisions;
}
