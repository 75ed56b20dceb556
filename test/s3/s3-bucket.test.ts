// The S3 layer against a real Ceph RGW (scripts/ceph/cluster.sh): bucket creation, whole and ranged
// reads, conditional writes and their races, listings, and what it counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { createS3Client } from '../../server/store/s3/s3-client.js';
import { S3Bucket, S3RequestError } from '../../server/store/s3/s3-bucket.js';
import { ShoalError } from '../../server/errors.js';
import { Metrics } from '../../api/metrics.js';

const code = (c: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, c);
  if (re) assert.match(e.message, re);
  return true;
};

test('ensureBucket creates a missing bucket and accepts an existing one', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const name = uniqueBucketName('create');
  const b = await openTestBucket(ceph, name);
  assert.equal(b.stats.count('create_bucket', 'ok'), 1);
  await b.put('k', Buffer.from('x'));
  await b.ensureBucket(); // exists now: a HEAD, no create
  assert.equal(b.stats.count('create_bucket', 'ok'), 1);
  assert.equal(b.stats.count('head_bucket', 'ok'), 1);
  assert.equal((await b.get('k'))!.body.toString(), 'x', 'the second ensureBucket left the bucket as it was');
});

test('whole and ranged reads return the bytes written, with the object size and the gateway clock', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('range'));
  const data = randomBytes(3 * 2 ** 20 + 123);
  const put = await b.put('dir/blob', data);
  assert.match(put.etag, /^[0-9a-f]{32}$/, 'the ETag comes back without quotes');
  assert.ok(put.serverDate, 'the Date header of the answer was captured');
  assert.ok(Math.abs(put.serverDate.getTime() - Date.now()) < 60_000);

  const whole = await b.get('dir/blob');
  assert.ok(whole);
  assert.ok(whole.body.equals(data));
  assert.equal(whole.size, data.length);
  assert.equal(whole.etag, put.etag);

  const part = await b.get('dir/blob', { offset: 2 ** 20 + 7, length: 4096 });
  assert.ok(part);
  assert.ok(part.body.equals(data.subarray(2 ** 20 + 7, 2 ** 20 + 7 + 4096)));
  assert.equal(part.size, data.length, 'a ranged read still reports the whole object size');

  const tail = await b.get('dir/blob', { offset: data.length - 10, length: 100 });
  assert.ok(tail!.body.equals(data.subarray(data.length - 10)), 'a range past the end is cut at the end');

  await assert.rejects(b.get('dir/blob', { offset: data.length + 5, length: 10 }), code('s3_error', /416/));
  await assert.rejects(b.get('dir/blob', { offset: -1, length: 10 }), code('invalid_range'));
  await assert.rejects(b.get('dir/blob', { offset: 0, length: 0 }), code('invalid_range'));

  const head = await b.head('dir/blob');
  assert.deepEqual([head!.size, head!.etag], [data.length, put.etag]);
  assert.equal(await b.get('dir/none'), null);
  assert.equal(await b.head('dir/none'), null);
  assert.equal(b.stats.count('get', 'not_found'), 1);
  assert.ok(b.stats.bytesUp >= data.length && b.stats.bytesDown >= data.length + 4096 + 10);
});

test('conditional create: If-None-Match "*" is refused with 412 once the key exists, and changes nothing', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('cond'));
  const first = await b.put('lease', Buffer.from('first'), { ifNoneMatch: '*' });
  await assert.rejects(b.put('lease', Buffer.from('second'), { ifNoneMatch: '*' }), (e) => {
    assert.ok(e instanceof S3RequestError);
    assert.equal(e.code, 's3_precondition_failed');
    assert.equal(e.s3Status, 412);
    assert.match(e.message, /s3:\/\/shoal-cond-[0-9a-f]+\/lease/);
    return true;
  });
  const now = await b.get('lease');
  assert.equal(now!.body.toString(), 'first');
  assert.equal(now!.etag, first.etag);
  assert.equal(b.stats.count('put', 'precondition_failed'), 1, 'a 412 is final: not retried');
});

test('If-Match replaces only the version it names; a stale or unknown ETag gets 412', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('ifmatch'));
  const v1 = await b.put('head', Buffer.from('v1'));
  const v2 = await b.put('head', Buffer.from('v2'), { ifMatch: v1.etag });
  assert.notEqual(v2.etag, v1.etag);
  await assert.rejects(b.put('head', Buffer.from('v3'), { ifMatch: v1.etag }), code('s3_precondition_failed'));
  await assert.rejects(b.put('head', Buffer.from('v3'), { ifMatch: '0123456789abcdef0123456789abcdef' }), code('s3_precondition_failed'));
  await assert.rejects(b.put('absent', Buffer.from('v1'), { ifMatch: v1.etag }), code('s3_precondition_failed'), 'If-Match on a missing key is refused too');
  assert.equal((await b.get('head'))!.body.toString(), 'v2');
  assert.equal(await b.head('absent'), null);
});

