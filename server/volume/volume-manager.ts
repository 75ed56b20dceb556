// The volume layer's front: volumes, snapshots, clones, reflink and dedupe over the metadata
// and data layers, offered to the REST API (VolumeControl) and to the NBD server
// (ExportProvider). It knows nothing of sockets or HTTP.
import { ShoalError } from '../errors.js';
import type { ExportListing, ExportProvider, NbdExport, Extent, ZeroOptions } from '../nbd/export.js';
import { MetaStore, type RootRecord, type SnapshotRecord, type VolumeRecord } from '../meta/meta-store.js';
import { dropRoot, growLevels, releaseRange, shareChunks, shareRoot } from '../meta/map-tree.js';
import { levelsFor } from '../meta/map-node.js';
import { LocalChunkStore } from '../store/local-chunk-store.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { NativeChunkCache } from '../cache/native-chunk-cache.js';
import { join } from 'node:path';
import { DataPath, checkRange, type WritableMap } from './data-path.js';
import { RangeLock } from './range-lock.js';
import { GarbageCollector, WRITE_COMMIT_BATCH } from './garbage-collector.js';
import { checkMetadata } from '../meta/fsck.js';
import { native } from '../native.js';
import { volumeNotFound, volumeOfExport, type FsckReport, type RangeRequest, type SnapshotInfo, type Stats, type VolumeControl, type VolumeInfo, type VolumeScope } from './control.js';
import { checkRecursiveDelete, checkShrink } from './destructive-guards.js';

export const DEFAULT_CHUNK_SIZE = 4096;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Largest volume: chunk indices and byte offsets stay exact in doubles. */
export const MAX_VOLUME_SIZE = 2 ** 52;
const MAX_IO = 32 * 1024 * 1024;

export interface VolumeManagerOptions {
  dataDir: string;
  cacheSize: number;
  chunkSize?: number;
  verifyDedup?: boolean;
  /** Inline deduplication; default on. */
  dedup?: boolean;
  /** Commit at least this often when there are changes (ms). */
  commitIntervalMs?: number;
  fingerprintOverride?: (chunk: Buffer) => Buffer;
  /** How long writes must pause before logged fingerprints go into the index (ms). */
  dedupLogIdleMs?: number;
  /** Longest slice of space reclaim on the event loop (ms); tests set 0 to split every map leaf. */
  gcSliceMs?: number;
  logger?: { info(...a: any[]): void; warn(...a: any[]): void; error(...a: any[]): void };
}

interface Connection {
  revoke(): void;
}

class VolumeState implements WritableMap {
  readonly lock = new RangeLock();
  readonly conns = new Set<Connection>();
  readonly snapshotReaders = new Map<string, number>();
  deleted = false;
  constructor(
    public record: VolumeRecord,
    readonly domain: number,
    private readonly mgr: VolumeManager,
  ) {}
  get name(): string {
    return this.record.name;
  }
  touched(): void {
    this.mgr.meta.putVolume(this.record);
    // Keep commits bounded: a big one holds the event loop while its records are queued
    // (~1 us each), a small one costs two fsyncs.
    if (this.mgr.meta.pendingChanges >= WRITE_COMMIT_BATCH) this.mgr.commitSoon();
    this.mgr.gc.kick(); // TRIM/zero of whole map subtrees queue them for collection
  }
}

