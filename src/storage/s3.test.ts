// S3Storage against a real radosgw. Endpoint and keys come from S3_ENDPOINT,
// S3_ACCESS_KEY, S3_SECRET_KEY (and S3_REGION); when they are missing, the
// shared s3-ceph-up script is run (idempotent: fast when the cluster is
// already up). S3 that cannot be reached fails these tests; it never skips
// them. Each run works in its own bucket, deleted at the end.
import assert from 'node:assert/strict';
import { s3Connection as connection, type Conn, s3AdminClient } from '../../test/s3-env.ts';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { inspect } from 'node:util';
import { after, describe, it } from 'node:test';
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import { AppError, isErrorCode } from '../errors/index.ts';
import { HashCounter } from '../platform/streams.ts';
import { generatedStream, readAll, runStorageContract } from './contract.ts';
import { withRetries } from './retry.ts';
import { FIRST_PART_SIZE, MAX_PARTS, parseS3Url, partSize, S3Storage, type S3StorageOptions } from './s3.ts';
import { deletePrefix } from './storage.ts';

const MiB = 1024 * 1024;

const bucket = `bv-test-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const opened: S3Storage[] = [];
let admin: S3Client | undefined;
let readyPromise: Promise<Conn> | undefined;

/** Connects (bringing radosgw up if needed) and creates this run's bucket, once. */
function ready(): Promise<Conn> {
  readyPromise ??= (async () => {
    const conn = connection();
    admin = s3AdminClient(conn);
    await admin.send(new CreateBucketCommand({ Bucket: bucket }));
    return conn;
  })();
  return readyPromise;
}

async function open(prefix: string, extra: Partial<S3StorageOptions> = {}): Promise<S3Storage> {
  const conn = await ready();
  const s = new S3Storage({ ...conn, bucket, prefix, ...extra });
  opened.push(s);
  return s;
}

async function pendingUploads(prefix: string): Promise<string[]> {
  const out = await admin!.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
  return (out.Uploads ?? []).map((u) => u.Key ?? '');
}

after(async () => {
  for (const s of opened) s.destroy();
  if (!admin) return;
  // Empty the bucket (objects and unfinished uploads), then delete it.
  for (;;) {
    const out = await admin.send(new ListObjectsV2Command({ Bucket: bucket }));
    for (const o of out.Contents ?? []) await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key! }));
    if (!out.IsTruncated) break;
  }
  const uploads = await admin.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  for (const u of uploads.Uploads ?? []) {
    await admin.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! }));
  }
  await admin.send(new DeleteBucketCommand({ Bucket: bucket }));
  admin.destroy();
});

let contractRun = 0;
runStorageContract('s3 (radosgw)', async () => {
  const prefix = `contract/${++contractRun}`;
  const storage = await open(prefix);
  return {
    storage,
    async cleanup() {
      // Every contract test must leave no unfinished multipart upload behind.
      assert.deepEqual(await pendingUploads(`${prefix}/`), []);
      await deletePrefix(storage, '');
    },
  };
});

/** Counts HTTP requests (each try, retries included) that a client sends. */
function countRequests(client: S3Client): { n: number } {
  const counter = { n: 0 };
  client.middlewareStack.add(
    (next) => async (args) => {
      counter.n++;
      return next(args);
    },
    { step: 'deserialize', name: `countRequests${randomBytes(4).toString('hex')}` },
  );
  return counter;
}

/** A stream of size bytes (generatedStream's) that fails with err after failAt bytes. */
function failingAfter(size: number, failAt: number, err: Error): Readable {
  return Readable.from(
    (async function* () {
      let sent = 0;
      for await (const chunk of generatedStream(size, 3)) {
        if (sent >= failAt) throw err;
        sent += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
    })(),
  );
}

describe('S3Storage part sizes', () => {
  it('fit objects of at least 5 TiB into 10,000 parts within S3 part limits', () => {
    let total = 0;
    let largest = 0;
    for (let n = 1; n <= MAX_PARTS; n++) {
      const size = partSize(n);
      assert.ok(size >= 5 * MiB, `part ${n} is at least S3's 5 MiB minimum`);
      assert.ok(size >= partSize(Math.max(1, n - 1)), 'part sizes never shrink');
      total += size;
      largest = Math.max(largest, size);
    }
    assert.equal(partSize(1), FIRST_PART_SIZE);
    assert.equal(FIRST_PART_SIZE, 8 * MiB);
    assert.equal(partSize(1000), 8 * MiB);
    assert.equal(partSize(1001), 16 * MiB);
    assert.ok(total >= 5 * 1024 ** 4, `10,000 parts hold ${total} bytes`);
    assert.ok(largest <= 5 * 1024 ** 3, 'no part exceeds 5 GiB');
  });
});

