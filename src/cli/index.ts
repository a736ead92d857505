// The `backvault` command. Local commands (serve, superuser, keys) work on a
// data directory; the others talk to a running server's native API.
// Exit codes: 0 ok, 1 the operation failed, 2 usage, 3 the API answered an
// error, 4 the server cannot be reached.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { BACKUP_STATUSES, COMPRESSIONS, RESOURCE_TYPES } from '../domain/types.ts';
import { AppError } from '../errors/index.ts';
import { Client, DEFAULT_SERVER } from './client.ts';
import * as cmd from './commands.ts';
import { ApiError, CliError, EXIT } from './errors.ts';
import { stderr, stdout } from './format.ts';
import { collect, positiveInt } from './parse.ts';
import { addPolicyCommands } from './policy-commands.ts';
import { addNotificationCommands } from './notify-commands.ts';
import { addKeyCommands } from './key-commands.ts';
import { addCatalogCommands } from './catalog-commands.ts';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

interface GlobalOptions {
  server: string;
  key?: string;
  json?: boolean;
}

type Action = (...args: unknown[]) => Promise<void>;

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('backvault');
  // Thrown instead of process.exit, so run() decides the exit code (usage errors are 2).
  program.exitOverride();
  program
    .description('Backvault: backups and restores of application data')
    .version(VERSION)
    .addOption(new Option('--server <url>', 'server to talk to').env('BACKVAULT_URL').default(DEFAULT_SERVER))
    .addOption(new Option('--key <key>', 'API key or login token (prefer the environment variable: argv is visible to other users)').env('BACKVAULT_KEY'))
    .option('--json', 'print the API answer as JSON')
    .showHelpAfterError('(add --help for usage)')
    .addHelpText('after', '\nExit codes: 0 ok, 1 the backup/restore/verify failed, 2 usage error, 3 the API answered an error, 4 cannot reach the server.');

  /** Wraps a client command: builds the client from the global options and closes it afterwards. */
  const client = <A extends unknown[]>(fn: (c: cmd.Ctx, ...args: A) => Promise<number>): Action => {
    return async (...args: unknown[]) => {
      const command = args[args.length - 1] as Command;
      const g = command.optsWithGlobals<GlobalOptions>();
      const c = new Client({ server: g.server, key: g.key });
      try {
        setExit(await fn({ client: c, json: Boolean(g.json), out: stdout, err: stderr, tty: Boolean(process.stderr.isTTY) }, ...(args.slice(0, -1) as A)));
      } finally {
        await c.close();
      }
    };
  };
  // Local commands load the server's modules only when used, so client commands start fast.
  const local = () => import('./local.ts');

  program
    .command('serve')
    .description('run the server (API and workers) in the foreground')
    .option('--dir <dir>', 'data directory (default ./backvault-data, or BACKVAULT_DIR)')
    .option('--http <host:port>', 'address to listen on (default 127.0.0.1:8090)')
    .option('--config <file>', 'JSON config file (default <dir>/config.json)')
    .option('--workers <n>', 'jobs run at once', positiveInt)
    .option('--storage <url>', 'file:///path (default <dir>/storage) or s3://BUCKET/PREFIX (keys from BACKVAULT_S3_ACCESS_KEY and BACKVAULT_S3_SECRET_KEY)')
    .action(async (o: { dir?: string; http?: string; config?: string; workers?: number; storage?: string }) => setExit(await (await local()).serve(o)));

  const superuser = program.command('superuser').description('manage superusers (dashboard and login accounts) in a data directory');
  superuser
    .command('upsert')
    .description('create a superuser, or set the password of an existing one; PASSWORD "-" reads it from stdin')
    .argument('<email>')
    .argument('<password>')
    .option('--dir <dir>', 'data directory')
    .action(async (email: string, password: string, o: { dir?: string }) => setExit(await (await local()).superuserUpsert(email, password, o)));

  const keys = program.command('keys').description('manage API keys in a data directory');
  keys
    .command('create')
    .description('create an API key; the key is printed once, alone on the last line')
    .requiredOption('--name <name>', 'what the key is for')
    .addOption(new Option('--scope <scope>', 'read: look only; admin: everything').choices(['read', 'admin']).makeOptionMandatory())
    .option('--dir <dir>', 'data directory')
    .action(async (o: { name: string; scope: 'read' | 'admin'; dir?: string }) => setExit(await (await local()).keysCreate(o)));

  const instances = program.command('instances').description('applications whose data is backed up together');
  instances
    .command('list')
    .option('--page <n>', 'page', positiveInt)
    .option('--per-page <n>', 'items per page', positiveInt)
    .action(client((c, o: { page?: number; perPage?: number }) => cmd.instancesList(c, o)));
  instances
    .command('create')
    .argument('<name>')
    .option('--description <text>')
    .option('--max-backups <n>', 'most backups kept before new ones are refused', positiveInt)
    .action(client((c, name: string, o: { description?: string; maxBackups?: number }) => cmd.instancesCreate(c, name, o)));
  instances
    .command('show')
    .argument('<name>')
    .action(client((c, name: string) => cmd.instancesShow(c, name)));
  instances
    .command('delete')
    .argument('<name>')
    .option('--force', 'also delete its backups')
    .action(client((c, name: string, o: { force?: boolean }) => cmd.instancesDelete(c, name, o)));

  const resources = program.command('resources').description('data sources of an instance');
  resources
    .command('list')
    .argument('<instance>')
    .action(client((c, instance: string) => cmd.resourcesList(c, instance)));
  resources
    .command('add')
    .argument('<instance>')
    .argument('<name>')
    .addOption(new Option('--type <type>').choices(RESOURCE_TYPES).makeOptionMandatory())
    .requiredOption('--connection <connection>', 'a URL for network databases; an absolute path for sqlite and files')
    .option('--replica <connection>', 'read replica to dump from')
    .option('--option <key=value>', 'engine option (repeatable; JSON values such as 5 or true are typed)', collect)
    .action(client((c, instance: string, name: string, o: { type: string; connection: string; replica?: string; option?: string[] }) => cmd.resourcesAdd(c, instance, name, o)));
  resources
    .command('show')
    .argument('<instance>')
    .argument('<name>')
    .action(client((c, instance: string, name: string) => cmd.resourcesShow(c, instance, name)));
  resources
    .command('delete')
    .argument('<instance>')
    .argument('<name>')
    .action(client((c, instance: string, name: string) => cmd.resourcesDelete(c, instance, name)));
  resources
    .command('objects')
    .description('what a --select can name: tables, paths, key prefixes')
    .argument('<instance>')
    .argument('<name>')
    .action(client((c, instance: string, name: string) => cmd.resourcesObjects(c, instance, name)));

  addPolicyCommands(program, client);
  addNotificationCommands(program, client);
  addKeyCommands(program, setExit);
  addCatalogCommands(program, client, setExit);

  const backups = program.command('backups').description('point-in-time copies of an instance');
  backups
    .command('list')
    .option('--instance <name>')
    .addOption(new Option('--status <status>').choices(BACKUP_STATUSES))
    .addOption(new Option('--type <type>').choices(['full', 'partial']))
    .option('--page <n>', 'page', positiveInt)
    .option('--per-page <n>', 'items per page', positiveInt)
    .action(client((c, o: { instance?: string; status?: string; type?: string; page?: number; perPage?: number }) => cmd.backupsList(c, o)));
  backups
    .command('create')
    .description('start a backup; with --wait, follow it to the end (exit 1 if it fails)')
    .argument('<instance>')
    .option('--partial', 'take only what --select names')
    .option('--select <res[=obj,obj]>', 'a whole resource, or some of its objects (repeatable; implies --partial)', collect)
    .option('--exclude <res=obj,obj>', 'objects to leave out (repeatable)', collect)
    .addOption(new Option('--compression <c>').choices(COMPRESSIONS))
    .option('--label <label>')
    .option('--description <text>')
    .option('--wait', 'wait until it ends, showing progress')
    .action(client((c, instance: string, o: cmd.BackupCreateOptions) => cmd.backupsCreate(c, instance, o)));
  backups
    .command('show')
    .argument('<id>')
    .action(client((c, id: string) => cmd.backupsShow(c, id)));
  backups
    .command('delete')
    .argument('<id>')
    .action(client((c, id: string) => cmd.backupsDelete(c, id)));
  backups
    .command('cancel')
    .argument('<id>')
    .action(client((c, id: string) => cmd.backupsCancel(c, id)));
  backups
    .command('files')
    .argument('<id>')
    .action(client((c, id: string) => cmd.backupsFiles(c, id)));
  backups
    .command('download')
    .description('save the exchange archive (tar, manifest.json first)')
    .argument('<id>')
    .option('-o, --output <file>', 'where to save it ("-" for stdout; default: the name the server suggests)')
    .action(client((c, id: string, o: { output?: string }) => cmd.backupsDownload(c, id, o)));
  backups
    .command('link')
    .description('a download link that needs no other credentials until it expires')
    .argument('<id>')
    .option('--expires-in <seconds>', 'lifetime of the link', positiveInt)
    .action(client((c, id: string, o: { expiresIn?: number }) => cmd.backupsLink(c, id, o)));
  backups
    .command('import')
    .description('import an exchange archive from a file or a URL')
    .argument('<instance>')
    .argument('[file]')
    .option('--url <url>', 'let the server fetch the archive from this URL')
    .option('--wait', 'wait until the import ends')
    .action(client((c, instance: string, file: string | undefined, o: { url?: string; wait?: boolean }) => cmd.backupsImport(c, instance, file, o)));
  backups
    .command('verify')
    .description('restore drill: restore into a scratch target and compare with the manifest')
    .argument('<id>')
    .option('--wait', 'wait for the result (exit 1 if it fails)')
    .action(client((c, id: string, o: { wait?: boolean }) => cmd.backupsVerify(c, id, o)));

  const restores = program.command('restores').description('write a backup back, in place or into new targets');
  restores
    .command('create')
    .argument('<instance>')
    .argument('<backup_id>')
    .option('--resource <name>', 'restore only this resource (repeatable; default all)', collect)
    .option('--target <res=connection>', 'restore this resource into a new target instead of in place (repeatable)', collect)
    .option('--wait', 'wait until it ends, showing progress (exit 1 if it fails)')
    .action(client((c, instance: string, backup: string, o: { resource?: string[]; target?: string[]; wait?: boolean }) => cmd.restoresCreate(c, instance, backup, o)));
  restores
    .command('list')
    .argument('<instance>')
    .addOption(new Option('--status <status>').choices(BACKUP_STATUSES))
    .option('--page <n>', 'page', positiveInt)
    .option('--per-page <n>', 'items per page', positiveInt)
    .action(client((c, instance: string, o: { status?: string; page?: number; perPage?: number }) => cmd.restoresList(c, instance, o)));
  restores
    .command('show')
    .argument('<id>')
    .action(client((c, id: string) => cmd.restoresShow(c, id)));

  return program;
}

/** Parses argv (as process.argv: node, script, args...), runs the command, returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram((c) => {
    code = c;
  });
  try {
    await program.parseAsync(argv);
    return code;
  } catch (err) {
    return report(err);
  }
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // commander has printed the message or the help already; help and --version end in 0.
    return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  }
  if (err instanceof ApiError) {
    stderr(`error: ${err.code}: ${err.apiMessage}`);
    if (err.details && Object.keys(err.details).length > 0) stderr(`details: ${JSON.stringify(err.details)}`);
    if (err.hint) stderr(`hint: ${err.hint}`);
    return EXIT.api;
  }
  // Local commands call the services directly: their refusals read like the API's.
  if (err instanceof AppError) {
    stderr(`error: ${err.code}: ${err.message}`);
    return EXIT.api;
  }
  if (err instanceof CliError) {
    stderr(`error: ${err.message}`);
    return err.exitCode;
  }
  stderr(`error: ${(err as Error)?.message ?? String(err)}`);
  return EXIT.failed;
}

/** The bin's entry: runs and exits, without waiting for idle handles. */
export async function main(argv: string[]): Promise<void> {
  const code = await run(argv);
  // Let buffered output reach a pipe before exiting.
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
  process.exit(code);
}
