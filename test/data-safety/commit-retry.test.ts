// LMDB as lmdb-js bundles it now and then fails a commit with MDB_BAD_TXN (its save of the free-page
// list); the transaction is aborted whole, and the commit pipeline queues the same records into a new
// one. That failure cannot be brought about on demand, so the test hook SHOAL_TEST_COMMIT_FAULT_EVERY
// fails every n-th commit's first transaction the same way, without writing any of it. What must
// hold: the daemon goes on, FLUSHes complete, and what they made durable survives kill -9 with exact
// refcounts, through writes, a snapshot, a clone, a reflink, a delete and its reclaim, and the
// writes after a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, seededData, expectFsckClean, MiB } from '../helpers/volume-io.js';

const FAULT = { NODE_ENV: 'test', SHOAL_TEST_COMMIT_FAULT_EVERY: '2' };

async function retries(d: Daemon): Promise<number> {
  const text = (await d.api('GET', '/metrics')).body as string;
  const m = /^shoal_meta_commit_retries_total (\S+)$/m.exec(text);
  assert.ok(m, 'shoal_meta_commit_retries_total is exported');
  return Number(m[1]);
}

const check = (d: Daemon, vol: string, seed: number, mib: number, offset: number) =>
  withHandle(d, vol, seededData(seed, mib, offset, true)).then((s) => assert.match(s, /True/, `${vol} holds seed ${seed} at ${offset}`));

test('a commit LMDB fails with MDB_BAD_TXN is written again whole: FLUSHed data survives kill -9, refcounts exact', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon({ env: FAULT });
  try {
    await d.createVolume('v', 64 * MiB);
    await withHandle(d, 'v', seededData(1, 24, 0));
    assert.equal((await d.api('POST', '/v1/volumes/v/snapshots', { name: 's1' })).status, 201);
    await withHandle(d, 'v', seededData(2, 8, 8 * MiB)); // over the snapshot's chunks
    assert.equal((await d.api('POST', '/v1/volumes', { name: 'c', from: { volume: 'v', snapshot: 's1' } })).status, 201);
    await withHandle(d, 'c', seededData(3, 4, 40 * MiB));
    const reflink = await d.api('POST', '/v1/volumes/c/reflink', { source: 'v', sourceOffset: 0, offset: 48 * MiB, length: 8 * MiB });
    assert.equal(reflink.status, 200, JSON.stringify(reflink.body));
    await d.createVolume('gone', 32 * MiB);
    await withHandle(d, 'gone', seededData(4, 16, 0));
    assert.equal((await d.api('DELETE', '/v1/volumes/gone')).status, 204);
    await expectFsckClean(d); // drains the reclaim of `gone`, through more commits
    const retried = await retries(d);
    assert.ok(retried >= 3, `commits were failed and retried (${retried})`);
    assert.match(d.log, /LMDB failed a metadata commit/, 'each retry is logged');

    await d.kill9();
    const offline = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
    assert.equal(offline.status, 0, `offline fsck after kill -9:\n${offline.stdout}\n${offline.stderr}`);
    await d.start();
    await check(d, 'v', 1, 8, 0);
    await check(d, 'v', 2, 8, 8 * MiB);
    await check(d, 'c', 3, 4, 40 * MiB);
    // The snapshot still holds seed 1 where v was overwritten; the clone and the reflink read it too.
    const snap = await d.api('GET', '/v1/volumes/v/snapshots');
    assert.deepEqual(
      snap.body.snapshots.map((s: { name: string }) => s.name),
      ['s1'],
    );
    await check(d, 'c', 1, 24, 0);
    await withHandle(d, 'c', `import random\nr = random.Random(1)\nb = b''.join(r.randbytes(${MiB}) for _ in range(8))\nprint(h.pread(${8 * MiB}, ${48 * MiB}) == b)`).then((s) =>
      assert.match(s, /True/, 'the reflinked range holds v as it was'),
    );
    assert.equal((await d.api('GET', '/v1/volumes/gone')).status, 404, 'the delete was committed');
    await expectFsckClean(d);
    await withHandle(d, 'v', seededData(5, 8, 32 * MiB));
    await withHandle(d, 'v', seededData(6, 8, 48 * MiB));
    await expectFsckClean(d);
    assert.ok((await retries(d)) >= 1, 'commits after the restart are retried too');
    await check(d, 'v', 5, 8, 32 * MiB);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
