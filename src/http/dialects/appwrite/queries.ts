// Appwrite's `queries` param: each query is a JSON string
// {"method", "attribute"?, "values"?} as the SDK's Query class writes it, sent
// as queries[0]=...&queries[1]=... (or queries[]=...). Lists here are small
// (one project's archives, policies or restorations), so the queries are
// applied to the translated models in memory: every model field the schema
// names can be filtered and ordered on, whatever the core can filter by.
import { AppwriteError, paramInvalid } from './errors.ts';

export type AttrKind = 'string' | 'number' | 'date' | 'boolean' | 'array';
export type QuerySchema = Record<string, AttrKind>;

const MAX_QUERIES = 100;
const MAX_QUERY_LENGTH = 4096;
const MAX_LIMIT = 5000;
const MAX_OFFSET = 5000;
export const DEFAULT_LIMIT = 25;

const FILTERS = ['equal', 'notEqual', 'lessThan', 'lessThanEqual', 'greaterThan', 'greaterThanEqual', 'between', 'isNull', 'isNotNull', 'startsWith', 'endsWith', 'contains'] as const;
type FilterMethod = (typeof FILTERS)[number];
const SUPPORTED = [...FILTERS, 'orderAsc', 'orderDesc', 'limit', 'offset', 'cursorAfter', 'cursorBefore'];

interface Filter {
  method: FilterMethod;
  attribute: string;
  kind: AttrKind;
  values: unknown[];
}

export interface ParsedQueries {
  filters: Filter[];
  orders: { attribute: string; kind: AttrKind; desc: boolean }[];
  limit: number;
  offset: number;
  cursor: { id: string; before: boolean } | null;
}

type Model = { $id: string };

const field = (item: Model, attribute: string): unknown => (item as unknown as Record<string, unknown>)[attribute];

/** The raw query strings of a request URL, in the order the client numbered them. */
export function readQueries(url: string): string[] {
  const q = url.indexOf('?');
  if (q < 0) return [];
  const indexed: [number, string][] = [];
  const plain: string[] = [];
  for (const [key, value] of new URLSearchParams(url.slice(q + 1))) {
    const m = /^queries(?:\[(\d*)\])?$/.exec(key);
    if (!m) continue;
    if (m[1]) indexed.push([Number(m[1]), value]);
    else plain.push(value);
  }
  indexed.sort((a, b) => a[0] - b[0]);
  return [...indexed.map(([, v]) => v), ...plain];
}

const invalid = (why: string) => paramInvalid('queries', `Invalid query: ${why}`);

function checkValue(kind: AttrKind, attribute: string, v: unknown): void {
  const ok =
    kind === 'number'
      ? typeof v === 'number' && Number.isFinite(v)
      : kind === 'boolean'
        ? typeof v === 'boolean'
        : kind === 'date'
          ? typeof v === 'string' && !Number.isNaN(Date.parse(v))
          : typeof v === 'string';
  if (!ok) throw invalid(`Query value is invalid for attribute "${attribute}"`);
}

function integerOf(values: unknown, method: string, max: number): number {
  const v = Array.isArray(values) ? values[0] : undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw invalid(`Invalid ${method}: Value must be a valid range between 0 and ${max.toLocaleString('en-US')}`);
  }
  return v;
}

export function parseQueries(raw: string[], schema: QuerySchema): ParsedQueries {
  if (raw.length > MAX_QUERIES) throw paramInvalid('queries', `Value must be a valid array no longer than ${MAX_QUERIES} items`);
  const out: ParsedQueries = { filters: [], orders: [], limit: DEFAULT_LIMIT, offset: 0, cursor: null };
  for (const text of raw) {
    if (text.length > MAX_QUERY_LENGTH) throw paramInvalid('queries', `Each query may be at most ${MAX_QUERY_LENGTH} characters long`);
    let q: { method?: unknown; attribute?: unknown; values?: unknown };
    try {
      q = JSON.parse(text) as typeof q;
    } catch {
      throw invalid(`Syntax error: ${JSON.stringify(text.slice(0, 100))} is not a query; build queries with the SDK's Query class`);
    }
    if (!q || typeof q !== 'object' || typeof q.method !== 'string') throw invalid('Syntax error: a query is a JSON object with a method');
    const method = q.method;
    if (!SUPPORTED.includes(method)) throw invalid(`Query method not supported here: ${method}. Supported: ${SUPPORTED.join(', ')}`);
    const values = q.values === undefined ? [] : q.values;
    if (!Array.isArray(values)) throw invalid('Query values must be an array');
    switch (method) {
      case 'limit':
        out.limit = integerOf(values, 'limit', MAX_LIMIT);
        continue;
      case 'offset':
        out.offset = integerOf(values, 'offset', MAX_OFFSET);
        continue;
      case 'cursorAfter':
      case 'cursorBefore': {
        const id = values[0];
        if (typeof id !== 'string' || id === '') throw invalid('Invalid cursor: Cursor must contain the ID of an item');
        if (out.cursor) throw invalid('Only one cursor query is allowed');
        out.cursor = { id, before: method === 'cursorBefore' };
        continue;
      }
    }
    const attribute = q.attribute;
    if (typeof attribute !== 'string' || !(attribute in schema)) {
      throw invalid(`Attribute not found in schema: ${typeof attribute === 'string' ? attribute : ''}. Queryable attributes: ${Object.keys(schema).join(', ')}`);
    }
    const kind = schema[attribute]!;
    if (method === 'orderAsc' || method === 'orderDesc') {
      out.orders.push({ attribute, kind, desc: method === 'orderDesc' });
      continue;
    }
    const f = method as FilterMethod;
    if (f === 'isNull' || f === 'isNotNull') {
      out.filters.push({ method: f, attribute, kind, values: [] });
      continue;
    }
    if (values.length === 0) throw invalid(`${f} queries need at least one value`);
    if (values.length > 100) throw invalid('Query limit exceeded: at most 100 values per query');
    if (f === 'between' && values.length !== 2) throw invalid('between queries need exactly two values');
    // Arrays hold strings; strings and arrays take text for the text matches.
    const valueKind: AttrKind = kind === 'array' ? 'string' : kind;
    if ((f === 'startsWith' || f === 'endsWith') && valueKind !== 'string') throw invalid(`${f} works on text attributes only, not "${attribute}"`);
    for (const v of values) checkValue(valueKind, attribute, v);
    out.filters.push({ method: f, attribute, kind, values });
  }
  return out;
}

