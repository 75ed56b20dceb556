// The slot allocator's durable free list against a model, over thousands of random steps: after
// every commit the free list in LMDB holds exactly the slots free in memory (reusable now, or waiting
// for older readers), each once; a slot handed out is never on it; and a reopened store hands out
// exactly those slots. (A commit once skipped the stack page of a slot popped last, and committed a
// chunk for a slot the free list still listed: the next start would have handed it out twice.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetaStore } from '../../server/meta/meta-store.js';

const dir = mkdtempSync(join(tmpdir(), 'shoal-free-list-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A seeded generator (mulberry32), so a failure can be replayed. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function durableFree(meta: MetaStore): number[] {
  return [...meta.slots.allFree()].sort((a, b) => a - b);
}

test('the durable free list always equals the free slots, through random allocations, frees, failed writes, readers and restarts', async () => {
  const seed = Number(process.env.FREE_LIST_SEED ?? 12345);
  const rand = rng(seed);
  let meta = MetaStore.open(dir, { chunkSize: 4096 });
  /** Slots handed out and in use (the model's live chunks). */
  const used = new Set<number>();
  /** Slots freed, not yet durable: free only after the next commit. */
  let freedNow: number[] = [];
  /** Slots whose free is durable: on the free list, reusable or waiting for readers. */
  const free = new Set<number>();
  const readers: number[] = [];
  /** Handed out since the last commit, and which of them came off the durable free list. */
  let allocNow: number[] = [];
  let fromFreeNow: number[] = [];
  for (let step = 0; step < 6000; step++) {
    const r = rand();
    if (r < 0.35) {
      // A write: a few slots, one of them sometimes given back (its write failed).
      const n = 1 + Math.floor(rand() * 40);
      const got: number[] = [];
      for (let i = 0; i < n; i++) {
        const s = meta.slots.alloc();
        assert.ok(!used.has(s), `step ${step} (seed ${seed}): slot ${s} handed out while in use`);
        assert.ok(!freedNow.includes(s), `step ${step}: slot ${s} handed out before its free was committed`);
        if (free.delete(s)) fromFreeNow.push(s);
        allocNow.push(s);
        used.add(s);
        got.push(s);
      }
      if (rand() < 0.1) {
        const s = got[Math.floor(rand() * got.length)];
        used.delete(s);
        meta.slots.releaseUnused(s);
        // Given back: reusable at once if it came off the free list in this window, else freed.
        if (durableFree(meta).includes(s)) free.add(s);
        else freedNow.push(s);
      }
    } else if (r < 0.6 && used.size > 0) {
      // Frees: a run of live slots (an overwrite, a delete).
      const live = [...used];
      const n = 1 + Math.floor(rand() * Math.min(600, live.length));
      for (let i = 0; i < n; i++) {
        const s = live[Math.floor(rand() * live.length)];
        if (!used.delete(s)) continue;
        meta.slots.free(s);
        freedNow.push(s);
      }
    } else if (r < 0.7) {
      readers.push(meta.slots.enterRead());
    } else if (r < 0.8 && readers.length > 0) {
      meta.slots.exitRead(readers.splice(Math.floor(rand() * readers.length), 1)[0]);
      meta.slots.releaseReusable();
    } else if (r < 0.97) {
      meta.pipeline.changed();
      await meta.commit();
      for (const s of freedNow) free.add(s);
      freedNow = [];
      allocNow = [];
      fromFreeNow = [];
      const onDisk = durableFree(meta);
      assert.equal(new Set(onDisk).size, onDisk.length, `step ${step} (seed ${seed}): a slot is on the free list twice`);
      assert.deepEqual(onDisk, [...free].sort((a, b) => a - b), `step ${step} (seed ${seed}): the durable free list differs from the free slots`);
    } else {
      const stop = rand() < 0.5;
      if (stop) {
        // A stop: the last commit takes what is pending.
        await meta.close();
        for (const s of freedNow) free.add(s);
      } else {
        // kill -9: what the last commit left. Frees since are undone (their chunks' records stay);
        // slots handed out since are free again if they came off the free list, else never existed.
        await meta.discard();
        for (const s of freedNow) used.add(s);
        for (const s of allocNow) used.delete(s);
        for (const s of fromFreeNow) free.add(s);
      }
      freedNow = [];
      allocNow = [];
      fromFreeNow = [];
      meta = MetaStore.open(dir, { chunkSize: 4096 });
      readers.length = 0;
      {
        const got = durableFree(meta);
        const want = [...free].sort((a, b) => a - b);
        const extra = got.filter((x) => !free.has(x));
        const missing = want.filter((x) => !got.includes(x));
        assert.deepEqual(got, want, `step ${step} (seed ${seed}): after a ${stop ? 'stop' : 'kill -9'}; on the list but not free: ${extra.slice(0, 10)}; free but not on it: ${missing.slice(0, 10)}`);
      }
      // Every free slot is handed out before a new one.
      const n = free.size;
      const got = new Set<number>();
      for (let i = 0; i < n; i++) got.add(meta.slots.alloc());
      assert.deepEqual([...got].sort((a, b) => a - b), [...free].sort((a, b) => a - b), `step ${step}: a restarted store hands out exactly its free slots`);
      for (const s of got) used.add(s);
      allocNow.push(...got);
      fromFreeNow.push(...got);
      free.clear();
    }
  }
  await meta.close();
});

test('a big group of freed slots goes onto the stack a bounded part at a time, and a restart mid-way finds each slot once', async () => {
  const d = mkdtempSync(join(tmpdir(), 'shoal-free-group-'));
  try {
    let meta = MetaStore.open(d, { chunkSize: 4096 });
    const n = 20_000;
    const slots = meta.slots.allocMany(n);
    const sorted = [...slots].sort((a, b) => a - b);
    meta.pipeline.changed();
    await meta.commit();
    // A reader of before the frees holds them back: the whole delete waits as one group.
    const g = meta.slots.enterRead();
    for (const s of slots) meta.slots.free(s);
    await meta.commit();
    assert.equal(meta.slots.waitingSlots, n);
    meta.slots.exitRead(g);
    meta.slots.releaseReusable();
    const left = meta.slots.waitingSlots;
    assert.ok(left > 0 && left < n, `one call moves a bounded part, not all ${n} (left: ${left})`);
    meta.slots.releaseReusable();
    assert.ok(meta.slots.waitingSlots < left, 'the next call goes on');
    // The parts moved lose their group records with this commit; kill -9 then, mid-group.
    meta.pipeline.changed();
    await meta.commit();
    assert.deepEqual(durableFree(meta), sorted, 'every freed slot is on the durable list once');
    await meta.discard();
    meta = MetaStore.open(d, { chunkSize: 4096 });
    assert.deepEqual(durableFree(meta), sorted, 'after kill -9 mid-group: each freed slot once');
    meta.pipeline.changed();
    await meta.commit();
    await meta.close();
    meta = MetaStore.open(d, { chunkSize: 4096 });
    assert.deepEqual(durableFree(meta), sorted, "after the group's last parts moved and a stop: each once");
    const again = new Set<number>();
    for (let i = 0; i < n; i++) again.add(meta.slots.alloc());
    assert.deepEqual([...again].sort((a, b) => a - b), sorted, 'exactly the freed slots are handed out again');
    await meta.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('an empty stack takes waiting frees before it grows the store', async () => {
  const d = mkdtempSync(join(tmpdir(), 'shoal-free-alloc-'));
  try {
    const meta = MetaStore.open(d, { chunkSize: 4096 });
    const slots = meta.slots.allocMany(10_000);
    meta.pipeline.changed();
    await meta.commit();
    const g = meta.slots.enterRead();
    for (const s of slots) meta.slots.free(s);
    await meta.commit();
    meta.slots.exitRead(g);
    // No read or commit since the reader left: alloc() itself moves the waiting frees.
    const got = new Set(meta.slots.allocMany(10_000));
    assert.equal(got.size, 10_000);
    const freed = new Set(slots);
    for (const s of got) assert.ok(freed.has(s), `slot ${s} is a freed one, not a new one`);
    await meta.close();
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});
