// Snapshots of a volume: create (one refcount increment on the map's root, whatever its size, made
// durable by the flush journal where it can be: durable-change.ts), list, delete (the map is released
// by space reclaim) and rollback (the volume takes a snapshot's map). The volume manager checks that
// the daemon may change things and finds the volume; these change its record and commit.
import { ShoalError } from '../errors.js';
import { dropRoot, shareRoot } from '../meta/map-tree.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { SnapshotRecord } from '../meta/volume-records.js';
import type { SnapshotInfo } from './control.js';
import { validName } from './names.js';
import { durableChange } from './durable-change.js';
import type { FlushJournal } from './flush-journal.js';
import type { VolumeOp } from './flush-journal-format.js';
import type { VolumeState } from './volume-state.js';

export function snapshotInfo(st: VolumeState, s: SnapshotRecord): SnapshotInfo {
  return { name: s.name, volume: st.name, size: s.size, createdAt: s.createdAt, exportName: `${st.name}@${s.name}` };
}

export class SnapshotOperations {
  constructor(
    private readonly meta: MetaStore,
    private readonly journal: FlushJournal | null,
  ) {}

  async create(st: VolumeState, name: string): Promise<SnapshotInfo> {
    validName('snapshot', name);
    this.checkNew(st, name);
    let snap!: SnapshotRecord;
    await durableChange(this.meta, this.journal, st, () => {
      // Synchronous: every write that completed is in the map, none in flight changes it.
      snap = this.take(st, name);
      return { kind: 'snapshot', name, createdAt: snap.createdAt };
    });
    return snapshotInfo(st, snap);
  }

  /** A snapshot journaled before a crash, made again at its place in the replay (the caller commits). */
  replay(st: VolumeState, op: VolumeOp & { kind: 'snapshot' }): void {
    this.take(st, op.name).createdAt = op.createdAt;
  }

  /** Checked again once a snapshot waited for the volume's writes. */
  private checkNew(st: VolumeState, name: string): void {
    if (st.deleted) throw new ShoalError('volume_not_found', `volume ${st.name} was deleted`);
    if (st.record.snapshots.some((s) => s.name === name)) throw new ShoalError('snapshot_exists', `volume ${st.name} already has a snapshot named ${name}`);
  }

  private take(st: VolumeState, name: string): SnapshotRecord {
    this.checkNew(st, name);
    const snap: SnapshotRecord = { ...shareRoot(this.meta, st.record), name };
    st.record.snapshots.push(snap);
    st.touched();
    return snap;
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
      this.journal?.changedOutside(st);
    } finally {
      release();
    }
    await this.meta.commit();
  }
}
