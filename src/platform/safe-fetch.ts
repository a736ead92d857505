// Fetches a URL for an import without letting a user reach the server's own
// network: every address a connection is made to (redirects included) is
// checked after DNS resolution, so a public name pointing at 127.0.0.1 or a
// metadata service is refused too.
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import ipaddr from 'ipaddr.js';
import { Agent, fetch } from 'undici';
import type { Readable } from 'node:stream';
import { Readable as NodeReadable } from 'node:stream';

export class RefusedAddressError extends Error {}

/** True for addresses an import may not reach unless private ones are allowed. */
export function isPrivateAddress(address: string): boolean {
  let parsed = ipaddr.parse(address);
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) parsed = (parsed as ipaddr.IPv6).toIPv4Address();
  return parsed.range() !== 'unicast';
}

function guardedLookup(allowPrivate: boolean) {
  return (hostname: string, options: object, callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const list = addresses as LookupAddress[];
      if (!allowPrivate) {
        const bad = list.find((a) => isPrivateAddress(a.address));
        if (bad) return callback(new RefusedAddressError(`${hostname} resolves to a non-public address`), []);
      }
      if ((options as { all?: boolean }).all) return callback(null, list);
      const first = list[0];
      if (!first) return callback(new Error(`${hostname} has no address`), []);
      callback(null, first.address, first.family);
    });
  };
}

export interface FetchedBody {
  stream: Readable;
  contentLength: number | null;
}

export async function safeFetch(url: string, options: { allowPrivate: boolean; signal?: AbortSignal; timeoutMs?: number }): Promise<FetchedBody> {
  const parsed = new URL(url);
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new RefusedAddressError('only http and https URLs can be imported');
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  // Literal IPs skip DNS, so check them here.
  if (ipaddr.isValid(host) && !options.allowPrivate && isPrivateAddress(host)) throw new RefusedAddressError(`${host} is not a public address`);
  const agent = new Agent({ connect: { lookup: guardedLookup(options.allowPrivate) as never }, headersTimeout: options.timeoutMs ?? 30_000 });
  const res = await fetch(url, { dispatcher: agent, signal: options.signal, redirect: 'follow' });
  if (!res.ok || !res.body) {
    await res.body?.cancel();
    throw new Error(`the server answered ${res.status}`);
  }
  const len = res.headers.get('content-length');
  const stream = NodeReadable.fromWeb(res.body as never);
  stream.on('close', () => void agent.close());
  return { stream, contentLength: len && /^\d+$/.test(len) ? Number(len) : null };
}
