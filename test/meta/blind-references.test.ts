// References added without reading the chunk's record (ChunkRecords.inc: a copied leaf's 256 chunks, a
// shared range) are folded into the record later, by a release or lookup, or by the commit. A refcount
// read at any moment must count each of them exactly once: before the commit writes them, while LMDB
// already holds them but the commit has not settled (a probe in the same transaction looks then), and
// after; and releases and more blind references in between must land on the right totals, also
// across a reopen.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Database } from 'lmdb';
import { MetaStore } from '../../server/meta/meta-store.js';
import type { CommitPart, TxnWriter } from '../../server/meta/commit-pipeline.js';

/** A commit part that looks at refcounts when its transaction is durable, before the commit settles. */
class Probe implements CommitPart<true> {
  seen: number[][] = [];
  armed = false;
  constructor(
    private readonly meta: MetaStore,
    private readonly db: Database,
    private readonly slots: number[],
  ) {}
  take(): true | null {
    return this.armed ? true : null;
  }
  write(_t: true, w: TxnWriter): void {
    w.put('probe', this.db, 'probe', Date.now());
    // The same transaction's promise: its callbacks run before the pipeline's (registered later).
    void w.settled[w.settled.length - 1]!.then(() => this.seen.push(this.slots.map((s) => this.meta.chunks.refCount(s))));
  }
  settle(): void {}
}

/** Runs fn on a fresh directory for a metadata store, removed afterwards. */
async function inTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-blind-refs-'));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('blind references count once before, while and after the commit that writes them', () =>
  inTempDir(async (dir) => {
    const fp = Buffer.alloc(32, 7);
    let meta = MetaStore.open(dir, { chunkSize: 4096, create: true });
    const [a, b, c] = [10, 11, 12];
    for (const s of [a, b, c]) meta.chunks.add(s, 0, fp, 0);
    await meta.commit();
    const probe = new Probe(meta, meta.openDb({ name: 'probe' }), [a, b, c]);
    meta.pipeline.add(probe);
    probe.armed = true;
    const refs = () => [a, b, c].map((s) => meta.chunks.refCount(s));

    // Blind: a twice, b once; c's record is in memory (a release folded it), so its reference lands there.
    meta.chunks.inc(a);
    meta.chunks.inc(a);
    meta.chunks.inc(b);
    meta.chunks.inc(c);
    meta.chunks.dec(c);
    meta.chunks.inc(c);
    assert.deepEqual([meta.chunks.refsOf(a), meta.chunks.refsOf(b)], [3, 2], 'a walk reads blind references without folding them');
    // The commit held in its data sync, after it took the changes: more blind references and a release meanwhile.
    let taken!: () => void;
    let release!: () => void;
    const tookChanges = new Promise<void>((r) => (taken = r));
    meta.pipeline.syncData = () => {
      taken();
      return new Promise<void>((r) => (release = r));
    };
    const committing = meta.commit();
    await tookChanges;
    meta.pipeline.syncData = () => Promise.resolve();
    assert.deepEqual(refs(), [3, 2, 2], 'the commit in flight holds them as whole records');
    meta.chunks.inc(b);
    meta.chunks.dec(a);
    assert.deepEqual(refs(), [2, 3, 2]);
    release();
    await committing;
    assert.deepEqual(probe.seen, [[2, 3, 2]], 'counted once while LMDB held the commit before it settled');
    assert.deepEqual(refs(), [2, 3, 2]);
    await meta.commit();
    assert.deepEqual(probe.seen[1], [2, 3, 2]);
    await meta.close();

    meta = MetaStore.open(dir, { chunkSize: 4096 });
    assert.deepEqual([a, b, c].map((s) => meta.chunks.refCount(s)), [2, 3, 2], 'the same after a reopen');
    // Released down to zero: freed once, whatever mix of blind and read references made the count.
    const freed: number[] = [];
    meta.chunks.onFreed((s) => freed.push(s));
    meta.chunks.inc(a);
    for (let i = 0; i < 3; i++) meta.chunks.dec(a);
    assert.deepEqual(freed, [a]);
    assert.equal(meta.chunks.refCount(a), 0);
    await meta.close();
  }));

test('a blind reference to a chunk that is gone is dropped and counted when the commit takes it', () =>
  inTempDir(async (dir) => {
    const meta = MetaStore.open(dir, { chunkSize: 4096, create: true });
    meta.chunks.add(5, 0, Buffer.alloc(32, 1), 0);
    meta.chunks.inc(99); // no chunk 99: a map entry pointing at nothing (corrupt metadata)
    await meta.commit();
    assert.equal(meta.chunks.lostReferences, 1);
    assert.equal(meta.chunks.refCount(99), 0, 'no record made up for it');
    assert.equal(meta.chunks.refCount(5), 1, 'the rest of the commit landed');
    await meta.close();
  }));

test('blind references left when a store closes without a last commit are not read after it closed', () =>
  inTempDir(async (dir) => {
    const meta = MetaStore.open(dir, { chunkSize: 4096, create: true });
    meta.chunks.add(5, 0, Buffer.alloc(32, 1), 0);
    await meta.commit();
    meta.chunks.inc(5); // its fold is scheduled for the next turn
    await meta.discard(); // a read-only check's close: no commit takes it
    await new Promise((r) => setTimeout(r, 20)); // an uncaught error from a late read would end the test run here
  }));
