// While a commit waits on a slow disk, writes go on and their metadata changes pile up; the next
// commit queues the whole pile in one synchronous stretch of the event loop. Past 32 commit batches
// (131,072 changes) a write waits for the commit in flight (CommitScheduler.admit), so the pile, its
// memory and the stretch stay bounded. Here every commit is held 4 s (SHOAL_TEST_COMMIT_PAUSE_MS) under
// fio's 4 KiB random writes at queue depth 32, which without the bound piled up far more (120,180
// changes in one commit held 1.5 s); the data is verified after, and again after kill -9.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { startDaemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { expectFsckClean } from '../helpers/volume-io.js';

const MiB = 2 ** 20;
const BATCH = 4096;
const PILE_MAX = 32 * BATCH;

async function fio(uri: string, extra: string[]): Promise<void> {
  const args = ['--ioengine=nbd', `--uri=${uri}`, '--name=pile', '--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=384m', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--randrepeat=1', '--end_fsync=1', ...extra];
  const r = await run('fio', args, { timeoutMs: 120_000, cwd: tmpdir() });
  assert.equal(r.status, 0, `fio exited ${r.status}:\n${r.stderr.slice(0, 3000)}`);
  assert.doesNotMatch(r.stderr, /verify:|bad magic|crc32c/i, r.stderr.slice(0, 3000));
}

test('writes wait for a slow commit rather than piling up changes past 32 batches; the data verifies after kill -9', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'fio')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_COMMIT_PAUSE_MS: '4000' } });
  try {
    await d.createVolume('pile', 512 * MiB);
    const uri = d.unixUri('pile');
    await fio(uri, []);
    const c = (await d.api('GET', '/v1/stats')).body.metadataCommits;
    // Near the bound: commits were slow enough for the pile to reach it (the test would prove nothing
    // else); at most the bound and the changes of the writes already admitted (32 in flight, a few each).
    assert.ok(c.largestChanges > PILE_MAX / 2, `a pile built up behind the slow commits: ${JSON.stringify(c)}`);
    assert.ok(c.largestChanges <= PILE_MAX + 1024, `no commit took more than 32 batches and the writes in flight: ${JSON.stringify(c)}`);
    await d.kill9();
    await d.start();
    await fio(uri, ['--verify_only']);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
