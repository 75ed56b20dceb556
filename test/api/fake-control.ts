// An in-memory VolumeControl for testing the REST routing and validation layer only (no bytes are stored).
// It follows the interface's error contract closely enough that routes can be checked end to end.
import { ShoalError } from '../../server/errors.js';
import type { ChangeList, ChangesQuery, FsckReport, RangeRequest, SnapshotInfo, Stats, VolumeActivity, VolumeControl, VolumeInfo, VolumeScope } from '../../server/volume/control.js';

export class FakeControl implements VolumeControl {
  volumes = new Map<string, VolumeInfo>();
  snaps = new Map<string, SnapshotInfo[]>();
  calls: { method: string; args: unknown[] }[] = [];
  fsckErrors: string[] = [];
  failNext: Error | null = null;

  private check(method: string, args: unknown[]): void {
    this.calls.push({ method, args });
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = null;
      throw e;
    }
  }

  private vol(name: string): VolumeInfo {
    const v = this.volumes.get(name);
    if (!v) throw new ShoalError('volume_not_found', `there is no volume "${name}".`);
    return v;
  }

  private make(name: string, size: number, domain: string, origin: VolumeInfo['origin'], tenant: string | null = null): VolumeInfo {
    if (this.volumes.has(name)) throw new ShoalError('volume_exists', `a volume named "${name}" already exists.`);
    const v: VolumeInfo = {
      name,
      size,
      domain,
      tenant,
      chunkSize: 65536,
      createdAt: new Date(0).toISOString(),
      origin,
      snapshots: 0,
      connections: 0,
      mappedBytes: 0,
      exclusiveBytes: 0,
      sharedBytes: 0,
      sharingAt: null,
      cacheLoads: 0,
      incomplete: false,
    };
    this.volumes.set(name, v);
    this.snaps.set(name, []);
    return v;
  }

  async createVolume(req: { name: string; size: number; domain?: string; tenant?: string; incomplete?: boolean }): Promise<VolumeInfo> {
    this.check('createVolume', [req]);
    const v = this.make(req.name, req.size, req.domain ?? req.tenant ?? 'default', null, req.tenant ?? null);
    v.incomplete = req.incomplete === true;
    return v;
  }
  async markComplete(name: string): Promise<void> {
    this.check('markComplete', [name]);
    this.vol(name).incomplete = false;
  }
  activity(): VolumeActivity[] {
    this.check('activity', []);
    return [...this.volumes.values()].map((v) => ({ name: v.name, tenant: v.tenant, connections: v.connections, reads: 5, writes: 3, readBytes: 5 * 4096, writtenBytes: 3 * 4096 }));
  }
  async cloneVolume(req: { name: string; from: { volume: string; snapshot?: string } }): Promise<VolumeInfo> {
    this.check('cloneVolume', [req]);
    const src = this.vol(req.from.volume);
    let size = src.size;
    if (req.from.snapshot !== undefined) {
      const s = this.snaps.get(src.name)!.find((x) => x.name === req.from.snapshot);
      if (!s) throw new ShoalError('snapshot_not_found', `volume "${src.name}" has no snapshot "${req.from.snapshot}".`);
      size = s.size;
    }
    return this.make(req.name, size, src.domain, { ...req.from }, src.tenant);
  }
  listVolumes(): VolumeInfo[] {
    this.check('listVolumes', []);
    return [...this.volumes.values()];
  }
  getVolume(name: string): VolumeInfo {
    this.check('getVolume', [name]);
    return this.vol(name);
  }
  tenantOf(name: string): string | null {
    return this.vol(name).tenant;
  }
  async resizeVolume(name: string, size: number, opts?: { shrink?: boolean }): Promise<VolumeInfo> {
    this.check('resizeVolume', [name, size, opts]);
    const v = this.vol(name);
    if (size < v.size && !opts?.shrink) throw new ShoalError('shrink_not_allowed', `shrinking volume "${name}" needs "shrink": true.`);
    v.size = size;
    return v;
  }
  async deleteVolume(name: string, opts?: { force?: boolean; recursive?: boolean }): Promise<void> {
    this.check('deleteVolume', [name, opts]);
    const v = this.vol(name);
    if (v.connections > 0 && !opts?.force) throw new ShoalError('volume_busy', `volume "${name}" has ${v.connections} NBD client(s) connected; delete with force to disconnect them.`);
    if (v.snapshots > 0 && !opts?.recursive) throw new ShoalError('volume_has_dependents', `volume "${name}" has ${v.snapshots} snapshot(s); delete with recursive=true.`);
    this.volumes.delete(name);
    this.snaps.delete(name);
  }
  async createSnapshot(volume: string, name: string): Promise<SnapshotInfo> {
    this.check('createSnapshot', [volume, name]);
    const v = this.vol(volume);
    const list = this.snaps.get(volume)!;
    if (list.some((s) => s.name === name)) throw new ShoalError('snapshot_exists', `volume "${volume}" already has a snapshot "${name}".`);
    const s: SnapshotInfo = { name, volume, size: v.size, createdAt: new Date(0).toISOString(), exportName: `${volume}@${name}` };
    list.push(s);
    v.snapshots = list.length;
    return s;
  }
  listSnapshots(volume: string): SnapshotInfo[] {
    this.check('listSnapshots', [volume]);
    this.vol(volume);
    return this.snaps.get(volume)!;
  }
  async deleteSnapshot(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<void> {
    this.check('deleteSnapshot', [volume, snapshot, opts]);
    const list = this.listSnapshots(volume);
    const i = list.findIndex((s) => s.name === snapshot);
    if (i < 0) throw new ShoalError('snapshot_not_found', `volume "${volume}" has no snapshot "${snapshot}".`);
    list.splice(i, 1);
    this.vol(volume).snapshots = list.length;
  }
  async rollback(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<VolumeInfo> {
    this.check('rollback', [volume, snapshot, opts]);
    const s = this.listSnapshots(volume).find((x) => x.name === snapshot);
    if (!s) throw new ShoalError('snapshot_not_found', `volume "${volume}" has no snapshot "${snapshot}".`);
    const v = this.vol(volume);
    v.size = s.size;
    return v;
  }
  async changes(volume: string, query: ChangesQuery): Promise<ChangeList> {
    this.check('changes', [volume, query]);
    this.vol(volume);
    return { extents: [{ offset: 0, length: 4096 }], next: 8192 };
  }
  async reflink(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }> {
    this.check('reflink', [volume, req]);
    this.vol(volume);
    this.vol(req.source.split('@')[0]!);
    return { sharedBytes: req.length, copiedBytes: 0 };
  }
  async dedupe(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }> {
    this.check('dedupe', [volume, req]);
    this.vol(volume);
    this.vol(req.source.split('@')[0]!);
    return { sharedBytes: 0, differentBytes: req.length };
  }
  stats(scope?: VolumeScope): Stats {
    this.check('stats', scope ? [scope] : []);
    return {
      logicalBytes: 3 * 65536,
      physicalBytes: 65536,
      dedupRatio: 3,
      chunkSize: 65536,
      chunks: 1,
      volumes: this.volumes.size,
      snapshots: [...this.snaps.values()].reduce((n, l) => n + l.length, 0),
      dedupHits: 2,
      dedupLogEntries: 0,
      reclaimPendingNodes: 7,
      reclaim: { pendingNodes: 7, pendingBytes: 7 * 256 * 65536, releasedBytes: 65536, bytesPerSecond: 4096 },
      dedupIndexing: { logEntries: 0, indexedEntries: 12, entriesPerSecond: 0, staleEntries: 5, sweptEntries: 40, freedKeys: 2 },
      metadataCommits: { pendingChanges: 12, largestChanges: 4100, longestStretchMs: 3.2 },
      flushJournal: { records: 3, commits: 1, replayed: 0, onArrival: 2, direct: true },
      fsck: { running: false, phase: null, checkedIndexEntries: 0, totalIndexEntries: 0, checkedNodes: 0, totalNodes: 0, checkedChunks: 0, totalChunks: 0, startedAt: null, lastOk: null },
      cache: { capacityBytes: 1 << 30, bytes: 65536, entries: 1, hits: 10, misses: 1, evictions: 0, coalesced: 4, sharingFactor: 3, servedBytes: 655360, pinned: 0, orphaned: 0, loading: 0, readerRefs: 3, readahead: 0, storeReads: 1, storeReadBytes: 65536, prefaultedBytes: 0 },
      store: { kind: 'local', reads: 1, readBytes: 65536, direct: true },
    };
  }
  async fsck(): Promise<FsckReport> {
    this.check('fsck', []);
    return { ok: this.fsckErrors.length === 0, checkedVolumes: this.volumes.size, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 1, errors: this.fsckErrors };
  }
}
