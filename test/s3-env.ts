// Where the tests' S3 server is: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY
// (and S3_REGION) from the environment, or else the shared s3-ceph-up script
// is run (idempotent: fast when the cluster is already up). A server that
// cannot be reached is an error, never a skipped test.
import { spawnSync } from 'node:child_process';
import { S3Client } from '@aws-sdk/client-s3';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Conn {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

const here = dirname(fileURLToPath(import.meta.url));
const upScript = process.env.S3_CEPH_UP ?? resolve(here, '../../shared/tools/s3-ceph-up');

let cached: Conn | undefined;

export function s3Connection(): Conn {
  if (cached) return cached;
  let env: Record<string, string | undefined> = process.env;
  if (!env.S3_ENDPOINT || !env.S3_ACCESS_KEY || !env.S3_SECRET_KEY) {
    const r = spawnSync('bash', [upScript, '--no-mgr', '--store', 'memstore', '--size', '2G'], { encoding: 'utf8', timeout: 300_000 });
    if (r.status !== 0) {
      throw new Error(`S3 is not configured (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY) and ${upScript} failed (${r.error?.message ?? `exit ${r.status}`}): ${(r.stderr ?? '').slice(-2000)}`);
    }
    env = Object.fromEntries(
      r.stdout.split('\n').filter((l) => /^S3_[A-Z_]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
  }
  cached = {
    endpoint: env.S3_ENDPOINT ?? '',
    accessKeyId: env.S3_ACCESS_KEY ?? '',
    secretAccessKey: env.S3_SECRET_KEY ?? '',
    region: env.S3_REGION || 'us-east-1',
  };
  return cached;
}

/** A client for test setup (buckets, listings), with the settings radosgw 16 needs. */
export function s3AdminClient(conn: Conn = s3Connection()): S3Client {
  return new S3Client({
    endpoint: conn.endpoint,
    region: conn.region,
    forcePathStyle: true,
    credentials: { accessKeyId: conn.accessKeyId, secretAccessKey: conn.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}
