// The client commands: each calls the API once (or polls it for --wait) and
// prints the answer, as JSON with --json or as compact human text.
import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { basename } from 'node:path';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import type { BackupView, RestoreView } from '../services/views.ts';
import type { InstanceView, ResourceView } from '../services/instances.ts';
import type { ObjectInfo } from '../domain/types.ts';
import type { Client } from './client.ts';
import { CliError, EXIT, UsageError } from './errors.ts';
import { bytes, fields, paginationLine, printJson, table, when, type Out } from './format.ts';
import { parseExclude, parseOptions, parseSelection, parseTargets } from './parse.ts';
import { waitFor } from './wait.ts';

export interface Ctx {
  client: Client;
  json: boolean;
  out: Out;
  err: Out;
  /** stderr is a terminal: progress bars instead of status lines */
  tty: boolean;
}

interface Page<T> {
  items: T[];
  pagination: { page: number; per_page: number; total: number; pages: number };
}

const enc = encodeURIComponent;

/** --json: the API's answer as it came. */
function json(c: Ctx, value: unknown): number {
  printJson(value, c.out);
  return EXIT.ok;
}

function listFooter(c: Ctx, p: Page<unknown>['pagination'], noun: string): void {
  const line = paginationLine(p, noun);
  if (line) c.err(line);
}

// Instances

export async function instancesList(c: Ctx, o: { page?: number; perPage?: number }): Promise<number> {
  const res = await c.client.get<Page<InstanceView>>('/instances', { page: o.page, per_page: o.perPage });
  if (c.json) return json(c, res);
  table(['NAME', 'MAX_BACKUPS', 'CREATED', 'DESCRIPTION'], res.items.map((i) => [i.name, i.max_backups, when(i.created_at), i.description]), c.out);
  listFooter(c, res.pagination, 'instances');
  return EXIT.ok;
}

export async function instancesCreate(c: Ctx, name: string, o: { description?: string; maxBackups?: number }): Promise<number> {
  const body: Record<string, unknown> = { name };
  if (o.description !== undefined) body.description = o.description;
  if (o.maxBackups !== undefined) body.max_backups = o.maxBackups;
  const inst = await c.client.post<InstanceView>('/instances', body);
  if (c.json) return json(c, inst);
  c.out(`Created instance ${inst.name}.`);
  return EXIT.ok;
}

function resourcesTable(c: Ctx, items: ResourceView[]): void {
  table(['NAME', 'TYPE', 'CONNECTION', 'REPLICA', 'OPTIONS'], items.map((r) => [r.name, r.type, r.connection, r.replica, Object.keys(r.options).length ? r.options : null]), c.out);
}

export async function instancesShow(c: Ctx, name: string): Promise<number> {
  const inst = await c.client.get<InstanceView & { resources: ResourceView[] }>(`/instances/${enc(name)}`);
  if (c.json) return json(c, inst);
  fields(
    [
      ['name', inst.name],
      ['description', inst.description],
      ['max_backups', inst.max_backups ?? 'default'],
      ['created', when(inst.created_at)],
      ['updated', when(inst.updated_at)],
    ],
    c.out,
  );
  c.out('');
  if (inst.resources.length === 0) c.out('No resources yet; add one with: backvault resources add');
  else resourcesTable(c, inst.resources);
  return EXIT.ok;
}

export async function instancesDelete(c: Ctx, name: string, o: { force?: boolean }): Promise<number> {
  await c.client.delete(`/instances/${enc(name)}`, o.force ? { force: true } : undefined);
  if (c.json) return json(c, { deleted: name });
  c.out(`Deleted instance ${name}.`);
  return EXIT.ok;
}

// Resources

export async function resourcesList(c: Ctx, instance: string): Promise<number> {
  const res = await c.client.get<Page<ResourceView>>(`/instances/${enc(instance)}/resources`);
  if (c.json) return json(c, res);
  resourcesTable(c, res.items);
  return EXIT.ok;
}

export async function resourcesAdd(
  c: Ctx,
  instance: string,
  name: string,
  o: { type: string; connection: string; replica?: string; option?: string[] },
): Promise<number> {
  const body: Record<string, unknown> = { name, type: o.type, connection: o.connection };
  if (o.replica !== undefined) body.replica = o.replica;
  if (o.option?.length) body.options = parseOptions(o.option);
  const r = await c.client.post<ResourceView>(`/instances/${enc(instance)}/resources`, body);
  if (c.json) return json(c, r);
  // The answer's connection is masked by the server; never echo the one given.
  c.out(`Added ${r.type} resource ${r.name} to instance ${instance} (${r.connection}).`);
  return EXIT.ok;
}

