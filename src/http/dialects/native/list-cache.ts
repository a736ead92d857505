// Serialized list responses kept while the catalog does not change. A backup
// list is a function of the catalog and the query alone, and clients (UIs,
// scripts) poll the same pages far more often than the catalog changes: a
// repeat answer then costs one catalog stamp instead of the queries, the JSON
// columns' parsing and the serialization of every item.
import type { FastifyReply } from 'fastify';
import { catalogVersion } from '../../../catalog/version.ts';
import type { CatalogDb } from '../../../catalog/db.ts';

/** What fastify sends for a JSON body; a string payload with it is sent as is. */
const JSON_TYPE = 'application/json; charset=utf-8';

export interface ListCacheOptions {
  /** bound on the characters held; per_page goes up to 500 items, about 0.5 MB an answer */
  maxChars?: number;
}

export class ListCache {
  private version = '';
  // One entry per query; the promise also lets concurrent identical requests share one computation.
  private readonly entries = new Map<string, { text: Promise<string>; chars: number }>();
  private chars = 0;
  private readonly maxChars: number;

  constructor(
    private readonly db: CatalogDb,
    options: ListCacheOptions = {},
  ) {
    this.maxChars = options.maxChars ?? 8 * 1024 * 1024;
  }

  /**
   * Sends the answer for `key` (every input of the response), computing it
   * with `build` and the route's response schema unless the catalog is unchanged
   * since it was last computed. Errors are not kept.
   */
  async send(reply: FastifyReply, key: string, build: () => Promise<unknown>): Promise<FastifyReply> {
    const version = await catalogVersion(this.db);
    if (version !== this.version) {
      this.entries.clear();
      this.chars = 0;
      this.version = version;
    }
    let entry = this.entries.get(key);
    if (entry === undefined) {
      // reply.serialize is the route's compiled serializer: the bytes are those of an uncached answer.
      const text = build().then((body) => reply.serialize(body) as string);
      const stored = { text, chars: 0 };
      entry = stored;
      this.entries.set(key, stored);
      text.then(
        (t) => this.account(key, stored, t.length),
        () => this.forget(key, stored),
      );
    }
    return reply.type(JSON_TYPE).send(await entry.text);
  }

  private account(key: string, entry: { chars: number }, chars: number): void {
    if (this.entries.get(key) !== entry) return; // cleared meanwhile
    entry.chars = chars;
    this.chars += chars;
    // Oldest first; the entry just made stays even when it alone is over the bound.
    for (const [k, e] of this.entries) {
      if (this.chars <= this.maxChars || k === key) break;
      this.entries.delete(k);
      this.chars -= e.chars;
    }
  }

  private forget(key: string, entry: object): void {
    if (this.entries.get(key) === entry) this.entries.delete(key);
  }
}
