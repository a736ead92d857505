// Notification channels end to end: real backups (sqlite succeeding, a files
// resource whose directory is gone failing), a real restore drill on a
// damaged artifact, a real HTTP receiver that checks the signature and fails
// each delivery's first attempt with 503, and a real SMTP listener.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SMTPServer } from 'smtp-server';
import { startTestServer, tempDir, waitFor, type TestServer, runCli } from './helpers.ts';
import { notifierOf } from '../src/services/notifications.ts';

const SECRET = 'whsec-test-0123456789abcdef';
const SMTP_USER = 'mailer';
const SMTP_PASSWORD = 'smtp-pa55word-never-shown';

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  raw: string;
  body: any;
  valid: boolean;
  status: number;
}

/** A webhook receiver as a user would write one: checks the signature and the timestamp's age. */
async function startReceiver(secret: string): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const seen = new Set<string>();
  const server: HttpServer = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const ts = String(req.headers['x-backvault-timestamp'] ?? '');
      const given = Buffer.from(String(req.headers['x-backvault-signature'] ?? ''));
      const expected = Buffer.from(`sha256=${createHmac('sha256', secret).update(`${ts}.${raw}`).digest('hex')}`);
      const fresh = Math.abs(Date.now() / 1000 - Number(ts)) < 300;
      const valid = fresh && given.length === expected.length && timingSafeEqual(given, expected);
      const body = JSON.parse(raw);
      const delivery = String(req.headers['x-backvault-delivery']);
      const first = !seen.has(delivery);
      seen.add(delivery);
      // Every real delivery's first attempt fails, so each one proves the retry.
      const status = !valid ? 401 : first && body.event !== 'test' ? 503 : 204;
      received.push({ path: req.url ?? '', headers: req.headers, raw, body, valid, status });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, received, close: () => new Promise((r) => server.close(() => r())) };
}

interface Mail {
  from: string;
  to: string[];
  user: string | undefined;
  raw: string;
  subject: string;
  text: string;
}

function decodeBody(raw: string): string {
  const [head = '', ...rest] = raw.split(/\r?\n\r?\n/);
  const body = rest.join('\n\n');
  if (/content-transfer-encoding:\s*quoted-printable/i.test(head)) {
    return Buffer.from(body.replace(/=\r?\n/g, '').replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8');
  }
  if (/content-transfer-encoding:\s*base64/i.test(head)) return Buffer.from(body, 'base64').toString('utf8');
  return body;
}

async function startSmtp(): Promise<{ port: number; mails: Mail[]; close(): Promise<void> }> {
  const mails: Mail[] = [];
  const smtp = new SMTPServer({
    secure: false,
    disabledCommands: ['STARTTLS'],
    allowInsecureAuth: true,
    authMethods: ['PLAIN', 'LOGIN'],
    logger: false,
    onAuth(auth, _session, cb) {
      if (auth.username === SMTP_USER && auth.password === SMTP_PASSWORD) cb(null, { user: SMTP_USER });
      else cb(new Error('Invalid username or password'));
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const raw = Buffer.concat(chunks).toString('utf8');
        const subject = /^Subject: (.*(?:\r?\n[ \t].*)*)/im.exec(raw)?.[1]?.replace(/\r?\n[ \t]/g, ' ') ?? '';
        mails.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          user: session.user as string | undefined,
          raw,
          subject,
          text: decodeBody(raw),
        });
        cb();
      });
    },
  });
  await new Promise<void>((r) => smtp.listen(0, '127.0.0.1', () => r()));
  const { port } = smtp.server.address() as AddressInfo;
  return { port, mails, close: () => new Promise((r) => smtp.close(() => r())) };
}

