// The gauges the alert rules watch besides traffic: the reclaim backlog rises when a volume with
// data is deleted and falls back to 0 once its space is reclaimed, and the data directory's
// file-system figures are the ones `df` reports for it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, runOk } from '../helpers/tools.js';
import { withHandle, MiB } from '../helpers/volume-io.js';

async function gauge(d: Daemon, name: string): Promise<number> {
  const text = (await d.api('GET', '/metrics')).body as string;
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  assert.ok(m, `${name} is missing from /metrics`);
  return Number(m[1]);
}

test('shoal_reclaim_pending_nodes counts the map nodes a delete leaves to reclaim, down to 0', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // Slices of 0 ms release each map leaf over several turns of the event loop: the backlog lasts
  // long enough to be scraped.
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    await d.createVolume('big', 64 * MiB);
    await withHandle(d, 'big', 'import os\nfor i in range(4):\n    h.pwrite(os.urandom(16 * 1024 * 1024), i * 16 * 1024 * 1024)\nh.flush()');
    assert.equal(await gauge(d, 'shoal_reclaim_pending_nodes'), 0, 'nothing to reclaim before the delete');
    assert.equal((await d.api('DELETE', '/v1/volumes/big')).status, 204);

    let peak = 0;
    let now = Infinity;
    for (let i = 0; i < 3000 && now > 0; i++) {
      now = await gauge(d, 'shoal_reclaim_pending_nodes');
      peak = Math.max(peak, now);
      if (now > 0) await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(peak > 0, 'the backlog of the deleted volume shows while it is reclaimed');
    assert.equal(now, 0, 'the backlog drains');
    assert.equal((await d.api('GET', '/v1/stats')).body.reclaimPendingNodes, 0, '/v1/stats says the same');
    assert.equal(await gauge(d, 'shoal_physical_bytes'), 0, 'and the space came back');
  } finally {
    await d.dispose();
  }
});

test('shoal_data_dir_size_bytes and shoal_data_dir_free_bytes match df on the data directory', async () => {
  const d = await startDaemon();
  try {
    const [size, free] = [await gauge(d, 'shoal_data_dir_size_bytes'), await gauge(d, 'shoal_data_dir_free_bytes')];
    const df = (await runOk('df', ['-B1', '--output=size,avail', d.dataDir])).trim().split('\n').pop()!.trim().split(/\s+/).map(Number);
    assert.equal(size, df[0], 'size is the file system size df reports');
    // Other processes write to the same file system between the two readings.
    assert.ok(Math.abs(free - df[1]!) < 256 * MiB, `free ${free} is what df calls available (${df[1]})`);
    assert.ok(free > 0 && free <= size);
  } finally {
    await d.dispose();
  }
});

test('shoal_meta_commit_seconds counts each metadata commit and how long it took', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    const count = async () => gauge(d, 'shoal_meta_commit_seconds_count');
    const before = await count();
    await d.createVolume('c', 8 * MiB);
    await withHandle(d, 'c', 'import os\nh.pwrite(os.urandom(1024 * 1024), 0)\nh.flush()');
    // A snapshot is one durable commit of its own, whatever the FLUSH left.
    assert.equal((await d.api('POST', '/v1/volumes/c/snapshots', { name: 's' })).status, 201);
    const after = await count();
    assert.ok(after >= before + 2, `the volume's creation and the snapshot each committed (${before} -> ${after})`);
    const sum = await gauge(d, 'shoal_meta_commit_seconds_sum');
    assert.ok(sum > 0 && sum < after * 10, `their time is counted (${sum} s over ${after} commits)`);
    const text = (await d.api('GET', '/metrics')).body as string;
    assert.match(text, /^# TYPE shoal_meta_commit_seconds histogram$/m);
    assert.match(text, new RegExp(`^shoal_meta_commit_seconds_bucket\\{le="\\+Inf"\\} ${after}$`, 'm'));
  } finally {
    await d.dispose();
  }
});
