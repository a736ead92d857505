import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, parseHostPort, ConfigError } from './index.ts';

test('defaults serve on 127.0.0.1:8090 with ./backvault-data', () => {
  const c = loadConfig({ env: {}, configFile: undefined, flags: { dir: join(tmpdir(), 'bv-none') } });
  assert.equal(c.host, '127.0.0.1');
  assert.equal(c.port, 8090);
  assert.equal(loadConfig({ env: {} }).dir.endsWith('backvault-data'), true);
});

test('file < env < flags, with types checked', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bv-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ port: 9000, workers: 3, rate_limit_per_minute: 10 }));
  const c = loadConfig({ env: { BACKVAULT_DIR: dir, BACKVAULT_WORKERS: '5' }, flags: { rate_limit_per_minute: 20 } });
  assert.equal(c.port, 9000);
  assert.equal(c.workers, 5);
  assert.equal(c.rate_limit_per_minute, 20);
  assert.throws(() => loadConfig({ env: { BACKVAULT_DIR: dir, BACKVAULT_PORT: 'eighty' } }), ConfigError);
  await writeFile(join(dir, 'config.json'), JSON.stringify({ unknown_key: 1 }));
  assert.throws(() => loadConfig({ env: { BACKVAULT_DIR: dir } }), /invalid configuration/);
});

test('HOST:PORT parsing', () => {
  assert.deepEqual(parseHostPort('0.0.0.0:80'), { host: '0.0.0.0', port: 80 });
  assert.deepEqual(parseHostPort('[::1]:8090'), { host: '::1', port: 8090 });
  assert.deepEqual(parseHostPort(':9'), { host: '127.0.0.1', port: 9 });
  assert.throws(() => parseHostPort('nope'), ConfigError);
});

test('the Syncano account limit is a config key, 25 by default', () => {
  assert.equal(loadConfig({ env: {} }).syncano_max_backups, 25);
  assert.equal(loadConfig({ env: { BACKVAULT_SYNCANO_MAX_BACKUPS: '3' } }).syncano_max_backups, 3);
  assert.throws(() => loadConfig({ env: { BACKVAULT_SYNCANO_MAX_BACKUPS: 'many' } }), ConfigError);
});

test('worker_idle_seconds: 5 by default, from the environment, whole seconds from 1 to a day', () => {
  assert.equal(loadConfig({ env: {} }).worker_idle_seconds, 5);
  assert.equal(loadConfig({ env: { BACKVAULT_WORKER_IDLE_SECONDS: '120' } }).worker_idle_seconds, 120);
  for (const bad of ['0', '-1', '1.5', 'long', '86401']) assert.throws(() => loadConfig({ env: { BACKVAULT_WORKER_IDLE_SECONDS: bad } }), ConfigError, bad);
});
