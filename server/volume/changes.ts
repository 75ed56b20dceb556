// Changed-block tracking: which bytes of a volume (or of one of its snapshots) may differ from an
// older snapshot, for incremental backups. Listed over REST (GET /v1/volumes/{name}/changes) and
// served over NBD as the meta context qemu:dirty-bitmap:BASE (dirty = 1, as qemu's).
//
// A base is named SNAPSHOT for a snapshot of the same volume taken before the compared map, or
// ORIGIN@SNAPSHOT for a snapshot of the volume it was cloned from (or that one's origin, and so
// on) taken no later than the clone. The comparison is a diff of the two map trees
// (meta/map-diff.ts), whose cost grows with what changed, not with the volume's size.
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { ShoalError } from '../errors.js';
import { diffMaps } from '../meta/map-diff.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { SnapshotRecord } from '../meta/volume-records.js';
import { EXTENT_DIRTY, type Extent } from './export-port.js';
import type { VolumeState } from './volume-state.js';

/** The meta context name of a base: qemu's namespace for dirty bitmaps. */
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** At most this many extents per block-status reply (as read-path.ts for base:allocation). */
const MAX_EXTENTS = 4096;
/** Map nodes a diff reads between two turns of the event loop (~1-2 ms here): NBD clients go on. */
const SLICE_NODES = 2048;
/** Extents per page of a change list, unless the caller asks for fewer or more (up to the maximum). */
export const DEFAULT_CHANGES_LIMIT = 4096;
export const MAX_CHANGES_LIMIT = 65536;

export interface ChangesQuery {
  since: string; // SNAPSHOT of the volume, or ORIGIN@SNAPSHOT of a volume it was cloned from
  until?: string; // a snapshot of the volume newer than since; the live volume when absent
  offset?: number; // byte offset to list from (a page's `next`); default 0
  limit?: number; // extents per page; default DEFAULT_CHANGES_LIMIT
}

interface ChangedExtent {
  offset: number;
  length: number;
}

export interface ChangeList {
  extents: ChangedExtent[];
  /** Where the next page starts (pass it as the offset), when there are more changes. */
  next?: number;
}

/** A snapshot a map can be compared with, and the volume that holds it. */
export interface Base {
  name: string;
  owner: VolumeState;
  record: SnapshotRecord;
}

export class ChangeTracker {
  constructor(
    private readonly meta: MetaStore,
    private readonly states: ReadonlyMap<string, VolumeState>,
  ) {}

  /** The snapshots the map of `st` (its snapshot `at`, or the live volume) can be compared with. */
  bases(st: VolumeState, at?: SnapshotRecord): Base[] {
    const own = st.record.snapshots;
    const out: Base[] = [];
    const upTo = at === undefined ? own.length : own.indexOf(at);
    for (let i = 0; i < upTo; i++) out.push({ name: own[i].name, owner: st, record: own[i] });
    for (const o of this.origins(st)) for (const s of o.older) out.push({ name: `${o.st.name}@${s.name}`, owner: o.st, record: s });
    return out;
  }

