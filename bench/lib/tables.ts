// The relational data set: four tables of an online shop (customers, orders,
// events, documents) written as tab-separated files in COPY text format, which
// both PostgreSQL (\copy) and MariaDB (LOAD DATA) read. Text from a skewed
// vocabulary, numbers, timestamps, JSON documents, hex ids and binary
// attachments: the dump compresses about 3-5x with zstd -3, unlike pgbench's
// tables (about 100x), which flatter every tool.
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { AGENTS, COUNTRIES, KINDS, LANGS, Rng, STATUSES, Vocabulary, money, timestamp } from './rng.ts';

export interface TableFile {
  table: string;
  file: string;
  rows: number;
  bytes: number;
}

/** Share of the total bytes each table gets. */
const SHARES: Record<string, number> = { customers: 0.15, orders: 0.25, events: 0.3, documents: 0.3 };

type RowFn = (rng: Rng, voc: Vocabulary, id: number, scale: { customers: number }) => string;

const ROWS: Record<string, RowFn> = {
  customers(rng, voc, id) {
    const first = voc.word(rng);
    const last = voc.word(rng);
    const name = `${first.charAt(0).toUpperCase()}${first.slice(1)} ${last.charAt(0).toUpperCase()}${last.slice(1)}`;
    const email = `${first}.${last}${rng.int(1, 999)}@${voc.word(rng)}.${rng.pick(['com', 'net', 'org', 'io', 'de'])}`;
    const profile = `{"age": ${rng.int(18, 90)}, "bio": "${voc.sentence(rng, 5, 30)}", "lang": "${rng.pick(LANGS)}", "prefs": {"newsletter": ${rng.chance(0.3)}, "theme": "${rng.pick(['light', 'dark', 'auto'])}"}, "score": ${rng.next().toFixed(4)}, "tags": ["${voc.word(rng)}", "${voc.word(rng)}"]}`;
    return `${id}\t${name}\t${email}\t${rng.pick(COUNTRIES)}\t${timestamp(rng)}\t${money(rng, 5000)}\t${profile}\n`;
  },
  orders(rng, voc, id, scale) {
    const n = rng.int(1, 5);
    const items: string[] = [];
    for (let i = 0; i < n; i++) {
      items.push(`{"sku": "${voc.word(rng).toUpperCase().slice(0, 4)}-${rng.int(10000, 99999)}", "qty": ${rng.int(1, 9)}, "price": ${money(rng, 300)}, "name": "${voc.sentence(rng, 2, 5)}"}`);
    }
    const note = rng.chance(0.5) ? '\\N' : voc.sentence(rng, 4, 25);
    return `${id}\t${rng.int(1, Math.max(1, scale.customers))}\t${rng.pick(STATUSES)}\t${money(rng, 2000)}\t${timestamp(rng)}\t[${items.join(', ')}]\t${note}\n`;
  },
  events(rng, voc, id) {
    const path = `/${voc.word(rng)}/${voc.word(rng)}${rng.chance(0.3) ? `/${rng.int(1, 100000)}` : ''}`;
    const payload = `{"path": "${path}", "ms": ${rng.int(1, 5000)}, "status": ${rng.pick([200, 200, 200, 201, 204, 301, 304, 400, 404, 500])}, "ref": "${voc.word(rng)}", "q": "${rng.chance(0.4) ? voc.sentence(rng, 1, 6) : ''}"}`;
    const ip = `${rng.int(1, 223)}.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}`;
    return `${id}\t${timestamp(rng)}\t${rng.pick(KINDS)}\t${rng.hex(32)}\t${ip}\t${payload}\t${rng.pick(AGENTS)}\n`;
  },
  documents(rng, voc, id) {
    const paras: string[] = [];
    const np = rng.int(1, 6);
    for (let i = 0; i < np; i++) paras.push(voc.paragraph(rng, rng.int(2, 8)));
    // COPY text format: a newline inside a value is written \n
    const body = paras.join('\\n');
    // COPY text format for bytea is \\x<hex> (the backslash escaped); MariaDB's LOAD DATA unescapes it to \x<hex> and the load UNHEXes the rest.
    const att = rng.chance(0.3) ? `\\\\x${rng.blob(rng.int(512, 12288), 0.35).toString('hex')}` : '\\N';
    return `${id}\t${voc.sentence(rng, 3, 10)}\t${body}\t${rng.pick(['text/markdown', 'text/plain', 'text/html'])}\t${timestamp(rng)}\t${att}\n`;
  },
};