export async function resourcesShow(c: Ctx, instance: string, name: string): Promise<number> {
  const r = await c.client.get<ResourceView>(`/instances/${enc(instance)}/resources/${enc(name)}`);
  if (c.json) return json(c, r);
  fields(
    [
      ['name', r.name],
      ['type', r.type],
      ['connection', r.connection],
      ['replica', r.replica],
      ['options', Object.keys(r.options).length ? r.options : null],
      ['created', when(r.created_at)],
      ['updated', when(r.updated_at)],
    ],
    c.out,
  );
  return EXIT.ok;
}

export async function resourcesDelete(c: Ctx, instance: string, name: string): Promise<number> {
  await c.client.delete(`/instances/${enc(instance)}/resources/${enc(name)}`);
  if (c.json) return json(c, { deleted: name, instance });
  c.out(`Deleted resource ${name} of instance ${instance}.`);
  return EXIT.ok;
}

export async function resourcesObjects(c: Ctx, instance: string, name: string): Promise<number> {
  const res = await c.client.get<Page<ObjectInfo>>(`/instances/${enc(instance)}/resources/${enc(name)}/objects`);
  if (c.json) return json(c, res);
  table(['KIND', 'NAME', 'SIZE'], res.items.map((i) => [i.kind, i.name, i.size]), c.out);
  return EXIT.ok;
}

// Backups

function backupRows(items: BackupView[]): unknown[][] {
  return items.map((b) => [b.id, b.instance, b.type, b.status, b.status === 'success' ? bytes(b.size) : null, when(b.created_at), b.label]);
}

export async function backupsList(c: Ctx, o: { instance?: string; status?: string; type?: string; page?: number; perPage?: number }): Promise<number> {
  const path = o.instance !== undefined ? `/instances/${enc(o.instance)}/backups` : '/backups';
  const res = await c.client.get<Page<BackupView>>(path, { status: o.status, type: o.type, page: o.page, per_page: o.perPage });
  if (c.json) return json(c, res);
  table(['ID', 'INSTANCE', 'TYPE', 'STATUS', 'SIZE', 'CREATED', 'LABEL'], backupRows(res.items), c.out);
  listFooter(c, res.pagination, 'backups');
  return EXIT.ok;
}

function progressLine(p: BackupView['progress']): string | undefined {
  if (!p) return undefined;
  return `${[p.phase, p.resource].filter(Boolean).join(' ')}, ${p.resources_done}/${p.resources_total} resources, ${bytes(p.bytes_done)}`;
}

function printBackup(c: Ctx, b: BackupView): void {
  fields(
    [
      ['id', b.id],
      ['instance', b.instance],
      ['type', b.type],
      ['origin', b.origin],
      ['status', b.status],
      ['status_info', b.status_info ?? undefined],
      ['progress', progressLine(b.progress)],
      ['size', b.status === 'success' ? bytes(b.size) : undefined],
      ['compression', b.compression],
      ['label', b.label ?? undefined],
      ['description', b.description ?? undefined],
      ['selection', b.selection ?? undefined],
      ['exclude', b.exclude ?? undefined],
      ['verify', b.verify_status ?? undefined],
      ['created', when(b.created_at)],
      ['started', b.started_at ? when(b.started_at) : undefined],
      ['finished', b.finished_at ? when(b.finished_at) : undefined],
    ],
    c.out,
  );
  if (b.resources.length > 0) {
    c.out('');
    table(['RESOURCE', 'TYPE', 'ARTIFACT', 'SIZE'], b.resources.map((r) => [r.name, r.type, r.artifact, bytes(r.size)]), c.out);
  }
}

