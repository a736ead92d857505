// What every PocketBase route reads from a request: its credential and its instance.
import type { FastifyRequest } from 'fastify';
import { NAME_PATTERN } from '../../../domain/types.ts';
import { notFound } from './errors.ts';

/** Who may call a route: anyone, any valid credential, an admin one, or a file token (checked by the route). */
export type PbAuth = 'public' | 'read' | 'admin' | 'download';

declare module 'fastify' {
  interface FastifyContextConfig {
    pocketbaseAuth?: PbAuth;
  }
}

const INSTANCE_RE = new RegExp(NAME_PATTERN);

/** PocketBase sends the raw token in Authorization; "Bearer <token>" is accepted too. */
export function credentialOf(req: FastifyRequest): string | null {
  const header = req.headers.authorization;
  if (!header) return null;
  const m = /^(?:Bearer\s+)?(\S+)$/i.exec(header.trim());
  return m ? m[1]! : null;
}

/** The instance named in the prefix; an impossible name is a 404, like an unknown one. */
export function instanceOf(req: FastifyRequest): string {
  const name = (req.params as { instance?: string }).instance ?? '';
  if (!INSTANCE_RE.test(name)) throw notFound();
  return name;
}
