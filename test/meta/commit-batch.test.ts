// The commit batch (server/volume/commit-scheduler.ts): a commit queues its records in one synchronous
// stretch that holds every client, so while several volumes are busy the batch shrinks when the last
// commit's changes cost more (clones' first writes copy shared leaves: a record per chunk), keeping the
// stretch near 20 ms; cheap, it stays 32,768. A volume busy writing alone gets up to four batches
// (fewer commits cost less LMDB work per write) as long as the stretch stays near 40 ms. While blind
// references wait to be folded, whoever is busy, the batch is 4,096 and the pile bound 8,192.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CommitScheduler } from '../../server/volume/commit-scheduler.js';
import type { MetaStore } from '../../server/meta/meta-store.js';
import { setTimeout as sleep } from 'node:timers/promises';


function scheduler(busy: number, batch = 32_768, reading = false) {
  const meta = {
    pendingChanges: 0,
    pipeline: { stretchPerChange: 0, committing: true, whenIdle: () => Promise.resolve() },
    chunks: { unfoldedReferences: 0, freedShare: 0.5 },
    commits: 0,
    commit() {
      this.commits++;
      return new Promise<void>(() => {}); // never settles: each check below sees at most one commit start
    },
    nodes: { trim() {} },
  };
  const vols = [0, 1, 2].map(() => ({ io: { reads: 0, writes: 0 } }));
  const s = new CommitScheduler(meta as unknown as MetaStore, undefined, 60_000, undefined, batch);
  s.watch(() => vols);
  return {
    meta,
    s,
    /** Requests arrive on `busy` of the volumes, seen by two of the scheduler's checks. */
    async start() {
      s.start();
      await sleep(150);
      for (let i = 0; i < busy; i++) {
        if (reading) vols[i].io.reads++;
        else vols[i].io.writes++;
      }
      await sleep(150);
    },
  };
}

test('while several volumes are busy the commit batch shrinks as changes cost more; alone, or cheap, it stays', async () => {
  const shared = scheduler(2);
  const alone = scheduler(1);
  const raised = scheduler(2, 10_000_000); // a test's batch raised to keep operations for the journal alone
  await Promise.all([shared.start(), alone.start(), raised.start()]);
  try {
    const waits = (x: ReturnType<typeof scheduler>, pending: number, msPerChange: number) => {
      x.meta.pendingChanges = pending;
      x.meta.pipeline.stretchPerChange = msPerChange;
      return x.s.admit() !== null; // a write waits for the commit in flight
    };
    // Random writes: ~0.3 us a change, a batch of 32,768 is a ~10 ms stretch.
    assert.equal(waits(shared, 32_000, 0.0003), false);
    assert.equal(waits(shared, 33_000, 0.0003), true);
    // Clones' first writes: ~1.2 us a change, 20 ms is 16,666 changes.
    assert.equal(waits(shared, 16_000, 0.0012), false);
    assert.equal(waits(shared, 17_000, 0.0012), true);
    // Never below 8,192 changes.
    assert.equal(waits(shared, 8_000, 0.01), false);
    assert.equal(waits(shared, 8_300, 0.01), true);
    // No commit measured yet: the batch.
    assert.equal(waits(shared, 32_000, 0), false);
    // One volume busy: four batches of 32,768, whatever a change costs.
    assert.equal(waits(alone, 131_000, 0.0012), false);
    assert.equal(waits(alone, 131_100, 0.0012), true);
    // Scaled, not capped: a raised batch stays far above any pile here.
    assert.equal(waits(raised, 1_000_000, 0.0012), false);
    // Blind references waiting to be folded (a clone's first writes, ~2-4 us a change in the commit,
    // which the last commit's cost does not foresee): past 8,192 changes, alone or not.
    for (const x of [shared, alone]) {
      x.meta.chunks.unfoldedReferences = 256;
      assert.equal(waits(x, 8_000, 0.0003), false);
      assert.equal(waits(x, 8_300, 0.0003), true);
      x.meta.chunks.unfoldedReferences = 0;
    }
  } finally {
    shared.s.stop();
    alone.s.stop();
    raised.s.stop();
  }
});

test('a volume busy writing alone commits after up to four batches while the stretch stays near 40 ms; one only reading, after one', async () => {
  const fresh = async (busy: number, reading: boolean) => {
    const x = scheduler(busy, 32_768, reading);
    await x.start();
    return x;
  };
  /**
   * Whether a change with `pending` changes waiting starts a commit, the last commit having cost
   * msPerChange a change (and freed `freedShare` of its chunk records: half, as overwrites do).
   */
  const commits = async (busy: number, pending: number, msPerChange: number, o: { unfolded?: number; reading?: boolean; freedShare?: number } = {}) => {
    const x = await fresh(busy, o.reading ?? false);
    try {
      x.meta.pendingChanges = pending;
      x.meta.pipeline.stretchPerChange = msPerChange;
      x.meta.chunks.unfoldedReferences = o.unfolded ?? 0;
      x.meta.chunks.freedShare = o.freedShare ?? 0.5;
      x.s.changed();
      return x.meta.commits > 0;
    } finally {
      x.s.stop();
    }
  };
  // Random writes, ~0.25 us a change: 131,072 changes are a ~33 ms stretch.
  assert.equal(await commits(1, 131_000, 0.00025), false);
  assert.equal(await commits(1, 131_100, 0.00025), true);
  // Dearer changes: 40 ms is 80,000 changes at 0.5 us.
  assert.equal(await commits(1, 79_000, 0.0005), false);
  assert.equal(await commits(1, 81_000, 0.0005), true);
  // Never fewer than one batch, however dear.
  assert.equal(await commits(1, 32_000, 0.01), false);
  assert.equal(await commits(1, 33_000, 0.01), true);
  // Writes filling fresh space (the last commit freed no chunk): one batch.
  assert.equal(await commits(1, 33_000, 0.00025, { freedShare: 0 }), true);
  // No commit measured yet: one batch.
  assert.equal(await commits(1, 32_000, 0), false);
  assert.equal(await commits(1, 33_000, 0), true);
  // Blind references waiting to be folded (a clone's first writes): 4,096, whoever is busy.
  for (const busy of [0, 1, 2]) {
    assert.equal(await commits(busy, 4_000, 0.00025, { unfolded: 10 }), false);
    assert.equal(await commits(busy, 4_100, 0.00025, { unfolded: 10 }), true);
  }
  // Two volumes busy: one batch, even for cheap changes.
  assert.equal(await commits(2, 32_000, 0.00025), false);
  assert.equal(await commits(2, 33_000, 0.00025), true);
  // One volume busy that only reads (the changes are not its own, a reclaim's say): one batch.
  assert.equal(await commits(1, 32_000, 0.00025, { reading: true }), false);
  assert.equal(await commits(1, 33_000, 0.00025, { reading: true }), true);
  // None busy (background work alone): up to four.
  assert.equal(await commits(0, 131_000, 0.00025), false);
  assert.equal(await commits(0, 131_100, 0.00025), true);
});
