// Reclaim in the bucket: deleting a volume frees its chunks and the packs that held only them are deleted;
// packs left sparse by overwrites are rewritten (their live chunks moved, the old objects deleted) without
// stopping I/O; a kill -9 in the middle of a compaction loses nothing; fsck checks every live chunk against
// the pack objects in the bucket and their indexes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { needTools } from '../helpers/tools.js';
import { expectBlocks, s3Daemon, startAfterLease, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { expectFsckClean, MiB } from '../helpers/volume-io.js';
import type { S3Bucket } from '../../server/store/s3/s3-bucket.js';

async function packObjects(bucket: S3Bucket, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of bucket.list(`${prefix}packs/`)) keys.push(o.key);
  return keys.sort();
}

/** Polls `ok` until it holds; on a timeout the error carries `diag()` (what the daemon logged and counts). */
async function until(what: string, ok: () => Promise<boolean>, timeoutMs: number, diag: () => Promise<string> = async () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${await diag()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// 64 chunks of 4 KiB a pack; compaction looks every half second and deletes half a second after the drop.
const HOOKS = { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024), SHOAL_TEST_S3_COMPACT_MS: '500' };

test('deleted volumes free their packs, sparse packs are compacted, a kill -9 mid-compaction loses nothing, fsck finds a pack missing from the bucket', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const name = uniqueBucketName('reclaim');
  const store = `s3://${name}/r`;
  const bucket = await openTestBucket(ceph, name);
  const a = s3Daemon(ceph, store, { args: ['--lease-seconds', '3', '--s3-compact-below', '0.5'], env: HOOKS });
  const b = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'], env: { ...HOOKS, SHOAL_TEST_S3_COMPACT_PAUSE_MS: '60000' } });
  const c = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'], env: HOOKS });
  t.after(async () => {
    for (const d of [a, b, c]) {
      await d.kill9();
      await d.dispose();
    }
  });
  await a.start();
  await a.createVolume('gone', 2 * MiB);
  await a.createVolume('keep', 2 * MiB);
  // Whole volumes, one after the other: each fills packs of its own (8 of 64 chunks).
  const goneData: Blocks = { seed: 31, count: 512, size: 4096, stride: 4096 };
  const keepData: Blocks = { seed: 32, count: 512, size: 4096, stride: 4096 };
  await writeBlocks(a, 'gone', 'flush', [goneData]);
  await writeBlocks(a, 'keep', 'flush', [keepData]);
  const full = await packObjects(bucket, 'r/');
  assert.ok(full.length >= 16, `two volumes of 512 chunks fill at least 16 packs, found ${full.length}`);
  await expectFsckClean(a);

  // A deleted volume: its packs hold no live chunk any more and go from the bucket. Its 512 chunks fill
  // 8 packs, unless a background commit of the bucket's metadata sealed a pack part way (then the last
  // holds the start of `keep` too, and is compacted, not dropped: 7 go, and 1 new one takes its live
  // chunks, as a CI run saw).
  assert.equal((await a.api('DELETE', '/v1/volumes/gone')).status, 204);
  await until(
    "the deleted volume's packs to go",
    async () => (await packObjects(bucket, 'r/')).length <= full.length - 7,
    90_000,
    async () => `packs before ${full.length}, now ${(await packObjects(bucket, 'r/')).length}; /v1/stats ${JSON.stringify((await a.api('GET', '/v1/stats')).body)}\nthe daemon's log, last lines:\n${a.log.slice(-6000)}`,
  );
  await a.waitForLog(/holds no live chunk: dropped/);
  await expectBlocks(a, 'keep', [keepData]);
  await expectFsckClean(a);

  // Overwrite three chunks of every four of `keep`: its old packs are about a quarter live, below 0.5.
  const over: Blocks[] = [1, 2, 3].map((k) => ({ seed: 40 + k, count: 127, size: 4096, stride: 16_384, shift: k * 4096 }));
  await writeBlocks(a, 'keep', 'flush', over);
  await a.waitForLog(/compacting pack \d+: \d+ of 64 chunks live, moved/, 30_000);
  const keepNow = [keepData, ...over];
  await expectBlocks(a, 'keep', keepNow);
  await expectFsckClean(a);

  // A new holder (restored on its own data directory) compacts too; kill -9 while a compaction has
  // copied chunks but not committed the move, and a third restores: nothing is lost, fsck clean.
  await a.kill9();
  await startAfterLease(b);
  await expectBlocks(b, 'keep', keepNow);
  const half: Blocks = { seed: 50, count: 256, size: 4096, stride: 8192 };
  await writeBlocks(b, 'keep', 'flush', [half]);
  await b.waitForLog(/test hook: compaction copied pack/, 30_000);
  await b.kill9();
  await startAfterLease(c);
  await expectBlocks(c, 'keep', [...keepNow, half]);
  await expectFsckClean(c);

  // fsck looks in the bucket: pack objects removed behind Shoal's back are reported, each by name.
  const removed = await packObjects(bucket, 'r/');
  for (const k of removed) await bucket.delete(k);
  const r = await c.api('POST', '/v1/fsck');
  assert.equal(r.body.ok, false);
  const missing = r.body.errors.filter((e: string) => / holds \d+ live chunk\(s\) but s3:\/\/\S+ is missing$/.test(e));
  assert.ok(missing.length > 0, JSON.stringify(r.body.errors));
  for (const e of missing) assert.ok(removed.some((k) => e.endsWith(`${name}/${k} is missing`)), e);
});
