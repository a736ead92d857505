// Turns a selection and exclusions into pg_dump switches, checking first
// that every selected name exists (so a typo is invalid_selection before
// anything runs, not a failed job). Syntax: see the top of index.ts.
import type pg from 'pg';
import { AppError } from '../../errors/index.ts';

export interface DumpFilter {
  args: string[];
  warnings: string[];
}

/** Relation kinds pg_dump -t matches: tables, sequences, views, materialized views, foreign and partitioned tables. */
const REL_KINDS = `ARRAY['r','S','v','m','f','p']::"char"[]`;

const quote = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/**
 * The regular expressions pg_dump builds from a psql-style name pattern
 * (fe_utils processSQLNamePattern): unquoted letters fold to lower case, * and
 * ? are wildcards, a dot separates schema from name, double quotes keep
 * everything literal.
 */
export function patternRegex(pattern: string): { schema: string | null; name: string } {
  const parts = [''];
  let inQuotes = false;
  const add = (s: string) => {
    parts[parts.length - 1] += s;
  };
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '"') {
      if (inQuotes && pattern[i + 1] === '"') {
        add('"');
        i++;
      } else inQuotes = !inQuotes;
    } else if (!inQuotes && ch >= 'A' && ch <= 'Z') add(ch.toLowerCase());
    else if (!inQuotes && ch === '*') add('.*');
    else if (!inQuotes && ch === '?') add('.');
    else if (!inQuotes && ch === '.') parts.push('');
    else if (ch === '$') add('\\$');
    else add(inQuotes && '|*+?()[]{}.^\\'.includes(ch) ? `\\${ch}` : ch);
  }
  if (parts.length > 2) throw new AppError('invalid_selection', `"${pattern}" has more than one dot; write schema.table (database names are not allowed).`);
  return parts.length === 2 ? { schema: parts[0]!, name: parts[1]! } : { schema: null, name: parts[0]! };
}

async function query<T extends pg.QueryResultRow>(client: pg.Client, sql: string, params: unknown[], entry: string): Promise<T[]> {
  try {
    return (await client.query<T>(sql, params)).rows;
  } catch (err) {
    // An invalid regular expression inside a pattern ("[a") lands here.
    throw new AppError('invalid_selection', `"${entry}" is not a valid name pattern: ${(err as Error).message}`, { entry });
  }
}

/** pg_dump patterns for a table entry: exact names quoted; otherwise the entry itself, if it matches anything. */
async function tablePatterns(client: pg.Client, entry: string): Promise<string[]> {
  const exact = await query<{ nspname: string; relname: string }>(
    client,
    `SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = ANY (${REL_KINDS})
       AND (n.nspname || '.' || c.relname = $1 OR (c.relname = $1 AND pg_catalog.pg_table_is_visible(c.oid)))`,
    [entry],
    entry,
  );
  if (exact.length) return exact.map((r) => `${quote(r.nspname)}.${quote(r.relname)}`);
  const re = patternRegex(entry);
  const rows = await query<{ n: number }>(
    client,
    `SELECT count(*)::int AS n FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = ANY (${REL_KINDS})
       AND c.relname OPERATOR(pg_catalog.~) ('^(' || $1 || ')$') COLLATE pg_catalog.default
       AND CASE WHEN $2::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)
                ELSE n.nspname OPERATOR(pg_catalog.~) ('^(' || $2 || ')$') COLLATE pg_catalog.default END`,
    [re.name, re.schema],
    entry,
  );
  return rows[0]!.n > 0 ? [entry] : [];
}

async function schemaPatterns(client: pg.Client, entry: string): Promise<string[]> {
  const exact = await query<{ nspname: string }>(client, `SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = $1`, [entry], entry);
  if (exact.length) return [quote(exact[0]!.nspname)];
  const re = patternRegex(entry);
  if (re.schema !== null) throw new AppError('invalid_selection', `schema:${entry} has a dot; a schema entry names one schema (or a pattern of them).`);
  const rows = await query<{ n: number }>(
    client,
    `SELECT count(*)::int AS n FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.~) ('^(' || $1 || ')$') COLLATE pg_catalog.default`,
    [re.name],
    entry,
  );
  return rows[0]!.n > 0 ? [entry] : [];
}

function split(entry: unknown, prefixes: string[], what: string): { prefix: string | null; name: string } {
  if (typeof entry !== 'string' || entry.trim() === '') throw new AppError('invalid_selection', `An empty entry in the ${what} names nothing.`);
  for (const p of prefixes) {
    if (entry.startsWith(`${p}:`)) {
      const name = entry.slice(p.length + 1);
      if (name === '') throw new AppError('invalid_selection', `"${entry}" names nothing after "${p}:".`);
      return { prefix: p, name };
    }
  }
  return { prefix: null, name: entry };
}

export async function resolveFilter(client: pg.Client, selection: string[] | null, exclude: string[]): Promise<DumpFilter> {
  const args: string[] = [];
  const warnings: string[] = [];
  if (selection !== null) {
    if (selection.length === 0) throw new AppError('invalid_selection', 'The selection is an empty list; use null to take everything.');
    const parsed = selection.map((e) => split(e, ['schema'], 'selection'));
    const tables = parsed.filter((p) => p.prefix === null).map((p) => p.name);
    const schemas = parsed.filter((p) => p.prefix === 'schema').map((p) => p.name);
    const missing: string[] = [];
    for (const t of tables) {
      const pats = await tablePatterns(client, t);
      if (!pats.length) missing.push(t);
      for (const p of pats) args.push('-t', p);
    }
    for (const s of schemas) {
      const pats = await schemaPatterns(client, s);
      if (!pats.length) {
        missing.push(`schema:${s}`);
        continue;
      }
      if (tables.length === 0) {
        for (const p of pats) args.push('-n', p);
        continue;
      }
      // pg_dump ignores -n as soon as one -t is given, so with table entries
      // a schema entry becomes "every table in it".
      for (const p of pats) {
        const inSchema = await tablePatterns(client, `${p}.*`);
        if (!inSchema.length) missing.push(`schema:${s} (it has no tables)`);
        else args.push('-t', `${p}.*`);
      }
      warnings.push(`schema:${s} is combined with table entries, so only its tables are taken, not its functions, types or other objects.`);
    }
    if (missing.length) {
      throw new AppError('invalid_selection', `The selection names what this database does not have: ${missing.join(', ')}.`, { missing });
    }
    // A safety net: pg_dump itself fails if a pattern matches nothing.
    args.push('--strict-names');
  }
  for (const e of exclude) {
    const { prefix, name } = split(e, ['data', 'schema'], 'exclusions');
    const pats = prefix === 'schema' ? await schemaPatterns(client, name) : await tablePatterns(client, name);
    if (!pats.length) {
      warnings.push(`The exclusion "${e}" matches nothing in this database.`);
      continue;
    }
    const flag = prefix === 'schema' ? '-N' : prefix === 'data' ? '--exclude-table-data' : '-T';
    for (const p of pats) args.push(flag, p);
  }
  return { args, warnings };
}