describe('S3Storage URLs and options', () => {
  it('parses s3://BUCKET/PREFIX', () => {
    assert.deepEqual(parseS3Url('s3://my-bucket'), { bucket: 'my-bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://my-bucket/'), { bucket: 'my-bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://my-bucket/backvault/prod/'), { bucket: 'my-bucket', prefix: 'backvault/prod' });
    for (const bad of ['http://b/p', 's3://', 's3://b', 's3://bucket/../x', 's3://bucket/a//b', 's3://bucket/p?x=1', 's3://-bad/p']) {
      assert.throws(() => parseS3Url(bad), `${bad} is refused`);
    }
  });

  it('refuses credentials in the URL without echoing them', () => {
    assert.throws(
      () => parseS3Url('s3://AKIA:supersecretvalue@bucket/p'),
      (err: Error) => !err.message.includes('supersecretvalue') && /credentials/.test(err.message),
    );
  });

  it('builds from a URL and env-like settings', () => {
    const s = S3Storage.fromUrl('s3://bucket-x/some/prefix', {
      S3_ENDPOINT: 'http://127.0.0.1:9/',
      S3_ACCESS_KEY: 'AK',
      S3_SECRET_KEY: 'very-secret-key',
      S3_REGION: 'eu-west-3',
    });
    try {
      assert.equal(s.bucket, 'bucket-x');
      assert.equal(s.prefix, 'some/prefix');
      assert.equal(s.description, 's3://bucket-x/some/prefix/ at http://127.0.0.1:9');
      assert.ok(!s.description.includes('very-secret-key'));
    } finally {
      s.destroy();
    }
    const aws = S3Storage.fromUrl('s3://bucket-y', { AWS_ACCESS_KEY_ID: 'AK', AWS_SECRET_ACCESS_KEY: 'SK' });
    try {
      assert.equal(aws.description, 's3://bucket-y/ at AWS S3 (us-east-1)');
    } finally {
      aws.destroy();
    }
    assert.throws(() => S3Storage.fromUrl('s3://bucket-z/p', {}), /S3_ACCESS_KEY and S3_SECRET_KEY/);
    assert.throws(() => S3Storage.fromUrl('s3://bucket-z/p', { S3_ACCESS_KEY: 'a', S3_SECRET_KEY: 'b', S3_FORCE_PATH_STYLE: 'maybe' }));
  });
});

