// The dedup indexer is told of new log entries and of stale index entries from inside other work: a
// write's logging, and space reclaim releasing freed chunks in its few-millisecond slices. Past its
// bounds it must start on a turn of its own; started inside the caller, its first slice ran in that
// caller's turn (a delete's reclaim slice and a sweep slice back to back, which reads on other
// volumes waited behind). What must hold: kick() does no indexing work itself, the work starts on
// the next turn, and a stopped indexer starts nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import { DEDUP_DATABASES, DedupIndex } from '../../server/dedup/dedup-index.js';
import { DedupIndexer } from '../../server/dedup/dedup-indexer.js';
import { MetaStore } from '../../server/meta/meta-store.js';

test('past its bounds the indexer starts on the next turn, not inside the caller that told it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-indexer-kick-'));
  const meta = MetaStore.open(dir, { chunkSize: 4096, create: true, databases: [...DEDUP_DATABASES] });
  const dedup = DedupIndex.open(meta, {}, false);
  const indexer = new DedupIndexer(meta, dedup, undefined, { staleMax: 10 });
  try {
    let slices = 0;
    const sweepSlice = dedup.sweepSlice.bind(dedup);
    dedup.sweepSlice = (...a: Parameters<typeof sweepSlice>) => {
      slices++;
      return sweepSlice(...a);
    };
    meta.superblock.staleIndexEntries = 5000; // far past staleMax: the sweep presses
    indexer.kick();
    indexer.kick();
    assert.equal(slices, 0, 'kick() swept nothing in the caller’s turn');
    await turn();
    assert.ok(slices >= 1, 'the sweep started on the next turn');
    indexer.stop();
    const after = slices;
    indexer.kick();
    await turn();
    await turn();
    assert.equal(slices, after, 'a stopped indexer starts nothing');
  } finally {
    indexer.stop();
    dedup.close();
    await meta.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
