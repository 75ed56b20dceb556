// Stale fingerprint index entries: a freed chunk's entry stays in the on-disk index until the
// background sweep (server/dedup/dedup-index.ts). A hit on one must never map a write to the bytes
// its slot holds now, the count the sweep goes by must survive kill -9 (fsck checks it covers every
// stale entry), and the sweep must remove them. Such a store says so (version 3): a daemon of before
// would trust the entries.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { open } from 'lmdb';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { META_VERSION } from '../../server/meta/superblock.js';
import { withHandle, expectFsckClean, seededData as seeded, stats, waitForStats, writeIntoFreedSlots, MiB } from '../helpers/volume-io.js';

const daemons: Daemon[] = [];
after(async () => {
  for (const d of daemons) await d.dispose().catch(() => {});
});

/** A daemon that indexes the log 200 ms after writes pause, with volume `name` holding seed `seed`'s first `mib` MiB, indexed. */
async function indexedVolume(name: string, size: number, seed: number, mib: number, env: Record<string, string> = {}): Promise<Daemon> {
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_DEDUP_LOG_IDLE_MS: '200', ...env } });
  daemons.push(d);
  await d.createVolume(name, size);
  await withHandle(d, name, seeded(seed, mib, 0));
  await waitForStats(d, `seed ${seed} indexed`, (s) => s.dedupLogEntries === 0 && s.dedupIndexing.indexedEntries >= mib * 256);
  return d;
}

test('an index entry whose chunk was freed and its slot reused is never used for dedup, and its count survives kill -9', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // 2048 stale entries stay below the sweep's threshold.
  const d = await indexedVolume('x', 64 * MiB, 2, 8);
  // Seed 2 is freed: its 2048 index entries go stale, counted.
  await withHandle(d, 'x', `h.trim(8 * 1024 * 1024, 0)\nh.flush()`);
  await expectFsckClean(d); // commits the free: the slots are reusable
  assert.ok((await stats(d)).dedupIndexing.staleEntries >= 2048, 'the freed chunks are counted stale');
  // Other data takes the freed slots; the count is committed with the frees and comes back after kill -9.
  await writeIntoFreedSlots(d, 'x', 3, 8, 16 * MiB);
  await d.kill9();
  await d.start();
  const reloaded = await stats(d);
  assert.ok(reloaded.dedupIndexing.staleEntries >= 2048, `the stale count survives the crash: ${JSON.stringify(reloaded.dedupIndexing)}`);
  await expectFsckClean(d); // the count covers every stale entry in the index

  // Seed 2's fingerprints still name the reused slots in the index: writing its bytes again must
  // store them, not map them to seed 3's chunks.
  const before = await stats(d);
  await withHandle(d, 'x', seeded(2, 8, 32 * MiB));
  const s = await stats(d);
  assert.equal(s.physicalBytes - before.physicalBytes, 8 * MiB, 'seed 2 had been freed: it must be stored again');
  assert.equal(s.dedupHits, before.dedupHits, 'no dedup hit on a stale entry');
  assert.match(await withHandle(d, 'x', seeded(2, 8, 32 * MiB, true)), /True/, 'seed 2 reads back');
  assert.match(await withHandle(d, 'x', seeded(3, 8, 16 * MiB, true)), /True/, 'seed 3 reads back');
  // The hits found them stale and dropped them: the count went down with them.
  assert.ok(s.dedupIndexing.staleEntries < reloaded.dedupIndexing.staleEntries, JSON.stringify(s.dedupIndexing));
  // Seed 2 is in the index again once writes pause, and a copy of it deduplicates against it.
  await waitForStats(d, 'seed 2 indexed again', (x) => x.dedupLogEntries === 0);
  const before2 = await stats(d);
  await withHandle(d, 'x', seeded(2, 8, 48 * MiB));
  const s2 = await stats(d);
  assert.equal(s2.physicalBytes, before2.physicalBytes, 'the copy stores nothing');
  assert.equal(s2.dedupHits - before2.dedupHits, 2048);
  await expectFsckClean(d);
});

