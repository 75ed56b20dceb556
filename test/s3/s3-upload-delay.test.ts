// --s3-sync async with --s3-upload-delay: a FLUSH returns once the local disk holds the data, and a
// sealed pack then waits on the local disk for the delay before its upload starts (so a burst of writes
// does not share the machine with its own uploads). It goes sooner when half the local tier is waiting,
// and at a graceful stop everything staged is handed to the bucket whatever the delay: a daemon on
// another host then finds every FLUSHed block.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { needTools } from '../helpers/tools.js';
import type { Daemon } from '../helpers/daemon.js';
import { expectBlocks, s3Daemon, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { expectFsckClean, MiB } from '../helpers/volume-io.js';
import { setTimeout as sleep } from 'node:timers/promises';


async function backlogBytes(d: Daemon): Promise<number> {
  const text = (await d.api('GET', '/metrics')).body as string;
  const m = /^shoal_s3_upload_backlog_bytes (\d+)$/m.exec(text);
  assert.ok(m, 'shoal_s3_upload_backlog_bytes is exported');
  return Number(m[1]);
}

async function packObjects(bucket: Awaited<ReturnType<typeof openTestBucket>>, prefix: string): Promise<number> {
  let n = 0;
  for await (const o of bucket.list(`${prefix}packs/`)) if (o.key.endsWith('.pack')) n++;
  return n;
}

test('async: a sealed pack waits --s3-upload-delay before its upload, then the backlog drains', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const name = uniqueBucketName('delay');
  const d = s3Daemon(ceph, `s3://${name}/p`, { args: ['--s3-sync', 'async', '--s3-upload-delay', '4s'], env: { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024) } });
  t.after(() => d.dispose());
  await d.start();
  const bucket = await openTestBucket(ceph, name);
  await d.createVolume('db', 8 * MiB);
  const blocks: Blocks = { seed: 31, count: 32, size: 64 * 1024, stride: 64 * 1024 };
  const flushed = Date.now();
  await writeBlocks(d, 'db', 'flush', [blocks]); // 2 MiB: eight sealed packs of 256 KiB

  // Well inside the delay: FLUSHed, on the local disk, and not one pack in the bucket yet.
  await sleep(Math.max(0, flushed + 2000 - Date.now()));
  assert.ok(Date.now() - flushed < 3500, 'the check ran inside the delay');
  assert.equal(await packObjects(bucket, 'p/'), 0, 'no pack is uploaded before --s3-upload-delay has passed');
  assert.ok((await backlogBytes(d)) >= 2 * MiB, 'the FLUSHed bytes wait on the local disk (shoal_s3_upload_backlog_bytes)');

  // After it: uploaded, and the backlog drains.
  let drainedAt = 0;
  while (Date.now() - flushed < 30_000) {
    if ((await backlogBytes(d)) === 0) {
      drainedAt = Date.now();
      break;
    }
    await sleep(200);
  }
  assert.ok(drainedAt > 0, 'the backlog drains once the delay has passed');
  assert.ok(drainedAt - flushed >= 3500, `drained ${drainedAt - flushed} ms after the FLUSH: not before the delay`);
  assert.ok((await packObjects(bucket, 'p/')) >= 8, 'every sealed pack is in the bucket');
  await expectBlocks(d, 'db', [blocks]);
});

test('async: half the local tier waiting starts uploads whatever the delay; a graceful stop hands the rest over and another host restores every FLUSHed block', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const name = uniqueBucketName('press');
  const store = `s3://${name}/p`;
  // A delay far longer than the test: only the tier's pressure and the stop may start uploads.
  const a = s3Daemon(ceph, store, { args: ['--s3-sync', 'async', '--s3-upload-delay', '10m', '--local-cache-size', '64M'] });
  const elsewhere = s3Daemon(ceph, store, {});
  t.after(async () => {
    await a.dispose();
    await elsewhere.dispose();
  });
  await a.start();
  const bucket = await openTestBucket(ceph, name);
  await a.createVolume('big', 64 * MiB);
  // 48 MiB: five sealed 8 MiB packs and more, past half of the 64 MiB tier.
  const bulk: Blocks = { seed: 41, count: 48, size: 1 * MiB, stride: 1 * MiB };
  await writeBlocks(a, 'big', 'flush', [bulk]);
  let uploaded = 0;
  for (let i = 0; i < 100 && uploaded === 0; i++) {
    uploaded = await packObjects(bucket, 'p/');
    if (uploaded === 0) await sleep(200);
  }
  assert.ok(uploaded > 0, 'with half the local tier staged, packs are uploaded long before a 10-minute delay');

  // More FLUSHed data, below the pressure mark, then a graceful stop: it must reach the bucket too.
  await a.createVolume('small', 8 * MiB);
  const tail: Blocks = { seed: 42, count: 16, size: 64 * 1024, stride: 256 * 1024 };
  await writeBlocks(a, 'small', 'flush', [tail]);
  assert.ok((await backlogBytes(a)) > 0, 'something is still staged when the stop begins');
  await a.stop();
  assert.match(a.log, /released s3:\/\//, 'everything was published, so the lease was released');

  // Another host (an empty data directory) restores both volumes from the bucket.
  await elsewhere.start();
  await expectBlocks(elsewhere, 'big', [bulk]);
  await expectBlocks(elsewhere, 'small', [tail]);
  await expectFsckClean(elsewhere);
});