test("Ceph 16's RGW never matches a quoted ETag in If-Match (why S3Bucket sends it bare)", async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('quoted'));
  const v1 = await b.put('k', Buffer.from('v1'));
  const { client } = await createS3Client({ endpoint: ceph.endpoint, region: ceph.region, credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey } });
  await assert.rejects(client.send(new PutObjectCommand({ Bucket: b.bucket, Key: 'k', Body: 'v2', IfMatch: `"${v1.etag}"` })), (e: { $metadata?: { httpStatusCode?: number } }) => e.$metadata?.httpStatusCode === 412);
  await client.send(new PutObjectCommand({ Bucket: b.bucket, Key: 'k', Body: 'v2', IfMatch: v1.etag }));
  assert.equal((await b.get('k'))!.body.toString(), 'v2');
  client.destroy();
});

test('conditional writes are atomic: of 8 concurrent creates, and of 8 concurrent If-Match writes, exactly one wins', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const name = uniqueBucketName('race');
  // Separate clients, so the requests really travel in parallel on separate connections.
  const writers = await Promise.all(Array.from({ length: 8 }, () => openTestBucket(ceph, name)));
  for (let round = 0; round < 3; round++) {
    const key = `k${round}`;
    const creates = await Promise.allSettled(writers.map((w, i) => w.put(key, Buffer.from(`create ${i}`), { ifNoneMatch: '*' })));
    const won = creates.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    assert.equal(won.length, 1, `round ${round}: creates that succeeded: ${won}`);
    for (const r of creates) if (r.status === 'rejected') assert.equal((r.reason as ShoalError).code, 's3_precondition_failed');
    const cur = (await writers[0]!.get(key))!;
    assert.equal(cur.body.toString(), `create ${won[0]}`);

    const swaps = await Promise.allSettled(writers.map((w, i) => w.put(key, Buffer.from(`swap ${i}`), { ifMatch: cur.etag })));
    const swapped = swaps.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    assert.equal(swapped.length, 1, `round ${round}: If-Match writes that succeeded: ${swapped}`);
    assert.equal((await writers[0]!.get(key))!.body.toString(), `swap ${swapped[0]}`);
  }
});

test('list walks every page in key order; delete removes a key and deleting a missing key succeeds', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('list'));
  const keys = Array.from({ length: 1005 }, (_, i) => `p/${String(i).padStart(5, '0')}`);
  for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => b.put(k, Buffer.from(k))));
  await b.put('q/other', Buffer.from('x'));
  const seen: string[] = [];
  for await (const e of b.list('p/')) seen.push(e.key);
  assert.deepEqual(seen, keys);
  assert.equal(b.stats.count('list', 'ok'), 2, '1005 keys take two pages of 1000');
  const after: string[] = [];
  for await (const e of b.list('p/', { startAfter: 'p/01000' })) after.push(e.key);
  assert.deepEqual(after, keys.slice(1001));

  await b.delete('p/00000');
  assert.equal(await b.head('p/00000'), null);
  await b.delete('p/00000');
  await b.delete('never/was');
});

