// The control surface of the volume layer: what the REST API (and through it the CLI) may ask.
// Every method validates its input and throws ShoalError (server/errors.ts) with a stable code.
import { ShoalError } from '../errors.js';
import type { CacheStats } from '../cache/chunk-cache.js';
import type { FsckProgress, FsckReport } from '../meta/fsck.js';
import type { StoreStats } from '../store/chunk-store.js';
import type { ChangeList, ChangesQuery } from './changes.js';

export type { ChangeList, ChangesQuery, FsckReport };

/** The error for a volume that does not exist, and for one outside a caller's tenant: the two must read alike. */
export function volumeNotFound(name: string): ShoalError {
  return new ShoalError('volume_not_found', `volume ${JSON.stringify(name)} does not exist`);
}

/**
 * Which volumes a caller may see: those of one tenant, or (tenant null) those that have none.
 * Whoever may see every volume passes no scope.
 */
export interface VolumeScope {
  tenant: string | null;
}

export interface VolumeInfo {
  name: string;
  size: number; // bytes
  domain: string; // dedup domain
  tenant: string | null; // who owns it; null: no tenant
  chunkSize: number;
  createdAt: string; // ISO 8601
  origin: { volume: string; snapshot?: string } | null; // set for clones
  snapshots: number;
  connections: number; // open NBD connections (including to its snapshots)
  mappedBytes: number; // bytes that map to a stored chunk (logical, allocated)
  exclusiveBytes: number; // mapped bytes whose chunk nothing else references
  sharedBytes: number; // mapped bytes whose chunk is shared with another map or dedup
  sharingAt: string | null; // when exclusiveBytes and sharedBytes were walked (a list shows a background walk's); null: not yet
  cacheLoads: number; // chunks its reads (and their readahead) loaded from the store: its cache misses
  incomplete: boolean; // created to be filled (shoal import) and not marked complete yet
}

/** A volume's NBD traffic since the daemon started (requests accepted on it and its snapshots): cheap to read. */
export interface VolumeActivity {
  name: string;
  tenant: string | null;
  connections: number;
  reads: number;
  writes: number;
  readBytes: number;
  writtenBytes: number;
}

/** A consistency check's progress: the one running, else the last one's figures. */
export interface FsckStatus extends Omit<FsckProgress, 'phase'> {
  running: boolean;
  phase: FsckProgress['phase'] | null; // null when none is running
  startedAt: string | null;
  lastOk: boolean | null; // the last finished check's verdict; null: none yet
}

export interface SnapshotInfo {
  name: string;
  volume: string;
  size: number;
  createdAt: string;
  exportName: string; // VOLUME@SNAPSHOT
}

export interface RangeRequest {
  source: string; // "volume" or "volume@snapshot"
  sourceOffset: number;
  offset: number;
  length: number;
}

export interface Stats {
  logicalBytes: number; // bytes mapped by the live volumes and snapshots (in the scope, if one is given)
  physicalBytes: number; // bytes of stored chunks
  dedupRatio: number; // logical bytes of every volume / physicalBytes (1 when empty), whatever the scope
  chunkSize: number;
  chunks: number;
  volumes: number;
  snapshots: number;
  dedupHits: number;
  dedupLogEntries: number; // new fingerprints logged, not yet in the on-disk index
  reclaimPendingNodes: number; // map nodes of deleted volumes/snapshots and replaced subtrees not yet reclaimed
  reclaim: {
    pendingNodes: number;
    pendingBytes: number; // estimate, an upper bound: chunk references under the queued nodes × chunk size
    releasedBytes: number; // chunk references released since start × chunk size
    bytesPerSecond: number; // releasedBytes' rate over the last 10 s
  };
  dedupIndexing: {
    logEntries: number;
    indexedEntries: number; // taken into the on-disk index since start
    entriesPerSecond: number; // over the last 10 s
    staleEntries: number; // index entries freed chunks left behind, not swept yet (an estimate, an upper bound)
    sweptEntries: number; // index entries the sweep looked at since start
    freedKeys: number; // freed chunks' keys held in memory so that their bytes written again skip the stale entries (at most 262,143)
  };
  metadataCommits: {
    pendingChanges: number; // changes made since the last commit began
    largestChanges: number; // the most one commit has taken since start (its synchronous stretch grows with them)
    longestStretchMs: number; // the longest synchronous stretch of a commit since start
  };
  fsck: FsckStatus;
  /** FLUSH and FUA through the flush journal (local store); null without one. */
  flushJournal: { records: number; commits: number; replayed: number; onArrival: number; direct: boolean } | null;
  cache: CacheStats;
  store: StoreStats;
}

export interface VolumeControl {
  /** `domain` defaults to the tenant's name (chunks are never shared across tenants unless asked), else "default". */
  createVolume(req: { name: string; size: number; domain?: string; tenant?: string; incomplete?: boolean }): Promise<VolumeInfo>;
  /** The clone takes its origin's tenant and domain. */
  cloneVolume(req: { name: string; from: { volume: string; snapshot?: string } }): Promise<VolumeInfo>;
  listVolumes(): VolumeInfo[];
  getVolume(name: string): VolumeInfo;
  /** A volume's tenant (null: none), without the cost of getVolume; volume_not_found if there is no such volume. */
  tenantOf(name: string): string | null;
  /** Clears the incomplete mark (an import finished). */
  markComplete(name: string): Promise<void>;
  /** Shrinking is refused (shrink_not_allowed, saying what would be lost) unless `shrink`. */
  resizeVolume(name: string, size: number, opts?: { shrink?: boolean }): Promise<VolumeInfo>;
  /**
   * Refuses with volume_busy if clients are connected, unless force: then they are disconnected.
   * Refuses with volume_has_dependents if the volume has snapshots, unless recursive: then they go with it.
   */
  deleteVolume(name: string, opts?: { force?: boolean; recursive?: boolean }): Promise<void>;

  createSnapshot(volume: string, name: string): Promise<SnapshotInfo>;
  listSnapshots(volume: string): SnapshotInfo[];
  deleteSnapshot(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<void>;
  rollback(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<VolumeInfo>;
  /** Byte ranges of the volume (or its snapshot `until`) that may differ from the snapshot `since`, a page at a time. */
  changes(volume: string, query: ChangesQuery): Promise<ChangeList>;

  reflink(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }>;
  dedupe(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }>;

  /** With a scope, the volume counts and logical bytes cover only its volumes; store and cache figures are the daemon's. */
  stats(scope?: VolumeScope): Stats;
  /** Per-volume NBD request counts, without the map walks of listVolumes. */
  activity(): VolumeActivity[];
  fsck(): Promise<FsckReport>;
}
