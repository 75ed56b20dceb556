// Transient failures against a real radosgw of the test cluster, one this test owns (so the shared
// gateway other files use is never disturbed): a gateway that is down is retried until it is back, and one
// that never answers ends in s3_timeout after --s3-timeout, with a sentence saying what happened.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { needCeph, openTestBucket, PrivateGateway, uniqueBucketName } from '../helpers/ceph.js';
import { ShoalError } from '../../server/errors.js';

test('a request made while the gateway is down is retried and succeeds once it is back', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const gw = await PrivateGateway.create(ceph);
  t.after(() => gw.kill());
  await gw.start();
  const b = await openTestBucket(ceph, uniqueBucketName('retry'), { endpoint: gw.endpoint, timeoutMs: 60_000 });
  await b.put('before', Buffer.from('written before the outage'));

  await gw.kill();
  const started = performance.now();
  const put = b.put('during', Buffer.from('written across the outage'));
  const get = b.get('before');
  await sleep(2000);
  await gw.start();
  await put;
  const got = await get;
  const seconds = (performance.now() - started) / 1000;

  assert.equal(got!.body.toString(), 'written before the outage');
  assert.equal((await b.get('during'))!.body.toString(), 'written across the outage');
  assert.ok(seconds >= 2, `the operations finished after the gateway came back (${seconds.toFixed(1)} s)`);
  assert.ok(b.stats.count('put', 'network_error') >= 1, 'the put failed at least once on the way');
  assert.ok(b.stats.count('get', 'network_error') >= 1, 'the get failed at least once on the way');
  assert.equal(b.stats.count('put', 'ok'), 2);
});

test('a gateway that accepts connections but never answers ends in s3_timeout after --s3-timeout', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const gw = await PrivateGateway.create(ceph);
  t.after(async () => {
    gw.thaw();
    await gw.kill();
  });
  await gw.start();
  const b = await openTestBucket(ceph, uniqueBucketName('hang'), { endpoint: gw.endpoint, timeoutMs: 3000 });
  await b.put('k', Buffer.from('v'));

  gw.freeze();
  const started = performance.now();
  await assert.rejects(b.get('k'), (e) => {
    assert.ok(e instanceof ShoalError);
    assert.equal(e.code, 's3_timeout');
    assert.equal(e.nbdErrno, 'EIO');
    assert.match(e.message, /^S3 did not complete a get of s3:\/\/shoal-hang-[0-9a-f]+\/k within 3s \(--s3-timeout; \d attempts?, the last: no answer in time\)\.$/);
    return true;
  });
  const seconds = (performance.now() - started) / 1000;
  // Each attempt is cut off after a third of the deadline (1 s here), so it was tried more than once.
  assert.ok(seconds >= 2.9 && seconds < 6, `gave up after ${seconds.toFixed(2)} s`);
  assert.ok(b.stats.count('get', 'timeout') >= 2, `attempts cut off: ${b.stats.count('get', 'timeout')}`);

  gw.thaw();
  assert.equal((await b.get('k'))!.body.toString(), 'v', 'once it answers again, so does the bucket');
});

test('a gateway that is gone ends in s3_timeout naming the refused connection', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const gw = await PrivateGateway.create(ceph);
  t.after(() => gw.kill());
  await gw.start();
  const b = await openTestBucket(ceph, uniqueBucketName('gone'), { endpoint: gw.endpoint, timeoutMs: 2000 });
  await gw.kill();
  const started = performance.now();
  await assert.rejects(b.put('k', Buffer.from('v')), (e) => {
    assert.ok(e instanceof ShoalError);
    assert.equal(e.code, 's3_timeout');
    assert.match(e.message, /within 2s \(--s3-timeout; \d+ attempts, the last: connect ECONNREFUSED 127\.0\.0\.1:\d+\)\.$/);
    return true;
  });
  const seconds = (performance.now() - started) / 1000;
  assert.ok(seconds < 3, `gave up within the deadline (${seconds.toFixed(2)} s)`);
  assert.ok(b.stats.count('put', 'network_error') >= 2, 'retried with backoff before giving up');
});
