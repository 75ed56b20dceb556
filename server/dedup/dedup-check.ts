// The dedup index's part of the consistency check. An index entry may be stale by design: a freed
// chunk leaves its entry behind until the sweep, and every hit is checked against the chunk's record
// (DedupIndex.lookup), so a stale entry never maps a write to other bytes (invariant 6). What must
// hold is that the stale count the sweep goes by is not below what the index holds: else a pass
// could end with entries it never meant to find, and the figure the metrics give would be wrong.
import type { FsckErrors, FsckProgress } from '../meta/fsck.js';
import type { ChunkRecords } from '../meta/chunk-records.js';
import type { Slicer } from '../meta/pacing.js';
import type { DedupIndex } from './dedup-index.js';

export async function checkDedupIndex(dedup: DedupIndex, chunks: ChunkRecords, errors: FsckErrors, progress: FsckProgress, slicer: Slicer): Promise<void> {
  progress.phase = 'index';
  // The sweep may end a pass while the check runs (it lowers the count before its removals commit):
  // the bound is the larger of the counts before and after.
  const before = dedup.staleEntries;
  let stale = 0;
  for (const [key, slot] of dedup.index.all()) {
    progress.checkedIndexEntries++;
    if (!chunks.holdsKey(slot, key, 0)) stale++;
    const pause = slicer.tick();
    if (pause) await pause;
  }
  const bound = Math.max(before, dedup.staleEntries);
  if (stale > bound) errors.add(`the fingerprint index holds ${stale} stale entries, more than the ${bound} the superblock counts (the sweep would not look for them all)`);
}