test('bytes freed and written again skip their stale entries, and a later copy deduplicates against the new chunks', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await indexedVolume('w', 64 * MiB, 9, 8);
  await withHandle(d, 'w', `h.trim(8 * 1024 * 1024, 0)\nh.flush()`);
  // (A trim's chunks are released in the background.)
  const freed = await waitForStats(d, 'the freed keys held', (x) => x.dedupIndexing.freedKeys === 2048 && x.dedupIndexing.staleEntries === 2048);
  // Written again: stored anew, each key taken from the freed ones (a miss at once), its stale index
  // entry left for the sweep rather than found, checked and dropped one by one.
  await withHandle(d, 'w', seeded(9, 8, 16 * MiB));
  const again = await stats(d);
  assert.equal(again.physicalBytes - freed.physicalBytes, 8 * MiB, 'seed 9 had been freed: it must be stored again');
  assert.equal(again.dedupHits, freed.dedupHits, 'no dedup hit on a freed chunk');
  assert.equal(again.dedupIndexing.freedKeys, 0, 'each lookup took its key');
  assert.equal(again.dedupIndexing.staleEntries, freed.dedupIndexing.staleEntries, 'no stale entry was read and dropped');
  // Once the new chunks are indexed (over their stale entries), a copy finds every one of them.
  await waitForStats(d, 'seed 9 indexed again', (x) => x.dedupLogEntries === 0);
  await expectFsckClean(d);
  const before = await stats(d);
  await withHandle(d, 'w', seeded(9, 8, 32 * MiB));
  const copy = await stats(d);
  assert.equal(copy.physicalBytes, before.physicalBytes, 'the copy stores nothing');
  assert.equal(copy.dedupHits - before.dedupHits, 2048);
  assert.match(await withHandle(d, 'w', seeded(9, 8, 16 * MiB, true)), /True/, 'seed 9 reads back');
  // Keys freed and never written again go when the sweep removes their entries (20 MiB: 5120
  // entries, past its threshold).
  await withHandle(d, 'w', seeded(10, 20, 40 * MiB));
  await waitForStats(d, 'seed 10 indexed', (x) => x.dedupLogEntries === 0);
  await withHandle(d, 'w', `h.trim(20 * 1024 * 1024, 40 * 1024 * 1024)\nh.flush()`);
  await waitForStats(d, 'their keys held', (x) => x.dedupIndexing.freedKeys === 5120 || x.dedupIndexing.sweptEntries > 0);
  await waitForStats(d, 'the sweep removed them', (x) => x.dedupIndexing.staleEntries === 0 && x.dedupIndexing.freedKeys === 0);
  await expectFsckClean(d);
});

test('past its bound, the stale count has the index swept while writes go on, without merging the log beside them', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // A bound of 1,024 stale entries; the log is indexed once writes pause for a second.
  const d = await indexedVolume('p', 64 * MiB, 11, 8, { SHOAL_TEST_DEDUP_LOG_IDLE_MS: '1000', SHOAL_TEST_DEDUP_STALE_MAX: '1024' });
  // Writes of new data every 10 ms for 8 s (their fingerprints go to the log), and 1 s in, seed 11
  // trimmed: 2,048 stale entries, past the bound.
  const writer = withHandle(d, 'p', `
import os, time
t0 = time.time()
trimmed = False
i = 0
while time.time() - t0 < 8:
    h.pwrite(os.urandom(4096), 16 * 1024 * 1024 + (i % 4096) * 4096)
    i += 1
    if not trimmed and time.time() - t0 > 1:
        h.trim(8 * 1024 * 1024, 0)
        trimmed = True
    time.sleep(0.01)
h.flush()
`);
  let done = false;
  void writer.finally(() => (done = true));
  let during: any = null;
  while (!done) {
    await new Promise((r) => setTimeout(r, 250));
    const s = await stats(d);
    if (!done) during = s;
  }
  await writer;
  assert.ok(during !== null);
  assert.ok(during.dedupIndexing.sweptEntries > 0, `the sweep ran while writes went on: ${JSON.stringify(during.dedupIndexing)}`);
  // (A pass that began before the trim's last frees leaves those counted, below the bound.)
  assert.ok(during.dedupIndexing.staleEntries <= 1024, `and swept what pressed: ${JSON.stringify(during.dedupIndexing)}`);
  assert.equal(during.dedupIndexing.indexedEntries, 2048, `the log (below its own bound) waited for the writes to pause: ${JSON.stringify(during.dedupIndexing)}`);
  assert.ok(during.dedupLogEntries > 0);
  await waitForStats(d, 'the log indexed once writes paused', (x) => x.dedupLogEntries === 0 && x.dedupIndexing.indexedEntries > 2048);
  await expectFsckClean(d);
});

