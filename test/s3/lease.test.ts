// One writer per prefix, against the real radosgw: two lease holders in one process stand for two
// daemons. Leases of 3 s keep the waits short; the protocol is the same at 30 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { needCeph, openTestBucket, PrivateGateway, uniqueBucketName, type CephS3 } from '../helpers/ceph.js';
import { PrefixLease, type LeaseLogger, type LeaseOptions } from '../../server/store/s3/lease.js';
import { CommitHead } from '../../server/store/s3/commit-head.js';
import { ShoalError } from '../../server/errors.js';
import type { S3Bucket } from '../../server/store/s3/s3-bucket.js';

const SECONDS = 3;

function recordingLogger(): LeaseLogger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (_obj: object, msg: string) => void lines.push(`${level}: ${msg}`);
  return { lines, info: rec('info'), warn: rec('warn'), error: rec('error') };
}

async function setup(ceph: CephS3, label: string): Promise<{ bucket: S3Bucket; opts: (host: string, extra?: Partial<LeaseOptions>) => LeaseOptions }> {
  const bucket = await openTestBucket(ceph, uniqueBucketName(label));
  return {
    bucket,
    opts: (host, extra = {}) => ({ bucket, prefix: 'vm/disks/', seconds: SECONDS, holder: { host, pid: host === 'host-a' ? 1111 : 2222 }, ...extra }),
  };
}

const heldBy = (host: string, pid: number) => (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, 'store_lease_held');
  assert.match(
    e.message,
    new RegExp(`^s3://shoal-[a-z]+-[0-9a-f]+/vm/disks/ is in use by Shoal on ${host} \\(pid ${pid}, holder [0-9a-f-]{36}\\), epoch \\d+, whose lease runs until \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ unless renewed; stop that daemon, or wait for its lease to lapse \\(3 s after its last renewal\\)\\.$`),
  );
  assert.doesNotMatch(e.message, /\n/, 'one sentence');
  return true;
};

const fenced = (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, 'store_fenced');
  assert.equal(e.nbdErrno, 'ESHUTDOWN');
  return true;
};

test('a second holder is refused, naming the first, for as long as the first renews', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { bucket, opts } = await setup(ceph, 'lease');
  const a = await PrefixLease.acquire(opts('host-a'));
  t.after(() => a.stop());
  assert.equal(a.epoch, 1);
  const stored = JSON.parse((await bucket.get('vm/disks/lease'))!.body.toString());
  assert.deepEqual(stored, { format: 'shoal-lease/1', holder: a.holder, epoch: 1, seconds: SECONDS, renewal: 0, released: false });

  await assert.rejects(PrefixLease.acquire(opts('host-b')), heldBy('host-a', 1111));
  // Three lease lengths later the lease is still A's: it renewed in the background.
  await sleep(SECONDS * 3 * 1000);
  await assert.rejects(PrefixLease.acquire(opts('host-b')), heldBy('host-a', 1111));
  const renewed = JSON.parse((await bucket.get('vm/disks/lease'))!.body.toString());
  assert.ok(renewed.renewal >= 5, `renewed ${renewed.renewal} times in 9 s (every 1 s)`);
  await a.ensureHeld();
  assert.equal(a.fenced, false);
});

/** Acquires for `opts` as soon as the lease has lapsed; fails if that takes much longer than a lease. */
async function acquireWhenLapsed(opts: LeaseOptions, since: number): Promise<PrefixLease> {
  for (;;) {
    try {
      return await PrefixLease.acquire(opts);
    } catch (e) {
      if (!(e instanceof ShoalError && e.code === 'store_lease_held')) throw e;
      assert.ok(performance.now() - since < (SECONDS + 5) * 1000, 'the lease lapsed within a few seconds of its length');
      await sleep(200);
    }
  }
}