test('credentials and region come from the standard AWS environment; a region other than us-east-1 still creates buckets on a gateway', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const saved = { ...process.env };
  t.after(() => {
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION']) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });
  process.env.AWS_ACCESS_KEY_ID = ceph.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = ceph.secretAccessKey;
  process.env.AWS_REGION = 'eu-central-1'; // RGW takes any region in a signature
  const { client, region } = await createS3Client({ endpoint: ceph.endpoint, region: null });
  assert.equal(region, 'eu-central-1', 'the region comes from AWS_REGION');
  const b = new S3Bucket({ client, bucket: uniqueBucketName('envcreds'), timeoutMs: 10_000 });
  await b.ensureBucket();
  await b.put('k', Buffer.from('env'));
  assert.equal((await b.get('k'))!.body.toString(), 'env');

  process.env.AWS_SECRET_ACCESS_KEY = 'wrong' + ceph.secretAccessKey;
  const bad = new S3Bucket({ client: (await createS3Client({ endpoint: ceph.endpoint, region: null })).client, bucket: b.bucket, timeoutMs: 10_000 });
  await assert.rejects(bad.get('k'), code('s3_error', /403 SignatureDoesNotMatch/));
  assert.equal(bad.stats.count('get', 'client_error'), 1, 'a 403 is final: not retried');
  client.destroy();
});

test("an upload streamed with the SDK's default checksums is refused by Ceph 16 (why the client asks WHEN_REQUIRED)", async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const b = await openTestBucket(ceph, uniqueBucketName('checksum'));
  const credentials = { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey };
  const put = (client: S3Client) =>
    client.send(new PutObjectCommand({ Bucket: b.bucket, Key: 'k', Body: Readable.from([Buffer.alloc(100_000, 7)]), ContentLength: 100_000 })).then(
      () => 'stored',
      (e: { name: string; $metadata?: { httpStatusCode?: number } }) => `${e.$metadata?.httpStatusCode} ${e.name}`,
    );
  const sdkDefaults = new S3Client({ endpoint: ceph.endpoint, region: ceph.region, forcePathStyle: true, credentials });
  const ours = (await createS3Client({ endpoint: ceph.endpoint, region: ceph.region, credentials })).client;
  t.after(() => {
    sdkDefaults.destroy();
    ours.destroy();
  });
  // If RGW starts accepting it, this fails, so the comment in s3-client.ts stays true.
  assert.equal(await put(sdkDefaults), '411 MissingContentLength');
  assert.equal(await put(ours), 'stored');
  assert.equal((await b.head('k'))!.size, 100_000);
});

test('an upload is sent with an unsigned payload, and a body damaged on the way is refused by its Content-MD5 and stored nowhere', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const name = uniqueBucketName('digest');
  await openTestBucket(ceph, name);
  const { client } = await createS3Client({ endpoint: ceph.endpoint, region: ceph.region, credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey } });
  t.after(() => client.destroy());
  // After signing, as a flaky network or a bad NIC would: the payload's hash is not in the signature
  // (s3-client.ts leaves it out to save a pass over every byte), so only Content-MD5 can catch this.
  let damage = false;
  const seen: string[] = [];
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { method?: string; headers: Record<string, string>; body?: unknown };
      if (req.method === 'PUT' && ArrayBuffer.isView(req.body)) {
        seen.push(req.headers['x-amz-content-sha256']!);
        if (damage) {
          const body = Buffer.from(req.body as Uint8Array);
          body[1234] ^= 0xff;
          req.body = body;
        }
      }
      return next(args);
    },
    { step: 'finalizeRequest', priority: 'low', name: 'testDamage' },
  );
  const b = new S3Bucket({ client, bucket: name, timeoutMs: 30_000 });
  const bytes = randomBytes(100_000);
  await b.put('good', bytes);
  assert.deepEqual((await b.get('good'))!.body, bytes);
  damage = true;
  await assert.rejects(b.put('bad', bytes), (e: unknown) => e instanceof S3RequestError && /BadDigest|InvalidDigest/.test(String((e.cause as { name?: string })?.name)));
  assert.equal(await b.head('bad'), null, 'nothing stored under the damaged upload');
  assert.deepEqual([...new Set(seen)], ['UNSIGNED-PAYLOAD']);
});

test('/metrics counts S3 requests by operation and outcome, their durations and the bytes moved', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const metrics = new Metrics({ defaultMetrics: false });
  const b = await openTestBucket(ceph, uniqueBucketName('metrics'), { observer: metrics });
  await b.put('k', Buffer.alloc(5000, 1), { ifNoneMatch: '*' });
  await assert.rejects(b.put('k', Buffer.alloc(10, 2), { ifNoneMatch: '*' }), code('s3_precondition_failed'));
  await b.get('k');
  await b.get('k', { offset: 0, length: 100 });
  assert.equal(await b.get('missing'), null);
  const text = await metrics.metrics();
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
  assert.match(text, /# TYPE shoal_s3_requests_total counter/);
  assert.equal(value('shoal_s3_requests_total{op="put",result="ok"}'), 1);
  assert.equal(value('shoal_s3_requests_total{op="put",result="precondition_failed"}'), 1);
  assert.equal(value('shoal_s3_requests_total{op="get",result="ok"}'), 2);
  assert.equal(value('shoal_s3_requests_total{op="get",result="not_found"}'), 1);
  assert.equal(value('shoal_s3_request_duration_seconds_count{op="get"}'), 3);
  assert.ok(value('shoal_s3_request_duration_seconds_sum{op="put"}') > 0);
  assert.equal(value('shoal_s3_uploaded_bytes_total'), 5000, 'the refused upload is not counted');
  assert.equal(value('shoal_s3_downloaded_bytes_total'), 5100);
});
