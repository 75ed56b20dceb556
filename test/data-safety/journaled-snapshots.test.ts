// Snapshots and clones made durable by the flush journal instead of a commit (durable-change.ts): after
// kill -9 with no commit since, each comes back from the journal at its place among its volume's writes,
// with the contents, creation time and origin it had. Background commits are held off (every 10
// minutes), so what survives the kill survives through the journal alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, nbdPython } from '../helpers/tools.js';
import { expectFsckClean, expectPattern, withHandle, MiB } from '../helpers/volume-io.js';
import { VolumeState } from '../../server/volume/volume-state.js';

// The dedup log's indexing commits once writes pause: held off too.
/** Each step writes this much: few enough changes that none reaches the commit that 4,096 changes start. */
const R = 256 * 1024;

const NO_COMMITS = { NODE_ENV: 'test', SHOAL_TEST_COMMIT_INTERVAL_MS: '600000', SHOAL_TEST_DEDUP_LOG_IDLE_MS: '600000' };

async function journalStats(d: Daemon): Promise<{ records: number; commits: number; replayed: number }> {
  return (await d.api('GET', '/v1/stats')).body.flushJournal;
}

async function ok(d: Daemon, method: string, path: string, body?: unknown): Promise<any> {
  const r = await d.api(method, path, body);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Fills [offset, offset + length) of the export with `byte`, then FLUSHes (if `flush`). */
function fill(d: Daemon, exportName: string, byte: number, offset: number, length: number, flush = true): Promise<string> {
  return withHandle(d, exportName, `h.pwrite(bytes([${byte}]) * ${length}, ${offset})${flush ? '\nh.flush()' : ''}`);
}

test('snapshots and clones made without a commit come back after kill -9, each at its place among the writes', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    await d.createVolume('v', 8 * MiB);
    await fill(d, 'v', 0x11, 0, 4 * R); // the volume's first FLUSH commits
    const before = await journalStats(d);

    await fill(d, 'v', 0x22, 0, R);
    await ok(d, 'POST', '/v1/volumes/v/snapshots', { name: 's1' });
    await fill(d, 'v', 0x33, 0, R, false); // not flushed: the clone's record makes it durable
    await ok(d, 'POST', '/v1/volumes', { name: 'c1', from: { volume: 'v' } });
    await fill(d, 'v', 0x44, R, R);
    await ok(d, 'POST', '/v1/volumes', { name: 'c2', from: { volume: 'v', snapshot: 's1' } });
    await withHandle(d, 'c1', 'h.flush()'); // flushed before it is written: its writes are kept for the journal
    await fill(d, 'c1', 0x55, 2 * R, R);
    await ok(d, 'POST', '/v1/volumes/c1/snapshots', { name: 'after' });
    await fill(d, 'c1', 0x66, 2 * R, R);

    const mid = await journalStats(d);
    assert.equal(mid.commits, before.commits, `no snapshot, clone or FLUSH committed: ${JSON.stringify({ before, mid })}`);
    assert.ok(mid.records >= before.records + 7, `each went to the journal: ${JSON.stringify({ before, mid })}`);
    const snapsBefore = await ok(d, 'GET', '/v1/volumes/v/snapshots');
    const volsBefore = (await ok(d, 'GET', '/v1/volumes')).volumes.map((v: any) => ({ name: v.name, origin: v.origin, createdAt: v.createdAt }));

    await d.kill9();
    await d.start();
    const after = await journalStats(d);
    // 0x22, s1, 0x33, c1, 0x44, c2, 0x55 on c1, its snapshot, 0x66 on c1
    assert.equal(after.replayed, 9, `every operation after the first FLUSH replayed once: ${JSON.stringify(after)}`);
    assert.deepEqual(await ok(d, 'GET', '/v1/volumes/v/snapshots'), snapsBefore, 'the snapshot keeps its name and creation time');
    assert.deepEqual(
      (await ok(d, 'GET', '/v1/volumes')).volumes.map((v: any) => ({ name: v.name, origin: v.origin, createdAt: v.createdAt })),
      volsBefore,
      'the clones keep their origins and creation times',
    );

    await expectPattern(d, 'v@s1', 0x22, 0, R);
    await expectPattern(d, 'v@s1', 0x11, R, 3 * R);
    await expectPattern(d, 'v', 0x33, 0, R);
    await expectPattern(d, 'v', 0x44, R, R);
    await expectPattern(d, 'c1', 0x33, 0, R); // cloned after the unflushed write, before 0x44
    await expectPattern(d, 'c1', 0x11, R, R);
    await expectPattern(d, 'c1@after', 0x55, 2 * R, R);
    await expectPattern(d, 'c1', 0x66, 2 * R, R);
    await expectPattern(d, 'c2', 0x22, 0, R); // of the snapshot: the writes after it are not in it
    await expectPattern(d, 'c2', 0x11, R, 3 * R);
    await expectFsckClean(d);

    // Replayed and committed: a second kill replays nothing more, and all of it is still there.
    await d.kill9();
    await d.start();
    assert.equal((await journalStats(d)).replayed, 0);
    await expectPattern(d, 'c1@after', 0x55, 2 * R, R);
    await expectPattern(d, 'c2', 0x22, 0, R);
  } finally {
    await d.dispose();
  }
});

