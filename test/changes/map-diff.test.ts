// The tree diff (server/meta/map-diff.ts) against the obvious answer: look every chunk up in both
// maps. Random histories of writes, TRIMs, zeroes, snapshots and growth, compared with nodes
// uncommitted, being committed and committed; sub-ranges and early stops; and the cost claim —
// the nodes read grow with what changed, not with the map's size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetaStore } from '../../server/meta/meta-store.js';
import { growLevels, lookup, releaseRange, setEntry, shareRoot } from '../../server/meta/map-tree.js';
import { levelsFor, ZERO_CHUNK } from '../../server/meta/map-node.js';
import { diffMaps } from '../../server/meta/map-diff.js';
import type { RootRecord, VolumeRecord } from '../../server/meta/volume-records.js';
import { ChangeTracker } from '../../server/volume/changes.js';
import { VolumeState } from '../../server/volume/volume-state.js';

function withMeta(fn: (meta: MetaStore) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-map-diff-'));
    const meta = MetaStore.open(dir, { chunkSize: 4096 });
    try {
      await fn(meta);
    } finally {
      await meta.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const FP = Buffer.alloc(64);
let nextSlot = 2;
/** A fresh stored chunk (the metadata only: its bytes are never read here). */
function newSlot(meta: MetaStore): number {
  const s = nextSlot++;
  meta.chunks.add(s, 0, FP, 0);
  return s;
}

function newMap(chunks: number): RootRecord {
  return { root: 0, levels: levelsFor(chunks), size: chunks * 4096, mapped: 0, createdAt: '' };
}

/** Runs of differing chunks by looking up every chunk (a hole and ZERO_CHUNK read the same). */
function bruteForce(meta: MetaStore, a: RootRecord, b: RootRecord, from: number, to: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let ci = from; ci < to; ci++) {
    const x = lookup(meta, a, ci);
    const y = lookup(meta, b, ci);
    if (x === y || (x <= ZERO_CHUNK && y <= ZERO_CHUNK)) continue;
    const last = out[out.length - 1];
    if (last && last[1] === ci) last[1]++;
    else out.push([ci, ci + 1]);
  }
  return out;
}

function diff(meta: MetaStore, a: RootRecord, b: RootRecord, from: number, to: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  diffMaps(meta, a, b, from, to, (f, e) => void out.push([f, e]));
  return out;
}

/** Random changes to `r`: writes (some putting back an old value), TRIMs, zeroes. */
function scribble(meta: MetaStore, r: RootRecord, chunks: number, n: number, rand: () => number, reuse: number[]): void {
  for (let k = 0; k < n; k++) {
    const ci = Math.floor(rand() * chunks);
    const op = rand();
    if (op < 0.6) {
      // Now and then a chunk already mapped somewhere (dedup): equal entries must compare equal.
      const old = reuse.length > 0 && rand() < 0.2 ? reuse[Math.floor(rand() * reuse.length)] : 0;
      let v: number;
      if (old !== 0 && meta.chunks.refCount(old) > 0) {
        meta.chunks.inc(old);
        v = old;
      } else reuse.push((v = newSlot(meta)));
      setEntry(meta, r, ci, v);
    } else if (op < 0.8) releaseRange(meta, r, ci, ci + 1 + Math.floor(rand() * 600));
    else setEntry(meta, r, ci, ZERO_CHUNK);
  }
}

function lcg(seed: number): () => number {
  let x = seed;
  return () => ((x = (x * 48271) % 2147483647), x / 2147483647);
}

test(
  'the diff equals a chunk-by-chunk comparison, committed or not, over sub-ranges and across growth',
  withMeta(async (meta) => {
    for (const seed of [1, 2, 3, 4]) {
      const rand = lcg(seed);
      const chunks = 70_000 + seed * 1000; // three levels: holes, shared and private subtrees at each
      const v = newMap(chunks);
      const reuse: number[] = [];
      scribble(meta, v, chunks, 3000, rand, reuse);
      if (seed % 2) await meta.commit();
      const s1 = shareRoot(meta, v);
      scribble(meta, v, chunks, 400, rand, reuse);
      // Half the histories grow the volume to four levels, with writes past the old end.
      let size = chunks;
      if (seed > 2) {
        size = 20_000_000;
        growLevels(meta, v, size);
        v.size = size * 4096;
        scribble(meta, v, size, 50, rand, reuse);
      }
      const committing = seed === 4 ? meta.commit() : null; // nodes read while their commit is in flight
      for (const [from, to] of [
        [0, size],
        [12_345, 54_321],
        [65_536, 65_536 * 2 + 7],
        [size - 300, size],
      ]) {
        assert.deepEqual(diff(meta, s1, v, from, to), bruteForce(meta, s1, v, from, to), `seed ${seed} [${from}, ${to})`);
        assert.deepEqual(diff(meta, v, s1, from, to), bruteForce(meta, v, s1, from, to), `seed ${seed} reversed`);
      }
      await committing;
      await meta.commit();
      assert.deepEqual(diff(meta, s1, v, 0, size), bruteForce(meta, s1, v, 0, size), `seed ${seed} committed`);
      // Nodes read by that diff are kept; changed in place now (they are private to v), the next
      // diff must see them as they are.
      scribble(meta, v, Math.min(size, chunks), 300, rand, reuse);
      assert.deepEqual(diff(meta, s1, v, 0, size), bruteForce(meta, s1, v, 0, size), `seed ${seed} changed after a diff`);
      await meta.commit();
      assert.deepEqual(diff(meta, s1, v, 0, size), bruteForce(meta, s1, v, 0, size), `seed ${seed} changed after a diff, committed`);
      assert.deepEqual(diff(meta, s1, shareRoot(meta, s1), 0, size), [], 'a map and its snapshot: no difference');
    }
  }),
);

test(
  'the diff stops when asked, after the run that asked',
  withMeta(async (meta) => {
    const v = newMap(10_000);
    const s = shareRoot(meta, v);
    for (const ci of [5, 6, 7, 100, 2000, 9999]) setEntry(meta, v, ci, newSlot(meta));
    const seen: Array<[number, number]> = [];
    diffMaps(meta, s, v, 0, 10_000, (f, e) => {
      seen.push([f, e]);
      return seen.length < 2;
    });
    assert.deepEqual(seen, [
      [5, 8],
      [100, 101],
    ]);
  }),
);

test(
  'a diff that pauses after a budget of nodes and goes on from there finds the same runs',
  withMeta(async (meta) => {
    const rand = lcg(11);
    const chunks = 300_000;
    const v = newMap(chunks);
    scribble(meta, v, chunks, 2000, rand, []);
    const s = shareRoot(meta, v);
    scribble(meta, v, chunks, 500, rand, []);
    const whole = diff(meta, s, v, 0, chunks);
    for (const budget of [1, 3, 50]) {
      const runs: Array<[number, number]> = [];
      let pauses = 0;
      for (let ci = 0; ci < chunks; pauses++) {
        ci = diffMaps(meta, s, v, ci, chunks, (f, e) => {
          const last = runs[runs.length - 1];
          if (last && last[1] === f) last[1] = e; // a run may go on after a pause
          else runs.push([f, e]);
        }, budget);
      }
      assert.deepEqual(runs, whole, `budget ${budget}`);
      assert.ok(pauses > 1, `budget ${budget} paused (${pauses} slices)`);
    }
  }),
);

test(
  'a change list whose snapshot is deleted while the walk yields the event loop fails, rather than reading freed nodes',
  withMeta(async (meta) => {
    const chunks = 2 ** 24;
    const rec: VolumeRecord = { ...newMap(chunks), name: 'v', domain: 'default', origin: null, snapshots: [] };
    const st = new VolumeState(rec, 0, () => {});
    rec.snapshots.push({ ...shareRoot(meta, rec), name: 's1' });
    for (let k = 0; k < 5000; k++) setEntry(meta, rec, k * 3000, newSlot(meta)); // 5,000 leaves: more than a slice
    rec.snapshots.push({ ...shareRoot(meta, rec), name: 's2' });
    await meta.commit();
    const tracker = new ChangeTracker(meta, new Map([['v', st]]));
    const whole = await tracker.list(tracker.base(st, rec.snapshots[1], 's1'), st, rec.snapshots[1], 0, 65536);
    assert.equal(whole.extents.length, 5000);
    const listing = tracker.list(tracker.base(st, rec.snapshots[1], 's1'), st, rec.snapshots[1], 0, 65536);
    rec.snapshots.shift(); // what DELETE .../snapshots/s1 does to the record, while the walk waits
    await assert.rejects(listing, (e: any) => e.code === 'snapshot_not_found' && /s1 was deleted/.test(e.message));
  }),
);

test(
  'what a diff reads grows with the changes, not with the size of the map',
  withMeta(async (meta) => {
    const reads = (a: RootRecord, b: RootRecord, chunks: number) => {
      const real = meta.nodes.entriesOf.bind(meta.nodes);
      let n = 0;
      meta.nodes.entriesOf = (id, idx, val) => (n++, real(id, idx, val));
      try {
        diffMaps(meta, a, b, 0, chunks, () => {});
      } finally {
        meta.nodes.entriesOf = real;
      }
      return n;
    };
    const counts: number[] = [];
    for (const chunks of [2 ** 16, 2 ** 28]) {
      // The same history on a small and a huge map: 2,000 chunks written, a snapshot, 100 more.
      const rand = lcg(7);
      const v = newMap(chunks);
      for (let k = 0; k < 2000; k++) setEntry(meta, v, Math.floor(rand() * 2 ** 16) * (chunks / 2 ** 16), newSlot(meta));
      const s = shareRoot(meta, v);
      for (let k = 0; k < 100; k++) setEntry(meta, v, Math.floor(rand() * 2 ** 16) * (chunks / 2 ** 16), newSlot(meta));
      await meta.commit();
      counts.push(reads(s, v, chunks));
    }
    // 100 changed chunks touch at most 100 nodes per level on either side; 4,096 times the size
    // adds two levels, not 4,096 times the reads.
    assert.ok(counts[1] <= 2 * (100 * 4 + 2), `reads: ${counts.join(' vs ')}`);
    assert.ok(counts[1] < 3 * counts[0], `reads: ${counts.join(' vs ')}`);
  }),
);
