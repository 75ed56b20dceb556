// How chunk records lie (server/meta/chunk-record-layout.ts): a new store keeps a record per slot; a
// store made with records in groups of slots (as ac854a0 and 47d9ae3 made them, 32 and 8 a key) keeps
// them so and removes a group once all its records are freed; a store of version 3 keeps its record per
// slot. Each reads the same to an offline check and to a daemon, and takes writes, kill -9 and restarts
// with exact refcounts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { open } from 'lmdb';
import { startDaemon, MAIN } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { expectFsckClean, seededData, withHandle, MiB } from '../helpers/volume-io.js';
import { RECORD_BYTES } from '../../server/meta/chunk-record-layout.js';
import { META_VERSION } from '../../server/meta/superblock.js';

interface Layout {
  /** Every key's value size, by key. */
  sizes: Map<number, number>;
  version: number;
  group: number | undefined;
}

/**
 * The chunk records of a stopped daemon's metadata as they lie; `regroup` first rewrites the records
 * of a store with a record per slot in groups of that many slots, or (1) as a store of version 3.
 */
async function layout(dir: string, regroup?: number): Promise<Layout> {
  const env = open({ path: join(dir, 'meta.lmdb'), maxDbs: 16 } as any);
  const chunks = env.openDB({ name: 'chunks', encoding: 'binary' });
  const main = env.openDB({ name: 'main', encoding: 'msgpack' });
  if (regroup !== undefined)
    env.transactionSync(() => {
      const records = [...chunks.getRange({})].map(({ key, value }) => [key as number, Buffer.from(value as Buffer)] as const);
      for (const [slot] of records) chunks.removeSync(slot);
      const into = new Map<number, Buffer>();
      for (const [slot, rec] of records) {
        const n = Math.floor(slot / regroup);
        if (!into.has(n)) into.set(n, Buffer.alloc(regroup * RECORD_BYTES));
        rec.copy(into.get(n)!, (slot % regroup) * RECORD_BYTES);
      }
      for (const [n, g] of into) chunks.putSync(n, g);
      const sb = main.get('superblock');
      if (regroup === 1) sb.version = 3;
      else sb.chunkRecordGroup = regroup;
      main.putSync('superblock', sb);
    });
  const sizes = new Map<number, number>();
  for (const { key, value } of chunks.getRange({})) sizes.set(key as number, (value as Buffer).length);
  const sb = main.get('superblock');
  await env.close();
  return { sizes, version: sb.version, group: sb.chunkRecordGroup };
}

test('a new store keeps a record per slot; one with groups of slots removes a group once all its records are freed', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    await d.createVolume('v', 16 * MiB);
    await withHandle(d, 'v', seededData(1, 8, 0));
    await d.stop();
    const made = await layout(d.dataDir);
    assert.equal(made.version, META_VERSION);
    assert.equal(made.group, undefined);
    assert.ok(made.sizes.size === 2048 && [...made.sizes.values()].every((n) => n === RECORD_BYTES), 'a record per chunk');
    const grouped = await layout(d.dataDir, 8);
    // 2,048 chunks of 4 KiB written in order lie in 2,048 / 8 groups (one more where the slots start mid-group).
    assert.ok(grouped.sizes.size >= 2048 / 8 && grouped.sizes.size <= 2048 / 8 + 1, `${grouped.sizes.size} groups`);

    await d.start();
    assert.equal(await withHandle(d, 'v', seededData(1, 8, 0, true)), 'True\n');
    // Trimming every chunk frees every record: no group is left behind, empty.
    await withHandle(d, 'v', 'h.trim(16 * 1024 * 1024, 0)\nh.flush()');
    await expectFsckClean(d);
    await d.stop();
    assert.equal((await layout(d.dataDir)).sizes.size, 0, 'no empty group is kept');
  } finally {
    await d.dispose();
  }
});

for (const [group, made] of [
  [1, 'a record per slot, of version 3'],
  [8, 'groups of 8 slots'],
  [32, 'groups of 32 slots'],
] as const)
  test(`a store with ${made} keeps that layout: an offline check and a daemon read it, writes and kill -9 keep refcounts exact`, { timeout: 180_000 }, async (t) => {
    if (!needTools(t, 'nbdsh')) return;
    const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
    try {
      await d.createVolume('v', 32 * MiB);
      await withHandle(d, 'v', seededData(2, 8, 0));
      assert.equal((await d.api('POST', '/v1/volumes/v/snapshots', { name: 's' })).status, 201);
      await d.stop();

      const regrouped = await layout(d.dataDir, group);
      const version = group === 1 ? 3 : META_VERSION;
      assert.ok(regrouped.sizes.size >= 2048 / group && [...regrouped.sizes.values()].every((n) => n === group * RECORD_BYTES), `${group} records a key`);
      const offline = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
      assert.equal(offline.status, 0, offline.stdout + offline.stderr);
      assert.match(offline.stdout + offline.stderr, /2048 chunk/);
      const unchanged = await layout(d.dataDir);
      assert.deepEqual([unchanged.version, unchanged.sizes.size], [version, regrouped.sizes.size], 'the offline check changed nothing');

      await d.start();
      assert.equal(await withHandle(d, 'v', seededData(2, 8, 0, true)), 'True\n', 'the data reads back through the records as they lie');
      // Overwrites free chunks the snapshot still holds (refcount 2 -> 1), new chunks land, the same
      // bytes again dedup onto live chunks (refcount +1), and a trim releases some.
      await withHandle(d, 'v', seededData(3, 4, 0));
      await withHandle(d, 'v', seededData(2, 8, 16 * MiB));
      await withHandle(d, 'v', 'h.trim(2 * 1024 * 1024, 4 * 1024 * 1024)\nh.flush()');
      await d.kill9();
      await d.start();
      await expectFsckClean(d);
      assert.equal(await withHandle(d, 'v', seededData(3, 2, 0, true)), 'True\n');
      assert.equal(await withHandle(d, 'v', seededData(2, 8, 16 * MiB, true)), 'True\n');
      await d.stop();
      const after = await layout(d.dataDir);
      assert.equal(after.version, META_VERSION, 'upgraded');
      assert.equal(after.group, group === 1 ? undefined : group, 'the layout it was made with');
      assert.ok([...after.sizes.values()].every((n) => n === group * RECORD_BYTES), `still ${group} records a key`);
      await d.start();
      await expectFsckClean(d);
    } finally {
      await d.dispose();
    }
  });
