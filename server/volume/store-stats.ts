// The figures of GET /v1/stats: space and the dedup ratio, the long operations' progress, the cache
// and the store. Physical bytes and the dedup ratio are the store's, whoever asks: a chunk belongs to
// no one volume.
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { DedupIndex } from '../dedup/dedup-index.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { RateMeter } from '../rate-meter.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { FsckStatus, Stats, VolumeScope } from './control.js';
import type { FlushJournalFigures } from './flush-journal.js';
import type { VolumeState } from './volume-state.js';

export interface StatsSources {
  meta: MetaStore;
  states: Iterable<VolumeState>;
  dedup: DedupIndex;
  cache: ChunkCache;
  store: ChunkStore;
  /** Chunk references space reclaim released. */
  reclaim: RateMeter;
  /** Dedup-log entries taken into the index. */
  indexed: RateMeter;
  swept: RateMeter;
  fsck: FsckStatus;
  journal: FlushJournalFigures | null;
}

export function storeStats(s: StatsSources, scope?: VolumeScope): Stats {
  const cs = s.meta.chunkSize;
  let mapped = 0; // in scope
  let allMapped = 0; // for the dedup ratio, over every volume
  let snapshots = 0;
  let volumes = 0;
  for (const st of s.states) {
    let m = st.record.mapped;
    for (const snap of st.record.snapshots) m += snap.mapped;
    allMapped += m;
    if (scope && (st.record.tenant ?? null) !== scope.tenant) continue;
    mapped += m;
    volumes++;
    snapshots += st.record.snapshots.length;
  }
  const physical = s.meta.liveChunks * cs;
  return {
    logicalBytes: mapped * cs,
    physicalBytes: physical,
    dedupRatio: physical === 0 ? 1 : (allMapped * cs) / physical,
    chunkSize: cs,
    chunks: s.meta.liveChunks,
    volumes,
    snapshots,
    dedupHits: s.dedup.hits,
    dedupLogEntries: s.dedup.log.size,
    reclaimPendingNodes: s.meta.nodes.reclaimBacklog,
    reclaim: {
      pendingNodes: s.meta.nodes.reclaimBacklog,
      pendingBytes: s.meta.nodes.reclaimPendingChunks * cs,
      releasedBytes: s.reclaim.total * cs,
      bytesPerSecond: Math.round(s.reclaim.perSecond() * cs),
    },
    dedupIndexing: {
      logEntries: s.dedup.log.size,
      indexedEntries: s.indexed.total,
      entriesPerSecond: Math.round(s.indexed.perSecond()),
      staleEntries: s.dedup.staleEntries,
      sweptEntries: s.swept.total,
      freedKeys: s.dedup.freedKeys,
    },
    metadataCommits: { pendingChanges: s.meta.pendingChanges, largestChanges: s.meta.pipeline.largestCommit, longestStretchMs: Math.round(s.meta.pipeline.longestStretchMs * 10) / 10 },
    fsck: s.fsck,
    flushJournal: s.journal && { ...s.journal },
    cache: s.cache.stats(),
    store: s.store.stats(),
  };
}
