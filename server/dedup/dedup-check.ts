// The dedup index's part of the consistency check: every committed index entry names a live
// chunk whose record carries that key (domain and fingerprint). A stale entry would map new
// writes to other bytes (invariant 6), so it is an error, not a leak.
import type { FsckErrors, FsckProgress } from '../meta/fsck.js';
import type { ChunkRecords } from '../meta/chunk-records.js';
import type { Slicer } from '../meta/pacing.js';
import type { DedupIndex } from './dedup-index.js';

export async function checkDedupIndex(dedup: DedupIndex, chunks: ChunkRecords, errors: FsckErrors, progress: FsckProgress, slicer: Slicer): Promise<void> {
  progress.phase = 'index';
  for (const [key, slot] of dedup.index.all()) {
    progress.checkedIndexEntries++;
    const rec = chunks.get(slot);
    if (!rec || rec.refs <= 0) errors.add(`the fingerprint index points at chunk ${slot}, which is not live`);
    else if (!chunks.hasKey(slot, key, 0)) errors.add(`the fingerprint index entry for chunk ${slot} does not match its record`);
    const pause = slicer.tick();
    if (pause) await pause;
  }
}
