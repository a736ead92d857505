import { randomBytes } from 'node:crypto';

let lastMs = -1;
let seq = 0;

/**
 * Sortable unique ids, 24 hex characters: 12 of milliseconds, 4 of a counter
 * within the millisecond (so ids made in one process sort in creation order),
 * 8 random. Safe as storage path segments.
 */
export function newId(now: number = Date.now()): string {
  if (now === lastMs) seq = (seq + 1) & 0xffff;
  else {
    lastMs = now;
    seq = 0;
  }
  return now.toString(16).padStart(12, '0') + seq.toString(16).padStart(4, '0') + randomBytes(4).toString('hex');
}

/** A random secret, base64url. */
export function randomSecret(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}
