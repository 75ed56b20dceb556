// While a commit waits on a slow disk, writes go on and their metadata changes pile up; the next
// commit queues the whole pile in one synchronous stretch of the event loop, in which no request is
// served. Past a bound a write waits for the commit in flight (CommitScheduler.admit), so the pile, its
// memory and the stretch stay bounded: one commit batch (32,768 changes) while other volumes are busy,
// whose clients would wait behind the stretch, and four (131,072) for a volume busy alone, whose own
// throughput larger commits serve. Here every commit is held (SHOAL_TEST_COMMIT_PAUSE_MS) under fio's
// 4 KiB random writes at queue depth 32, which without the bound piled up far more (491,642 changes in
// one commit held 4 s); the data is verified after, and again after kill -9.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { startDaemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { expectFsckClean } from '../helpers/volume-io.js';

const MiB = 2 ** 20;
const BATCH = 32_768;

/** fio's 4 KiB random writes at QD32 with crc32c verify, one job per volume, all at once. */
async function fio(uris: string[], size: string, extra: string[]): Promise<void> {
  const args = ['--ioengine=nbd', '--rw=randwrite', '--bs=4k', '--iodepth=32', `--size=${size}`, '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--randrepeat=1', '--end_fsync=1', ...extra];
  uris.forEach((uri, i) => args.push(`--name=pile${i}`, `--uri=${uri}`));
  const r = await run('fio', args, { timeoutMs: 120_000, cwd: tmpdir() });
  assert.equal(r.status, 0, `fio exited ${r.status}:\n${r.stderr.slice(0, 3000)}`);
  assert.doesNotMatch(r.stderr, /verify:|bad magic|crc32c/i, r.stderr.slice(0, 3000));
}

/**
 * Writes `size` into each of `volumes` volumes at once with every commit held `pauseMs`; the largest
 * commit must come near `batches` batches (or the test proves nothing) and stay within them, the
 * changes of the writes already admitted (32 in flight per volume, a few changes each) and a slice of
 * background work. Then kill -9, and everything written reads back.
 */
async function pileTest(volumes: number, size: string, pauseMs: number, batches: number): Promise<void> {
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_COMMIT_PAUSE_MS: String(pauseMs) } });
  try {
    const uris: string[] = [];
    for (let i = 0; i < volumes; i++) {
      await d.createVolume(`pile${i}`, 512 * MiB);
      uris.push(d.unixUri(`pile${i}`));
    }
    await fio(uris, size, []);
    const c = (await d.api('GET', '/v1/stats')).body.metadataCommits;
    const max = batches * BATCH;
    assert.ok(c.largestChanges > max / 2, `a pile built up behind the slow commits: ${JSON.stringify(c)}`);
    // Beyond the bound: the writes already admitted, and one slice of background work (while writes wait
    // in admit() the dedup indexer sees them paused and merges a batch of 1,024 log entries, or the sweep 2,048).
    assert.ok(c.largestChanges <= max + 1024 * volumes + 4096, `no commit took more than ${batches} batches, the writes in flight and a slice of background work: ${JSON.stringify(c)}`);
    await d.kill9();
    await d.start();
    await fio(uris, size, ['--verify_only']);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
}

test('a volume written alone waits for a slow commit past four batches of piled-up changes; the data verifies after kill -9', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'fio')) return;
  await pileTest(1, '384m', 4000, 4);
});

test('with two volumes written at once, writes wait past one batch; the data verifies after kill -9', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'fio')) return;
  await pileTest(2, '48m', 1500, 1);
});