/** Waits for a backup (made or imported) to end; exit 1 when it ends in error. */
export async function waitBackup(c: Ctx, first: BackupView, what: string): Promise<number> {
  const b = await waitFor({
    label: `${what} ${first.id}`,
    first,
    poll: () => c.client.get<BackupView>(`/backups/${first.id}`),
    state: (v) => ({ status: v.status, info: v.status_info, progress: v.progress }),
    followUp: `backvault backups show ${first.id}`,
    tty: c.tty,
    err: c.err,
  });
  if (c.json) printJson(b, c.out);
  if (b.status !== 'success') {
    c.err(`${what} ${b.id} failed: ${b.status_info ?? `status ${b.status}`}`);
    return EXIT.failed;
  }
  if (!c.json) c.out(`${what === 'import' ? 'Import' : 'Backup'} ${b.id} succeeded: ${b.resources.length} resource(s), ${bytes(b.size)}.`);
  return EXIT.ok;
}

export interface BackupCreateOptions {
  partial?: boolean;
  select?: string[];
  exclude?: string[];
  compression?: string;
  label?: string;
  description?: string;
  wait?: boolean;
}

export async function backupsCreate(c: Ctx, instance: string, o: BackupCreateOptions): Promise<number> {
  const selection = o.select?.length ? parseSelection(o.select) : null;
  // A selection is what makes a backup partial, so --select alone is enough.
  const partial = Boolean(o.partial) || selection !== null;
  if (partial && selection === null) throw new UsageError('--partial needs at least one --select RES[=OBJ,OBJ]');
  const body: Record<string, unknown> = { type: partial ? 'partial' : 'full' };
  if (selection) body.selection = selection;
  if (o.exclude?.length) body.exclude = parseExclude(o.exclude);
  if (o.compression !== undefined) body.compression = o.compression;
  if (o.label !== undefined) body.label = o.label;
  if (o.description !== undefined) body.description = o.description;
  const b = await c.client.post<BackupView>(`/instances/${enc(instance)}/backups`, body);
  if (o.wait) return waitBackup(c, b, 'backup');
  if (c.json) return json(c, b);
  c.out(`Backup ${b.id} of instance ${b.instance} is ${b.status}; follow it with: backvault backups show ${b.id}`);
  return EXIT.ok;
}

export async function backupsShow(c: Ctx, id: string): Promise<number> {
  const b = await c.client.get<BackupView>(`/backups/${enc(id)}`);
  if (c.json) return json(c, b);
  printBackup(c, b);
  return EXIT.ok;
}

export async function backupsDelete(c: Ctx, id: string): Promise<number> {
  await c.client.delete(`/backups/${enc(id)}`);
  if (c.json) return json(c, { deleted: id });
  c.out(`Deleted backup ${id}.`);
  return EXIT.ok;
}

export async function backupsCancel(c: Ctx, id: string): Promise<number> {
  const b = await c.client.post<BackupView>(`/backups/${enc(id)}/cancel`);
  if (c.json) return json(c, b);
  c.out(`Cancel requested for backup ${b.id}; its status is now ${b.status}.`);
  return EXIT.ok;
}

export async function backupsFiles(c: Ctx, id: string): Promise<number> {
  const res = await c.client.get<Page<{ path: string; resource: string | null; size: number; sha256: string | null; compression: string | null }>>(`/backups/${enc(id)}/files`);
  if (c.json) return json(c, res);
  table(['PATH', 'SIZE', 'SHA256'], res.items.map((f) => [f.path, f.size, f.sha256]), c.out);
  return EXIT.ok;
}

/** The file name the server suggests, reduced to a plain name so it can never point elsewhere. */
function suggestedName(disposition: string | string[] | undefined, id: string): string {
  const value = Array.isArray(disposition) ? disposition[0] : disposition;
  const m = value ? /filename="?([^";]+)"?/i.exec(value) : null;
  const name = m ? basename(m[1]!).replace(/[^\w.-]/g, '_') : '';
  return name && name !== '.' && name !== '..' ? name : `backvault-${id}.tar`;
}

/** Counts bytes and, on a terminal, draws a download bar. */
function byteMeter(c: Ctx, total: number | null): { counter: Transform; done: () => number; stop: () => void } {
  let n = 0;
  const bar =
    c.tty && total !== null
      ? new cliProgress.SingleBar(
          { stream: process.stderr, format: 'download |{bar}| {percentage}% | {got} of {size}', barsize: 24, hideCursor: true, fps: 8 },
          cliProgress.Presets.shades_classic,
        )
      : null;
  bar?.start(total ?? 0, 0, { got: bytes(0), size: bytes(total) });
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      bar?.update(n, { got: bytes(n), size: bytes(total) });
      cb(null, chunk);
    },
  });
  return { counter, done: () => n, stop: () => bar?.stop() };
}

