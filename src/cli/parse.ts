// Parsers for repeatable and structured options. They throw UsageError so
// bad input exits 2 before anything is sent.
import { InvalidArgumentError } from 'commander';
import { UsageError } from './errors.ts';

export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** commander argParser: its error reads "option '--page <n>' argument 'x' is invalid. It must be ..." */
export function positiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError('It must be a positive integer.');
  return Number(value);
}

function splitOnce(value: string, option: string, form: string): [string, string] {
  const i = value.indexOf('=');
  if (i <= 0) throw new UsageError(`${option} takes ${form}, got ${JSON.stringify(value)}`);
  return [value.slice(0, i), value.slice(i + 1)];
}

function objectList(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/**
 * --select RES (the whole resource) or RES=OBJ,OBJ (those objects); several
 * --select for one resource add up, and the whole resource wins over a list.
 */
export function parseSelection(values: string[]): Record<string, string[] | null> {
  const selection: Record<string, string[] | null> = {};
  for (const value of values) {
    if (!value.includes('=')) {
      if (value === '') throw new UsageError('--select takes RES or RES=OBJ,OBJ');
      selection[value] = null;
      continue;
    }
    const [res, raw] = splitOnce(value, '--select', 'RES or RES=OBJ,OBJ');
    const objects = objectList(raw);
    if (objects.length === 0) throw new UsageError(`--select ${res}= names no objects; use --select ${res} for the whole resource`);
    const prev = selection[res];
    if (prev === null) continue;
    selection[res] = [...(prev ?? []), ...objects];
  }
  return selection;
}

/** --exclude RES=OBJ,OBJ, repeatable. */
export function parseExclude(values: string[]): Record<string, string[]> {
  const exclude: Record<string, string[]> = {};
  for (const value of values) {
    const [res, raw] = splitOnce(value, '--exclude', 'RES=OBJ,OBJ');
    const objects = objectList(raw);
    if (objects.length === 0) throw new UsageError(`--exclude ${res}= names no objects`);
    exclude[res] = [...(exclude[res] ?? []), ...objects];
  }
  return exclude;
}

/** --target RES=CONNECTION; the connection may itself hold "=". */
export function parseTargets(values: string[]): Record<string, { connection: string }> {
  const targets: Record<string, { connection: string }> = {};
  for (const value of values) {
    const [res, connection] = splitOnce(value, '--target', 'RES=CONNECTION');
    if (connection === '') throw new UsageError(`--target ${res}= has no connection`);
    if (res in targets) throw new UsageError(`--target names ${res} twice`);
    targets[res] = { connection };
  }
  return targets;
}

/**
 * --option key=value. Values that read as JSON scalars (numbers, true, false,
 * null) or JSON arrays/objects are taken as such; anything else is a string.
 * Quote a value as JSON ("\"123\"") to force a string.
 */
export function parseOptions(values: string[]): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  for (const value of values) {
    const [key, raw] = splitOnce(value, '--option', 'key=value');
    options[key] = jsonish(raw);
  }
  return options;
}

function jsonish(raw: string): unknown {
  if (/^(-?\d+(\.\d+)?|true|false|null)$/.test(raw) || /^[[{"]/.test(raw)) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  return raw;
}
