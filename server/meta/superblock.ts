// The superblock: one record holding the store's counters and allocation cursors. Written with
// every commit (first and last in the transaction), so a commit is whole exactly when its
// superblock is. The parts of the metadata each own some of its fields and mark it changed.
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import { FIRST_SLOT } from './map-node.js';

/**
 * 2: the free list as pages and groups (slot-allocator.ts) and the flush journal (volume/flush-journal.ts).
 * A daemon of before would read the pages' keys as slots and ignore the journal, so it must refuse the
 * store.
 * 3: fingerprint index entries may be stale, left by freed chunks until the sweep (dedup/dedup-index.ts).
 * A daemon of before trusts every index hit, and would map writes to the bytes a reused slot holds now.
 * 4: chunk records may be kept in groups of slots (chunkRecordGroup; meta/chunk-record-layout.ts), as
 * stores made by ac854a0 and 47d9ae3 keep them. A daemon of before would read a group's key as a slot.
 * This code opens versions 1 to 3 too, and a daemon's first start upgrades them (MetaStore.open).
 */
export const META_VERSION = 4;

export interface Superblock {
  version: number;
  chunkSize: number;
  /** Next map node id (node-store.ts). */
  nextNode: number;
  /** Next never-used chunk slot (slot-allocator.ts). */
  nextSlot: number;
  /** Dedup domain name → id (volume records name their domain; chunk records carry the id). */
  domains: Record<string, number>;
  /** Writes mapped to a chunk already stored (dedup). */
  dedupHits: number;
  /** Chunk records with at least one reference (chunk-records.ts). */
  liveChunks: number;
  /** Slots whose chunk records share one key (chunk-record-layout.ts); absent: one each (new stores too). */
  chunkRecordGroup?: number;
  /** Node ids whose refcount reached zero and whose children are still to be released (space-reclaim.ts). */
  gcQueue: number[];
  /**
   * Chunk references under the queued nodes, as far as known: the mapped count of each map or
   * subtree when it was queued, less the references released since (space-reclaim.ts). An upper
   * bound: a subtree still shared elsewhere is found only when reclaim reaches it. 0 once the queue empties.
   */
  gcPendingChunks?: number;
  /** Sequence number of the next dedup-log record (dedup/dedup-log.ts). */
  fpLogNext?: number;
  /**
   * Fingerprint index entries left behind by freed chunks since the sweep's pass began, as far as
   * known (dedup/dedup-index.ts): an upper bound, since a chunk stored unindexed counts too.
   */
  staleIndexEntries?: number;
  /** Id of the last intent record (intent-records.ts). */
  nextIntent?: number;
  /** Id of the last group of freed slots (slot-allocator.ts). */
  freeGroupNext?: number;
  /** The last operation of the flush journal this commit covers (volume/flush-journal.ts). */
  journalApplied?: number;
}

/** Reads the superblock, or makes a new one for an empty store. */
export function loadSuperblock(main: Database, dir: string, chunkSize: number, create: boolean, hasRecords: () => boolean): Superblock {
  let sb: Superblock | undefined;
  try {
    sb = main.get('superblock');
  } catch (e) {
    throw new ShoalError('corrupt_metadata', `the metadata superblock cannot be read: ${(e as Error).message}`);
  }
  if (!sb && !create) throw new ShoalError('corrupt_metadata', `${dir} holds no Shoal metadata superblock`);
  if (!sb && hasRecords())
    throw new ShoalError('corrupt_metadata', `the metadata in ${dir} has records but no superblock: it is damaged (refusing to start over on top of it)`);
  if (!sb) {
    sb = { version: META_VERSION, chunkSize, nextNode: 1, nextSlot: FIRST_SLOT, domains: { default: 1 }, dedupHits: 0, liveChunks: 0, gcQueue: [] };
    main.putSync('superblock', sb);
    return sb;
  }
  if (typeof sb !== 'object' || !(Number.isInteger(sb.version) && sb.version >= 1 && sb.version <= META_VERSION) || !Number.isInteger(sb.chunkSize) || !Number.isInteger(sb.nextSlot) || !Number.isInteger(sb.nextNode))
    throw new ShoalError('corrupt_metadata', `the metadata superblock is damaged or of an unknown version (${JSON.stringify(sb)?.slice(0, 200)})`);
  sb.gcQueue ??= [];
  return sb;
}
