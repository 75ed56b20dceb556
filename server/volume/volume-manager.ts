// The volume layer's front (DESIGN.md "volumes" row): volumes, snapshots, clones, rollback,
// reflink and dedupe over the metadata, dedup, cache and store layers it is given, offered to the
// REST API (VolumeControl) and, through VolumeExports, to the NBD engine. It knows nothing of
// sockets or HTTP.
import { ShoalError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { RootRecord, VolumeRecord } from '../meta/volume-records.js';
import { dropRoot, growLevels, shareRoot } from '../meta/map-tree.js';
import { levelsFor } from '../meta/map-node.js';
import { SpaceReclaim } from '../meta/space-reclaim.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { DedupIndex } from '../dedup/dedup-index.js';
import { DedupIndexer } from '../dedup/dedup-indexer.js';
import { ChangeTracker } from './changes.js';
import { CommitScheduler } from './commit-scheduler.js';
import type { FlushJournal } from './flush-journal.js';
import type { VolumeOp } from './flush-journal-format.js';
import { durableChange } from './durable-change.js';
import { FsckRunner } from './fsck-runner.js';
import { storeStats } from './store-stats.js';
import {
  volumeNotFound,
  type ChangeList,
  type ChangesQuery,
  type FsckReport,
  type RangeRequest,
  type SnapshotInfo,
  type Stats,
  type VolumeActivity,
  type VolumeControl,
  type VolumeInfo,
  type VolumeScope,
} from './control.js';
import { checkRecursiveDelete, checkShrink } from './destructive-guards.js';
import { validName, validSize } from './names.js';
import { RangeOperations } from './range-operations.js';
import { SnapshotOperations, snapshotInfo } from './snapshot-operations.js';
import { SharingFigures, type SharingFigure } from './sharing-figures.js';
import { checkRangeRequest } from './range-request.js';
import { ReadPath } from './read-path.js';
import { VolumeExports } from './volume-exports.js';
import { VolumeState, type WritableMap } from './volume-state.js';
import { WritePath } from './write-path.js';

/** The layers below, opened by the daemon. */
export interface StorageLayers {
  meta: MetaStore;
  store: ChunkStore;
  cache: ChunkCache;
  dedup: DedupIndex;
}

export interface VolumeManagerOptions {
  /** Inline deduplication; default on. */
  dedup?: boolean;
  /** Compare bytes on a fingerprint match. */
  verifyDedup?: boolean;
  /** Commit at least this often when there are changes (ms). */
  commitIntervalMs?: number;
  /** Test-only: changes after which a background commit starts. */
  commitBatch?: number;
  /** Test-only: every commit waits this long before syncing the chunk data (a slow disk). */
  commitPauseMs?: number;
  /** How long writes must pause before logged fingerprints go into the index (ms). */
  dedupLogIdleMs?: number;
  dedupStaleMax?: number;
  /** Longest slice of space reclaim on the event loop (ms); tests set 0 to split every map leaf. */
  reclaimSliceMs?: number;
  /** Test-only: a pause after a multi-step operation commits its intent, so a test can crash there. */
  pauseAfterIntentMs?: number;
  /** TLS identities that see every tenant's volumes over NBD (--tls-admins). */
  tlsAdmins?: string[];
  /** A FLUSH not durable within this long fails with EIO (an S3 store in flush mode: --s3-timeout). */
  flushTimeoutMs?: number;
  /** How long a consistency check rests between its slices (ms; default 0): tests slow it down to watch its progress. */
  fsckPauseMs?: number;
  /** How often the volume list's exclusive and shared bytes are walked again, per volume (ms; default 30 s). */
  sharingRefreshMs?: number;
  /**
   * Where FLUSH and FUA make writes durable without a commit (flush-journal.ts); without one, each
   * commits. Not for a store whose FLUSH must reach an object store.
   */
  flushJournal?: FlushJournal;
  logger?: { info(obj: unknown, msg?: string): void; warn(obj: unknown, msg?: string): void; error(obj: unknown, msg?: string): void };
}

export class VolumeManager implements VolumeControl {
  private readonly states = new Map<string, VolumeState>();
  readonly meta: MetaStore;
  readonly reads: ReadPath;
  readonly writes: WritePath;
  readonly exports: VolumeExports;
  private readonly changeTracker: ChangeTracker;
  private readonly ranges: RangeOperations;
  private readonly snapshots: SnapshotOperations;
  private readonly sharing: SharingFigures;
  private readonly reclaim: SpaceReclaim;
  private readonly indexer: DedupIndexer;
  private readonly commits: CommitScheduler;
  private readonly journal: FlushJournal | null;
  private closing = false;
  /** Set once another daemon took the store over: reads go on, nothing is written any more. */
  private fencedBy: ShoalError | null = null;
  private readonly logger: VolumeManagerOptions['logger'];
  /** The consistency check: changes to maps wait while it runs. */
  private readonly fsckRunner: FsckRunner;

  private constructor(
    private readonly layers: StorageLayers,
    opts: VolumeManagerOptions,
  ) {
    const { meta, store, cache, dedup } = layers;
    this.meta = meta;
    // Chunk data reaches the disk before any commit that references it; a freed or reused slot's
    // cached bytes are never served again (invariant 1).
    const pause = opts.commitPauseMs;
    meta.pipeline.syncData = pause ? () => new Promise((r) => setTimeout(r, pause)).then(() => store.sync()) : () => store.sync();
    meta.chunks.onFreed((slot) => cache.drop(slot));
    meta.onSlotReused((slot) => cache.drop(slot));
    // A store that places each chunk once keeps records of where, committed with the metadata,
    // and learns of frees so it can reclaim their space.
    if (!store.reusesSlots) meta.slots.neverReuse((slot) => store.freed?.(slot));
    if (store.attachRecords) meta.storeRecords.attach(store.attachRecords(meta.storeRecords));
    if (store.freed) meta.chunks.onFreed((slot) => store.freed!(slot));
    this.reads = new ReadPath(meta, cache);
    this.writes = new WritePath(meta, store, cache, dedup, { dedup: opts.dedup ?? true, verifyDedup: opts.verifyDedup ?? false });
    this.logger = opts.logger;
    this.commits = new CommitScheduler(meta, opts.logger, opts.commitIntervalMs, opts.flushTimeoutMs, opts.commitBatch);
    this.commits.watch(() => this.states.values());
    const journal = (this.journal = opts.flushJournal ?? null);
    journal?.attach(
      meta,
      () => this.commits.flush(),
      () => this.commits.commitSoon(),
    );
    this.changeTracker = new ChangeTracker(meta, this.states);
    this.exports = new VolumeExports({
      states: this.states,
      reads: this.reads,
      writes: this.writes,
      cache,
      changes: this.changeTracker,
      flush: journal ? (st) => journal.flush(st) : () => this.commits.flush(),
      admit: () => this.commits.admit(),
      journal,
      isOpen: () => !this.closing,
      checkWritable: () => {
        if (this.fencedBy) throw this.fencedBy;
        // A failed commit (a full disk, EIO) closed the metadata: nothing will be committed again, so a
        // write accepted now would pile up in memory for good (a FLUSH would still journal it).
        const failed = this.meta.pipeline.failure;
        if (failed && !this.closing) throw new ShoalError(failed.code, `the metadata store stopped taking changes after a failed commit (${failed.message}); restart the daemon once the disk is writable`);
      },
      admins: new Set(opts.tlsAdmins ?? []),
    });
    this.reclaim = new SpaceReclaim(meta, () => this.exports.requests, opts.logger, { sliceMs: opts.reclaimSliceMs });
    this.indexer = new DedupIndexer(meta, dedup, opts.logger, { idleMs: opts.dedupLogIdleMs, staleMax: opts.dedupStaleMax });
    this.ranges = new RangeOperations({
      meta,
      reads: this.reads,
      writes: this.writes,
      state: (n) => this.states.get(n),
      reclaim: () => this.reclaim.kick(),
      changedOutside: (st) => journal?.changedOutside(st),
      pauseAfterIntentMs: opts.pauseAfterIntentMs,
    });
    this.snapshots = new SnapshotOperations(meta, journal);
    this.sharing = new SharingFigures(meta, () => this.states.values(), opts.sharingRefreshMs, () => this.exports.requests);
    this.fsckRunner = new FsckRunner({ meta, store, dedup, reclaim: this.reclaim, states: () => this.states.values() }, opts.fsckPauseMs);
    for (const rec of meta.volumes.values()) this.addState(rec);
  }

  /** Serves the volumes of the given layers; operations a crash interrupted are finished first. */
  static async open(layers: StorageLayers, opts: VolumeManagerOptions = {}): Promise<VolumeManager> {
    const m = new VolumeManager(layers, opts);
    await m.ranges.rollForward(opts.logger);
    // Writes acknowledged by a FLUSH since the last commit: after the operations above (one may have
    // been followed by such a write), before anything is served.
    if (m.journal) {
      const volumeOp = (w: WritableMap, op: VolumeOp) => {
        const st = m.state(w.name);
        if (op.kind === 'snapshot') m.snapshots.replay(st, op);
        else m.clone(st, op.name, op.snapshot).record.createdAt = op.createdAt;
      };
      const n = await m.journal.replay(m.states, m.writes, volumeOp, opts.logger);
      if (n > 0) {
        await layers.meta.commit();
        opts.logger?.info({ operations: n }, `replayed ${n} operations from the flush journal`);
      }
      // Every record in it is covered now: a journal of the former size can grow.
      try {
        m.journal.grow();
      } catch (e) {
        opts.logger?.warn({ err: e }, (e as Error).message);
      }
    }
    m.reclaim.start();
    m.indexer.start();
    m.commits.start();
    m.sharing.start();
    return m;
  }

  private addState(rec: VolumeRecord): VolumeState {
    const st = new VolumeState(rec, this.meta.domainId(rec.domain, true)!, (s) => {
      this.meta.volumes.put(s.name, s.record);
      this.commits.changed();
      this.reclaim.kick(); // TRIM/zero of whole map subtrees queue them for reclaim
    });
    this.states.set(rec.name, st);
    return st;
  }

  private state(name: string): VolumeState {
    const st = this.states.get(name);
    if (!st) throw volumeNotFound(name);
    return st;
  }

  private checkOpen(): void {
    if (this.fencedBy) throw this.fencedBy;
    if (this.closing || this.meta.isClosed) throw new ShoalError('shutting_down', 'the daemon is shutting down');
  }

  /**
   * Another daemon has taken the store over (its lease, or the bucket's commit head, says so): from now on
   * every write, flush and change fails with `err` (NBD clients get ESHUTDOWN), reads go on, and nothing
   * more is committed. Said once in the log.
   */
  fence(err: ShoalError): void {
    if (this.fencedBy) return;
    this.fencedBy = err;
    this.commits.stop();
    this.reclaim.stop();
    this.indexer.stop();
    this.meta.pipeline.close();
    this.logger?.error({ err }, `this daemon no longer writes: ${err.message} Volumes stay readable; writes, flushes and changes fail (NBD clients get ESHUTDOWN).`);
  }

  /**
   * A change to maps or refcounts waits while a consistency check runs (it must see them still).
   * Callers await it only while one runs, so otherwise their checks stay in the tick of the call.
   */
  private async afterFsck(): Promise<void> {
    await this.fsckRunner.settled();
    this.checkOpen();
  }

  // ------------------------------------------------------------------ volumes

  /**
   * `sharing`: the split of its mapped bytes into exclusive and shared (sharing-figures.ts); by
   * default an exact walk of its map now (O(mapped)). Create and clone know it without a walk; a
   * list shows the background walk's last figures (null before the first).
   */
  private info(st: VolumeState, sharing: SharingFigure | null = this.sharing.walkNow(st.name, st.record)): VolumeInfo {
    const r = st.record;
    return {
      name: r.name,
      size: r.size,
      domain: r.domain,
      tenant: r.tenant ?? null,
      chunkSize: this.meta.chunkSize,
      createdAt: r.createdAt,
      origin: r.origin,
      snapshots: r.snapshots.length,
      connections: st.conns.size,
      mappedBytes: r.mapped * this.meta.chunkSize,
      exclusiveBytes: sharing?.exclusive ?? 0,
      sharedBytes: sharing?.shared ?? 0,
      sharingAt: sharing?.at ?? null,
      cacheLoads: this.exports.cacheLoadsOf(r.name),
      incomplete: r.incomplete === true,
    };
  }

  async createVolume(req: { name: string; size: number; domain?: string; tenant?: string; incomplete?: boolean }): Promise<VolumeInfo> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const name = validName('volume', req.name);
    const size = validSize(req.size);
    const tenant = req.tenant === undefined ? undefined : validName('tenant', req.tenant);
    // A tenant named "default" would share chunks with every volume that has no tenant.
    if (tenant === 'default') throw new ShoalError('invalid_name', 'tenant name "default" is reserved: it is the dedup domain of volumes without a tenant');
    // A tenant's chunks are shared with no other tenant's unless an operator names a domain.
    const domain = validName('domain', req.domain ?? tenant ?? 'default');
    if (this.states.has(name)) throw new ShoalError('volume_exists', `volume ${name} already exists`);
    const rec: VolumeRecord = {
      name,
      size,
      domain,
      ...(tenant !== undefined ? { tenant } : {}),
      origin: null,
      snapshots: [],
      root: 0,
      levels: levelsFor(Math.ceil(size / this.meta.chunkSize)),
      mapped: 0,
      createdAt: new Date().toISOString(),
      ...(req.incomplete === true ? { incomplete: true as const } : {}),
    };
    this.meta.volumes.put(rec.name, rec);
    const st = this.addState(rec);
    await this.meta.commit();
    return this.info(st, this.sharing.set(name, { exclusive: 0, shared: 0 }));
  }

  async cloneVolume(req: { name: string; from: { volume: string; snapshot?: string } }): Promise<VolumeInfo> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const name = validName('volume', req.name);
    if (!req.from || typeof req.from.volume !== 'string') throw new ShoalError('invalid_request', 'from.volume is required to clone');
    const src = this.state(req.from.volume);
    const snapshot = req.from.snapshot;
    this.checkClone(src, name, snapshot);
    let st!: VolumeState;
    await durableChange(this.meta, this.journal, src, () => {
      st = this.clone(src, name, snapshot);
      return { kind: 'clone', name, createdAt: st.record.createdAt, ...(snapshot !== undefined ? { snapshot } : {}) };
    });
    return this.info(st, this.sharing.set(name, { exclusive: 0, shared: st.record.mapped * this.meta.chunkSize }));
  }

  /** Checked again once a clone waited for its origin's writes. */
  private checkClone(src: VolumeState, name: string, snapshot: string | undefined): RootRecord {
    if (src.deleted) throw new ShoalError('volume_not_found', `volume ${src.name} was deleted`);
    const from: RootRecord = snapshot !== undefined ? src.snapshot(snapshot) : src.record;
    if (this.states.has(name)) throw new ShoalError('volume_exists', `volume ${name} already exists`);
    return from;
  }

  /** A new volume sharing the map of `src` (or of its snapshot), synchronously; the caller makes it durable. */
  private clone(src: VolumeState, name: string, snapshot: string | undefined): VolumeState {
    const from = this.checkClone(src, name, snapshot);
    const rec: VolumeRecord = {
      ...shareRoot(this.meta, from),
      name,
      domain: src.record.domain, // clones share chunks, so they stay in their origin's domain
      ...(src.record.tenant !== undefined ? { tenant: src.record.tenant } : {}),
      origin: { volume: src.name, ...(snapshot !== undefined ? { snapshot } : {}) },
      snapshots: [],
    };
    this.meta.volumes.put(rec.name, rec);
    return this.addState(rec);
  }

  listVolumes(): VolumeInfo[] {
    return [...this.states.values()].map((st) => this.info(st, this.sharing.get(st.name))).sort((a, b) => a.name.localeCompare(b.name));
  }

  getVolume(name: string): VolumeInfo {
    return this.info(this.state(name));
  }

  tenantOf(name: string): string | null {
    return this.state(name).record.tenant ?? null;
  }

  async markComplete(name: string): Promise<void> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const st = this.state(name);
    if (st.record.incomplete) {
      delete st.record.incomplete;
      st.touched();
      await this.meta.commit();
    }
  }

  activity(): VolumeActivity[] {
    return [...this.states.values()].map((st) => ({ name: st.name, tenant: st.record.tenant ?? null, connections: st.conns.size, ...st.io }));
  }

  async resizeVolume(name: string, size: number, opts: { shrink?: boolean } = {}): Promise<VolumeInfo> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const st = this.state(name);
    size = validSize(size);
    checkShrink(this.meta, st.record, size, opts.shrink);
    if (size < st.record.size) {
      if (st.conns.size > 0)
        throw new ShoalError('volume_busy', `volume ${name} has ${st.conns.size} client(s) connected; shrinking it under them would cut off their data (disconnect them first)`);
      await this.ranges.shrink(st, size);
    } else {
      const release = await st.lock.acquire(0, Infinity); // not while a shrink zeroes its old tail
      try {
        growLevels(this.meta, st.record, Math.ceil(size / this.meta.chunkSize));
        st.record.size = size;
        st.touched();
        this.journal?.changedOutside(st);
      } finally {
        release();
      }
      await this.meta.commit();
    }
    return this.info(st);
  }

  async deleteVolume(name: string, opts: { force?: boolean; recursive?: boolean } = {}): Promise<void> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const st = this.state(name);
    if (st.conns.size > 0 && !opts.force)
      throw new ShoalError('volume_busy', `volume ${name} has ${st.conns.size} NBD client(s) connected; disconnect them or delete with force=true to cut them off`);
    checkRecursiveDelete(st.record, [...this.states.values()].filter((c) => c.record.origin?.volume === name).length, opts.recursive);
    st.deleted = true;
    st.revoke();
    const release = await st.lock.acquire(0, Infinity);
    try {
      for (const s of st.record.snapshots) dropRoot(this.meta, s);
      dropRoot(this.meta, st.record);
      this.meta.volumes.delete(name);
      this.states.delete(name);
      this.sharing.forget(name);
    } finally {
      release();
    }
    await this.meta.commit();
    this.reclaim.kick();
  }

  // ------------------------------------------------------------------ snapshots

  async createSnapshot(volume: string, name: string): Promise<SnapshotInfo> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    return this.snapshots.create(this.state(volume), name);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    const st = this.state(volume);
    return st.record.snapshots.map((s) => snapshotInfo(st, s));
  }

  async deleteSnapshot(volume: string, snapshot: string, opts: { force?: boolean } = {}): Promise<void> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    await this.snapshots.delete(this.state(volume), snapshot, opts);
  }

  async rollback(volume: string, snapshot: string, opts: { force?: boolean } = {}): Promise<VolumeInfo> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const st = this.state(volume);
    await this.snapshots.rollback(st, snapshot, opts);
    return this.info(st);
  }

  changes(volume: string, q: ChangesQuery): Promise<ChangeList> {
    return this.changeTracker.query(this.state(volume), q);
  }

  // ------------------------------------------------------------------ reflink / dedupe

  private source(spec: unknown): { st: VolumeState; rec: RootRecord } {
    if (typeof spec !== 'string' || spec.length === 0) throw new ShoalError('invalid_request', 'source must name a volume or VOLUME@SNAPSHOT');
    const at = spec.indexOf('@');
    if (at < 0) {
      const st = this.state(spec);
      return { st, rec: st.record };
    }
    const st = this.state(spec.slice(0, at));
    return { st, rec: st.snapshot(spec.slice(at + 1)) };
  }

  async reflink(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const dst = this.state(volume);
    const { st, rec: src } = this.source(req?.source);
    checkRangeRequest('reflink', req, dst, st, src, this.meta.chunkSize);
    return this.ranges.reflink(dst, src, req);
  }

  async dedupe(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }> {
    this.checkOpen();
    if (this.fsckRunner.running) await this.afterFsck();
    const dst = this.state(volume);
    const { st, rec: src } = this.source(req?.source);
    checkRangeRequest('dedupe', req, dst, st, src, this.meta.chunkSize);
    return this.ranges.dedupe(dst, src, req);
  }

  // ------------------------------------------------------------------ stats, fsck

  /** Figures for the whole store, or (with a scope) for one tenant's volumes. */
  stats(scope?: VolumeScope): Stats {
    const { dedup, cache, store } = this.layers;
    return storeStats({ meta: this.meta, states: this.states.values(), dedup, cache, store, reclaim: this.reclaim.released, indexed: this.indexer.indexed, swept: this.indexer.swept, fsck: this.fsckRunner.status(), journal: this.journal?.figures ?? null }, scope);
  }

  /** A check already running is joined rather than run twice. */
  fsck(): Promise<FsckReport> {
    this.checkOpen();
    return this.fsckRunner.check();
  }

  async close(): Promise<void> {
    this.closing = true;
    this.commits.stop();
    for (const st of this.states.values()) st.revoke();
    this.reclaim.stop();
    this.indexer.stop();
    this.sharing.stop();
    this.layers.dedup.close();
    await this.meta.close();
    await this.journal?.close();
    await this.layers.store.close();
  }
}
