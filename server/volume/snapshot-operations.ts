// Snapshots of a volume: create (one refcount increment on the map's root, whatever its size),
// list, delete (the map is released by space reclaim) and rollback (the volume takes a snapshot's
// map). The volume manager checks that the daemon may change things and finds the volume; these
// change its record and commit.
import { ShoalError } from '../errors.js';
import { dropRoot, shareRoot } from '../meta/map-tree.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { SnapshotRecord } from '../meta/volume-records.js';
import type { SnapshotInfo } from './control.js';
import { validName } from './names.js';
import type { VolumeState } from './volume-state.js';

export function snapshotInfo(st: VolumeState, s: SnapshotRecord): SnapshotInfo {
  return { name: s.name, volume: st.name, size: s.size, createdAt: s.createdAt, exportName: `${st.name}@${s.name}` };
}

export class SnapshotOperations {
  constructor(private readonly meta: MetaStore) {}

  async create(st: VolumeState, name: string): Promise<SnapshotInfo> {
    validName('snapshot', name);
    if (st.record.snapshots.some((s) => s.name === name)) throw new ShoalError('snapshot_exists', `volume ${st.name} already has a snapshot named ${name}`);
    // Synchronous from here: every write that completed is in the map, none in flight changes it.
    const snap: SnapshotRecord = { ...shareRoot(this.meta, st.record), name };
    st.record.snapshots.push(snap);
    st.touched();
    await this.meta.commit();
    return snapshotInfo(st, snap);
  }

  async delete(st: VolumeState, snapshot: string, opts: { force?: boolean }): Promise<void> {
    const s = st.snapshot(snapshot);
    const readers = st.readersOf(snapshot);
    if (readers > 0 && !opts.force)
      throw new ShoalError('volume_busy', `snapshot ${st.name}@${snapshot} has ${readers} NBD client(s) connected; disconnect them or delete with force=true`);
    st.revoke((c) => c.snapshot === snapshot);
    st.record.snapshots = st.record.snapshots.filter((x) => x !== s);
    dropRoot(this.meta, s);
    st.touched();
    await this.meta.commit();
  }

  /** The volume's map becomes the snapshot's (its own is released); clients of the volume are cut off. */
  async rollback(st: VolumeState, snapshot: string, opts: { force?: boolean }): Promise<void> {
    const s = st.snapshot(snapshot);
    const writers = st.writers().length;
    if (writers > 0 && !opts.force)
      throw new ShoalError('volume_busy', `volume ${st.name} has ${writers} NBD client(s) connected; a rollback under a running client would corrupt what it caches (disconnect it, or force=true to cut it off)`);
    st.revoke((c) => c.snapshot === undefined);
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
  }
}
