// A small client of the native API (/api/v1) for the client commands. It
// turns the API's error bodies into ApiError (exit 3) and failures to connect
// into UnreachableError (exit 4). Bodies that may be large (downloads,
// uploads) are streams, never buffers.
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from 'undici';
import { ApiError, CliError, EXIT, UnreachableError, UsageError } from './errors.ts';

export const DEFAULT_SERVER = 'http://127.0.0.1:8090';

export interface ClientOptions {
  server: string;
  key?: string | undefined;
}

type Query = Record<string, string | number | boolean | undefined>;

export interface StreamResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

export class Client {
  readonly base: string;
  /** the server's origin without any user info, safe to print */
  readonly origin: string;
  readonly hasKey: boolean;
  private readonly key: string | undefined;
  // Our own agent, closed at the end, so idle keep-alive sockets do not hold the process open.
  private readonly agent = new Agent({ keepAliveTimeout: 1000, connect: { timeout: 10_000 } });

  constructor(options: ClientOptions) {
    let url: URL;
    try {
      url = new URL(options.server);
    } catch {
      throw new UsageError(`--server must be a URL such as ${DEFAULT_SERVER}, got ${JSON.stringify(options.server)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError('--server must be an http or https URL');
    this.origin = url.origin;
    const path = url.pathname.replace(/\/+$/, '');
    this.base = `${url.origin}${path.endsWith('/api/v1') ? path : `${path}/api/v1`}`;
    this.key = options.key || undefined;
    this.hasKey = this.key !== undefined;
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private url(path: string, query?: Query): string {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) qs.set(k, String(v));
    const s = qs.toString();
    return `${this.base}${path}${s ? `?${s}` : ''}`;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { accept: 'application/json', ...(this.key ? { authorization: `Bearer ${this.key}` } : {}), ...extra };
  }

  private async send(method: Dispatcher.HttpMethod, url: string, options: { headers?: Record<string, string>; body?: string | Readable } = {}): Promise<Dispatcher.ResponseData> {
    try {
      return await request(url, { method, headers: this.headers(options.headers), body: options.body ?? null, dispatcher: this.agent });
    } catch (err) {
      throw this.unreachable(err);
    }
  }

  private unreachable(err: unknown): CliError {
    const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
    const reason = e.code ?? e.cause?.code ?? e.message;
    return new UnreachableError(`cannot reach the server at ${this.origin} (${reason}); is \`backvault serve\` running? Set --server or BACKVAULT_URL.`);
  }

  /** A JSON request; undefined for 204. */
  async call<T = unknown>(method: Dispatcher.HttpMethod, path: string, options: { query?: Query; body?: unknown } = {}): Promise<T> {
    const res = await this.send(method, this.url(path, options.query), {
      ...(options.body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(options.body) } : {}),
    });
    return (await this.readJson(res)) as T;
  }

  get<T = unknown>(path: string, query?: Query): Promise<T> {
    return this.call<T>('GET', path, query ? { query } : {});
  }

  post<T = unknown>(path: string, body?: unknown, query?: Query): Promise<T> {
    return this.call<T>('POST', path, { body: body ?? {}, ...(query ? { query } : {}) });
  }

  delete(path: string, query?: Query): Promise<unknown> {
    return this.call('DELETE', path, query ? { query } : {});
  }

  private async readJson(res: Dispatcher.ResponseData): Promise<unknown> {
    if (res.statusCode === 204) {
      await res.body.dump();
      return undefined;
    }
    let text: string;
    try {
      text = await res.body.text();
    } catch (err) {
      throw this.unreachable(err);
    }
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      if (res.statusCode >= 400) throw new ApiError(res.statusCode, `http_${res.statusCode}`, `the server answered HTTP ${res.statusCode} without a JSON error`);
      throw new CliError(`the server at ${this.origin} answered something that is not JSON; is it a Backvault server?`, EXIT.api);
    }
    if (res.statusCode >= 400) {
      const err = apiError(res.statusCode, parsed);
      if (res.statusCode === 401 && !this.hasKey) err.hint = 'pass --key KEY or set BACKVAULT_KEY (`backvault keys create` makes one)';
      throw err;
    }
    return parsed;
  }

  /** A GET whose body the caller streams; error answers become ApiError. The caller must consume body. */
  async stream(path: string, query?: Query): Promise<StreamResponse> {
    const res = await this.send('GET', this.url(path, query), { headers: { accept: '*/*' } });
    if (res.statusCode >= 400) await this.readJson(res);
    return { statusCode: res.statusCode, headers: res.headers, body: res.body };
  }

  /**
   * POSTs a file as multipart/form-data field `file`. The body is built as a
   * stream around the file, with its exact length, so the archive is never
   * held in memory.
   */
  async upload<T = unknown>(path: string, file: string): Promise<T> {
    const size = (await stat(file)).size;
    const boundary = `backvault-${randomBytes(16).toString('hex')}`;
    const filename = basename(file).replace(/[^\w.-]/g, '_') || 'archive.tar';
    const head = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\nContent-Type: application/x-tar\r\n\r\n`);
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
    let readError: Error | undefined;
    async function* parts(): AsyncGenerator<Buffer> {
      yield head;
      try {
        for await (const chunk of createReadStream(file)) yield chunk as Buffer;
      } catch (err) {
        readError = err as Error;
        throw err;
      }
      yield tail;
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(this.url(path), {
        method: 'POST',
        headers: this.headers({ 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': String(head.length + size + tail.length) }),
        body: Readable.from(parts()),
        dispatcher: this.agent,
      });
    } catch (err) {
      if (readError) throw new CliError(`cannot read ${file}: ${readError.message}`, EXIT.usage);
      throw this.unreachable(err);
    }
    return (await this.readJson(res)) as T;
  }
}

function apiError(status: number, body: unknown): ApiError {
  const e = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | undefined)?.error;
  if (e && typeof e.code === 'string') {
    const details = e.details && typeof e.details === 'object' ? (e.details as Record<string, unknown>) : undefined;
    return new ApiError(status, e.code, typeof e.message === 'string' ? e.message : '', details);
  }
  return new ApiError(status, `http_${status}`, `the server answered HTTP ${status}`);
}