export async function backupsDownload(c: Ctx, id: string, o: { output?: string }): Promise<number> {
  const res = await c.client.stream(`/backups/${enc(id)}/download`);
  const lengthHeader = res.headers['content-length'];
  const total = typeof lengthHeader === 'string' && /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : null;
  if (o.output === '-') {
    await pipeline(res.body, process.stdout as Writable);
    return EXIT.ok;
  }
  const target = o.output ?? suggestedName(res.headers['content-disposition'], id);
  // Written beside the target and renamed when complete, so a cut download never looks like an archive.
  const part = `${target}.part`;
  // Opened before the meter starts, so a bad path fails cleanly; flush fsyncs before close.
  const file = createWriteStream(part, { mode: 0o600, flush: true });
  try {
    await once(file, 'open');
  } catch (err) {
    // Abandon the response; undici reports that as an error of the body, which is expected here.
    res.body.on('error', () => undefined).destroy();
    throw new CliError(`cannot write ${part}: ${(err as Error).message}`, EXIT.failed);
  }
  const meter = byteMeter(c, total);
  try {
    await pipeline(res.body, meter.counter, file);
    if (total !== null && meter.done() !== total) throw new Error(`the server sent ${meter.done()} of ${total} bytes`);
    await rename(part, target);
  } catch (err) {
    await rm(part, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e.code && /^(ECONNRESET|EPIPE|UND_ERR_)/.test(e.code)) throw new CliError(`the download was cut off (${e.code}); run it again`, EXIT.unreachable);
    throw new CliError(`download failed: ${e.message}`, EXIT.failed);
  } finally {
    meter.stop();
  }
  if (c.json) return json(c, { backup: id, file: target, size: meter.done() });
  c.out(`Saved backup ${id} to ${target} (${bytes(meter.done())}).`);
  return EXIT.ok;
}

export async function backupsLink(c: Ctx, id: string, o: { expiresIn?: number }): Promise<number> {
  const link = await c.client.post<{ url: string; expires_at: string }>(`/backups/${enc(id)}/download-link`, o.expiresIn !== undefined ? { expires_in: o.expiresIn } : {});
  if (c.json) return json(c, link);
  c.out(`Anyone with this link can download backup ${id} until ${when(link.expires_at)} UTC:`);
  c.out(link.url);
  return EXIT.ok;
}