function validName(kind: 'volume' | 'snapshot' | 'domain' | 'tenant', name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name))
    throw new ShoalError('invalid_name', `${kind} name ${JSON.stringify(name)} is not valid: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  return name;
}

export class VolumeManager implements VolumeControl, ExportProvider {
  private readonly states = new Map<string, VolumeState>();
  private commitTimer: NodeJS.Timeout | null = null;
  readonly data: DataPath;
  readonly gc: GarbageCollector;
  private closing = false;

  private constructor(
    readonly meta: MetaStore,
    readonly store: ChunkStore,
    readonly cache: NativeChunkCache,
    private readonly opts: VolumeManagerOptions,
  ) {
    this.data = new DataPath(meta, store, cache, { dedup: opts.dedup ?? true, verifyDedup: opts.verifyDedup ?? false, fingerprintOverride: opts.fingerprintOverride });
    meta.hooks = {
      chunkFreed: (slot) => cache.drop(slot),
      syncData: () => store.sync(),
      fingerprintsLogged: () => this.gc?.kick(),
    };
    for (const rec of meta.volumes.values()) this.addState(rec);
    this.gc = new GarbageCollector(meta, opts.logger, { fpLogIdleMs: opts.dedupLogIdleMs, sliceMs: opts.gcSliceMs });
    this.gc.start();
    const every = opts.commitIntervalMs ?? 2000;
    this.commitTimer = setInterval(() => {
      if (this.meta.pendingChanges > 0) this.meta.commit().catch((e) => opts.logger?.error({ err: e }, 'background commit failed'));
      // Map nodes are 2 KiB in memory: keep at most 64k clean ones (128 MiB, maps for ~64 GiB of hot data).
      this.meta.trimNodeCache(65_536);
    }, every);
    this.commitTimer.unref();
  }

  static async open(opts: VolumeManagerOptions): Promise<VolumeManager> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(chunkSize) || chunkSize < 4096 || chunkSize > 1024 * 1024 || (chunkSize & (chunkSize - 1)) !== 0)
      throw new ShoalError('invalid_request', `chunk size ${chunkSize} is not a power of two from 4 KiB to 1 MiB`);
    native(); // fail at start, with a sentence, if the addon is not built — not on the first write
    const meta = MetaStore.open(opts.dataDir, { chunkSize });
    if (opts.chunkSize && opts.chunkSize !== meta.chunkSize)
      opts.logger?.warn(`the store in ${opts.dataDir} was created with chunk size ${meta.chunkSize}; ignoring --chunk-size ${opts.chunkSize}`);
    const store = await LocalChunkStore.open(opts.dataDir, meta.chunkSize);
    const cache = new NativeChunkCache(opts.cacheSize, meta.chunkSize);
    // Loads go straight from the chunk file into the arena with O_DIRECT: no second copy in the page cache.
    cache.attachFile(join(opts.dataDir, 'chunks.dat'));
    return new VolumeManager(meta, store, cache, opts);
  }

  private addState(rec: VolumeRecord): VolumeState {
    const domain = this.meta.domainId(rec.domain, true)!;
    const st = new VolumeState(rec, domain, this);
    this.states.set(rec.name, st);
    return st;
  }

  private state(name: string): VolumeState {
    const st = this.states.get(name);
    if (!st) throw volumeNotFound(name);
    return st;
  }

  private snapshot(st: VolumeState, snap: string): SnapshotRecord {
    const s = st.record.snapshots.find((x) => x.name === snap);
    if (!s) throw new ShoalError('snapshot_not_found', `volume ${st.name} has no snapshot ${JSON.stringify(snap)}`);
    return s;
  }

  private checkOpen(): void {
    if (this.closing || this.meta.isClosed) throw new ShoalError('shutting_down', 'the daemon is shutting down');
  }

  // ------------------------------------------------------------------ control: volumes

  /**
   * `sharing` walks the whole map to split exclusive from shared bytes (O(mapped)); create and
   * clone know the split without it (nothing, or everything, is shared), so they stay O(1).
   */
  private info(st: VolumeState, known?: { exclusive: number; shared: number }): VolumeInfo {
    const r = st.record;
    const sh = known ?? this.data.sharing(r);
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
      exclusiveBytes: sh.exclusive,
      sharedBytes: sh.shared,
      cacheLoads: this.cacheLoadsOf(r.name),
    };
  }

  /** Chunks loaded from the store for reads of the volume and its snapshots (by reader id). */
  private cacheLoadsOf(volume: string): number {
    let n = 0;
    for (const [exportName, id] of this.readerIds) if (volumeOfExport(exportName) === volume) n += this.cache.storeLoads.get(id) ?? 0;
    return n;
  }

  private validSize(size: unknown): number {
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0)
      throw new ShoalError('invalid_size', `size ${JSON.stringify(size)} is not a positive whole number of bytes`);
    if (size % 512 !== 0) throw new ShoalError('invalid_size', `size ${size} is not a multiple of 512 bytes (one sector)`);
    if (size > MAX_VOLUME_SIZE) throw new ShoalError('invalid_size', `size ${size} is larger than the maximum of ${MAX_VOLUME_SIZE} bytes (4 PiB)`);
    return size;
  }

  async createVolume(req: { name: string; size: number; domain?: string; tenant?: string }): Promise<VolumeInfo> {
    this.checkOpen();
    const name = validName('volume', req.name);
    const size = this.validSize(req.size);
    const tenant = req.tenant === undefined ? undefined : validName('tenant', req.tenant);
    // A tenant named "default" would share chunks with every volume that has no tenant.
    if (tenant === 'default') throw new ShoalError('invalid_name', 'tenant name "default" is reserved: it is the dedup domain of volumes without a tenant');
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
    };
    this.meta.putVolume(rec);
    const st = this.addState(rec);
    await this.meta.commit();
    return this.info(st, { exclusive: 0, shared: 0 });
  }

  async cloneVolume(req: { name: string; from: { volume: string; snapshot?: string } }): Promise<VolumeInfo> {
    this.checkOpen();
    const name = validName('volume', req.name);
    if (!req.from || typeof req.from.volume !== 'string') throw new ShoalError('invalid_request', 'from.volume is required to clone');
    const src = this.state(req.from.volume);
    const from: RootRecord = req.from.snapshot !== undefined ? this.snapshot(src, req.from.snapshot) : src.record;
    if (this.states.has(name)) throw new ShoalError('volume_exists', `volume ${name} already exists`);
    const shared = shareRoot(this.meta, from);
    const rec: VolumeRecord = {
      ...shared,
      name,
      domain: src.record.domain, // clones share chunks, so they stay in their origin's domain
      ...(src.record.tenant !== undefined ? { tenant: src.record.tenant } : {}),
      origin: { volume: src.name, ...(req.from.snapshot !== undefined ? { snapshot: req.from.snapshot } : {}) },
      snapshots: [],
    };
    this.meta.putVolume(rec);
    const st = this.addState(rec);
    await this.meta.commit();
    return this.info(st, { exclusive: 0, shared: rec.mapped * this.meta.chunkSize });
  }

  listVolumes(): VolumeInfo[] {
    return [...this.states.values()].map((st) => this.info(st)).sort((a, b) => a.name.localeCompare(b.name));
  }

  getVolume(name: string): VolumeInfo {
    return this.info(this.state(name));
  }

  tenantOf(name: string): string | null {
    return this.state(name).record.tenant ?? null;
  }

  async resizeVolume(name: string, size: number, opts: { shrink?: boolean } = {}): Promise<VolumeInfo> {
    this.checkOpen();
    const st = this.state(name);
    size = this.validSize(size);
    const r = st.record;
    checkShrink(this.meta, r, size, opts.shrink);
    if (size < r.size) {
      if (st.conns.size > 0)
        throw new ShoalError('volume_busy', `volume ${name} has ${st.conns.size} client(s) connected; shrinking it under them would cut off their data (disconnect them first)`);
      // Whatever lies past the new end must read as zeroes if the volume grows again.
      const cs = this.meta.chunkSize;
      const cut = Math.ceil(size / cs);
      await this.meta.atomically(async () => {
        if (size % cs !== 0) await this.data.zero(st, size, Math.min(r.size, cut * cs) - size, false);
        const release = await st.lock.acquire(cut, Infinity);
        try {
          releaseRange(this.meta, r, cut, Infinity);
          r.size = size;
        } finally {
          release();
        }
      });
    } else {
      growLevels(this.meta, r, Math.ceil(size / this.meta.chunkSize));
      r.size = size;
    }
    st.touched();
    await this.meta.commit();
    return this.info(st);
  }

  private revokeAll(st: VolumeState): void {
    for (const c of [...st.conns]) c.revoke();
    st.conns.clear();
  }

  async deleteVolume(name: string, opts: { force?: boolean; recursive?: boolean } = {}): Promise<void> {
    this.checkOpen();
    const st = this.state(name);
    if (st.conns.size > 0 && !opts.force)
      throw new ShoalError('volume_busy', `volume ${name} has ${st.conns.size} NBD client(s) connected; disconnect them or delete with force=true to cut them off`);
    checkRecursiveDelete(st.record, [...this.states.values()].filter((c) => c.record.origin?.volume === name).length, opts.recursive);
    st.deleted = true;
    this.revokeAll(st);
    const release = await st.lock.acquire(0, Infinity);
    try {
      for (const s of st.record.snapshots) dropRoot(this.meta, s);
      dropRoot(this.meta, st.record);
      this.meta.deleteVolumeRecord(name);
      this.states.delete(name);
    } finally {
      release();
    }
    await this.meta.commit();
    this.gc.kick();
  }

  // ------------------------------------------------------------------ control: snapshots

  private snapInfo(st: VolumeState, s: SnapshotRecord): SnapshotInfo {
    return { name: s.name, volume: st.name, size: s.size, createdAt: s.createdAt, exportName: `${st.name}@${s.name}` };
  }

  async createSnapshot(volume: string, name: string): Promise<SnapshotInfo> {
    this.checkOpen();
    const st = this.state(volume);
    validName('snapshot', name);
    if (st.record.snapshots.some((s) => s.name === name)) throw new ShoalError('snapshot_exists', `volume ${volume} already has a snapshot named ${name}`);
    // Synchronous from here: every write that completed is in the map, none in flight changes it.
    const snap: SnapshotRecord = { ...shareRoot(this.meta, st.record), name };
    st.record.snapshots.push(snap);
    st.touched();
    await this.meta.commit();
    return this.snapInfo(st, snap);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    const st = this.state(volume);
    return st.record.snapshots.map((s) => this.snapInfo(st, s));
  }

  async deleteSnapshot(volume: string, snapshot: string, opts: { force?: boolean } = {}): Promise<void> {
    this.checkOpen();
    const st = this.state(volume);
    const s = this.snapshot(st, snapshot);
    const readers = st.snapshotReaders.get(snapshot) ?? 0;
    if (readers > 0 && !opts.force)
      throw new ShoalError('volume_busy', `snapshot ${volume}@${snapshot} has ${readers} NBD client(s) connected; disconnect them or delete with force=true`);
    if (readers > 0) for (const c of [...st.conns]) if ((c as any).snapshot === snapshot) c.revoke();
    st.record.snapshots = st.record.snapshots.filter((x) => x !== s);
    dropRoot(this.meta, s);
    st.touched();
    await this.meta.commit();
    this.gc.kick();
  }

  async rollback(volume: string, snapshot: string, opts: { force?: boolean } = {}): Promise<VolumeInfo> {
    this.checkOpen();
    const st = this.state(volume);
    const s = this.snapshot(st, snapshot);
    const writers = [...st.conns].filter((c) => (c as any).snapshot === undefined).length;
    if (writers > 0 && !opts.force)
      throw new ShoalError('volume_busy', `volume ${volume} has ${writers} NBD client(s) connected; a rollback under a running client would corrupt what it caches (disconnect it, or force=true to cut it off)`);
    for (const c of [...st.conns]) if ((c as any).snapshot === undefined) c.revoke();
    const release = await st.lock.acquire(0, Infinity);
    try {
      const r = st.record;
      const fresh = shareRoot(this.meta, s);
      dropRoot(this.meta, r);
      r.root = fresh.root;
      r.levels = fresh.levels;
      r.size = fresh.size;
      r.mapped = fresh.mapped;
      st.touched();
    } finally {
      release();
    }
    await this.meta.commit();
    this.gc.kick();
    return this.info(st);
  }

  // ------------------------------------------------------------------ control: reflink / dedupe

  private source(spec: unknown): { st: VolumeState; rec: RootRecord } {
    if (typeof spec !== 'string' || spec.length === 0) throw new ShoalError('invalid_request', 'source must name a volume or VOLUME@SNAPSHOT');
    const at = spec.indexOf('@');
    if (at < 0) {
      const st = this.state(spec);
      return { st, rec: st.record };
    }
    const st = this.state(spec.slice(0, at));
    return { st, rec: this.snapshot(st, spec.slice(at + 1)) };
  }

  private rangeArgs(req: RangeRequest, dst: VolumeState, src: RootRecord): void {
    for (const k of ['sourceOffset', 'offset', 'length'] as const) {
      const v = (req as any)[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ShoalError('invalid_range', `${k} must be a whole number of bytes ≥ 0 (got ${JSON.stringify(v)})`);
    }
    if (req.length === 0) throw new ShoalError('invalid_range', 'length must be greater than 0');
    if (req.sourceOffset + req.length > src.size)
      throw new ShoalError('invalid_range', `the source range ${req.sourceOffset}+${req.length} goes past the end of ${req.source} (size ${src.size})`);
    if (req.offset + req.length > dst.record.size)
      throw new ShoalError('invalid_range', `the destination range ${req.offset}+${req.length} goes past the end of ${dst.name} (size ${dst.record.size})`);
  }

  async reflink(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }> {
    this.checkOpen();
    const dst = this.state(volume);
    const { st: srcSt, rec: src } = this.source(req?.source);
    this.rangeArgs(req, dst, src);
    if (srcSt.record.domain !== dst.record.domain)
      throw new ShoalError('domain_mismatch', `${req.source} is in dedup domain ${srcSt.record.domain} and ${volume} in ${dst.record.domain}: chunks are shared only inside a domain`);
    if (src === dst.record && req.offset < req.sourceOffset + req.length && req.sourceOffset < req.offset + req.length)
      throw new ShoalError('invalid_range', 'source and destination ranges overlap within one volume');
    const cs = this.meta.chunkSize;
    let sharedBytes = 0;
    let copiedBytes = 0;
    const { sourceOffset, offset, length } = req;
    // Chunk-aligned middle: share. Requires both offsets at the same position within a chunk.
    const aligned = sourceOffset % cs === offset % cs;
    const headLen = aligned ? Math.min(length, (cs - (offset % cs)) % cs) : length;
    const midChunks = aligned ? Math.floor((length - headLen) / cs) : 0;
    const tailLen = length - headLen - midChunks * cs;
    const copy = async (so: number, o: number, len: number) => {
      for (let done = 0; done < len; done += MAX_IO) {
        const n = Math.min(MAX_IO, len - done);
        const buf = await this.data.readBytes(src, so + done, n);
        await this.data.write(dst, o + done, Buffer.from(buf));
      }
      copiedBytes += len;
    };
    await this.meta.atomically(async () => {
    if (headLen > 0) await copy(sourceOffset, offset, headLen);
    if (midChunks > 0) {
      const dFrom = (offset + headLen) / cs;
      const sFrom = (sourceOffset + headLen) / cs;
      const release = await dst.lock.acquire(dFrom, dFrom + midChunks);
      try {
        shareChunks(this.meta, dst.record, src, dFrom, sFrom, midChunks);
        dst.touched();
      } finally {
        release();
      }
      sharedBytes += midChunks * cs;
    }
    if (tailLen > 0) await copy(sourceOffset + length - tailLen, offset + length - tailLen, tailLen);
    });
    await this.meta.commit();
    this.gc.kick();
    return { sharedBytes, copiedBytes };
  }

  async dedupe(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }> {
    this.checkOpen();
    const dst = this.state(volume);
    const { st: srcSt, rec: src } = this.source(req?.source);
    this.rangeArgs(req, dst, src);
    if (srcSt.record.domain !== dst.record.domain)
      throw new ShoalError('domain_mismatch', `${req.source} is in dedup domain ${srcSt.record.domain} and ${volume} in ${dst.record.domain}`);
    const cs = this.meta.chunkSize;
    const { sourceOffset, offset, length } = req;
    if (sourceOffset % cs !== 0 || offset % cs !== 0)
      throw new ShoalError('invalid_range', `dedupe shares whole chunks: sourceOffset and offset must be multiples of the chunk size (${cs})`);
    let sharedBytes = 0;
    let differentBytes = 0;
    const chunks = Math.floor(length / cs);
    const tail = length - chunks * cs;
    const BATCH = 256;
    await this.meta.atomically(async () => {
    for (let c = 0; c < chunks; c += BATCH) {
      const n = Math.min(BATCH, chunks - c);
      const dFrom = offset / cs + c;
      const sFrom = sourceOffset / cs + c;
      const release = await dst.lock.acquire(dFrom, dFrom + n);
      try {
        const a = await this.data.readBytes(src, sFrom * cs, n * cs);
        const b = await this.data.readBytes(dst.record, dFrom * cs, n * cs);
        // Contiguous runs of equal chunks are shared by one call each.
        let runStart = -1;
        for (let i = 0; i <= n; i++) {
          const eq = i < n && a.subarray(i * cs, i * cs + cs).equals(b.subarray(i * cs, i * cs + cs));
          if (eq && runStart < 0) runStart = i;
          if (!eq && runStart >= 0) {
            shareChunks(this.meta, dst.record, src, dFrom + runStart, sFrom + runStart, i - runStart);
            sharedBytes += (i - runStart) * cs;
            runStart = -1;
          }
          if (!eq && i < n) differentBytes += cs;
        }
        dst.touched();
      } finally {
        release();
      }
    }
    if (tail > 0) {
      const a = await this.data.readBytes(src, sourceOffset + chunks * cs, tail);
      const b = await this.data.readBytes(dst.record, offset + chunks * cs, tail);
      if (!a.equals(b)) differentBytes += tail; // a partial chunk cannot be shared; equal bytes need nothing
    }
    });
    await this.meta.commit();
    this.gc.kick();
    return { sharedBytes, differentBytes };
  }

  // ------------------------------------------------------------------ control: stats, fsck

  stats(scope?: VolumeScope): Stats {
    const cs = this.meta.chunkSize;
    let mapped = 0; // in scope
    let allMapped = 0; // the dedup ratio is the store's: physical bytes belong to no one volume
    let snapshots = 0;
    let volumes = 0;
    for (const st of this.states.values()) {
      const inScope = !scope || (st.record.tenant ?? null) === scope.tenant;
      let m = st.record.mapped;
      for (const s of st.record.snapshots) m += s.mapped;
      allMapped += m;
      if (!inScope) continue;
      mapped += m;
      volumes++;
      snapshots += st.record.snapshots.length;
    }
    const physical = this.meta.sb.liveChunks * cs;
    return {
      logicalBytes: mapped * cs,
      physicalBytes: physical,
      dedupRatio: physical === 0 ? 1 : (allMapped * cs) / physical,
      chunkSize: cs,
      chunks: this.meta.sb.liveChunks,
      volumes,
      snapshots,
      dedupHits: this.meta.sb.dedupHits,
      dedupLogEntries: this.meta.fpLogSize,
      cache: this.cache.stats(),
    };
  }

  async fsck(): Promise<FsckReport> {
    this.checkOpen();
    // Let the GC finish and commit, so the check sees a quiescent, committed state.
    await this.gc.drain();
    await this.meta.commit();
    return checkMetadata(this.meta);
  }

  // ------------------------------------------------------------------ NBD exports

  listExports(): ExportListing[] {
    const out: ExportListing[] = [];
    for (const st of this.states.values()) {
      out.push({ name: st.name, description: `Shoal volume ${st.name} (${st.record.size} bytes, domain ${st.record.domain})` });
      for (const s of st.record.snapshots) out.push({ name: `${st.name}@${s.name}`, description: `Shoal snapshot ${s.name} of ${st.name} (read-only)` });
    }
    return out;
  }

  defaultExportName(): string | null {
    return this.states.size === 1 ? [...this.states.keys()][0] : null;
  }

  openExport(name: string, onRevoke: () => void): NbdExport | null {
    if (this.closing) return null;
    const at = name.indexOf('@');
    const st = this.states.get(volumeOfExport(name));
    if (!st) return null;
    const snapName = at < 0 ? undefined : name.slice(at + 1);
    const snap = snapName === undefined ? undefined : st.record.snapshots.find((s) => s.name === snapName);
    if (snapName !== undefined && !snap) return null;
    return new VolumeExport(this, st, snap, name, onRevoke);
  }

  private readonly readerIds = new Map<string, number>();
  /** A small number per export name: the cache counts distinct readers of each chunk by it. */
  readerIdFor(exportName: string): number {
    let id = this.readerIds.get(exportName);
    if (id === undefined) this.readerIds.set(exportName, (id = this.readerIds.size + 1));
    return id;
  }

  /** Used by VolumeExport. */
  attach(st: VolumeState, c: Connection & { snapshot?: string }): void {
    st.conns.add(c);
    if (c.snapshot !== undefined) st.snapshotReaders.set(c.snapshot, (st.snapshotReaders.get(c.snapshot) ?? 0) + 1);
  }
  detach(st: VolumeState, c: Connection & { snapshot?: string }): void {
    if (st.conns.delete(c) && c.snapshot !== undefined) st.snapshotReaders.set(c.snapshot, (st.snapshotReaders.get(c.snapshot) ?? 1) - 1);
  }

  async flush(): Promise<void> {
    await this.meta.commit();
  }

  private commitQueued = false;
  /** A background commit, once per burst of changes. */
  commitSoon(): void {
    if (this.commitQueued) return;
    this.commitQueued = true;
    this.meta
      .commit()
      .catch((e) => this.opts.logger?.error({ err: e }, 'background commit failed'))
      .finally(() => (this.commitQueued = false));
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.commitTimer) clearInterval(this.commitTimer);
    for (const st of this.states.values()) this.revokeAll(st);
    await this.gc.stop();
    await this.meta.close();
    this.cache.close();
    await this.store.close();
  }
}

/** One NBD connection's view of a volume or snapshot. */
class VolumeExport implements NbdExport {
  readonly description: string;
  readonly readOnly: boolean;
  readonly blockSize: { minimum: number; preferred: number; maximum: number };
  readonly multiConn = true;
  readonly snapshot?: string;
  private closed = false;
  private revoked = false;
  private readonly readerId: number;

  constructor(
    private readonly mgr: VolumeManager,
    private readonly st: VolumeState,
    private readonly snap: SnapshotRecord | undefined,
    readonly name: string,
    private readonly onRevoke: () => void,
  ) {
    this.readOnly = snap !== undefined;
    this.snapshot = snap?.name;
    this.description = snap ? `Shoal snapshot ${snap.name} of ${st.name} (read-only)` : `Shoal volume ${st.name}`;
    this.blockSize = { minimum: 1, preferred: Math.max(4096, mgr.meta.chunkSize), maximum: MAX_IO };
    this.readerId = mgr.readerIdFor(name);
    mgr.attach(st, this);
  }

  get size(): number {
    return this.rec().size;
  }

  private rec(): RootRecord {
    return this.snap ?? this.st.record;
  }

  revoke(): void {
    if (this.revoked) return;
    this.revoked = true;
    this.onRevoke();
  }

  private live(): void {
    if (this.revoked || this.st.deleted) throw new ShoalError('volume_deleted', `export ${this.name} was removed`);
    this.mgr.gc.foregroundIo++; // every request passes here: space reclaim paces itself by it
  }

  private writable(offset: number, length: number): void {
    this.live();
    if (this.readOnly) throw new ShoalError('read_only', `export ${this.name} is a read-only snapshot`);
    checkRange(this.st.record.size, offset, length);
  }

  async read(offset: number, length: number): Promise<Buffer | Buffer[]> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    return this.mgr.data.read(r, offset, length, this.readerId);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.writable(offset, data.length);
    await this.mgr.data.write(this.st, offset, data);
    if (fua) await this.mgr.flush();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.writable(offset, length);
    await this.mgr.data.trim(this.st, offset, length);
    if (fua) await this.mgr.flush();
  }

  async writeZeroes(offset: number, length: number, o: ZeroOptions): Promise<void> {
    this.writable(offset, length);
    await this.mgr.data.zero(this.st, offset, length, o.noHole);
    if (o.fua) await this.mgr.flush();
  }

  async flush(): Promise<void> {
    this.live();
    await this.mgr.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    await this.mgr.data.prefetch(r, offset, length, this.readerId);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    return this.mgr.data.blockStatus(r, offset, length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mgr.detach(this.st, this);
  }
}
