// Reflink and dedupe are crash-atomic without holding commits back: each commits an intent
// first, works in batches committed with its progress, and is rolled forward at the next start.
// The daemon is killed with -9 at random points of each operation; after the restart the
// destination holds either its old bytes (killed before the intent was committed) or the whole
// operation's result, never a mix, and the refcounts are exact (offline and online fsck).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, expectFsckClean, settledStats, MiB } from '../helpers/volume-io.js';

const LEN = 64 * MiB;
const TRIALS = 4;

async function offlineFsck(d: Daemon): Promise<void> {
  const r = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
  assert.equal(r.status, 0, `shoal fsck ${d.dataDir} failed:\n${r.stdout}\n${r.stderr}`);
}

const sha = (d: Daemon, vol: string, offset: number, length: number) =>
  withHandle(d, vol, `import hashlib\nprint(hashlib.sha256(h.pread(${length}, ${offset})).hexdigest())`).then((s) => s.trim());

/** Seeded random bytes (Python's generator: the same on every run). */
const fill = (d: Daemon, vol: string, seed: number, offset: number, length: number) =>
  withHandle(
    d,
    vol,
    `import random
r = random.Random(${seed})
for off in range(0, ${length}, ${16 * MiB}):
    h.pwrite(r.randbytes(min(${16 * MiB}, ${length} - off)), ${offset} + off)
h.flush()`,
  );

/** Starts `call`, kills the daemon after `ms`, restarts it; returns whether the call had answered. */
async function killDuring(d: Daemon, call: () => Promise<{ status: number }>, ms: number): Promise<boolean> {
  let answered = false;
  const p = call().then(
    (r) => {
      answered = r.status === 200;
    },
    () => {},
  );
  await new Promise((r) => setTimeout(r, ms));
  await d.kill9();
  await p;
  await offlineFsck(d);
  await d.start();
  return answered;
}

test('kill -9 at random points of a reflink: after the restart, nothing or all of it', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('src', 2 * LEN);
    await d.createVolume('dst', 2 * LEN);
    await fill(d, 'src', 1, 0, LEN + MiB);
    const after = [await sha(d, 'src', 0, LEN), await sha(d, 'src', 1000, LEN)];
    // Both kinds: offsets one chunk apart (shared chunk by chunk: no whole leaf lines up), and
    // offsets at different places within a chunk (copied through the write path).
    const kinds = [
      { sourceOffset: 0, offset: 7 * 4096 },
      { sourceOffset: 1000, offset: 5000 },
    ];
    // One run to completion first: its duration bounds where the kills land.
    const t0 = performance.now();
    const full = await d.api('POST', '/v1/volumes/dst/reflink', { source: 'src', length: LEN, ...kinds[0] });
    const took = performance.now() - t0;
    assert.equal(full.status, 200, JSON.stringify(full.body));
    assert.equal(await sha(d, 'dst', kinds[0].offset, LEN), after[0]);
    let wholeSeen = 0;
    let nothingSeen = 0;
    for (let i = 0; i < TRIALS; i++) {
      const kind = kinds[i % 2];
      await fill(d, 'dst', 100 + i, 0, 2 * LEN); // fresh, different bytes
      const before = await sha(d, 'dst', kind.offset, LEN);
      const ms = Math.random() * took * 1.2;
      const answered = await killDuring(d, () => d.api('POST', '/v1/volumes/dst/reflink', { source: 'src', length: LEN, ...kind }), ms);
      const now = await sha(d, 'dst', kind.offset, LEN);
      t.diagnostic(`trial ${i}: kill after ${ms.toFixed(0)} of ~${took.toFixed(0)} ms, ${now === before ? 'nothing' : now === after[i % 2] ? 'whole' : 'MIXED'}${answered ? ' (answered)' : ''}`);
      assert.ok(now === before || now === after[i % 2], `trial ${i}: the destination is neither its old bytes nor the whole reflink`);
      if (answered) assert.equal(now, after[i % 2], 'a reflink that answered is whole');
      if (now === before) nothingSeen++;
      else wholeSeen++;
      await expectFsckClean(d);
    }
    t.diagnostic(`${wholeSeen} rolled forward or done, ${nothingSeen} not begun`);
  } finally {
    await d.dispose();
  }
});

test('kill -9 at random points of a dedupe: after the restart, nothing or all of it', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // Dedup off: the two volumes' equal bytes are stored twice until the dedupe shares them.
  const d = await startDaemon({ args: ['--dedup', 'off'] });
  try {
    await d.createVolume('a', LEN);
    await d.createVolume('b', LEN);
    await fill(d, 'a', 2, 0, LEN);
    const bytes = await sha(d, 'a', 0, LEN);
    const twice = 2 * LEN;
    let took = 0;
    for (let i = 0; i < TRIALS; i++) {
      await fill(d, 'b', 2, 0, LEN); // the same bytes, stored again
      assert.equal((await settledStats(d)).physicalBytes, twice);
      const t0 = performance.now();
      const ms = i === 0 ? Infinity : Math.random() * took * 1.2;
      if (i === 0) {
        const r = await d.api('POST', '/v1/volumes/b/dedupe', { source: 'a', sourceOffset: 0, offset: 0, length: LEN });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.sharedBytes, LEN);
        took = performance.now() - t0;
      } else {
        await killDuring(d, () => d.api('POST', '/v1/volumes/b/dedupe', { source: 'a', sourceOffset: 0, offset: 0, length: LEN }), ms);
      }
      const physical = (await settledStats(d)).physicalBytes;
      t.diagnostic(`trial ${i}: ${Number.isFinite(ms) ? `kill after ${ms.toFixed(0)} of ~${took.toFixed(0)} ms, ` : ''}physical ${physical / MiB} MiB`);
      assert.ok(physical === twice || physical === LEN, `trial ${i}: physical ${physical / MiB} MiB is neither before (${twice / MiB}) nor after (${LEN / MiB}) the dedupe`);
      assert.equal(await sha(d, 'b', 0, LEN), bytes, 'a dedupe never changes bytes');
      await expectFsckClean(d);
    }
  } finally {
    await d.dispose();
  }
});

test('kill -9 between a shrink and the zeroing of its last chunk: the restart finishes it', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // The test hook holds the shrink for 5 s after its intent (the new size) is committed.
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_INTENT_PAUSE_MS: '5000' } });
  try {
    await d.createVolume('sh', 16 * MiB);
    await fill(d, 'sh', 3, 0, 16 * MiB);
    const cut = 10 * MiB + 1000; // inside a chunk: its tail must read as zeroes once the volume grows
    const keep = await sha(d, 'sh', 0, cut);
    const answered = await killDuring(d, () => d.api('PATCH', '/v1/volumes/sh', { size: cut + 24, shrink: true }), 1500);
    assert.equal(answered, false, 'killed inside the pause');
    const v = (await d.api('GET', '/v1/volumes/sh')).body;
    assert.equal(v.size, cut + 24, 'the new size was committed with the intent');
    assert.equal((await d.api('PATCH', '/v1/volumes/sh', { size: 16 * MiB })).status, 200);
    assert.equal(await sha(d, 'sh', 0, cut), keep, 'the bytes before the cut are intact');
    const tail = await withHandle(d, 'sh', `print(h.pread(${16 * MiB - cut - 24}, ${cut + 24}) == bytes(${16 * MiB - cut - 24}))`);
    assert.match(tail, /True/, 'past the old end, the grown volume reads zeroes: the roll-forward zeroed the rest of the chunk');
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