test('after the holder dies its lease lapses by the gateway clock, and the next daemon takes over from its last commit', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { opts } = await setup(ceph, 'takeover');
  const a = await PrefixLease.acquire(opts('host-a'));
  const headA = await CommitHead.open<{ checkpoint: string }>(a);
  await headA.commit({ checkpoint: 'meta/1-1' });
  await headA.commit({ checkpoint: 'meta/1-2' });

  a.stop(); // A dies: no more renewals, nothing released
  const diedAt = performance.now();
  await assert.rejects(PrefixLease.acquire(opts('host-b')), heldBy('host-a', 1111), 'not lapsed yet');
  const b = await acquireWhenLapsed(opts('host-b'), diedAt);
  t.after(() => b.stop());
  const waited = (performance.now() - diedAt) / 1000;
  // Lapsed no earlier than its length after the last renewal, which was at most a third of it before the death.
  assert.ok(waited >= SECONDS * (2 / 3), `taken over ${waited.toFixed(1)} s after the holder died`);
  assert.equal(b.epoch, 2);
  const headB = await CommitHead.open<{ checkpoint: string }>(b);
  assert.deepEqual(headB.state, { checkpoint: 'meta/1-2' }, 'B starts from the last state A committed');
  await assert.rejects(a.ensureHeld(), (e) => e instanceof ShoalError && e.code === 'shutting_down');
});

test('a holder cut off from S3 stops writing once its lease may have lapsed; back, it finds itself fenced: its renewal and its commits fail', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  // A reaches S3 through a gateway of its own, which the test freezes: a network partition of A alone.
  const gwA = await PrivateGateway.create(ceph);
  t.after(async () => {
    gwA.thaw();
    await gwA.kill();
  });
  await gwA.start();
  const { bucket, opts } = await setup(ceph, 'partition');
  const bucketA = await openTestBucket(ceph, bucket.bucket, { endpoint: gwA.endpoint, timeoutMs: 2000 });
  const logA = recordingLogger();
  const told: ShoalError[] = [];
  const a = await PrefixLease.acquire({ ...opts('host-a'), bucket: bucketA, logger: logA, onFenced: (e) => told.push(e) });
  const headA = await CommitHead.open<{ checkpoint: string }>(a);
  await headA.commit({ checkpoint: 'meta/1-1' });

  gwA.freeze();
  const cutAt = performance.now();
  const b = await acquireWhenLapsed(opts('host-b'), cutAt);
  t.after(() => b.stop());
  assert.equal(b.epoch, 2);
  const headB = await CommitHead.open<{ checkpoint: string }>(b);
  assert.deepEqual(headB.state, { checkpoint: 'meta/1-1' });
  // Still cut off, A cannot confirm its lease: its writes fail (EIO) rather than go ahead.
  await assert.rejects(headA.commit({ checkpoint: 'meta/1-2' }), (e) => e instanceof ShoalError && e.code === 's3_timeout' && e.nbdErrno === 'EIO');
  assert.ok(logA.lines.some((l) => l.startsWith('warn: renewing the lease on')), `A logged its failed renewals: ${logA.lines.join(' | ')}`);
  assert.equal(a.fenced, false, 'not fenced while it cannot tell');

  gwA.thaw();
  await assert.rejects(headA.commit({ checkpoint: 'meta/1-3' }), fenced);
  assert.equal(a.fenced, true);
  assert.equal(told.length, 1, 'onFenced was told once');
  assert.match(told[0]!.message, /^s3:\/\/shoal-partition-[0-9a-f]+\/vm\/disks\/ was taken over by Shoal on host-b \(pid 2222, holder [0-9a-f-]+\) \(epoch 2\): this daemon \(epoch 1\) no longer writes to it\.$/);
  assert.ok(logA.lines.some((l) => l.startsWith('error: fenced: ') && l.includes('host-b')), `A's log says it is fenced: ${logA.lines.join(' | ')}`);
  await assert.rejects(a.renew(), fenced);
  await assert.rejects(a.ensureHeld(), fenced);

  await headB.commit({ checkpoint: 'meta/2-1' });
  const head = JSON.parse((await bucket.get('vm/disks/head'))!.body.toString());
  assert.equal(head.epoch, 2);
  assert.deepEqual(head.state, { checkpoint: 'meta/2-1' }, "A's refused commits left no trace");
});

test('a former holder whose head was sealed fails its next commit even before its lease renewal notices', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { bucket, opts } = await setup(ceph, 'sealed');
  const a = await PrefixLease.acquire(opts('host-a'));
  t.after(() => a.stop());
  const headA = await CommitHead.open<number>(a);
  await headA.commit(1);
  // A daemon with a later epoch sealed the head (as after a takeover), while A's lease still looks fresh to A.
  const cur = (await bucket.get('vm/disks/head'))!;
  const sealed = { ...JSON.parse(cur.body.toString()), epoch: 2, seq: 99, holder: { id: 'b', host: 'host-b', pid: 2222 } };
  await bucket.put('vm/disks/head', Buffer.from(JSON.stringify(sealed)), { ifMatch: cur.etag });
  await assert.rejects(headA.commit(2), (e) => fenced(e) && /taken over by Shoal on host-b \(pid 2222, holder b\) \(epoch 2\)/.test((e as Error).message));
  assert.equal(JSON.parse((await bucket.get('vm/disks/head'))!.body.toString()).state, 1);
  await assert.rejects(headA.commit(3), fenced, 'and every commit after it');
});

