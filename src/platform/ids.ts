import { randomBytes } from 'node:crypto';

/**
 * Sortable unique ids: 10 hex chars of milliseconds then 12 random hex chars,
 * so ids order by creation and are safe as storage path segments.
 */
export function newId(now: number = Date.now()): string {
  return now.toString(16).padStart(12, '0') + randomBytes(6).toString('hex');
}

/** A random secret, base64url. */
export function randomSecret(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}
