// A volume outlives its host: a daemon on an S3 store (the test Ceph's radosgw) is written through real
// clients (libnbd: pipelined writes then FLUSH, FUA writes, on several volumes, a snapshot and a clone),
// killed with kill -9, its data directory deleted; a new daemon on the same prefix restores the metadata
// from the bucket (a checkpoint plus the deltas after it) and serves every durable block, fsck clean.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { needCeph, uniqueBucketName } from '../helpers/ceph.js';
import { needTools, run } from '../helpers/tools.js';
import { MAIN } from '../helpers/daemon.js';
import { expectBlocks, s3Daemon, startAfterLease, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { expectFsckClean, MiB } from '../helpers/volume-io.js';

// Small packs (several per volume) and a checkpoint every few commits, so a restore reads both.
const HOOKS = { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024), SHOAL_TEST_S3_CHECKPOINT_DELTAS: '4' };

test('kill -9, data directory gone: a new daemon restores every volume, snapshot and clone from the bucket, every FLUSHed and FUA block intact, fsck clean', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const store = `s3://${uniqueBucketName('restore')}/vms/host-a`;
  const a = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'], env: HOOKS });
  const b = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'] });
  t.after(async () => {
    await a.kill9();
    await a.dispose();
    await b.dispose();
  });
  await a.start();
  await a.createVolume('disk1', 32 * MiB);
  await a.createVolume('disk2', 16 * MiB);

  // disk1: 200 blocks of 64 KiB in flight at once, then FLUSH.
  const first: Blocks = { seed: 1, count: 200, size: 64 * 1024, stride: 64 * 1024 };
  await writeBlocks(a, 'disk1', 'flush', [first]);
  // disk2: FUA writes, not chunk-aligned (read-modify-write of partial chunks), never a FLUSH.
  const fua: Blocks = { seed: 2, count: 60, size: 3000, stride: 12_288, shift: 1234 };
  await writeBlocks(a, 'disk2', 'fua', [fua]);
  // A snapshot of disk1, a clone of it written with FUA, and disk1 changed after the snapshot.
  assert.equal((await a.api('POST', '/v1/volumes/disk1/snapshots', { name: 'before' })).status, 201);
  const clone = await a.api('POST', '/v1/volumes', { name: 'clone1', from: { volume: 'disk1', snapshot: 'before' } });
  assert.equal(clone.status, 201, JSON.stringify(clone.body));
  const cloneWrites: Blocks = { seed: 3, count: 40, size: 8192, stride: 128 * 1024, shift: 4096 };
  await writeBlocks(a, 'clone1', 'fua', [cloneWrites]);
  const after: Blocks = { seed: 4, count: 100, size: 16 * 1024, stride: 32 * 1024, shift: 8192 };
  await writeBlocks(a, 'disk1', 'flush', [after]);
  // Written but neither flushed nor FUA: may or may not survive, must not damage anything else.
  const loose: Blocks = { seed: 5, count: 16, size: 64 * 1024, stride: 64 * 1024 };
  await a.createVolume('scratch', 1 * MiB);
  await writeBlocks(a, 'scratch', 'none', [loose]);
  await a.waitForLog(/the bucket's metadata now starts from checkpoint/, 20_000);

  await a.kill9();
  const killedAt = Date.now();
  rmSync(a.dataDir, { recursive: true, force: true });

  await startAfterLease(b);
  assert.ok(Date.now() - killedAt >= 2000, "the killed daemon's lease held the prefix until it lapsed");
  assert.match(b.log, /taking over s3:\/\/\S+ from a lapsed lease/);
  assert.match(b.log, /restoring the metadata from s3:\/\/.*: checkpoint \d+ \(\d+ bytes\), then \d+ delta\(s\)/);
  assert.match(b.log, /restored the volumes of s3:\/\//);

  const names = (await b.api('GET', '/v1/volumes')).body.volumes.map((v: { name: string }) => v.name).sort();
  assert.deepEqual(names, ['clone1', 'disk1', 'disk2', 'scratch']);
  await expectBlocks(b, 'disk1', [first, after]);
  await expectBlocks(b, 'disk1@before', [first]);
  await expectBlocks(b, 'clone1', [first, cloneWrites]);
  await expectBlocks(b, 'disk2', [fua]);

  const fsck = await run(process.execPath, [MAIN, 'fsck', '--api', b.apiUrl], { timeoutMs: 60_000 });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  assert.match(fsck.stdout, /^fsck: no problems found/);

  // The restored daemon writes on: its writes reach the bucket like the first one's.
  await writeBlocks(b, 'disk2', 'flush', [{ seed: 6, count: 10, size: 4096, stride: 1 * MiB }]);
  await expectBlocks(b, 'disk2', [fua, { seed: 6, count: 10, size: 4096, stride: 1 * MiB }]);
});

test('--s3-sync async: kill -9 during a pack upload and during a checkpoint; the same disk publishes the rest, a graceful stop releases the lease, a restore elsewhere finds every FLUSHed block', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const store = `s3://${uniqueBucketName('async')}/p`;
  const args = ['--lease-seconds', '3', '--s3-sync', 'async'];
  // Every pack upload and every checkpoint is held a while before it counts: the kill lands in one of each.
  const slow = { ...HOOKS, SHOAL_TEST_S3_UPLOAD_PAUSE_MS: '3000', SHOAL_TEST_S3_CHECKPOINT_PAUSE_MS: '60000' };
  const a = s3Daemon(ceph, store, { args, env: slow });
  const again = s3Daemon(ceph, store, { args, env: HOOKS, dataDir: a.dataDir });
  const elsewhere = s3Daemon(ceph, store, { args });
  t.after(async () => {
    for (const d of [a, again, elsewhere]) await d.kill9();
    await again.dispose();
    await elsewhere.dispose();
    rmSync(a.dataDir, { recursive: true, force: true });
  });
  await a.start();
  await a.createVolume('db', 8 * MiB);
  const sets: Blocks[] = [1, 2, 3, 4, 5, 6].map((k) => ({ seed: 60 + k, count: 16, size: 32 * 1024, stride: 64 * 1024, shift: (k % 2) * 32 * 1024 }));
  // In async mode a FLUSH waits for the local disk only: these return while uploads crawl.
  const started = Date.now();
  for (const s of sets) await writeBlocks(a, 'db', 'flush', [s]);
  assert.ok(Date.now() - started < 15_000, 'async FLUSHes do not wait for the held uploads');
  await a.waitForLog(/test hook: pack uploaded, pausing/, 20_000);
  await a.waitForLog(/test hook: checkpoint \d+ uploaded, pausing/, 20_000);
  await a.kill9();

  // The same data directory: its outbox and staged packs are published by the next start.
  await startAfterLease(again);
  await expectBlocks(again, 'db', sets);
  await again.stop(); // SIGTERM: publishes what is left, then releases the lease
  assert.match(again.log, /released s3:\/\//);

  // A released lease is taken at once, no lapse to wait for; everything FLUSHed is in the bucket.
  assert.equal(await startAfterLease(elsewhere), 0);
  assert.match(elsewhere.log, /taking over s3:\/\/\S+ from a released lease/);
  await expectBlocks(elsewhere, 'db', sets);
  await expectFsckClean(elsewhere);
});
