// Space reclaim releases a map leaf (256 chunks) over several slices when a slice runs out of
// time, and commits in between: the committed leaf must hold only what is still to release. This
// kills the daemon while a delete is being reclaimed with every leaf split (test hook: slices of
// 0 ms), then checks after the restart that no chunk was released twice — the survivor's chunks,
// shared with the deleted volume, still read back, fsck is clean, and the space comes back exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, expectFsckClean, settledStats, MiB } from '../helpers/volume-io.js';

const SHA = `import hashlib
print(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest())`;

async function offlineFsck(d: Daemon): Promise<void> {
  const r = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
  assert.equal(r.status, 0, `shoal fsck ${d.dataDir} failed:\n${r.stdout}\n${r.stderr}`);
}

test('kill -9 while a delete is reclaimed leaf by leaf: nothing is released twice, fsck clean', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    // keep: 16 MiB; big: 128 MiB (128 leaves) whose first 16 MiB are keep's bytes (deduplicated:
    // those chunks have two references) and the rest its own.
    await d.createVolume('keep', 16 * MiB);
    await d.createVolume('big', 128 * MiB);
    await withHandle(d, 'keep', `import random\nh.pwrite(random.Random(7).randbytes(16 * 1024 * 1024), 0)\nh.flush()`);
    await withHandle(d, 'big', `import random, os
h.pwrite(random.Random(7).randbytes(16 * 1024 * 1024), 0)
for off in range(16, 128, 16):
    h.pwrite(os.urandom(16 * 1024 * 1024), off * 1024 * 1024)
h.flush()`);
    const keepSha = (await withHandle(d, 'keep', SHA)).trim();
    const full = await settledStats(d);
    assert.equal(full.physicalBytes, 128 * MiB, 'keep shares all its chunks with big');

    // Delete big, and kill the daemon half-way through the reclaim: several commits of 1024
    // changes each (4 MiB of chunks) have been made by then, each with a leaf half released.
    assert.equal((await d.api('DELETE', '/v1/volumes/big')).status, 204);
    let seen = full.physicalBytes;
    for (let i = 0; i < 5000 && seen > 80 * MiB; i++) {
      await new Promise((r) => setTimeout(r, 1));
      seen = (await d.api('GET', '/v1/stats')).body.physicalBytes;
    }
    assert.ok(seen > 16 * MiB && seen <= 80 * MiB, `the kill must land mid-reclaim (physical ${seen / MiB} MiB)`);
    await d.kill9();
    await offlineFsck(d);
    await d.start();

    const end = await settledStats(d);
    assert.equal(end.physicalBytes, 16 * MiB, 'exactly big\'s own chunks are freed');
    assert.equal((await withHandle(d, 'keep', SHA)).trim(), keepSha, 'the chunks big shared with keep are intact');
    await expectFsckClean(d);
    await d.stop();
    await offlineFsck(d);
  } finally {
    await d.dispose();
  }
});
