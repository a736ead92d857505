import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { isPrivateAddress, safeFetch, RefusedAddressError } from './safe-fetch.ts';
import { readAll } from './read-all.ts';

test('loopback, private, link-local and mapped addresses are private', () => {
  for (const a of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '::1', 'fe80::1', 'fc00::1', '::ffff:127.0.0.1', '0.0.0.0']) {
    assert.equal(isPrivateAddress(a), true, a);
  }
  for (const a of ['8.8.8.8', '1.1.1.1', '2606:4700::1111']) assert.equal(isPrivateAddress(a), false, a);
});

test('a URL on the loopback is refused unless private addresses are allowed', async (t) => {
  const server = createServer((_req, res) => res.end('archive bytes'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  await assert.rejects(safeFetch(`http://127.0.0.1:${port}/x.tar`, { allowPrivate: false }), RefusedAddressError);
  // A name that resolves to the loopback is refused after resolution.
  await assert.rejects(safeFetch(`http://localhost:${port}/x.tar`, { allowPrivate: false }), (err: Error) => {
    return err instanceof RefusedAddressError || (err.cause instanceof RefusedAddressError);
  });
  const ok = await safeFetch(`http://127.0.0.1:${port}/x.tar`, { allowPrivate: true });
  assert.equal((await readAll(ok.stream, 1000)).toString(), 'archive bytes');
});

test('other schemes are refused', async () => {
  await assert.rejects(safeFetch('file:///etc/passwd', { allowPrivate: true }), RefusedAddressError);
});
