// `shoal fsck DATA_DIR` may run beside a daemon that is committing (an operator checking a live
// host, the crash tests after a restart): it must judge one commit, whole. Here background reclaim
// commits every few milliseconds (each map leaf released over several commits) while the offline
// check runs again and again; each run must be clean. A check that read the superblock and volume
// records of one commit and the nodes and chunk records of a later one reported chunks "referenced
// but missing" (lmdb-js renews its read snapshot at each turn of the event loop).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, startDaemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';

test('the offline fsck sees one commit while a daemon reclaims beside it', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdkit')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    for (const [name, size] of [['keep', 64], ['big', 768]] as const) {
      await d.createVolume(name, size * MiB);
      await runOk('nbdcopy', ['--flush', '--', '[', 'nbdkit', 'random', `${size}M`, `seed=${size}`, ']', d.unixUri(name)]);
    }
    // A snapshot of a clone shares nodes, so reclaim releases some and keeps others.
    await d.api('POST', '/v1/volumes/keep/snapshots', { name: 's' });
    assert.equal((await d.api('DELETE', '/v1/volumes/big')).status, 204);
    let during = 0;
    for (let i = 0; i < 40; i++) {
      const before = (await d.api('GET', '/v1/stats')).body.reclaim.pendingNodes;
      if (before === 0) break;
      // Two at a time: more of reclaim's commits land while a check runs.
      for (const r of await Promise.all([0, 1].map(() => run(process.execPath, [MAIN, 'fsck', d.dataDir])))) {
        assert.equal(r.status, 0, `a shoal fsck ${d.dataDir} beside the reclaiming daemon failed:\n${r.stdout}\n${r.stderr}`);
        during++;
      }
    }
    t.diagnostic(`${during} offline checks while reclaim ran`);
    assert.ok(during >= 4, `the checks ran while reclaim was under way (${during})`);
    const r = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
  } finally {
    await d.dispose();
  }
});
