// The sweep of stale index entries goes through the index in key order, a slice at a time, checking
// each entry against its chunk's record. A slice is bounded by time as well as by count: where the
// records are cold (a big volume being deleted) a slice of 2,048 checks held the event loop 30-40 ms,
// which reads on other volumes waited behind. What must hold: a slice stops once its time is up, the
// next one goes on from where it stopped, and a pass still looks at every entry exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEDUP_DATABASES } from '../../server/dedup/dedup-index.js';
import { FingerprintIndex } from '../../server/dedup/fingerprint-index.js';
import { KEY_BYTES } from '../../server/dedup/fingerprinter.js';
import { MetaStore } from '../../server/meta/meta-store.js';

const ENTRIES = 3000;

function keyOf(i: number): Buffer {
  const k = Buffer.alloc(KEY_BYTES);
  k.writeUInt32BE(i * 2654435761 >>> 0, 0); // spread over the key space, as hashes are
  k.writeUInt32BE(i, 4);
  return k;
}

test('a sweep slice stops when its time is up, and the pass still sees every entry once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-sweep-'));
  const meta = MetaStore.open(dir, { chunkSize: 4096, create: true, databases: [...DEDUP_DATABASES] });
  try {
    const index = new FingerprintIndex(meta.openDb(DEDUP_DATABASES[0]), meta.pipeline, ENTRIES);
    meta.pipeline.add(index);
    for (let i = 0; i < ENTRIES; i++) index.put(keyOf(i), 0, i);
    await meta.commit();

    const seen = new Map<number, number>();
    const live = (slow: boolean) => (_key: Buffer, slot: number) => {
      seen.set(slot, (seen.get(slot) ?? 0) + 1);
      if (slow) {
        const t = performance.now() + 0.1; // a cold record read
        while (performance.now() < t);
      }
      return slot % 3 !== 0; // every third entry stale
    };

    // A slow check and 5 ms to spend: far fewer than the 2,048 asked for, and not the end of the index.
    const t0 = performance.now();
    const first = index.sweepSlice(2048, live(true), t0 + 5);
    const took = performance.now() - t0;
    assert.ok(first.looked > 0 && first.looked < 200, `looked at ${first.looked} entries in a 5 ms slice of 0.1 ms checks`);
    assert.equal(first.wrapped, false, 'a slice cut by time has not reached the end of the index');
    assert.ok(took < 20, `the slice held ${took.toFixed(1)} ms`);

    // The rest of the pass, unbounded in time: every entry looked at exactly once.
    let slices = 1;
    for (let r = first; !r.wrapped; slices++) r = index.sweepSlice(512, live(false));
    assert.equal(seen.size, ENTRIES, 'every entry was looked at');
    assert.ok([...seen.values()].every((n) => n === 1), 'no entry was looked at twice, none skipped');
    await meta.commit();
    let left = 0;
    for (let i = 0; i < ENTRIES; i++) if (index.hasCommitted(keyOf(i), i)) left++;
    assert.equal(left, ENTRIES - Math.ceil(ENTRIES / 3), `the stale third was removed (${slices} slices)`);
  } finally {
    await meta.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
