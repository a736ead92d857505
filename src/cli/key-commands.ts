// `backvault key ...` (the master encryption key of a data directory) and
// `backvault archive ...` (passphrase-encrypted exchange archives). Secrets
// never come through argv: passphrases are read from the environment or
// stdin. Server modules load only when a command runs, so the CLI starts fast.
import type { Command } from 'commander';
import { open, rename, rm } from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import type { Config } from '../config/index.ts';
import { CliError, EXIT, UsageError } from './errors.ts';
import { stderr, stdout, type Out } from './format.ts';

export interface DirOptions {
  dir?: string;
  config?: string;
}

type Env = Readonly<Record<string, string | undefined>>;

async function loadCfg(o: DirOptions): Promise<Config> {
  const { loadConfig, ConfigError } = await import('../config/index.ts');
  try {
    return loadConfig({ flags: o.dir !== undefined ? { dir: o.dir } : {}, ...(o.config ? { configFile: o.config } : {}) });
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

async function readStdinLine(stdin: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) {
    chunks.push(chunk as Buffer);
    if ((chunk as Buffer).includes(0x0a)) break;
  }
  return (Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '').replace(/\r$/, '');
}

/** A passphrase from the named environment variable, else the first line of stdin. */
async function passphrase(env: Env, name: string, stdin: Readable | null, what: string): Promise<string> {
  const fromEnv = env[name];
  if (fromEnv) return fromEnv;
  if (!stdin) throw new UsageError(`set ${name} to the ${what} (stdin carries the data here)`);
  if ((stdin as { isTTY?: boolean }).isTTY) process.stderr.write(`${what} (or set ${name}): `);
  const line = await readStdinLine(stdin);
  if (!line) throw new UsageError(`no ${what} given: set ${name} or pass it on stdin`);
  return line;
}

/** Writes text to a new file only the owner can read; refuses to replace one. */
async function writePrivateFile(path: string, text: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CliError(`${path} already exists; choose another file (a key file is never overwritten)`, EXIT.failed);
    throw err;
  }
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The configured key source; without one, a key generated in the directory
 * still counts (the server may get `encryption: true` from its own env).
 */
async function sourceFor(cfg: Config) {
  const keys = await import('../platform/keys.ts');
  const source = keys.keySourceOf(cfg);
  if (source) return source;
  const path = keys.generatedKeyPath(cfg.dir);
  return (await keys.keyFileExists(path)) ? { kind: 'generated' as const, path } : null;
}

export async function keyExport(o: DirOptions & { output?: string }, out: Out = stdout, err: Out = stderr): Promise<number> {
  const cfg = await loadCfg(o);
  const keys = await import('../platform/keys.ts');
  const { masterKeyId } = await import('../storage/encrypted.ts');
  const source = await sourceFor(cfg);
  if (!source) throw new CliError('encryption is not enabled for this data directory (set encryption: true, encryption_key_file or BACKVAULT_ENCRYPTION_PASSPHRASE)', EXIT.failed);
  if (source.kind === 'passphrase') {
    throw new CliError('the master key is derived from your passphrase: there is no key file to export; keep the passphrase somewhere safe instead', EXIT.failed);
  }
  if (source.kind === 'generated' && !(await keys.keyFileExists(source.path))) {
    throw new CliError(`no master key has been generated yet (${source.path}); start the server once with encryption on`, EXIT.failed);
  }
  const key = await keys.readKeyFile(source.path);
  const id = masterKeyId(key);
  const text = keys.formatKeyFile(key, id);
  if (o.output && o.output !== '-') {
    await writePrivateFile(o.output, text);
    err(`Master key ${id} written to ${o.output} (mode 0600). Move it off this machine and keep it safe.`);
  } else {
    out(text.trimEnd());
    err(`Master key ${id} printed above. Keep it off this machine and safe: it is needed to restore on a new machine.`);
  }
  if (source.kind === 'generated') await keys.markKeyExported(cfg.dir, id, 'export', new Date());
  return EXIT.ok;
}

export async function keyConfirmStored(o: DirOptions, out: Out = stdout): Promise<number> {
  const cfg = await loadCfg(o);
  const keys = await import('../platform/keys.ts');
  const { masterKeyId } = await import('../storage/encrypted.ts');
  const source = await sourceFor(cfg);
  if (source?.kind !== 'generated') throw new CliError('only a generated master key (<dir>/master.key) needs confirming; this directory uses another key source', EXIT.failed);
  if (!(await keys.keyFileExists(source.path))) throw new CliError(`no master key has been generated yet (${source.path})`, EXIT.failed);
  const id = masterKeyId(await keys.readKeyFile(source.path));
  await keys.markKeyExported(cfg.dir, id, 'confirm-stored', new Date());
  out(`Recorded that master key ${id} (${source.path}) is stored elsewhere; backups to remote storage are allowed.`);
  return EXIT.ok;
}

export interface RotateOptions extends DirOptions {
  newKeyFile?: string;
  newPassphrase?: boolean;
}

export async function keyRotate(o: RotateOptions, out: Out = stdout, env: Env = process.env, stdin: Readable | null = process.stdin): Promise<number> {
  if (Boolean(o.newKeyFile) === Boolean(o.newPassphrase)) throw new UsageError('pass exactly one of --new-key-file FILE and --new-passphrase');
  const cfg = await loadCfg(o);
  const { keySourceOf } = await import('../platform/keys.ts');
  const { rotateMasterKey } = await import('../storage/encrypted.ts');
  const { lockDataDir, openDestinations } = await import('../main.ts');
  const { resolve } = await import('node:path');
  const current = keySourceOf(cfg);
  if (!current) throw new CliError('encryption is not enabled for this data directory: configure the current key first', EXIT.failed);
  const next = o.newKeyFile
    ? { kind: 'key_file' as const, path: resolve(o.newKeyFile) }
    : { kind: 'passphrase' as const, passphrase: await passphrase(env, 'BACKVAULT_NEW_ENCRYPTION_PASSPHRASE', stdin, 'New passphrase') };
  // The server caches data keys and wraps new ones with the old master key, so it must be stopped.
  const unlock = await lockDataDir(cfg.dir);
  try {
    // Every destination holds data keys wrapped by the same master key: all of them are re-wrapped.
    for (const d of await openDestinations(cfg, { raw: true })) {
      const r = await rotateMasterKey(d.storage, current, next);
      out(`${d.name}: re-wrapped ${r.rewrapped} data keys${r.alreadyDone ? ` (${r.alreadyDone} more were done by an interrupted run)` : ''}: master key ${r.from} -> ${r.to}. No backup object was rewritten.`);
    }
    out(
      next.kind === 'key_file'
        ? `Now set encryption_key_file to ${next.path} (and remove any passphrase) before starting the server; the old key no longer opens this storage.`
        : 'Now set BACKVAULT_ENCRYPTION_PASSPHRASE to the new passphrase before starting the server; the old key no longer opens this storage.',
    );
    return EXIT.ok;
  } finally {
    await unlock();
  }
}

/** A temp file beside path, renamed onto it only once everything was written (and authenticated). */
async function toFileAtomically(path: string, fill: (w: Writable) => Promise<void>): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  try {
    await fill(createWriteStream(tmp, { flags: 'wx', mode: 0o600 }));
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function archiveCrypt(
  mode: 'encrypt' | 'decrypt',
  input: string,
  output: string,
  out: Out = stderr,
  env: Env = process.env,
  stdin: Readable = process.stdin,
): Promise<number> {
  const { encryptExport, decryptExport } = await import('../storage/encrypted.ts');
  const pass = await passphrase(env, 'BACKVAULT_ARCHIVE_PASSPHRASE', input === '-' ? null : stdin, 'Passphrase');
  const source = input === '-' ? stdin : createReadStream(input);
  const transformed = mode === 'encrypt' ? encryptExport(source, pass) : decryptExport(source, pass);
  if (output === '-') await pipeline(transformed, process.stdout);
  else await toFileAtomically(output, (w) => pipeline(transformed, w));
  if (output !== '-') out(mode === 'encrypt' ? `Encrypted archive written to ${output}.` : `Decrypted archive written to ${output}.`);
  return EXIT.ok;
}

export function addKeyCommands(program: Command, setExit: (code: number) => void): void {
  const key = program.command('key').description('the master encryption key of a data directory (not API keys: see `keys`)');
  key
    .command('export')
    .description('print the master key (or write it to a new file), and record that it was exported')
    .option('--dir <dir>', 'data directory')
    .option('--config <file>', 'JSON config file (default <dir>/config.json)')
    .option('-o, --output <file>', 'write the key to this new file (mode 0600) instead of stdout')
    .action(async (o: DirOptions & { output?: string }) => setExit(await keyExport(o)));
  key
    .command('confirm-stored')
    .description('record that the generated master key (<dir>/master.key) is already stored elsewhere')
    .option('--dir <dir>', 'data directory')
    .option('--config <file>', 'JSON config file (default <dir>/config.json)')
    .action(async (o: DirOptions) => setExit(await keyConfirmStored(o)));
  key
    .command('rotate')
    .description('re-wrap every data key under a new master key (stop the server first); no backup is rewritten')
    .option('--dir <dir>', 'data directory')
    .option('--config <file>', 'JSON config file (default <dir>/config.json)')
    .option('--new-key-file <file>', 'the new master key (64 hex characters, e.g. from `openssl rand -hex 32`)')
    .option('--new-passphrase', 'derive the new master key from a passphrase read from BACKVAULT_NEW_ENCRYPTION_PASSPHRASE or stdin')
    .action(async (o: RotateOptions) => setExit(await keyRotate(o)));

  const archive = program.command('archive').description('passphrase-encrypted exchange archives (passphrase from BACKVAULT_ARCHIVE_PASSPHRASE or stdin)');
  archive
    .command('decrypt')
    .description('decrypt an encrypted archive into the plain exchange archive (tar); OUT is written only if every byte authenticates')
    .argument('<in>', 'encrypted archive ("-" for stdin)')
    .argument('<out>', 'the tar to write ("-" for stdout)')
    .action(async (input: string, output: string) => setExit(await archiveCrypt('decrypt', input, output)));
  archive
    .command('encrypt')
    .description('encrypt an exchange archive with a passphrase')
    .argument('<in>', 'archive ("-" for stdin)')
    .argument('<out>', 'encrypted file to write ("-" for stdout)')
    .action(async (input: string, output: string) => setExit(await archiveCrypt('encrypt', input, output)));
}
