// Exclusive and shared bytes per volume: GET /v1/volumes/NAME counts them now (a walk of the map);
// the volume list and /metrics show what a background walk counted last (`sharingAt` says when), so a
// scrape never walks every map while clients wait (bench:soak saw 0.5-1.4 s stalls when it did). Here
// the background walk runs every 300 ms: its figures follow the writes, and agree with the exact ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, startDaemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { MiB, withHandle } from '../helpers/volume-io.js';

const metric = (text: string, name: string, volume: string) => Number(new RegExp(`^${name}\\{volume="${volume}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);

test('the list and /metrics show the background walk of exclusive and shared bytes; GET of one volume counts now', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // First a walk every 10 minutes: the list keeps what it knew, GET counts.
  const first = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_SHARING_REFRESH_MS: '600000' } });
  let d = first;
  try {
    await d.createVolume('gold', 16 * MiB);
    await withHandle(d, 'gold', `import os\nh.pwrite(os.urandom(8 * 1024 * 1024), 0)\nh.flush()`);
    await d.api('POST', '/v1/volumes/gold/snapshots', { name: 'base' });
    const clone = await d.api('POST', '/v1/volumes', { name: 'vm', from: { volume: 'gold', snapshot: 'base' } });
    assert.equal(clone.status, 201);
    // Known without a walk: a fresh clone shares everything.
    assert.equal(clone.body.sharedBytes, 8 * MiB);
    assert.equal(clone.body.exclusiveBytes, 0);
    assert.match(clone.body.sharingAt, /^\d{4}-\d\d-\d\dT/);

    // 2 MiB of new data in the clone: the list does not see it; GET counts it at once.
    await withHandle(d, 'vm', `import os\nh.pwrite(os.urandom(2 * 1024 * 1024), 0)\nh.flush()`);
    const listVm = async () => (await d.api('GET', '/v1/volumes')).body.volumes.find((v: any) => v.name === 'vm');
    const stale = await listVm();
    assert.deepEqual([stale.exclusiveBytes, stale.sharedBytes, stale.sharingAt], [0, 8 * MiB, clone.body.sharingAt], 'the list did not walk the map');
    const now = (await d.api('GET', '/v1/volumes/vm')).body;
    assert.deepEqual([now.exclusiveBytes, now.sharedBytes], [2 * MiB, 6 * MiB]);
    const after = await listVm();
    assert.deepEqual([after.exclusiveBytes, after.sharedBytes, after.sharingAt], [2 * MiB, 6 * MiB, now.sharingAt], "the list keeps what the GET counted");

    // Then every 300 ms, on the same data.
    await first.stop();
    d = await new Daemon({ dataDir: first.dataDir, env: { NODE_ENV: 'test', SHOAL_TEST_SHARING_REFRESH_MS: '300' } }).start();

    // The list and the metrics catch up within a few background rounds, with the same figures.
    const deadline = Date.now() + 10_000;
    let listed: any;
    let text = '';
    for (;;) {
      listed = (await d.api('GET', '/v1/volumes')).body.volumes.find((v: any) => v.name === 'vm');
      text = (await d.api('GET', '/metrics')).body;
      // (gold's last walk may be from before its snapshot: each volume is walked on its own schedule)
      if (listed.exclusiveBytes === 2 * MiB && metric(text, 'shoal_volume_exclusive_bytes', 'vm') === 2 * MiB && metric(text, 'shoal_volume_shared_bytes', 'gold') === 8 * MiB) break;
      assert.ok(Date.now() < deadline, `the list still shows ${JSON.stringify(listed)} after 10 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(listed.sharedBytes, 6 * MiB);
    assert.ok(Date.parse(listed.sharingAt) >= Date.parse(clone.body.sharingAt), 'a later walk');
    assert.equal(metric(text, 'shoal_volume_shared_bytes', 'vm'), 6 * MiB);
    // gold's 8 MiB are all still referenced by its snapshot (and 6 MiB of them by the clone).
    assert.equal(metric(text, 'shoal_volume_shared_bytes', 'gold'), 8 * MiB);
    assert.equal(metric(text, 'shoal_volume_exclusive_bytes', 'gold'), 0);

    // A deleted volume leaves the list and the metrics.
    assert.equal((await d.api('DELETE', '/v1/volumes/vm')).status, 204);
    text = (await d.api('GET', '/metrics')).body;
    assert.ok(Number.isNaN(metric(text, 'shoal_volume_shared_bytes', 'vm')));
  } finally {
    await d.stop();
    await first.dispose();
  }
});