async function until<T>(what: string, fn: () => T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    if ((await stat(p)).isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

describe('notifications', () => {
  let t: TestServer;
  let hook: Awaited<ReturnType<typeof startReceiver>>;
  let smtp: Awaited<ReturnType<typeof startSmtp>>;
  let work: Awaited<ReturnType<typeof tempDir>>;
  const ids: Record<string, string> = {};

  before(async () => {
    [t, hook, smtp, work] = await Promise.all([
      startTestServer({ notification_retry_base_ms: 50, notification_max_attempts: 4, notification_timeout_ms: 5000 }),
      startReceiver(SECRET),
      startSmtp(),
      tempDir(),
    ]);
  });
  after(async () => {
    await t?.close();
    await Promise.all([hook?.close(), smtp?.close(), work?.cleanup()]);
  });

  test('channels are created by admins, read back with secrets masked, and validated', async () => {
    const all = await t.api('POST', '/api/v1/notifications', { name: 'ops hook', kind: 'webhook', config: { url: `${hook.url}/all`, secret: SECRET } });
    assert.equal(all.status, 201, JSON.stringify(all.body));
    assert.deepEqual(all.body.config, { url: `${hook.url}/all`, secret: '****' });
    assert.deepEqual(all.body.events, ['backup.success', 'backup.failure', 'verify.failure', 'policy.late']);
    assert.equal(all.body.failures_only, false);
    assert.equal(all.body.enabled, true);
    assert.equal(all.body.last_status, null);
    assert.equal(all.body.secret, undefined);
    ids.all = all.body.id;

    const failures = await t.api('POST', '/api/v1/notifications', { name: 'pager', kind: 'webhook', config: { url: `${hook.url}/failures`, secret: SECRET }, failures_only: true });
    assert.equal(failures.status, 201);
    ids.failures = failures.body.id;
    const drills = await t.api('POST', '/api/v1/notifications', { name: 'drills', kind: 'webhook', config: { url: `${hook.url}/drills`, secret: SECRET }, events: ['verify.failure'] });
    assert.equal(drills.status, 201);
    assert.deepEqual(drills.body.events, ['verify.failure']);
    ids.drills = drills.body.id;

    const mail = await t.api('POST', '/api/v1/notifications', {
      name: 'mail',
      kind: 'email',
      config: { host: '127.0.0.1', port: smtp.port, security: 'none', user: SMTP_USER, password: SMTP_PASSWORD, from: 'Backvault <backvault@example.test>', to: ['ops@example.test', 'dba@example.test'] },
      events: ['backup.success', 'backup.failure', 'verify.failure'],
    });
    assert.equal(mail.status, 201, JSON.stringify(mail.body));
    assert.deepEqual(mail.body.config, {
      host: '127.0.0.1',
      port: smtp.port,
      security: 'none',
      user: SMTP_USER,
      password: '****',
      from: 'Backvault <backvault@example.test>',
      to: ['ops@example.test', 'dba@example.test'],
    });
    ids.mail = mail.body.id;

    // URL credentials and secret-looking query values are masked; a left-out secret is generated and shown once.
    const masked = await t.api('POST', '/api/v1/notifications', { name: 'paused', kind: 'webhook', config: { url: 'https://bot:hunter22@hooks.example.test/in?token=tok-123&team=a' }, enabled: false });
    assert.equal(masked.status, 201, JSON.stringify(masked.body));
    assert.match(masked.body.secret, /^[A-Za-z0-9_-]{40,}$/);
    assert.equal(masked.body.config.url, 'https://bot:****@hooks.example.test/in?token=****&team=a');
    ids.paused = masked.body.id;
    const again = await t.api('GET', `/api/v1/notifications/${ids.paused}`);
    assert.equal(again.status, 200);
    assert.equal(again.body.secret, undefined);
    assert.equal(again.body.config.secret, '****');

    const list = await t.api('GET', '/api/v1/notifications');
    assert.equal(list.status, 200);
    assert.equal(list.body.pagination.total, 5);
    assert.deepEqual(
      list.body.items.map((c: any) => c.name),
      ['ops hook', 'pager', 'drills', 'mail', 'paused'],
    );
    const text = JSON.stringify(list.body);
    for (const secret of [SECRET, SMTP_PASSWORD, 'hunter22', 'tok-123', masked.body.secret]) assert.ok(!text.includes(secret), `list leaks ${secret}`);

    // Validation names the field; kinds are checked against their own config.
    const noTo = await t.api('POST', '/api/v1/notifications', { name: 'x', kind: 'email', config: { host: 'smtp.example.test', from: 'a@example.test' } });
    assert.equal(noTo.status, 400);
    assert.equal(noTo.body.error.code, 'invalid_request');
    assert.match(noTo.body.error.message, /config\/to/);
    const badUrl = await t.api('POST', '/api/v1/notifications', { name: 'x', kind: 'webhook', config: { url: 'ftp://example.test/x' } });
    assert.equal(badUrl.status, 400);
    assert.match(badUrl.body.error.message, /http or https/);
    const shortSecret = await t.api('POST', '/api/v1/notifications', { name: 'x', kind: 'webhook', config: { url: 'http://example.test', secret: 'short' } });
    assert.equal(shortSecret.status, 400);
    assert.ok(!JSON.stringify(shortSecret.body).includes('"short"'));
    const injected = await t.api('POST', '/api/v1/notifications', { name: 'x', kind: 'email', config: { host: 'h', from: 'a@b.c\r\nBcc: x@y.z', to: ['o@b.c'] } });
    assert.equal(injected.status, 400);
    const badEvent = await t.api('POST', '/api/v1/notifications', { name: 'x', kind: 'webhook', config: { url: 'http://example.test' }, events: ['backup.started'] });
    assert.equal(badEvent.status, 400);
    const dup = await t.api('POST', '/api/v1/notifications', { name: 'pager', kind: 'webhook', config: { url: 'http://example.test' } });
    assert.equal(dup.status, 409);
    assert.equal(dup.body.error.code, 'already_exists');
    const missing = await t.api('GET', '/api/v1/notifications/0123456789abcdef01234567');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'notification_not_found');

    // Read keys read; only admin keys write or send.
    const key = await t.api('POST', '/api/v1/keys', { name: 'viewer', scope: 'read' });
    const read = key.body.key as string;
    assert.equal((await t.api('GET', '/api/v1/notifications', undefined, read)).status, 200);
    assert.equal((await t.api('GET', `/api/v1/notifications/${ids.all}`, undefined, read)).status, 200);
    assert.equal((await t.api('POST', '/api/v1/notifications', { name: 'y', kind: 'webhook', config: { url: 'http://example.test' } }, read)).status, 403);
    assert.equal((await t.api('POST', `/api/v1/notifications/${ids.all}/test`, undefined, read)).status, 403);
    assert.equal((await t.api('DELETE', `/api/v1/notifications/${ids.all}`, undefined, read)).status, 403);
    assert.equal((await t.api('GET', '/api/v1/notifications', undefined, null)).status, 401);

    const doc = await t.api('GET', '/api/v1/openapi.json', undefined, null);
    assert.ok(doc.body.paths['/api/v1/notifications/{id}/test'], 'the routes are in the OpenAPI document');
  });

  test('a test message is sent at once and answered with the delivery result', async () => {
    const ok = await t.api('POST', `/api/v1/notifications/${ids.all}/test`);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.ok, true);
    assert.equal(ok.body.attempts, 1);
    assert.equal(ok.body.status_code, 204);
    const got = hook.received.find((r) => r.body.event === 'test');
    assert.ok(got?.valid, 'the test message is signed');
    assert.equal(got!.headers['x-backvault-event'], 'test');
    assert.match(got!.body.text, /test message from Backvault for the notification channel "ops hook"/);

    const mail = await t.api('POST', `/api/v1/notifications/${ids.mail}/test`);
    assert.equal(mail.body.ok, true, JSON.stringify(mail.body));
    const m = await until('the test e-mail', () => smtp.mails.find((x) => x.subject.includes('Test message')));
    assert.equal(m.user, SMTP_USER, 'logged in with the configured user');
    assert.equal(m.from, 'backvault@example.test');
    assert.deepEqual(m.to, ['ops@example.test', 'dba@example.test']);

    // A receiver that is not there: the answer says so without the URL's secrets, and the channel records it.
    const dead = await t.api('POST', '/api/v1/notifications', { name: 'dead', kind: 'webhook', config: { url: 'http://u:pw-dead-1@127.0.0.1:9/x?secret=s3cr3t-dead', secret: SECRET } });
    const res = await t.api('POST', `/api/v1/notifications/${dead.body.id}/test`);
    assert.equal(res.status, 200);
    assert.equal(res.body.ok, false);
    assert.equal(res.body.attempts, 1);
    assert.match(res.body.error, /could not reach the receiver \(ECONNREFUSED\)/);
    const after = await t.api('GET', `/api/v1/notifications/${dead.body.id}`);
    assert.equal(after.body.last_status, 'error');
    assert.match(after.body.last_error, /ECONNREFUSED/);
    assert.ok(after.body.last_attempt_at);
    assert.ok(!JSON.stringify([res.body, after.body]).match(/pw-dead-1|s3cr3t-dead/));

    // A refused SMTP login is reported without the password.
    const wrong = await t.api('POST', '/api/v1/notifications', {
      name: 'wrong login',
      kind: 'email',
      config: { host: '127.0.0.1', port: smtp.port, security: 'none', user: SMTP_USER, password: 'not-the-password-42', from: 'a@example.test', to: ['b@example.test'] },
    });
    const refused = await t.api('POST', `/api/v1/notifications/${wrong.body.id}/test`);
    assert.equal(refused.body.ok, false);
    assert.match(refused.body.error, /refused the login/);
    assert.ok(!refused.body.error.includes('not-the-password-42'));

    for (const id of [dead.body.id, wrong.body.id]) assert.equal((await t.api('DELETE', `/api/v1/notifications/${id}`)).status, 204);
  });

  test('real backups notify: signed, retried after a 503, e-mailed; failures-only channels get only the failure', async () => {
    const dbPath = join(work.path, 'shop.db');
    const db = new Database(dbPath);
    db.exec('CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)');
    db.prepare('INSERT INTO orders (total) VALUES (?)').run(12.5);
    db.close();
    await t.api('POST', '/api/v1/instances', { name: 'shop' });
    await t.api('POST', '/api/v1/instances/shop/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const site = join(work.path, 'site');
    await mkdir(site);
    await writeFile(join(site, 'index.html'), 'hi');
    await t.api('POST', '/api/v1/instances', { name: 'site' });
    await t.api('POST', '/api/v1/instances/site/resources', { name: 'www', type: 'files', connection: site });
    await rm(site, { recursive: true });

    const ok = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/shop/backups', {})).body.id}`);
    assert.equal(ok.status, 'success', ok.status_info);
    const bad = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/site/backups', {})).body.id}`);
    assert.equal(bad.status, 'error');
    assert.ok(bad.status_info);

    const delivered = (path: string, event: string) => hook.received.filter((r) => r.path === path && r.body.event === event);
    // Each delivery: a 503 first, then the same delivery id again, signed anew.
    const success = await until('backup.success delivered', () => delivered('/all', 'backup.success').length >= 2 && delivered('/all', 'backup.success'));
    assert.deepEqual(success.map((r) => r.status), [503, 204]);
    assert.ok(success.every((r) => r.valid), 'both attempts carry a valid signature');
    assert.equal(success[0]!.headers['x-backvault-delivery'], success[1]!.headers['x-backvault-delivery']);
    assert.equal(success[0]!.headers['content-type'], 'application/json');
    const s = success[1]!.body;
    assert.equal(s.event, 'backup.success');
    assert.equal(s.instance, 'shop');
    assert.equal(s.backup.id, ok.id);
    assert.equal(s.backup.status, 'success');
    assert.equal(s.backup.size, ok.size);
    assert.equal(s.policy, null);
    assert.match(s.text, new RegExp(`Backup ${ok.id} of instance "shop" succeeded`));

    const failure = await until('backup.failure delivered', () => delivered('/all', 'backup.failure').length >= 2 && delivered('/all', 'backup.failure'));
    assert.deepEqual(failure.map((r) => r.status), [503, 204]);
    const f = failure[1]!.body;
    assert.equal(f.backup.id, bad.id);
    assert.equal(f.backup.status_info, bad.status_info);
    assert.ok(f.text.includes(`Backup ${bad.id} of instance "site" failed`));
    assert.ok(f.text.includes(bad.status_info), 'the message says why');
    assert.match(f.text, /What to do: .*backvault backups create site --wait/);

    // failures_only: the failure, never the success.
    await until('pager gets the failure', () => delivered('/failures', 'backup.failure').some((r) => r.status === 204));
    const mails = await until('two e-mails', () => {
      const got = smtp.mails.filter((m) => /Backup of (shop|site)/.test(m.subject));
      return got.length >= 2 && got;
    });
    const okMail = mails.find((m) => m.subject.includes('shop'))!;
    assert.equal(okMail.subject, '[Backvault] Backup of shop succeeded');
    assert.ok(okMail.text.includes(ok.id));
    const badMail = mails.find((m) => m.subject.includes('site'))!;
    assert.equal(badMail.subject, '[Backvault] Backup of site FAILED');
    assert.ok(badMail.text.includes(bad.id) && badMail.text.includes(bad.status_info));
    assert.match(badMail.raw, /X-Backvault-Event: backup.failure/);

    await notifierOf(t.server.ctx)!.idle();
    assert.deepEqual(delivered('/failures', 'backup.success'), [], 'a failures-only channel gets no success');
    assert.deepEqual(hook.received.filter((r) => r.path === '/drills'), [], 'the events filter holds');
    const ch = await t.api('GET', `/api/v1/notifications/${ids.all}`);
    assert.equal(ch.body.last_status, 'success');
    assert.equal(ch.body.last_error, null);
    assert.ok(Date.parse(ch.body.last_attempt_at) > 0);
  });

  test('a failed restore drill and a late policy notify', async () => {
    const dbPath = join(work.path, 'drill.db');
    const db = new Database(dbPath);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    for (let i = 0; i < 50; i++) db.prepare('INSERT INTO t (v) VALUES (?)').run(`row ${i}`);
    db.close();
    await t.api('POST', '/api/v1/instances', { name: 'drill' });
    await t.api('POST', '/api/v1/instances/drill/resources', { name: 'db', type: 'sqlite', connection: dbPath });
    const b = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/drill/backups', {})).body.id}`);
    assert.equal(b.status, 'success');
    // Lose the stored artifact, as a failing disk or a careless cleanup would.
    const artifacts = (await filesUnder(join(t.dir, 'storage', 'backups', b.id))).filter((p) => !p.endsWith('manifest.json'));
    assert.ok(artifacts.length > 0);
    for (const p of artifacts) await rm(p);
    assert.equal((await t.api('POST', `/api/v1/backups/${b.id}/verify`)).status, 202);
    const verified = await waitFor(t.api, `/api/v1/backups/${b.id}`, 'verify_status');
    assert.equal(verified.verify_status, 'error');

    const drill = await until('the drills channel gets verify.failure', () => hook.received.find((r) => r.path === '/drills' && r.status === 204));
    assert.ok(drill.valid);
    assert.equal(drill.body.event, 'verify.failure');
    assert.equal(drill.body.backup.id, b.id);
    assert.equal(drill.body.backup.verify_status, 'error');
    assert.match(drill.body.text, new RegExp(`restore drill of backup ${b.id} \\(instance "drill"\\) failed: resource db: `));
    await until('pager gets verify.failure', () => hook.received.some((r) => r.path === '/failures' && r.body.event === 'verify.failure' && r.status === 204));
    await until('the drill e-mail', () => smtp.mails.some((m) => m.subject.includes('Restore drill of a drill backup FAILED')));

    // policy.late comes from the scheduler; announce one as it would.
    t.server.ctx.events.emit('policy.late', { policy: { id: 'pol1', instance: 'drill', name: 'nightly' }, dueAt: '2026-01-02T03:00:00.000Z', lastSuccessAt: null });
    const late = await until('policy.late on the pager', () => hook.received.find((r) => r.path === '/failures' && r.body.event === 'policy.late' && r.status === 204));
    assert.deepEqual(late.body.policy, { id: 'pol1', name: 'nightly', due_at: '2026-01-02T03:00:00.000Z', last_success_at: null });
    assert.match(late.body.text, /Policy "nightly" of instance "drill" is late: a run was due at 2026-01-02T03:00:00.000Z .*last success: never/);
    await notifierOf(t.server.ctx)!.idle();
    assert.ok(!smtp.mails.some((m) => m.subject.includes('late')), 'the mail channel does not take policy.late');

    // Nothing sent anywhere carries a secret.
    const everything = JSON.stringify(hook.received.map((r) => [r.raw, r.headers])) + smtp.mails.map((m) => m.raw).join('\n');
    for (const secret of [SECRET, SMTP_PASSWORD]) assert.ok(!everything.includes(secret), 'a message leaks a secret');
  });

  test('PATCH keeps masked secrets, pauses channels; DELETE removes them', async () => {
    const before = hook.received.length;
    const patched = await t.api('PATCH', `/api/v1/notifications/${ids.all}`, { name: 'ops', config: { url: `${hook.url}/all`, secret: '****' } });
    assert.equal(patched.status, 200, JSON.stringify(patched.body));
    assert.equal(patched.body.name, 'ops');
    const res = await t.api('POST', `/api/v1/notifications/${ids.all}/test`);
    assert.equal(res.body.ok, true, 'still signed with the stored secret');
    assert.ok(hook.received.slice(before).every((r) => r.valid));

    const mail = await t.api('PATCH', `/api/v1/notifications/${ids.mail}`, { config: { password: '****', to: ['oncall@example.test'] } });
    assert.equal(mail.status, 200, JSON.stringify(mail.body));
    assert.deepEqual(mail.body.config.to, ['oncall@example.test']);
    assert.equal(mail.body.config.password, '****');
    assert.equal((await t.api('POST', `/api/v1/notifications/${ids.mail}/test`)).body.ok, true, 'the stored password still logs in');

    for (const id of [ids.all, ids.failures, ids.drills, ids.mail]) {
      const p = await t.api('PATCH', `/api/v1/notifications/${id}`, { enabled: false });
      assert.equal(p.body.enabled, false);
    }
    const count = hook.received.length;
    const mails = smtp.mails.length;
    const b = await waitFor(t.api, `/api/v1/backups/${(await t.api('POST', '/api/v1/instances/shop/backups', {})).body.id}`);
    assert.equal(b.status, 'success');
    await new Promise((r) => setTimeout(r, 300));
    await notifierOf(t.server.ctx)!.idle();
    assert.equal(hook.received.length, count, 'paused channels get nothing');
    assert.equal(smtp.mails.length, mails);

    assert.equal((await t.api('PATCH', `/api/v1/notifications/${ids.mail}`, { events: [] })).status, 400);
    assert.equal((await t.api('PATCH', `/api/v1/notifications/${ids.mail}`, { name: 'pager' })).status, 409);
    assert.equal((await t.api('DELETE', `/api/v1/notifications/${ids.paused}`)).status, 204);
    assert.equal((await t.api('GET', `/api/v1/notifications/${ids.paused}`)).status, 404);
    assert.equal((await t.api('DELETE', `/api/v1/notifications/${ids.paused}`)).status, 404);
  });
});


describe('notifications CLI', () => {
  let t: TestServer;
  let env: Record<string, string>;
  const receivers: Awaited<ReturnType<typeof startReceiver>>[] = [];
  before(async () => {
    t = await startTestServer();
    env = { BACKVAULT_URL: t.url, BACKVAULT_KEY: t.adminKey };
  });
  after(async () => {
    await t?.close();
    await Promise.all(receivers.map((r) => r.close()));
  });

  test('create, list, show, test and delete channels', async () => {
    // Without --secret the server generates one; it is printed once, alone on the last line.
    const created = await runCli(['notifications', 'create', 'ci-hook', '--kind', 'webhook', '--url', 'http://127.0.0.1:1/placeholder', '--failures-only'], env);
    assert.equal(created.status, 0, created.stderr);
    const secret = created.stdout.trimEnd().split('\n').pop()!;
    assert.match(secret, /^[A-Za-z0-9_-]{40,}$/);
    assert.match(created.stdout, /Created webhook channel ci-hook \([0-9a-f]{24}\) for backup.success, backup.failure, verify.failure, policy.late, failures only/);

    // A receiver that knows the generated secret accepts the signed test message.
    const hook = await startReceiver(secret);
    receivers.push(hook);
    const id = /\(([0-9a-f]{24})\)/.exec(created.stdout)![1]!;
    assert.equal((await t.api('PATCH', `/api/v1/notifications/${id}`, { config: { url: `${hook.url}/ci` } })).status, 200);
    const tested = await runCli(['notifications', 'test', 'ci-hook'], env);
    assert.equal(tested.status, 0, tested.stderr);
    assert.match(tested.stdout, /Test message delivered to ci-hook \(HTTP 204, \d+ ms\)/);
    assert.ok(hook.received[0]?.valid);

    const mail = await runCli(
      ['notifications', 'create', 'ci-mail', '--kind', 'email', '--smtp-host', '127.0.0.1', '--smtp-port', '9', '--smtp-security', 'none', '--smtp-user', 'u', '--from', 'a@example.test', '--to', 'b@example.test,c@example.test', '--event', 'backup.failure'],
      { ...env, BACKVAULT_SMTP_PASSWORD: 'cli-smtp-password' },
    );
    assert.equal(mail.status, 0, mail.stderr);
    const list = await runCli(['notifications', 'list'], env);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /ci-hook\s+webhook\s+http:\/\/127\.0\.0\.1:\d+\/ci/);
    assert.match(list.stdout, /ci-mail\s+email\s+b@example\.test,c@example\.test via 127\.0\.0\.1:9\s+backup\.failure/);
    const shown = await runCli(['notifications', 'show', 'ci-mail'], env);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /password:\s+\*\*\*\*/);
    const asJson = await runCli(['--json', 'notifications', 'show', 'ci-mail'], env);
    assert.equal(JSON.parse(asJson.stdout).config.password, '****');
    for (const out of [list.stdout, shown.stdout, asJson.stdout]) assert.ok(!out.includes('cli-smtp-password') && !out.includes(secret));

    // Nothing listens on port 9: exit 1, with the reason.
    const failed = await runCli(['notifications', 'test', 'ci-mail'], env);
    assert.equal(failed.status, 1);
    assert.match(failed.stderr, /test message to ci-mail failed .*SMTP server failed/);

    const usage = await runCli(['notifications', 'create', 'x', '--kind', 'email', '--smtp-host', 'h'], env);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /needs --smtp-host, --from and at least one --to/);
    const wrongKind = await runCli(['notifications', 'create', 'x', '--kind', 'webhook', '--url', 'http://h', '--to', 'a@b.c'], env);
    assert.equal(wrongKind.status, 2);
    const refused = await runCli(['notifications', 'create', 'x', '--kind', 'webhook', '--url', 'ftp://h'], env);
    assert.equal(refused.status, 3);
    assert.match(refused.stderr, /invalid_request/);

    assert.equal((await runCli(['notifications', 'delete', 'ci-mail'], env)).status, 0);
    const gone = await runCli(['notifications', 'show', 'ci-mail'], env);
    assert.equal(gone.status, 3);
    assert.match(gone.stderr, /no notification channel is named "ci-mail"/);
    assert.equal((await runCli(['notifications', 'delete', id], env)).status, 0);
    assert.equal((await runCli(['notifications', 'show', id], env)).status, 3);
  });
});
