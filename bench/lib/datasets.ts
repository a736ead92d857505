// Loading the data sets: PostgreSQL and MariaDB databases from the same
// table files, a Redis logical database of mixed key types, and a directory
// tree of many small and some large files.
import { createWriteStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import { removeTree } from './deleted-inodes.ts';
import { MY, PG, q, sh } from './sh.ts';
import { MY_LOAD, MY_SCHEMA, PG_INDEXES, PG_SCHEMA, type TableFile } from './tables.ts';
import { Rng, Vocabulary, timestamp } from './rng.ts';

export async function dropPg(db: string): Promise<void> {
  await sh(`${PG} -d postgres -c ${q(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`)}`);
}

export async function loadPg(db: string, files: TableFile[]): Promise<void> {
  await dropPg(db);
  await sh(`${PG} -d postgres -c ${q(`CREATE DATABASE "${db}"`)}`);
  await sh(`${PG} -d ${db}`, { input: PG_SCHEMA });
  // Two tables at a time: the server side of COPY is the bottleneck.
  const loads = files.map((f) => () => sh(`${PG} -d ${db} -c ${q(`\\copy ${f.table} FROM ${q(f.file)}`)}`));
  await parallel(loads, 2);
  await sh(`${PG} -d ${db}`, { input: PG_INDEXES });
  // At rest, as a production database is: without this, the first scan of
  // the freshly loaded rows sets their hint bits (writing the pages again)
  // and autovacuum starts on the new tables, both in whichever operation
  // comes first (session 12's full run: a 250 MB restore at 8.4 s in the first
  // repetition, 5.3 s in the second).
  await sh(`${PG} -d ${db} -c 'VACUUM (FREEZE, ANALYZE)'`);
  await sh(`${PG} -d ${db} -c 'CHECKPOINT'`);
}

export async function dropMy(db: string): Promise<void> {
  await sh(`${MY} -e ${q(`DROP DATABASE IF EXISTS \`${db}\``)}`);
}

export async function loadMy(db: string, files: TableFile[]): Promise<void> {
  await dropMy(db);
  await sh(`${MY} -e ${q(`CREATE DATABASE \`${db}\` CHARACTER SET utf8mb4`)}`);
  await sh(`${MY} ${db}`, { input: MY_SCHEMA });
  const loads = files.map(
    (f) => () =>
      sh(
        `${MY} --local-infile=1 ${db} -e ${q(`SET unique_checks=0; SET foreign_key_checks=0; LOAD DATA LOCAL INFILE '${f.file}' INTO TABLE ${f.table} CHARACTER SET utf8mb4 ${MY_LOAD[f.table] ?? ''}; ANALYZE TABLE ${f.table};`)}`,
      ),
  );
  await parallel(loads, 2);
}

export async function parallel(tasks: (() => Promise<unknown>)[], n: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, tasks.length) }, async () => {
      while (next < tasks.length) await tasks[next++]!();
    }),
  );
}

function resp(args: (string | Buffer)[]): string {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return s;
}

export interface RedisStats {
  keys: number;
  byType: Record<string, number>;
}

/** FLUSHDB of db, then about `keys` keys of mixed types loaded with redis-cli --pipe. Only ever db 8 or 9 (shared server). */
export async function loadRedis(db: number, keys: number, dir: string, seed: number): Promise<RedisStats> {
  if (db !== 9) throw new Error('bench data goes to Redis db 9 only');
  const rng = new Rng(seed);
  const voc = new Vocabulary(new Rng(seed + 7), 3000);
  const file = join(dir, 'redis.resp');
  const ws = createWriteStream(file);
  let buf = resp(['SELECT', String(db)]);
  const byType: Record<string, number> = { string: 0, hash: 0, list: 0, set: 0, zset: 0 };
  const expireAt = Math.floor(Date.now() / 1000) + 30 * 86400;
  for (let i = 0; i < keys; i++) {
    const r = rng.next();
    let key: string;
    if (r < 0.6) {
      byType.string!++;
      const v = rng.next();
      if (v < 0.4) {
        key = `session:${rng.hex(24)}`;
        buf += resp(['SET', key, `{"user": ${rng.int(1, 1e6)}, "ip": "10.${rng.int(0, 255)}.${rng.int(0, 255)}.${rng.int(1, 254)}", "at": "${timestamp(rng)}", "agent": "${voc.sentence(rng, 2, 6)}", "csrf": "${rng.hex(32)}"}`]);
      } else if (v < 0.6) {
        key = `counter:${voc.word(rng)}:${i}`;
        buf += resp(['SET', key, String(rng.int(0, 1e7))]);
      } else {
        key = `cache:page:${voc.word(rng)}:${i}`;
        buf += resp(['SET', key, voc.paragraph(rng, rng.int(1, 6))]);
      }
    } else if (r < 0.75) {
      byType.hash!++;
      key = `user:${i}`;
      const args = ['HSET', key, 'name', `${voc.word(rng)} ${voc.word(rng)}`, 'email', `${voc.word(rng)}@${voc.word(rng)}.com`, 'created', timestamp(rng), 'score', String(rng.int(0, 10000))];
      const extra = rng.int(0, 12);
      for (let f = 0; f < extra; f++) args.push(`f${f}`, rng.chance(0.5) ? voc.word(rng) : String(rng.int(0, 1e6)));
      buf += resp(args);
    } else if (r < 0.85) {
      byType.list!++;
      key = `queue:${voc.word(rng)}:${i}`;
      const args = ['RPUSH', key];
      const n = rng.int(3, 30);
      for (let k = 0; k < n; k++) args.push(`{"job": "${voc.word(rng)}", "id": ${rng.int(1, 1e9)}, "arg": "${voc.sentence(rng, 1, 5)}"}`);
      buf += resp(args);
    } else if (r < 0.95) {
      byType.set!++;
      key = `tags:${i}`;
      const args = ['SADD', key];
      const n = rng.int(3, 30);
      for (let k = 0; k < n; k++) args.push(rng.chance(0.5) ? voc.word(rng) : String(rng.int(1, 1e6)));
      buf += resp(args);
    } else {
      byType.zset!++;
      key = `leaderboard:${voc.word(rng)}:${i}`;
      const args = ['ZADD', key];
      const n = rng.int(3, 50);
      for (let k = 0; k < n; k++) args.push(String(rng.int(0, 1e6)), `player:${rng.int(1, 1e6)}`);
      buf += resp(args);
    }
    if (rng.chance(0.1)) buf += resp(['EXPIREAT', key, String(expireAt + rng.int(0, 86400))]);
    if (buf.length > 1 << 20) {
      if (!ws.write(buf)) await once(ws, 'drain');
      buf = '';
    }
  }
  ws.end(buf);
  await once(ws, 'finish');
  await sh(`redis-cli -n ${db} FLUSHDB`);
  await sh(`redis-cli --pipe < ${q(file)}`);
  await rm(file, { force: true });
  const n = Number((await sh(`redis-cli -n ${db} DBSIZE`)).stdout.trim());
  return { keys: n, byType };
}

export interface TreeStats {
  files: number;
  bytes: number;
  small: number;
  large: number;
}

/** A tree of many small files (text, JSON, CSV, a little binary) and a few large ones (logs, a media file, a data export). */
export async function writeTree(root: string, totalBytes: number, seed: number): Promise<TreeStats> {
  await rm(root, { recursive: true, force: true });
  const rng = new Rng(seed);
  const voc = new Vocabulary(new Rng(seed + 3), 5000);
  let files = 0;
  let bytes = 0;
  const smallTarget = totalBytes * 0.4;
  const dirs: string[] = [];
  for (const top of ['uploads', 'assets', 'config', 'content']) {
    for (let y = 0; y < 6; y++) for (let m = 0; m < 8; m++) dirs.push(join(root, top, `${2019 + y}`, `${String(m + 1).padStart(2, '0')}`));
  }
  for (const d of dirs) await mkdir(d, { recursive: true });
  let small = 0;
  const batch: Promise<void>[] = [];
  while (bytes < smallTarget) {
    const dir = rng.pick(dirs);
    const kind = rng.next();
    let name: string;
    let body: string | Buffer;
    if (kind < 0.4) {
      name = `${voc.word(rng)}-${files}.md`;
      body = `# ${voc.sentence(rng, 2, 6)}\n\n${Array.from({ length: rng.int(1, 8) }, () => voc.paragraph(rng, rng.int(2, 7))).join('\n\n')}\n`;
    } else if (kind < 0.65) {
      name = `${voc.word(rng)}-${files}.json`;
      body = JSON.stringify(Array.from({ length: rng.int(1, 40) }, (_, i) => ({ id: i, name: voc.word(rng), at: timestamp(rng), value: rng.int(0, 1e6), note: voc.sentence(rng, 2, 10) })), null, 1);
    } else if (kind < 0.85) {
      name = `${voc.word(rng)}-${files}.csv`;
      body = Array.from({ length: rng.int(5, 120) }, () => `${rng.int(1, 1e6)},${voc.word(rng)},${timestamp(rng)},${(rng.next() * 1000).toFixed(3)}`).join('\n');
    } else {
      name = `${voc.word(rng)}-${files}.png`;
      body = rng.blob(rng.int(1024, 24576), 0.7);
    }
    bytes += Buffer.byteLength(body);
    files++;
    small++;
    batch.push(writeFile(join(dir, name), body));
    if (batch.length >= 64) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  const largeDir = join(root, 'large');
  await mkdir(largeDir, { recursive: true });
  const largeTarget = totalBytes - bytes;
  const kinds = ['log', 'media', 'log', 'export', 'log'];
  const count = totalBytes > 500e6 ? 10 : 4;
  for (let i = 0; i < count; i++) {
    const want = Math.floor(largeTarget / count);
    const kind = kinds[i % kinds.length]!;
    const ws = createWriteStream(join(largeDir, `${kind}-${i}.${kind === 'media' ? 'mp4' : kind === 'export' ? 'jsonl' : 'log'}`));
    let written = 0;
    while (written < want) {
      let chunk: string | Buffer;
      if (kind === 'media') chunk = rng.blob(1 << 20, 0.97);
      else if (kind === 'export') chunk = Array.from({ length: 2000 }, () => `{"id": ${rng.int(1, 1e9)}, "name": "${voc.word(rng)}", "at": "${timestamp(rng)}", "text": "${voc.sentence(rng, 3, 20)}"}\n`).join('');
      else chunk = Array.from({ length: 4000 }, () => `${timestamp(rng)} ${rng.pick(['INFO', 'INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG'])} [${voc.word(rng)}] ${voc.sentence(rng, 3, 15)} id=${rng.hex(12)} ms=${rng.int(1, 3000)}\n`).join('');
      const n = Buffer.byteLength(chunk);
      written += n;
      if (!ws.write(chunk)) await once(ws, 'drain');
    }
    ws.end();
    await once(ws, 'finish');
    bytes += written;
    files++;
  }
  return { files, bytes, small, large: count };
}

/**
 * A work directory for comparing two servers on the bench tree: whatever an
 * earlier run left there removed (a server's old data directory would keep
 * its key and print none), the tree written to src/, an empty restored/.
 */
export async function freshWorkTree(work: string, sizeMb: number): Promise<{ src: string; restored: string; tree: TreeStats }> {
  await removeTree(work);
  const src = join(work, 'src');
  const restored = join(work, 'restored');
  await mkdir(restored, { recursive: true });
  const tree = await writeTree(src, sizeMb * 1e6, 11);
  console.error(`tree: ${tree.files} files, ${(tree.bytes / 1e6).toFixed(0)} MB`);
  return { src, restored, tree };
}