/** Orders two values of one kind; unset ('' or missing) comes first. */
function compare(kind: AttrKind, a: unknown, b: unknown): number {
  const unsetA = a === undefined || a === null || a === '';
  const unsetB = b === undefined || b === null || b === '';
  if (unsetA || unsetB) return unsetA === unsetB ? 0 : unsetA ? -1 : 1;
  if (kind === 'date') return Date.parse(a as string) - Date.parse(b as string);
  if (kind === 'number') return (a as number) - (b as number);
  if (kind === 'boolean') return Number(a) - Number(b);
  const x = Array.isArray(a) ? a.join(',') : String(a);
  const y = Array.isArray(b) ? b.join(',') : String(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function matches(f: Filter, item: Model): boolean {
  const v = field(item, f.attribute);
  const unset = v === undefined || v === null || v === '';
  if (f.method === 'isNull') return unset;
  if (f.method === 'isNotNull') return !unset;
  // An array attribute matches when any of its elements does.
  const scalars = Array.isArray(v) ? (v as unknown[]) : [v];
  const kind = f.kind === 'array' ? 'string' : f.kind;
  const one = (x: unknown): boolean => {
    const c = (w: unknown) => compare(kind, x, w);
    switch (f.method) {
      case 'equal':
        return f.values.some((w) => c(w) === 0);
      case 'notEqual':
        return f.values.every((w) => c(w) !== 0);
      case 'lessThan':
        return !unset && c(f.values[0]) < 0;
      case 'lessThanEqual':
        return !unset && c(f.values[0]) <= 0;
      case 'greaterThan':
        return !unset && c(f.values[0]) > 0;
      case 'greaterThanEqual':
        return !unset && c(f.values[0]) >= 0;
      case 'between':
        return !unset && c(f.values[0]) >= 0 && c(f.values[1]) <= 0;
      case 'startsWith':
        return typeof x === 'string' && f.values.some((w) => x.startsWith(w as string));
      case 'endsWith':
        return typeof x === 'string' && f.values.some((w) => x.endsWith(w as string));
      case 'contains':
        return typeof x === 'string' && f.values.some((w) => (Array.isArray(v) ? x === w : x.includes(w as string)));
      default:
        return false;
    }
  };
  if (f.method === 'notEqual') return scalars.every(one);
  return scalars.some(one);
}

/**
 * Filters, orders and pages the items. Without an order they come oldest
 * first ($createdAt, then $id), as Appwrite lists documents; $id breaks ties
 * in the direction of the last order, so cursors are exact.
 */
export function applyQueries<T extends Model>(all: T[], q: ParsedQueries, cursorNotFound: (id: string) => AppwriteError): { total: number; items: T[] } {
  const orders = q.orders.length > 0 ? q.orders : [{ attribute: '$createdAt', kind: 'date' as AttrKind, desc: false }];
  const lastDesc = orders[orders.length - 1]!.desc;
  const cmp = (a: T, b: T): number => {
    for (const o of orders) {
      const c = compare(o.kind, field(a, o.attribute), field(b, o.attribute));
      if (c !== 0) return o.desc ? -c : c;
    }
    const c = compare('string', a.$id, b.$id);
    return lastDesc ? -c : c;
  };
  const filtered = all.filter((item) => q.filters.every((f) => matches(f, item))).sort(cmp);
  let window = filtered;
  if (q.cursor) {
    const at = all.find((x) => x.$id === q.cursor!.id);
    if (!at) throw cursorNotFound(q.cursor.id);
    if (q.cursor.before) {
      // The items just before the cursor, in list order.
      const before = filtered.filter((x) => cmp(x, at) < 0).reverse();
      return { total: filtered.length, items: before.slice(q.offset, q.offset + q.limit).reverse() };
    }
    window = filtered.filter((x) => cmp(x, at) > 0);
  }
  return { total: filtered.length, items: window.slice(q.offset, q.offset + q.limit) };
}
