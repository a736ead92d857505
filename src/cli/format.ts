// Human output: compact tables and "key: value" blocks. --json bypasses all of
// this and prints the API's answer as it came.

export type Out = (line: string) => void;

export const stdout: Out = (line) => {
  process.stdout.write(`${line}\n`);
};

export const stderr: Out = (line) => {
  process.stderr.write(`${line}\n`);
};

export function printJson(value: unknown, out: Out = stdout): void {
  out(JSON.stringify(value ?? null, null, 2));
}

export function cell(value: unknown): string {
  if (value === null || value === undefined || value === '') return '-';
  if (typeof value === 'string') return value.replace(/[\r\n\t]+/g, ' ');
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Left-aligned columns separated by two spaces; "-" for empty cells. */
export function table(headers: string[], rows: unknown[][], out: Out = stdout): void {
  const cells = rows.map((r) => headers.map((_, i) => cell(r[i])));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  out(line(headers));
  for (const r of cells) out(line(r));
}

/** "key: value" lines, keys aligned; empty values are left out. */
export function fields(pairs: [string, unknown][], out: Out = stdout): void {
  const shown = pairs.filter(([, v]) => v !== undefined);
  const width = Math.max(0, ...shown.map(([k]) => k.length));
  for (const [k, v] of shown) out(`${`${k}:`.padEnd(width + 2)}${cell(v)}`);
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** An ISO timestamp shortened for tables: "2024-05-01 12:34:56". */
export function when(iso: string | null | undefined): string {
  if (!iso) return '-';
  return iso.replace('T', ' ').replace(/\.\d+Z$|Z$/, '');
}

export function paginationLine(p: { page: number; pages: number; total: number } | undefined, noun: string): string | null {
  if (!p) return null;
  if (p.pages <= 1) return `${p.total} ${noun}`;
  return `${p.total} ${noun}, page ${p.page} of ${p.pages} (use --page)`;
}
