import type { ObjectCounts } from './types.ts';

/**
 * Compares what a dump recorded with what a restore produced. Every field the
 * dump recorded must agree; fields the dump did not record are not compared.
 * Returns human-readable differences, empty when equal.
 */
export function compareCounts(expected: ObjectCounts, actual: ObjectCounts): string[] {
  const diffs: string[] = [];
  if (expected.tables) {
    const got = actual.tables ?? {};
    for (const [table, rows] of Object.entries(expected.tables)) {
      if (!(table in got)) diffs.push(`table ${table} is missing`);
      else if (got[table] !== rows) diffs.push(`table ${table} has ${got[table]} rows, expected ${rows}`);
    }
    for (const table of Object.keys(got)) {
      if (!(table in expected.tables)) diffs.push(`table ${table} is not in the backup`);
    }
  }
  for (const field of ['keys', 'files', 'directories', 'symlinks', 'bytes', 'tree_sha256'] as const) {
    const want = expected[field];
    if (want === undefined) continue;
    const got = actual[field];
    if (got !== want) diffs.push(`${field}: got ${got ?? 'nothing'}, expected ${want}`);
  }
  return diffs;
}