test('the sweep removes stale entries once writes pause, and a kill -9 mid-sweep leaves the index consistent', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await indexedVolume('y', 128 * MiB, 5, 48);
  // Overwriting 40 of the 48 MiB leaves 10240 entries stale: past the sweep's threshold.
  await withHandle(d, 'y', seeded(6, 40, 0));
  // Kill the daemon as soon as the sweep has looked at something: a pass cut short.
  await waitForStats(d, 'the sweep began', (s) => s.dedupIndexing.sweptEntries > 0);
  await d.kill9();
  await d.start();
  await expectFsckClean(d);
  const s = await waitForStats(d, 'the sweep finished', (x) => x.dedupLogEntries === 0 && x.dedupIndexing.staleEntries === 0);
  assert.ok(s.dedupIndexing.sweptEntries > 0, 'the restarted daemon swept');
  await expectFsckClean(d);
  // What is left: seed 5's last 8 MiB and seed 6's 40 MiB, each entry naming its live chunk.
  assert.equal((await stats(d)).fsck.totalIndexEntries, 12288, 'the index holds exactly the live chunks');
  assert.match(await withHandle(d, 'y', seeded(6, 40, 0, true)), /True/, 'seed 6 reads back');
  // Dedup still finds every live chunk through the swept index.
  await d.createVolume('z', 128 * MiB);
  const before = await stats(d);
  await withHandle(d, 'z', seeded(6, 40, 0));
  assert.equal((await stats(d)).dedupHits - before.dedupHits, 10240, 'a copy of seed 6 is all dedup hits');
});

test('a store of version 2 (no stale entries yet) opens as it is to an offline check, and a daemon upgrades it', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  daemons.push(d);
  await d.createVolume('v', 32 * MiB);
  await withHandle(d, 'v', seeded(8, 8, 0));
  await d.stop();
  // What this stop's daemon wrote says it may hold stale entries: a daemon of before must refuse it.
  const version = async (set?: number): Promise<number> => {
    const env = open({ path: join(d.dataDir, 'meta.lmdb'), maxDbs: 16 } as any);
    const main = env.openDB({ name: 'main', encoding: 'msgpack' });
    const sb = main.get('superblock') as { version: number };
    if (set !== undefined) env.transactionSync(() => main.putSync('superblock', { ...sb, version: set }));
    await env.close();
    return sb.version;
  };
  assert.equal(await version(2), META_VERSION);
  const offline = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
  assert.equal(offline.status, 0, offline.stdout + offline.stderr);
  assert.equal(await version(), 2, 'the offline check left the version as it was');
  await d.start();
  assert.match(await withHandle(d, 'v', seeded(8, 8, 0, true)), /True/, 'the data reads back');
  await expectFsckClean(d);
  await d.stop();
  assert.equal(await version(), META_VERSION, 'the daemon upgraded the store');
});
