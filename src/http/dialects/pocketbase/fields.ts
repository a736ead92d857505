// PocketBase's `fields` query parameter: a comma separated list of
// (dot separated) paths to keep in a JSON response, where `*` keeps every key
// of its level, and `:excerpt(maxLength, withEllipsis?)` turns a string value
// into a short plain text version. Arrays are walked item by item.

export class FieldsError extends Error {}

interface Node {
  children: Map<string, Node>;
  excerpt: { max: number; ellipsis: boolean } | null;
}

const newNode = (): Node => ({ children: new Map(), excerpt: null });

/** Splits on commas that are not inside a modifier's parentheses. */
function splitTop(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth = Math.max(0, depth - 1);
    if (ch === ',' && depth === 0) {
      out.push(current);
      current = '';
    } else current += ch;
  }
  out.push(current);
  return out.map((s) => s.trim()).filter((s) => s.length > 0);
}

const MODIFIER_RE = /^([^:]+?)(?::([a-zA-Z_]+)\(([^)]*)\))?$/;

function parseExcerpt(args: string, field: string): { max: number; ellipsis: boolean } {
  const parts = args.split(',').map((s) => s.trim());
  const max = Number(parts[0]);
  if (parts[0] === '' || !Number.isInteger(max) || max < 0) throw new FieldsError(`The excerpt modifier of ${field} needs a whole maxLength.`);
  if (parts.length > 2) throw new FieldsError(`The excerpt modifier of ${field} takes at most 2 arguments.`);
  const flag = (parts[1] ?? 'false').toLowerCase();
  if (!['true', 'false', '1', '0', ''].includes(flag)) throw new FieldsError(`The withEllipsis argument of ${field} must be true or false.`);
  return { max, ellipsis: flag === 'true' || flag === '1' };
}

export function parseFields(param: string): Node {
  if (param.length > 2000) throw new FieldsError('The fields parameter is too long.');
  const root = newNode();
  for (const item of splitTop(param)) {
    const m = MODIFIER_RE.exec(item);
    if (!m) throw new FieldsError(`The field ${JSON.stringify(item)} cannot be read.`);
    const [, path, modifier, args] = m;
    let node = root;
    for (const part of path!.split('.').map((s) => s.trim())) {
      if (part === '') throw new FieldsError(`The field ${JSON.stringify(item)} has an empty path segment.`);
      let child = node.children.get(part);
      if (!child) {
        child = newNode();
        node.children.set(part, child);
      }
      node = child;
    }
    if (modifier !== undefined) {
      if (modifier !== 'excerpt') throw new FieldsError(`Unknown field modifier ${JSON.stringify(modifier)}; only excerpt is supported.`);
      node.excerpt = parseExcerpt(args ?? '', path!);
    }
  }
  return root;
}

/** Plain text of an HTML-ish string, at most max characters, "..." appended when cut and asked for. */
export function excerpt(value: string, max: number, ellipsis: boolean): string {
  const text = value
    .replace(/<(script|style)\b[^>]*>[\s\S]*?<\/\1\s*>/gi, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  const chars = Array.from(text);
  if (chars.length <= max) return text;
  return chars.slice(0, max).join('') + (ellipsis ? '...' : '');
}

function applyNode(value: unknown, node: Node): unknown {
  if (Array.isArray(value)) return value.map((v) => applyNode(v, node));
  if (value === null || typeof value !== 'object') return value;
  const src = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const star = node.children.get('*');
  for (const [key, v] of Object.entries(src)) {
    const own = node.children.get(key);
    if (own) out[key] = applyLeaf(v, own);
    else if (star) out[key] = applyLeaf(v, star);
  }
  return out;
}

function applyLeaf(value: unknown, node: Node): unknown {
  let v = node.children.size > 0 ? applyNode(value, node) : value;
  if (node.excerpt && typeof v === 'string') v = excerpt(v, node.excerpt.max, node.excerpt.ellipsis);
  return v;
}

/** The response limited to the fields asked for; everything when the parameter is absent or empty. */
export function pickFields<T>(value: T, param: string | undefined): T | unknown {
  if (param === undefined || param.trim() === '') return value;
  return applyNode(value, parseFields(param));
}