  /** GET /v1/volumes/{name}/changes: the request checked, then a page of the list. */
  query(st: VolumeState, q: ChangesQuery): Promise<ChangeList> {
    if (typeof q.since !== 'string' || q.since === '') throw new ShoalError('invalid_request', 'since must name the snapshot to compare with');
    const until = q.until === undefined ? undefined : st.snapshot(q.until);
    const since = this.base(st, until, q.since);
    const newer = until ?? st.record;
    const offset = q.offset ?? 0;
    const limit = q.limit ?? DEFAULT_CHANGES_LIMIT;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > newer.size)
      throw new ShoalError('invalid_range', `offset ${offset} is not a byte offset within ${until ? `${st.name}@${until.name}` : st.name} (size ${newer.size})`);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_CHANGES_LIMIT) throw new ShoalError('invalid_request', `limit ${limit} is not a number of extents from 1 to ${MAX_CHANGES_LIMIT}`);
    return this.list(since, st, until, offset, limit);
  }

  /**
   * The base named `name` for the map of `st` (its snapshot `at`, or the live volume). Throws
   * snapshot_not_found when there is no such snapshot, invalid_snapshot_range when it is not older.
   */
  base(st: VolumeState, at: SnapshotRecord | undefined, name: string): Base {
    const compared = at === undefined ? st.name : `${st.name}@${at.name}`;
    const sep = name.indexOf('@');
    const volume = sep < 0 ? st.name : name.slice(0, sep);
    const snap = sep < 0 ? name : name.slice(sep + 1);
    if (volume === st.name) {
      const own = st.record.snapshots;
      const i = own.indexOf(st.snapshot(snap));
      if (own[i] === at) throw new ShoalError('invalid_snapshot_range', `since and until are the same snapshot (${snap}): there is nothing to compare`);
      if (at !== undefined && i > own.indexOf(at)) throw new ShoalError('invalid_snapshot_range', `since (${snap}) is newer than until (${at.name}): name the older snapshot in since`);
      return { name, owner: st, record: own[i] };
    }
    const origin = this.origins(st).find((o) => o.st.name === volume);
    if (!origin) throw new ShoalError('snapshot_not_found', `${JSON.stringify(name)} is not a snapshot of ${st.name} or of a volume it was cloned from`);
    const s = origin.st.snapshot(snap);
    if (!origin.older.includes(s))
      throw new ShoalError('invalid_snapshot_range', `${name} was taken after the clone of ${volume} that ${compared} descends from, so it is not older than ${compared}`);
    return { name, owner: origin.st, record: s };
  }

  /**
   * The volumes `st` was cloned from, nearest first, each with its snapshots taken no later than
   * the clone of it was made. A deleted origin ends the chain (its snapshots are gone with it).
   */
  private origins(st: VolumeState): Array<{ st: VolumeState; older: SnapshotRecord[] }> {
    const out: Array<{ st: VolumeState; older: SnapshotRecord[] }> = [];
    const seen = new Set([st.name]);
    let child = st;
    for (let o = child.record.origin; o && !seen.has(o.volume); o = child.record.origin) {
      const parent = this.states.get(o.volume);
      if (!parent) break;
      seen.add(parent.name);
      // A volume of the same name made after the clone is not its origin.
      if (parent.record.createdAt > child.record.createdAt) break;
      out.push({ st: parent, older: parent.record.snapshots.filter((s) => s.createdAt <= child.record.createdAt) });
      child = parent;
    }
    return out;
  }

  /** Up to `limit` extents of the map of `st` (its snapshot `at`, or the live volume) that may differ from `base`, from byte `offset` on. */
  async list(base: Base, st: VolumeState, at: SnapshotRecord | undefined, offset: number, limit: number): Promise<ChangeList> {
    const extents: ChangedExtent[] = [];
    let next: number | undefined;
    await this.forEachChange(base, st, at, offset, Infinity, (s, e) => {
      if (extents.length === limit) {
        next = s;
        return false;
      }
      extents.push({ offset: s, length: e - s });
      return true;
    });
    return next === undefined ? { extents } : { extents, next };
  }

  /** Block status of [offset, offset+length) of the map of `st` (or `at`) against `base`: EXTENT_DIRTY where it may differ. */
  async status(base: Base, st: VolumeState, at: SnapshotRecord | undefined, offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    let pos = offset;
    let full = false;
    const end = await this.forEachChange(base, st, at, offset, offset + length, (s, e) => {
      if (s > pos) out.push({ length: s - pos, flags: 0 });
      out.push({ length: e - s, flags: EXTENT_DIRTY });
      pos = e;
      full = out.length >= MAX_EXTENTS;
      return !full;
    });
    if (!full && pos < end) out.push({ length: end - pos, flags: 0 });
    return out;
  }

  /**
   * Calls `fn(start, end)` for each maximal byte range in [from, to) of the compared map that may
   * differ from `base`, in order; `fn` returns false to stop. Bytes past the end of the base differ.
   * The walk yields the event loop every SLICE_NODES nodes and goes on from where it was; both
   * maps must still be there then. Returns where the compared range ended.
   */
  private async forEachChange(base: Base, st: VolumeState, at: SnapshotRecord | undefined, from: number, to: number, fn: (start: number, end: number) => boolean): Promise<number> {
    const cs = this.meta.chunkSize;
    const older = base.record;
    const newer = at ?? st.record;
    let curStart = -1;
    let curEnd = -1;
    let stopped = false;
    // A range is reported once the next one is known not to touch it.
    const add = (s: number, e: number): boolean => {
      if (curStart >= 0 && s <= curEnd) {
        curEnd = Math.max(curEnd, e);
        return true;
      }
      if (curStart >= 0 && !fn(curStart, curEnd)) return !(stopped = true);
      curStart = s;
      curEnd = e;
      return true;
    };
    for (let ci = Math.floor(from / cs); ; ) {
      // Sizes are read again after each pause: the live volume may have been resized meanwhile.
      to = Math.min(to, newer.size);
      const common = Math.min(to, older.size);
      const end = Math.ceil(common / cs);
      if (ci < end) ci = diffMaps(this.meta, older, newer, ci, end, (f, e) => add(Math.max(f * cs, from), Math.min(e * cs, to)), SLICE_NODES);
      if (stopped) return to;
      if (ci >= end) {
        if (common < to) add(Math.max(common, from), to);
        break;
      }
      await yieldLoop();
      present(base.owner, base.record);
      present(st, at);
    }
    if (!stopped && curStart >= 0) fn(curStart, curEnd);
    return to;
  }
}

/** Throws if the volume, or its snapshot, was deleted while a walk over its map paused. */
function present(st: VolumeState, snap: SnapshotRecord | undefined): void {
  if (snap !== undefined && (st.deleted || !st.record.snapshots.includes(snap)))
    throw new ShoalError('snapshot_not_found', `snapshot ${st.name}@${snap.name} was deleted while its changes were being compared`);
  if (st.deleted) throw new ShoalError('volume_deleted', `volume ${st.name} was deleted while its changes were being compared`);
}