test('the renewal timer of a holder whose lease was taken over fences it by itself', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { bucket, opts } = await setup(ceph, 'timer');
  const told: ShoalError[] = [];
  const a = await PrefixLease.acquire(opts('host-a', { onFenced: (e) => told.push(e) }));
  t.after(() => a.stop());
  // Another daemon overwrites the lease behind A's back (as a takeover after a long pause of A would).
  const cur = (await bucket.get('vm/disks/lease'))!;
  const stolen = { ...JSON.parse(cur.body.toString()), holder: { id: 'other', host: 'host-z', pid: 9 }, epoch: 7 };
  await bucket.put('vm/disks/lease', Buffer.from(JSON.stringify(stolen)), { ifMatch: cur.etag });
  const deadline = performance.now() + SECONDS * 1000 + 2000;
  while (told.length === 0 && performance.now() < deadline) await sleep(100);
  assert.equal(told.length, 1, 'the background renewal found the lease gone and fenced A');
  assert.match(told[0]!.message, /taken over by Shoal on host-z \(pid 9, holder other\) \(epoch 7\)/);
});

test('a released lease is taken over at once with the next epoch', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { opts } = await setup(ceph, 'release');
  const a = await PrefixLease.acquire(opts('host-a'));
  const headA = await CommitHead.open<number>(a);
  await headA.commit(41);
  await a.release();
  await assert.rejects(a.ensureHeld(), (e) => e instanceof ShoalError && e.code === 'shutting_down');
  await assert.rejects(headA.commit(42), (e) => e instanceof ShoalError && e.code === 'shutting_down');
  const started = performance.now();
  const b = await PrefixLease.acquire(opts('host-b'));
  t.after(() => b.stop());
  assert.ok(performance.now() - started < 1000, 'no wait for a lapse');
  assert.equal(b.epoch, 2);
  assert.equal((await CommitHead.open<number>(b)).state, 41);
});

test('a lease object removed by hand does not restart the epochs the commit head has seen', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { bucket, opts } = await setup(ceph, 'epochs');
  const a = await PrefixLease.acquire(opts('host-a'));
  await (await CommitHead.open<number>(a)).commit(1);
  await a.release();
  const b = await PrefixLease.acquire(opts('host-b'));
  await (await CommitHead.open<number>(b)).commit(2);
  b.stop();
  await bucket.delete('vm/disks/lease');
  const c = await PrefixLease.acquire(opts('host-c'));
  t.after(() => c.stop());
  assert.equal(c.epoch, 3, 'above the epoch that sealed the head');
  assert.equal((await CommitHead.open<number>(c)).state, 2);
});

test('a lease or head that is not Shoal JSON is refused with a sentence, and left alone', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const { bucket, opts } = await setup(ceph, 'corrupt');
  await bucket.put('vm/disks/lease', Buffer.from('not json'));
  await assert.rejects(PrefixLease.acquire(opts('host-a')), (e) => {
    assert.ok(e instanceof ShoalError);
    assert.equal(e.code, 'corrupt_metadata');
    assert.match(e.message, /^s3:\/\/shoal-corrupt-[0-9a-f]+\/vm\/disks\/lease is not a Shoal lease \(8 bytes that are not shoal-lease\/1 JSON\); remove it only if no daemon uses this prefix\.$/);
    return true;
  });
  assert.equal((await bucket.get('vm/disks/lease'))!.body.toString(), 'not json');
  await bucket.delete('vm/disks/lease');
  await bucket.put('vm/disks/head', Buffer.from('{"format":"shoal-head/1"}'));
  await assert.rejects(PrefixLease.acquire(opts('host-a')), (e) => e instanceof ShoalError && e.code === 'corrupt_metadata' && /vm\/disks\/head is not a Shoal commit head/.test(e.message));
  assert.equal(await bucket.head('vm/disks/lease'), null, 'no lease was taken');
});
