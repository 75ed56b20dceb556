// Long background operations show their progress in GET /v1/stats and /metrics: reclaim after a
// delete (pending bytes falling, a rate, released bytes adding up), dedup-log indexing (entries
// indexed and a rate), and a consistency check (phase, checked of total, while reads go on and a
// write waits for it). Per-volume request counts in GET /v1/activity match what a client sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, runOk } from '../helpers/tools.js';
import { withHandle, MiB } from '../helpers/volume-io.js';

const stats = async (d: Daemon) => (await d.api('GET', '/v1/stats')).body;
const metric = async (d: Daemon, re: RegExp) => {
  const m = re.exec((await d.api('GET', '/metrics')).body);
  assert.ok(m, `metrics match ${re}`);
  return Number(m![1]);
};

/** Polls until `done(stats)`; returns every reading. */
async function watch(d: Daemon, done: (s: any) => boolean, timeoutMs = 60_000): Promise<any[]> {
  const seen: any[] = [];
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = await stats(d);
    seen.push(s);
    if (done(s)) return seen;
    if (Date.now() > end) throw new Error(`never settled: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('reclaim after a delete: pending bytes fall at a rate until nothing is left', async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdkit')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('big', 256 * MiB);
    await runOk('nbdcopy', ['--', '[', 'nbdkit', 'random', '256M', ']', d.unixUri('big')]);
    let s = await stats(d);
    assert.equal(s.reclaim.pendingBytes, 0);
    assert.equal(s.reclaim.releasedBytes, 0);
    assert.equal((await d.api('DELETE', '/v1/volumes/big')).status, 204);
    const seen = await watch(d, (x) => x.reclaim.pendingNodes === 0);
    const during = seen.filter((x) => x.reclaim.pendingNodes > 0);
    assert.ok(during.length > 0, 'the backlog was seen');
    // The estimate starts at what the volume mapped (an upper bound) and only falls.
    assert.ok(during[0].reclaim.pendingBytes <= 256 * MiB && during[0].reclaim.pendingBytes > 0, JSON.stringify(during[0].reclaim));
    for (let i = 1; i < during.length; i++) assert.ok(during[i].reclaim.pendingBytes <= during[i - 1].reclaim.pendingBytes);
    s = seen.at(-1);
    assert.equal(s.reclaim.pendingBytes, 0);
    assert.equal(s.reclaim.releasedBytes, 256 * MiB, 'every chunk reference released once');
    assert.equal(s.physicalBytes, 0);
    assert.ok(seen.some((x) => x.reclaim.bytesPerSecond > 0), 'a rate was reported while it ran');
    assert.equal(await metric(d, /^shoal_reclaim_released_bytes_total (\d+)$/m), 256 * MiB);
    assert.equal(await metric(d, /^shoal_reclaim_pending_bytes (\d+)$/m), 0);
  } finally {
    await d.dispose();
  }
});

test('dedup-log indexing reports entries indexed and a rate', async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdkit')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_DEDUP_LOG_IDLE_MS: '300' } });
  try {
    await d.createVolume('v', 128 * MiB);
    await runOk('nbdcopy', ['--flush', '--', '[', 'nbdkit', 'random', '128M', ']', d.unixUri('v')]);
    const seen = await watch(d, (x) => x.dedupIndexing.logEntries === 0);
    const first = seen[0];
    assert.ok(first.dedupIndexing.logEntries > 0 || first.dedupIndexing.indexedEntries > 0, JSON.stringify(first.dedupIndexing));
    const last = seen.at(-1);
    assert.equal(last.dedupIndexing.indexedEntries, 32768, 'each new chunk indexed once');
    assert.equal(last.dedupLogEntries, 0);
    assert.ok(seen.some((x) => x.dedupIndexing.entriesPerSecond > 0), 'a rate was reported while it ran');
    assert.equal(await metric(d, /^shoal_dedup_log_indexed_total (\d+)$/m), 32768);
  } finally {
    await d.dispose();
  }
});

test('fsck progress: phase and counts in stats and metrics; reads go on, a write waits for the end', async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdkit', 'nbdsh')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_FSCK_PAUSE_MS: '100' } });
  try {
    await d.createVolume('v', 64 * MiB);
    await runOk('nbdcopy', ['--', '[', 'nbdkit', 'random', '64M', ']', d.unixUri('v')]);
    assert.equal((await stats(d)).fsck.lastOk, null);
    const fsck = d.api('POST', '/v1/fsck');
    let fsckDone = 0;
    void fsck.then(() => (fsckDone = Date.now()));
    const running = await watch(d, (x) => x.fsck.running && x.fsck.checkedNodes > 0);
    const f = running.at(-1).fsck;
    assert.ok(['maps', 'chunks'].includes(f.phase), f.phase);
    assert.equal(f.totalChunks, 16384);
    assert.ok(f.totalNodes > 64 && f.checkedNodes <= f.totalNodes, JSON.stringify(f));
    assert.equal(await metric(d, /^shoal_fsck_running (\d)$/m), 1);
    assert.equal(await metric(d, /^shoal_fsck_items\{kind="chunks"\} (\d+)$/m), 16384);
    // A read is answered during the check; a write is held until it ends.
    const t0 = Date.now();
    await withHandle(d, 'v', 'h.pread(4096, 0)');
    assert.equal(fsckDone, 0, 'the read finished while fsck still ran');
    assert.ok(Date.now() - t0 < 5000);
    await withHandle(d, 'v', "h.pwrite(b'\\x01' * 4096, 0)");
    const wrote = Date.now();
    const r = await fsck;
    assert.equal(r.status, 200);
    assert.equal(r.body.ok, true, JSON.stringify(r.body.errors));
    assert.ok(fsckDone > 0 && fsckDone <= wrote + 50, 'the write completed only once the check was over');
    const after = (await stats(d)).fsck;
    assert.equal(after.running, false);
    assert.equal(after.phase, null);
    assert.equal(after.lastOk, true);
    assert.equal(after.checkedChunks, after.totalChunks);
    assert.equal(after.checkedNodes, after.totalNodes);
    assert.equal(await metric(d, /^shoal_fsck_running (\d)$/m), 0);
  } finally {
    await d.dispose();
  }
});

test('per-volume activity counts what clients sent, snapshots included', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('a', 16 * MiB);
    await d.createVolume('b', 16 * MiB);
    await withHandle(d, 'a', "for i in range(3): h.pwrite(b'\\x07' * 8192, i * 8192)\nh.flush()");
    assert.equal((await d.api('POST', '/v1/volumes/a/snapshots', { name: 's' })).status, 201);
    await withHandle(d, 'a', 'for i in range(2): h.pread(4096, 0)');
    await withHandle(d, 'a@s', 'for i in range(3): h.pread(512, 0)');
    const r = await d.api('GET', '/v1/activity');
    assert.equal(r.status, 200);
    const byName = Object.fromEntries(r.body.volumes.map((v: any) => [v.name, v]));
    assert.deepEqual(byName.a, { name: 'a', tenant: null, connections: 0, reads: 5, writes: 3, readBytes: 2 * 4096 + 3 * 512, writtenBytes: 3 * 8192 });
    assert.deepEqual(byName.b, { name: 'b', tenant: null, connections: 0, reads: 0, writes: 0, readBytes: 0, writtenBytes: 0 });
    assert.equal(await metric(d, /^shoal_volume_read_requests_total\{volume="a"\} (\d+)$/m), 5);
    assert.equal(await metric(d, /^shoal_volume_write_requests_total\{volume="a"\} (\d+)$/m), 3);
    assert.equal(await metric(d, /^shoal_volume_written_bytes_total\{volume="a"\} (\d+)$/m), 3 * 8192);
  } finally {
    await d.dispose();
  }
});