export async function backupsImport(c: Ctx, instance: string, file: string | undefined, o: { url?: string; wait?: boolean }): Promise<number> {
  if ((file === undefined) === (o.url === undefined)) throw new UsageError('give either FILE or --url URL');
  let b: BackupView;
  if (file !== undefined) {
    const info = await stat(file).catch((err: NodeJS.ErrnoException) => {
      throw new UsageError(`cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    });
    if (!info.isFile()) throw new UsageError(`${file} is not a file`);
    b = await c.client.upload<BackupView>(`/instances/${enc(instance)}/backups/import`, file);
  } else {
    b = await c.client.post<BackupView>(`/instances/${enc(instance)}/backups/import`, { url: o.url });
  }
  if (o.wait) return waitBackup(c, b, 'import');
  if (c.json) return json(c, b);
  c.out(`Import ${b.id} into instance ${b.instance} is ${b.status}; follow it with: backvault backups show ${b.id}`);
  return EXIT.ok;
}

interface VerifyResult {
  resources?: { name: string; ok: boolean; differences: string[]; error?: string }[];
  error?: string;
}

function verifyProblems(result: unknown): string[] {
  const r = (result ?? {}) as VerifyResult;
  const lines: string[] = [];
  if (r.error) lines.push(r.error);
  for (const res of r.resources ?? []) {
    if (res.ok) continue;
    lines.push(`${res.name}: ${res.error ?? res.differences.slice(0, 5).join('; ')}`);
  }
  return lines;
}

export async function backupsVerify(c: Ctx, id: string, o: { wait?: boolean }): Promise<number> {
  const first = await c.client.post<BackupView>(`/backups/${enc(id)}/verify`);
  if (!o.wait) {
    if (c.json) return json(c, first);
    c.out(`Restore drill of backup ${id} is ${first.verify_status}; see the result with: backvault backups show ${id}`);
    return EXIT.ok;
  }
  const b = await waitFor({
    label: `verify ${id}`,
    first,
    poll: () => c.client.get<BackupView>(`/backups/${enc(id)}`),
    state: (v) => ({ status: v.verify_status }),
    followUp: `backvault backups show ${id}`,
    tty: c.tty,
    err: c.err,
  });
  if (c.json) printJson(b, c.out);
  if (b.verify_status !== 'success') {
    c.err(`restore drill of backup ${id} failed:`);
    for (const line of verifyProblems(b.verify_result)) c.err(`  ${line}`);
    return EXIT.failed;
  }
  if (!c.json) c.out(`Restore drill of backup ${id} passed: what was restored matches the manifest.`);
  return EXIT.ok;
}

// Restores

interface RestoreResult {
  resources?: { name: string; target: string; mode: string; ok: boolean; differences: string[]; error?: string }[];
}

function printRestoreResult(r: RestoreView, out: Out): void {
  const res = (r.result as RestoreResult | null)?.resources ?? [];
  for (const x of res) out(`  ${x.name} -> ${x.target} (${x.mode}): ${x.ok ? 'ok' : x.error ?? (x.differences.slice(0, 3).join('; ') || 'failed')}`);
}

export async function restoresCreate(c: Ctx, instance: string, backup: string, o: { resource?: string[]; target?: string[]; wait?: boolean }): Promise<number> {
  const body: Record<string, unknown> = { backup };
  if (o.resource?.length) body.resources = [...new Set(o.resource)];
  if (o.target?.length) body.targets = parseTargets(o.target);
  const first = await c.client.post<RestoreView>(`/instances/${enc(instance)}/restores`, body);
  if (!o.wait) {
    if (c.json) return json(c, first);
    c.out(`Restore ${first.id} of backup ${backup} is ${first.status}; follow it with: backvault restores show ${first.id}`);
    return EXIT.ok;
  }
  const r = await waitFor({
    label: `restore ${first.id}`,
    first,
    poll: () => c.client.get<RestoreView>(`/restores/${first.id}`),
    state: (v) => ({ status: v.status, info: v.status_info, progress: v.progress }),
    followUp: `backvault restores show ${first.id}`,
    tty: c.tty,
    err: c.err,
  });
  if (c.json) printJson(r, c.out);
  if (r.status !== 'success') {
    c.err(`restore ${r.id} failed: ${r.status_info ?? `status ${r.status}`}`);
    printRestoreResult(r, c.err);
    return EXIT.failed;
  }
  if (!c.json) {
    c.out(`Restore ${r.id} succeeded.`);
    printRestoreResult(r, c.out);
  }
  return EXIT.ok;
}

export async function restoresList(c: Ctx, instance: string, o: { status?: string; page?: number; perPage?: number }): Promise<number> {
  const res = await c.client.get<Page<RestoreView>>(`/instances/${enc(instance)}/restores`, { status: o.status, page: o.page, per_page: o.perPage });
  if (c.json) return json(c, res);
  table(
    ['ID', 'BACKUP', 'STATUS', 'RESOURCES', 'CREATED', 'FINISHED'],
    res.items.map((r) => [r.id, r.backup, r.status, r.resources ? r.resources.join(',') : 'all', when(r.created_at), when(r.finished_at)]),
    c.out,
  );
  listFooter(c, res.pagination, 'restores');
  return EXIT.ok;
}

export async function restoresShow(c: Ctx, id: string): Promise<number> {
  const r = await c.client.get<RestoreView>(`/restores/${enc(id)}`);
  if (c.json) return json(c, r);
  fields(
    [
      ['id', r.id],
      ['instance', r.instance],
      ['backup', r.backup],
      ['status', r.status],
      ['status_info', r.status_info ?? undefined],
      ['progress', progressLine(r.progress)],
      ['resources', r.resources ? r.resources.join(', ') : 'all'],
      ['targets', r.targets ? Object.entries(r.targets).map(([k, v]) => `${k}=${v.connection}`).join(', ') : undefined],
      ['created', when(r.created_at)],
      ['started', r.started_at ? when(r.started_at) : undefined],
      ['finished', r.finished_at ? when(r.finished_at) : undefined],
    ],
    c.out,
  );
  if (r.result) {
    c.out('');
    printRestoreResult(r, c.out);
  }
  return EXIT.ok;
}
