// Superusers, API keys and tokens. Passwords are hashed with scrypt; API keys
// are 256-bit random secrets, so a plain sha256 of them is enough to store.
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose';
import type { CatalogDb } from '../catalog/db.ts';
import { AppError } from '../errors/index.ts';
import { newId, randomSecret } from '../platform/ids.ts';
import type { ServiceContext } from './context.ts';

const scrypt = promisify(scryptCb) as (pw: string, salt: Buffer, len: number, opts: object) => Promise<Buffer>;
const SCRYPT = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };

export type Scope = 'read' | 'admin';

export interface Principal {
  kind: 'api_key' | 'superuser';
  id: string;
  scope: Scope;
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(password, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [alg, n, r, p, salt, hash] = stored.split('$');
  if (alg !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64');
  const got = await scrypt(password, Buffer.from(salt, 'base64'), expected.length, { N: Number(n), r: Number(r), p: Number(p), maxmem: SCRYPT.maxmem });
  return timingSafeEqual(expected, got);
}

const EMAIL_RE = /^[^\s@]+@[^\s@]+$/;

export async function upsertSuperuser(db: CatalogDb, email: string, password: string, now: Date): Promise<{ id: string; created: boolean }> {
  if (!EMAIL_RE.test(email) || email.length > 254) throw new AppError('invalid_request', 'The email address is not valid.', { field: 'email' });
  if (password.length < 10) throw new AppError('invalid_request', 'The password must have at least 10 characters.', { field: 'password' });
  const hash = await hashPassword(password);
  const ts = now.toISOString();
  const existing = await db.selectFrom('superusers').select('id').where('email', '=', email.toLowerCase()).executeTakeFirst();
  if (existing) {
    await db.updateTable('superusers').set({ password_hash: hash, updated_at: ts }).where('id', '=', existing.id).execute();
    return { id: existing.id, created: false };
  }
  const id = newId(now.getTime());
  await db.insertInto('superusers').values({ id, email: email.toLowerCase(), password_hash: hash, created_at: ts, updated_at: ts }).execute();
  return { id, created: true };
}

export function hashApiKey(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export interface CreatedKey {
  id: string;
  name: string;
  scope: Scope;
  prefix: string;
  created_at: string;
  /** shown once, never stored */
  key: string;
}

export async function createApiKey(db: CatalogDb, name: string, scope: Scope, now: Date): Promise<CreatedKey> {
  const secret = `bvk_${randomSecret(32)}`;
  const id = newId(now.getTime());
  const row = { id, name, scope, key_hash: hashApiKey(secret), prefix: secret.slice(0, 12), created_at: now.toISOString(), last_used_at: null };
  await db.insertInto('api_keys').values(row).execute();
  return { id, name, scope, prefix: row.prefix, created_at: row.created_at, key: secret };
}

export async function listApiKeys(db: CatalogDb) {
  return db.selectFrom('api_keys').select(['id', 'name', 'scope', 'prefix', 'created_at', 'last_used_at']).orderBy('created_at').execute();
}

export async function deleteApiKey(db: CatalogDb, id: string): Promise<void> {
  const res = await db.deleteFrom('api_keys').where('id', '=', id).executeTakeFirst();
  if (Number(res.numDeletedRows) === 0) throw new AppError('key_not_found');
}

/** On a catalog with no key and no superuser, creates an admin key and returns it (to print once). */
export async function ensureInitialAdminKey(db: CatalogDb, now: Date): Promise<CreatedKey | null> {
  const keys = await db.selectFrom('api_keys').select('id').limit(1).execute();
  const users = await db.selectFrom('superusers').select('id').limit(1).execute();
  if (keys.length > 0 || users.length > 0) return null;
  return createApiKey(db, 'initial admin key', 'admin', now);
}

/** The HMAC secret for tokens; created on first use and kept in the catalog. */
export async function loadTokenSecret(db: CatalogDb): Promise<Uint8Array> {
  const row = await db.selectFrom('settings').select('value').where('key', '=', 'token_secret').executeTakeFirst();
  if (row) return Buffer.from(row.value, 'base64');
  const secret = randomBytes(32);
  await db.insertInto('settings').values({ key: 'token_secret', value: secret.toString('base64') }).onConflict((oc) => oc.column('key').doNothing()).execute();
  const again = await db.selectFrom('settings').select('value').where('key', '=', 'token_secret').executeTakeFirstOrThrow();
  return Buffer.from(again.value, 'base64');
}

const ISSUER = 'backvault';

/**
 * Checks a superuser's password and signs a login token. extraClaims lets a
 * dialect add what its clients read from the token (PocketBase's SDK looks at
 * `type` and `collectionId`); they never change what the token allows.
 */
export async function login(ctx: ServiceContext, email: string, password: string, extraClaims: Record<string, string> = {}): Promise<{ token: string; expires_at: string }> {
  const user = await ctx.db.selectFrom('superusers').selectAll().where('email', '=', email.toLowerCase()).executeTakeFirst();
  // Hash even when the user does not exist, so timing does not reveal which emails exist.
  const ok = user ? await verifyPassword(password, user.password_hash) : (await hashPassword(password), false);
  if (!user || !ok) throw new AppError('invalid_credentials');
  const now = ctx.clock.now();
  const exp = Math.floor(now.getTime() / 1000) + ctx.config.token_ttl_seconds;
  const token = await new SignJWT({ ...extraClaims, scope: 'admin' })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISSUER)
    .setAudience('api')
    .setSubject(user.id)
    .setIssuedAt(Math.floor(now.getTime() / 1000))
    .setExpirationTime(exp)
    .sign(ctx.tokenSecret);
  return { token, expires_at: new Date(exp * 1000).toISOString() };
}

/** Resolves a bearer credential (API key or login token) to a principal. */
export async function authenticate(ctx: ServiceContext, bearer: string): Promise<Principal> {
  if (bearer.startsWith('bvk_')) {
    const row = await ctx.db.selectFrom('api_keys').select(['id', 'scope', 'last_used_at']).where('key_hash', '=', hashApiKey(bearer)).executeTakeFirst();
    if (!row) throw new AppError('unauthorized', 'The API key is not valid.');
    const now = ctx.clock.now();
    // Record use at most once a minute, to keep reads cheap.
    if (!row.last_used_at || now.getTime() - Date.parse(row.last_used_at) > 60_000) {
      await ctx.db.updateTable('api_keys').set({ last_used_at: now.toISOString() }).where('id', '=', row.id).execute();
    }
    return { kind: 'api_key', id: row.id, scope: row.scope };
  }
  try {
    const { payload } = await jwtVerify(bearer, ctx.tokenSecret, {
      issuer: ISSUER,
      audience: 'api',
      algorithms: ['HS256'],
      currentDate: ctx.clock.now(),
    });
    const user = await ctx.db.selectFrom('superusers').select('id').where('id', '=', String(payload.sub)).executeTakeFirst();
    if (!user) throw new AppError('unauthorized', 'The token belongs to a superuser that no longer exists.');
    return { kind: 'superuser', id: user.id, scope: 'admin' };
  } catch (err) {
    if (err instanceof AppError) throw err;
    if (err instanceof joseErrors.JWTExpired) throw new AppError('token_expired');
    throw new AppError('unauthorized', 'The token is not valid.');
  }
}

export async function signDownloadToken(ctx: ServiceContext, backupId: string, ttlSeconds: number): Promise<{ token: string; expires_at: string }> {
  const now = Math.floor(ctx.clock.now().getTime() / 1000);
  const exp = now + ttlSeconds;
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer(ISSUER)
    .setAudience('download')
    .setSubject(backupId)
    .setIssuedAt(now)
    .setExpirationTime(exp)
    .sign(ctx.tokenSecret);
  return { token, expires_at: new Date(exp * 1000).toISOString() };
}

export async function verifyDownloadToken(ctx: ServiceContext, token: string, backupId: string): Promise<void> {
  try {
    const { payload } = await jwtVerify(token, ctx.tokenSecret, { issuer: ISSUER, audience: 'download', algorithms: ['HS256'], currentDate: ctx.clock.now() });
    if (payload.sub !== backupId) throw new Error('other backup');
  } catch {
    throw new AppError('invalid_download_token');
  }
}