describe('S3Storage on radosgw', () => {
  it('maps keys under the prefix, or at the bucket root with an empty prefix', async () => {
    const id = randomBytes(4).toString('hex');
    const nested = await open(`nested-${id}/deeper`);
    const root = await open('');
    await nested.put('k/v', Readable.from([Buffer.from('nested')]));
    await root.put(`root-${id}`, Readable.from([Buffer.from('root')]));
    const head = await admin!.send(new HeadObjectCommand({ Bucket: bucket, Key: `nested-${id}/deeper/k/v` }));
    assert.equal(head.ContentLength, 6);
    assert.equal((await root.stat(`nested-${id}/deeper/k/v`))?.size, 6);
    assert.deepEqual((await readAll(await root.get(`root-${id}`))).toString(), 'root');
    const keys: string[] = [];
    for await (const o of nested.list('')) keys.push(o.key);
    assert.deepEqual(keys, ['k/v']);
    await nested.delete('k/v');
    await root.delete(`root-${id}`);
    assert.equal(await root.stat(`root-${id}`), null);
  });

  it('round trips keys with spaces, plus signs and non-ASCII, listed in UTF-8 byte order', async () => {
    const s = await open(`chars-${randomBytes(4).toString('hex')}`);
    const keys = ['z', 'é/ü', 'a+b', 'a b', 'a%20b'];
    for (const k of keys) await s.put(k, Readable.from([Buffer.from(k)]));
    for (const k of keys) assert.equal((await readAll(await s.get(k))).toString(), k);
    const listed: string[] = [];
    for await (const o of s.list('')) listed.push(o.key);
    assert.deepEqual(listed, ['a b', 'a%20b', 'a+b', 'z', 'é/ü']);
    assert.equal(await deletePrefix(s, ''), keys.length);
  });

  it('lists across pages in key order', async () => {
    const s = await open(`pages-${randomBytes(4).toString('hex')}`, { listPageSize: 2 });
    const keys = ['e', 'a/2', 'c', 'a/1', 'b-', 'd'];
    for (const k of keys) await s.put(k, Readable.from([Buffer.from(k)]));
    const listed: string[] = [];
    for await (const o of s.list('')) listed.push(o.key);
    assert.deepEqual(listed, [...keys].sort());
    assert.equal(await deletePrefix(s, ''), keys.length);
  });

  it('streams 100 MiB in several parts with bounded memory and reads it back equal', { timeout: 600_000 }, async (t) => {
    const s = await open(`big-${randomBytes(4).toString('hex')}`);
    const size = 100 * MiB + 12_345;
    const rssBefore = process.memoryUsage().rss;
    let rssMax = rssBefore;
    const sampler = setInterval(() => {
      rssMax = Math.max(rssMax, process.memoryUsage().rss);
    }, 20);
    try {
      const counter = new HashCounter();
      assert.deepEqual(await s.put('blob', generatedStream(size, 11).pipe(counter)), { size });
      // A multipart object's ETag ends in "-<parts>".
      const head = await admin!.send(new HeadObjectCommand({ Bucket: bucket, Key: `${s.prefix}/blob` }));
      assert.equal(head.ETag?.match(/-(\d+)"?$/)?.[1], String(Math.ceil(size / FIRST_PART_SIZE)), `ETag ${head.ETag}`);
      const hash = createHash('sha256');
      let read = 0;
      for await (const chunk of await s.get('blob')) {
        hash.update(chunk as Buffer);
        read += (chunk as Buffer).length;
      }
      assert.equal(read, size);
      assert.equal(hash.digest('hex'), counter.sha256);
      // A range across the boundary of parts 1 and 2.
      const expected = (await readAll(generatedStream(FIRST_PART_SIZE + 100, 11))).subarray(FIRST_PART_SIZE - 100);
      assert.deepEqual(await readAll(await s.get('blob', { start: FIRST_PART_SIZE - 100, end: FIRST_PART_SIZE + 99 })), expected);
    } finally {
      clearInterval(sampler);
    }
    const grew = (rssMax - rssBefore) / MiB;
    t.diagnostic(`RSS ${(rssBefore / MiB).toFixed(0)} MiB before, at most ${(rssMax / MiB).toFixed(0)} MiB during`);
    assert.ok(grew < 150, `RSS grew by ${grew.toFixed(0)} MiB`);
    await s.delete('blob');
  });

  it('a body failing after several parts aborts the multipart upload', { timeout: 300_000 }, async () => {
    const s = await open(`fail-${randomBytes(4).toString('hex')}`);
    await s.put('obj', Readable.from([Buffer.from('older')]));
    const boom = new AppError('checksum_mismatch', 'test body failed');
    await assert.rejects(s.put('obj', failingAfter(64 * MiB, 30 * MiB, boom)), (err) => err === boom);
    assert.equal((await readAll(await s.get('obj'))).toString(), 'older');
    assert.deepEqual(await pendingUploads(`${s.prefix}/`), []);
    await s.delete('obj');
  });

  it('a part that keeps failing aborts the multipart upload with a retryable storage_failed', { timeout: 300_000 }, async () => {
    const s = await open(`partfail-${randomBytes(4).toString('hex')}`, { uploadAttempts: 2 });
    await s.put('obj', Readable.from([Buffer.from('older')]));
    let tries = 0;
    // Part 3 answers 503 on every try, after the server has taken it.
    s.uploadClient.middlewareStack.add(
      (next) => async (args) => {
        const out = await next(args);
        if ((args.input as { PartNumber?: number }).PartNumber === 3) {
          tries++;
          throw Object.assign(new Error('injected'), { name: 'ServiceUnavailable', $fault: 'server', $metadata: { httpStatusCode: 503 } });
        }
        return out;
      },
      { step: 'deserialize', name: 'failPart3' },
    );
    await assert.rejects(s.put('obj', generatedStream(40 * MiB, 9)), (err) => {
      assert.ok(isErrorCode(err, 'storage_failed'), String(err));
      assert.equal((err as { retryable?: boolean }).retryable, true);
      assert.match(err.message, /HTTP 503/);
      return true;
    });
    assert.equal(tries, 2, 'the SDK resent the buffered part once (uploadAttempts 2)');
    assert.equal((await readAll(await s.get('obj'))).toString(), 'older');
    assert.deepEqual(await pendingUploads(`${s.prefix}/`), []);
    await s.delete('obj');
  });

  it('a part failing once is resent from its buffer by the SDK and the put succeeds', { timeout: 300_000 }, async () => {
    const s = await open(`partretry-${randomBytes(4).toString('hex')}`);
    const parts: number[] = [];
    let failed = false;
    s.uploadClient.middlewareStack.add(
      (next) => async (args) => {
        const n = (args.input as { PartNumber?: number }).PartNumber;
        const out = await next(args);
        if (n !== undefined) parts.push(n);
        if (n === 2 && !failed) {
          failed = true;
          throw Object.assign(new Error('injected'), { name: 'InternalError', $fault: 'server', $metadata: { httpStatusCode: 500 } });
        }
        return out;
      },
      { step: 'deserialize', name: 'failPart2Once' },
    );
    const size = 3 * FIRST_PART_SIZE + 5;
    const counter = new HashCounter();
    assert.deepEqual(await s.put('obj', generatedStream(size, 4).pipe(counter)), { size });
    assert.deepEqual([...parts].sort(), [1, 2, 2, 3, 4]);
    const got = createHash('sha256');
    for await (const chunk of await s.get('obj')) got.update(chunk as Buffer);
    assert.equal(got.digest('hex'), counter.sha256);
    await s.delete('obj');
  });

  it('an aborted put leaves no object and no pending multipart upload', { timeout: 300_000 }, async () => {
    const s = await open(`abort-${randomBytes(4).toString('hex')}`);
    const controller = new AbortController();
    const counter = new HashCounter((bytes) => {
      if (bytes >= 30 * MiB && !controller.signal.aborted) controller.abort();
    });
    await assert.rejects(
      s.put('obj', generatedStream(200 * MiB, 5).pipe(counter), { signal: controller.signal }),
      (err) => isErrorCode(err, 'cancelled'),
    );
    assert.ok(counter.bytes < 100 * MiB, 'the body stopped being read soon after the abort');
    assert.equal(await s.stat('obj'), null);
    assert.deepEqual(await pendingUploads(`${s.prefix}/`), []);
    const left: string[] = [];
    for await (const o of s.list('')) left.push(o.key);
    assert.deepEqual(left, []);
  });

  it('a wrong secret key fails at once with a clear message that holds no secret', async () => {
    const conn = await ready();
    const wrongSecret = `wrong-${randomBytes(12).toString('hex')}`;
    const s = await open('creds', { secretAccessKey: wrongSecret });
    const requests = countRequests(s.client);
    const uploads = countRequests(s.uploadClient);
    let sleeps = 0;
    const wrapped = withRetries(s, { sleep: async () => void sleeps++ });
    const ops: Array<[string, () => Promise<unknown>]> = [
      ['put', () => wrapped.put('k', Readable.from([Buffer.from('x')]))],
      ['get', () => wrapped.get('k')],
      ['stat', () => wrapped.stat('k')],
      ['list', async () => {
        for await (const _ of wrapped.list('')) void _;
      }],
      ['delete', () => wrapped.delete('k')],
    ];
    for (const [name, op] of ops) {
      await assert.rejects(op(), (err) => {
        assert.ok(isErrorCode(err, 'storage_failed'), `${name}: ${String(err)}`);
        if (name === 'stat') assert.match(err.message, /HTTP 403.*secret key/, name);
        else assert.match(err.message, /secret key does not match/, name);
        const everything = inspect(err, { depth: 20, showHidden: true });
        assert.ok(!everything.includes(wrongSecret), `${name}: the error holds the secret`);
        assert.ok(!everything.includes(conn.secretAccessKey), `${name}: the error holds the real secret`);
        return true;
      });
    }
    assert.equal(sleeps, 0, 'the wrapper did not retry');
    assert.equal(uploads.n, 1, 'put sent one request');
    assert.equal(requests.n, 4, 'get, stat, list and delete sent one request each');
  });

  it('an unknown access key says so', async () => {
    const s = await open('creds', { accessKeyId: 'NOSUCHACCESSKEY00000' });
    await assert.rejects(s.get('k'), (err) => isErrorCode(err, 'storage_failed') && /access key/.test(err.message));
  });

  it('a missing bucket fails at once with storage_failed', async () => {
    const s = await open('p', { bucket: `${bucket}-missing` });
    const requests = countRequests(s.client);
    const uploads = countRequests(s.uploadClient);
    let sleeps = 0;
    const wrapped = withRetries(s, { sleep: async () => void sleeps++ });
    const ops: Array<[string, () => Promise<unknown>]> = [
      ['put', () => wrapped.put('k', Readable.from([Buffer.from('x')]))],
      ['get', () => wrapped.get('k')],
      ['stat', () => wrapped.stat('k')],
      ['list', async () => {
        for await (const _ of wrapped.list('')) void _;
      }],
      ['delete', () => wrapped.delete('k')],
    ];
    for (const [name, op] of ops) {
      await assert.rejects(op(), (err) => {
        assert.ok(isErrorCode(err, 'storage_failed'), `${name}: ${String(err)}`);
        assert.match(err.message, new RegExp(`bucket "${bucket}-missing" .* does not exist: create the bucket`), name);
        return true;
      });
    }
    assert.equal(sleeps, 0, 'the wrapper did not retry');
    assert.equal(uploads.n, 1, 'put sent one request');
    // stat's HEAD has no error body, so it asks once more (HeadBucket) which is missing.
    assert.equal(requests.n, 5, 'get, list, delete one request each; stat two');
  });

  it('a presigned GET URL downloads the object and stops working after expiry', { timeout: 60_000 }, async () => {
    const s = await open(`presign-${randomBytes(4).toString('hex')}`);
    const data = randomBytes(100_000);
    await s.put('dl/file.bin', Readable.from([data]));
    const url = await withRetries(s).presignGet!('dl/file.bin', 2);
    assert.ok(!url.includes((await ready()).secretAccessKey));
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), data);
    await delay(3500);
    const late = await fetch(url);
    assert.equal(late.status, 403, 'the link has expired');
    await late.arrayBuffer();
    await assert.rejects(s.presignGet('dl/file.bin', 0), RangeError);
    await s.delete('dl/file.bin');
  });

  it('a storage on an unreachable endpoint fails with a retryable storage_failed', async () => {
    const conn = await ready();
    const s = new S3Storage({ ...conn, endpoint: 'http://127.0.0.1:9', bucket, prefix: 'x' });
    opened.push(s);
    let sleeps = 0;
    const wrapped = withRetries(s, { attempts: 3, sleep: async () => void sleeps++ });
    await assert.rejects(wrapped.stat('k'), (err) => isErrorCode(err, 'storage_failed') && /Cannot reach S3 at http:\/\/127\.0\.0\.1:9/.test(err.message));
    assert.equal(sleeps, 2, 'retried until attempts ran out');
  });
});