export const PG_SCHEMA = `
CREATE TABLE customers (id bigint NOT NULL, name text NOT NULL, email text NOT NULL, country char(2), created_at timestamptz NOT NULL, balance numeric(12,2), profile jsonb);
CREATE TABLE orders (id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL, total numeric(12,2), placed_at timestamptz NOT NULL, items jsonb, note text);
CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, session char(32), ip inet, payload jsonb, user_agent text);
CREATE TABLE documents (id bigint NOT NULL, title text NOT NULL, body text, mime text, updated_at timestamptz, attachment bytea);
`;

export const PG_INDEXES = `
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE events ADD PRIMARY KEY (id);
ALTER TABLE documents ADD PRIMARY KEY (id);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX events_at ON events (at);
CREATE UNIQUE INDEX customers_email ON customers (email, id);
ANALYZE;
`;

export const MY_SCHEMA = `
CREATE TABLE customers (id bigint PRIMARY KEY, name varchar(200) NOT NULL, email varchar(300) NOT NULL, country char(2), created_at datetime NOT NULL, balance decimal(12,2), profile json, KEY customers_email (email)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status varchar(20) NOT NULL, total decimal(12,2), placed_at datetime NOT NULL, items json, note text, KEY orders_customer (customer_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE events (id bigint PRIMARY KEY, at datetime NOT NULL, kind varchar(32) NOT NULL, session char(32), ip varchar(45), payload json, user_agent varchar(300), KEY events_at (at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE documents (id bigint PRIMARY KEY, title varchar(500) NOT NULL, body mediumtext, mime varchar(50), updated_at datetime, attachment mediumblob) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
`;

/** The LOAD DATA column list per table (documents decodes its attachment from \x<hex>). */
export const MY_LOAD: Record<string, string> = {
  customers: '',
  orders: '',
  events: '',
  documents: '(id, title, body, mime, updated_at, @att) SET attachment = UNHEX(SUBSTRING(@att, 3))',
};

export const TABLES = Object.keys(SHARES);

/** Writes one file per table into dir, totalling about totalBytes. */
export async function writeTables(dir: string, totalBytes: number, seed: number): Promise<TableFile[]> {
  const out: TableFile[] = [];
  const voc = new Vocabulary(new Rng(seed));
  // customers come first: orders refer to their ids
  const scale = { customers: 1 };
  for (const [i, table] of TABLES.entries()) {
    const rng = new Rng(seed * 31 + i + 1);
    const target = Math.floor(totalBytes * SHARES[table]!);
    const file = join(dir, `${table}.tsv`);
    const ws = createWriteStream(file);
    let bytes = 0;
    let rows = 0;
    let pending: string[] = [];
    let pendingBytes = 0;
    while (bytes < target) {
      const line = ROWS[table]!(rng, voc, rows + 1, scale);
      rows++;
      bytes += line.length;
      pending.push(line);
      pendingBytes += line.length;
      if (pendingBytes > 1 << 20) {
        if (!ws.write(pending.join(''))) await once(ws, 'drain');
        pending = [];
        pendingBytes = 0;
      }
    }
    ws.end(pending.join(''));
    await once(ws, 'finish');
    if (table === 'customers') scale.customers = rows;
    out.push({ table, file, rows, bytes });
  }
  return out;
}