// Writes of random bytes (some FUA: journaled before they are applied), zeroes with unaligned edges
// (applied in several steps) and trims, 16 in flight, a FLUSH every 64: `ops` of them, spread over a
// couple of seconds. Mostly random data, so that a snapshot holding half of a change reads differently
// from one holding none of it; small, so that all of it fits the journal's half without a commit: past
// half of that half (4 MiB) the journal starts a commit in the background. 1,500 operations came to
// about that, and more or less of it from run to run: a write that arrives within 10 ms of a FUA write
// is journaled on its own, each record aligned to 512 bytes. 1,200 leave a margin.
const LOAD_PY = `
import nbd, os, random, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
rng = random.Random(7)
for n in range(1, int(sys.argv[2]) + 1):
    while h.aio_in_flight() >= 16:
        h.poll(-1)
    time.sleep(0.001)
    if n % 64 == 0:
        h.aio_flush()
        continue
    kind = rng.random()
    if kind < 0.7:
        length = rng.choice([4096, 3000])
        off = rng.randrange(0, size - length)
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(os.urandom(length))), off, flags=(nbd.CMD_FLAG_FUA if kind < 0.3 else 0))
    elif kind < 0.95:
        # Unaligned at both ends: the edges are rewritten before the whole chunks between are let go.
        length = rng.randrange(9000, 40000)
        h.aio_zero(length, rng.randrange(0, size - length), flags=(nbd.CMD_FLAG_NO_HOLE if kind < 0.8 else 0))
    else:
        length = rng.randrange(4096, 40000)
        h.aio_trim(length, rng.randrange(0, size - length))
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
h.shutdown()
`;

/** sha256 of each whole export, read through libnbd (one process for all). */
async function digests(d: Daemon, exportNames: string[]): Promise<string[]> {
  const uris = exportNames.map((e) => d.unixUri(e));
  const r = await nbdPython(
    `import hashlib, nbd\nfor uri in ${JSON.stringify(uris)}:\n    h = nbd.NBD()\n    h.connect_uri(uri)\n    size = h.get_size()\n    m = hashlib.sha256()\n    for off in range(0, size, 1 << 20):\n        m.update(h.pread(min(1 << 20, size - off), off))\n    h.shutdown()\n    print(m.hexdigest())`,
  );
  assert.equal(r.status, 0, `reading the exports failed: ${r.stderr}`);
  return r.stdout.trim().split('\n');
}

test('snapshots and clones taken while writes, trims and zeroes are in flight, and the volume, read the same after kill -9', { timeout: 240_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // Nothing commits after the first FLUSH: every snapshot and clone comes back from the journal.
  const d = await startDaemon({ env: { ...NO_COMMITS, SHOAL_TEST_COMMIT_BATCH: '10000000' } });
  try {
    await d.createVolume('w', 4 * MiB);
    await withHandle(d, 'w', `h.pwrite(bytes([7]) * (4 << 20), 0)\nh.flush()`); // the first FLUSH commits
    const before = await journalStats(d);
    let done = false;
    const load = nbdPython(LOAD_PY.replace('sys.argv[1]', JSON.stringify(d.unixUri('w'))).replace('sys.argv[2]', '1200')).finally(() => (done = true));
    const taken: string[] = [];
    for (let i = 0; !done; i++) {
      await new Promise((r) => setTimeout(r, 15));
      await ok(d, 'POST', '/v1/volumes/w/snapshots', { name: `s${i}` });
      taken.push(`w@s${i}`);
      if (i % 3 === 0) {
        await ok(d, 'POST', '/v1/volumes', { name: `k${i}`, from: { volume: 'w' } });
        taken.push(`k${i}`);
      }
    }
    const r = await load;
    assert.equal(r.status, 0, `the load failed: ${r.stderr}`);
    assert.ok(taken.length >= 20, `snapshots and clones were taken during the load: ${taken.length}`);
    const mid = await journalStats(d);
    assert.equal(mid.commits, before.commits, `nothing committed: ${JSON.stringify({ before, mid })}`);

    taken.push('w'); // and the volume itself: its overlapping writes and zeroes replay in the order they mapped
    const sums = await digests(d, taken);
    await d.kill9();
    await d.start();
    const after = await journalStats(d);
    assert.ok(after.replayed > 1000, `the load, the snapshots and the clones came back from the journal: ${JSON.stringify(after)}`);
    const again = await digests(d, taken);
    for (let i = 0; i < taken.length; i++) assert.equal(again[i], sums[i], `${taken[i]} reads as it did before the kill`);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});

test('quiesce holds new changes back until those under way are done, and gives up after its limit', async () => {
  const st = new VolumeState({ name: 'q', size: 0, root: 0, levels: 1, mapped: 0, createdAt: '', domain: 'd', origin: null, snapshots: [] }, 0, () => {});
  assert.equal(st.changeStarts(), null); // a change under way
  const q = st.quiesce(1000);
  const held = st.changeStarts();
  assert.ok(held, 'a new change waits while a snapshot is taken');
  let heldGoesOn = false;
  void held.then(() => (heldGoesOn = true));
  await new Promise((r) => setTimeout(r, 20));
  st.changeDone();
  const got = await q;
  assert.equal(got.idle, true, 'the change under way finished');
  await new Promise((r) => setImmediate(r));
  assert.equal(heldGoesOn, false, 'still held until released');
  got.release();
  await held;
  assert.equal(st.changeStarts(), null, 'changes start again');
  // A change that does not finish in time: the snapshot is told so (and commits instead).
  const t0 = performance.now();
  const late = await st.quiesce(30);
  assert.equal(late.idle, false);
  assert.ok(performance.now() - t0 >= 25, 'it waited its limit');
  late.release();
  st.changeDone();
  const again = await st.quiesce(30);
  assert.equal(again.idle, true);
  again.release();
});
