// The mysql engine (MySQL and MariaDB): a dump is the SQL text of one
// database written by mariadb-dump in a single transaction; a restore runs it
// into a staging database and swaps the tables in (see restore.ts).
import { randomBytes } from 'node:crypto';
import type { ObjectInfo, ResourceSpec } from '../../domain/types.ts';
import type { Engine, ScratchTarget } from '../engine.ts';
import { parseConnection, quoteId, rows, withConnection, withDatabase } from './conn.ts';
import { dump } from './dump.ts';
import { restore } from './restore.ts';

const never = () => new AbortController().signal;

async function listObjects(resource: ResourceSpec): Promise<ObjectInfo[]> {
  const p = parseConnection(resource.connection);
  return withConnection(p, never(), p.database, `Listing the tables of ${p.database} failed`, async (conn) => {
    const r = await rows(
      conn,
      "SELECT TABLE_NAME AS n, TABLE_TYPE AS t, TABLE_ROWS AS r FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'VIEW') ORDER BY TABLE_NAME",
      [p.database],
    );
    return r.map((x): ObjectInfo => {
      if (x.t === 'VIEW') return { name: String(x.n), kind: 'view' };
      // information_schema's estimate for InnoDB: cheap, approximate.
      return x.r === null || x.r === undefined ? { name: String(x.n), kind: 'table' } : { name: String(x.n), kind: 'table', size: Number(x.r) };
    });
  });
}

async function scratchTarget(resource: ResourceSpec, _workDir: string): Promise<ScratchTarget> {
  const p = parseConnection(resource.connection);
  const name = `bvscratch_${randomBytes(8).toString('hex')}`;
  await withConnection(p, never(), null, 'Creating a scratch database failed', (conn) => conn.query(`CREATE DATABASE ${quoteId(name)}`));
  let dropped = false;
  return {
    connection: withDatabase(resource.connection, name),
    async cleanup() {
      if (dropped) return;
      await withConnection(p, never(), null, `Dropping the scratch database ${name} failed`, async (conn) => {
        await conn.query('SET SESSION foreign_key_checks = 0');
        await conn.query(`DROP DATABASE IF EXISTS ${quoteId(name)}`);
      });
      dropped = true;
    },
  };
}

export const mysqlEngine: Engine = {
  type: 'mysql',
  formatVersion: 1,
  checkConnection(connection: string, _options: Record<string, unknown>): void {
    parseConnection(connection);
  },
  listObjects,
  dump,
  restore,
  scratchTarget,
  async serverVersion(target, signal) {
    const p = parseConnection(target.connection);
    return withConnection(p, signal, null, 'Reading the server version', async (conn) => {
      const r = await rows(conn, 'SELECT VERSION() AS v');
      return String(r[0]?.v ?? '') || null;
    });
  },
};
