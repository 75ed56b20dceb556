// The dedup log: new fingerprints are logged at commit and taken into the on-disk index later,
// while writes pause. Whatever state a crash leaves it in, dedup must keep finding stored data, and
// must never map a write to a chunk that was freed (and its slot reused) since it was logged. (The
// index's own stale entries: test/dedup/stale-index-entries.test.ts.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { withHandle, expectFsckClean, seededData as seeded, stats, waitForStats, writeIntoFreedSlots, MiB } from '../helpers/volume-io.js';

const daemons: Daemon[] = [];
after(async () => {
  for (const d of daemons) await d.dispose().catch(() => {});
});

function waitIndexed(d: Daemon): Promise<void> {
  return waitForStats(d, 'the dedup log taken into the index once writes pause', (s) => s.dedupLogEntries === 0);
}

test('a write after kill -9 still finds data whose fingerprints were only in the log', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  daemons.push(d);
  await d.createVolume('a', 64 * MiB);
  await d.createVolume('b', 64 * MiB);
  await withHandle(d, 'a', seeded(1, 16, 0));
  const s1 = await stats(d);
  assert.ok(s1.dedupLogEntries >= 4096, `16 MiB of new chunks should sit in the log first: ${JSON.stringify(s1)}`);
  await d.kill9(); // before the 2 s pause that lets the index take them in
  await d.start();
  assert.ok((await stats(d)).dedupLogEntries >= 4096, 'the log is reloaded after the crash');
  const before = await stats(d);
  await withHandle(d, 'b', seeded(1, 16, 4 * MiB));
  const s2 = await stats(d);
  assert.equal(s2.physicalBytes, before.physicalBytes, 'the copy in b must store nothing: its fingerprints came back from the log');
  assert.equal(s2.dedupHits - before.dedupHits, 4096);
  await expectFsckClean(d);

  // Once writes pause, the index takes the log in; a restart then finds it there.
  await waitIndexed(d);
  await d.restart();
  assert.equal((await stats(d)).dedupLogEntries, 0);
  await d.createVolume('c', 64 * MiB);
  const before3 = await stats(d);
  await withHandle(d, 'c', seeded(1, 16, 8 * MiB));
  const s3 = await stats(d);
  assert.equal(s3.physicalBytes, before3.physicalBytes, 'the copy in c must store nothing: the index has the fingerprints');
  for (const [v, off] of [['a', 0], ['b', 4 * MiB], ['c', 8 * MiB]] as const) assert.match(await withHandle(d, v, seeded(1, 16, off, true)), /True/, `${v} reads back`);

  // Freeing everything leaves the index's 4096 entries stale, counted (fsck checks the count covers
  // them); once writes pause, the sweep removes them.
  for (const v of ['a', 'b', 'c']) assert.equal((await d.api('DELETE', `/v1/volumes/${v}`)).status, 204);
  await expectFsckClean(d);
  assert.equal((await stats(d)).physicalBytes, 0);
  assert.ok((await stats(d)).dedupIndexing.staleEntries >= 4096, 'the freed chunks\' index entries are counted stale');
  await waitForStats(d, 'the sweep once writes pause', (s) => s.dedupIndexing.staleEntries === 0);
  assert.ok((await stats(d)).dedupIndexing.sweptEntries >= 4096, 'the sweep looked at every entry');
  await expectFsckClean(d);
  assert.equal((await stats(d)).fsck.totalIndexEntries, 0, 'the sweep removed every stale entry');
});

test('a logged fingerprint whose chunk was freed and its slot reused is never used for dedup', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // The log stays a log for the whole test: its records are on disk at the crash.
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_DEDUP_LOG_IDLE_MS: '600000' } });
  daemons.push(d);
  await d.createVolume('x', 64 * MiB);
  // Seed 2's data is logged, then trimmed away (freed) before the log reaches the index.
  await withHandle(d, 'x', seeded(2, 8, 0));
  await withHandle(d, 'x', `h.trim(8 * 1024 * 1024, 0)\nh.flush()`);
  await expectFsckClean(d); // the free is committed: the slots are reusable
  // Other data takes the freed slots; then a crash, with the log record of seed 2 still on disk.
  await writeIntoFreedSlots(d, 'x', 3, 8, 16 * MiB);
  await d.kill9();
  await d.start();
  assert.ok((await stats(d)).dedupLogEntries >= 2048, 'seed 3 is in the reloaded log');
  // Writing seed 2's bytes again must store them (not map them to the reused slots).
  const before = await stats(d);
  await withHandle(d, 'x', seeded(2, 8, 32 * MiB));
  const s = await stats(d);
  assert.equal(s.physicalBytes - before.physicalBytes, 8 * MiB, 'seed 2 had been freed: it must be stored again');
  assert.match(await withHandle(d, 'x', seeded(2, 8, 32 * MiB, true)), /True/, 'seed 2 reads back');
  assert.match(await withHandle(d, 'x', seeded(3, 8, 16 * MiB, true)), /True/, 'seed 3 reads back');
  await expectFsckClean(d);
});
