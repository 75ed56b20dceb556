// The consistency check (dm-thin's thin_check for Shoal): recomputes every refcount from the
// maps and compares it with what the metadata records.
//   - every node reachable from a volume, snapshot, intent or the reclaim queue exists and has
//     the refcount its parents give it; no node exists that nothing reaches (leak);
//   - every chunk a leaf references has a record with exactly that many references; no record
//     exists that nothing references (leak); no referenced slot is on the free list;
//   - each volume's and snapshot's mapped-chunk count and the live-chunk total are right;
//   - the chunk store can serve every live chunk (it checks itself).
// Run with nothing uncommitted and nothing changing (the daemon commits first and holds changes
// back). The walk yields to the event loop between slices and counts what it has checked, so the
// API can show its progress. Other layers add their own checks (the dedup index:
// dedup/dedup-check.ts) to the same report and progress.
import { FANOUT, FIRST_SLOT, type MapNode } from './map-node.js';
import type { MetaStore } from './meta-store.js';
import { Slicer } from './pacing.js';
import type { RootRecord } from './volume-records.js';
import type { ChunkStore } from '../store/chunk-store.js';

/** What a consistency check found (REST POST /v1/fsck, `shoal fsck`). */
export interface FsckReport {
  ok: boolean;
  checkedVolumes: number;
  checkedSnapshots: number;
  checkedNodes: number;
  checkedChunks: number;
  /** One sentence per problem. */
  errors: string[];
}

const MAX_ERRORS = 1000;

/** Collects problems up to MAX_ERRORS (a damaged store could have millions). */
export class FsckErrors {
  readonly list: string[] = [];
  add(s: string): void {
    if (this.list.length < MAX_ERRORS) this.list.push(s);
  }
}

/** What a check has covered so far: the dedup index, then the maps (nodes), then chunk records, then the store. */
export interface FsckProgress {
  phase: 'index' | 'maps' | 'chunks' | 'store';
  checkedIndexEntries: number;
  totalIndexEntries: number;
  checkedNodes: number;
  totalNodes: number;
  checkedChunks: number;
  totalChunks: number;
}

export function newFsckProgress(meta: MetaStore, totalIndexEntries = 0): FsckProgress {
  return {
    phase: 'index',
    checkedIndexEntries: 0,
    totalIndexEntries,
    checkedNodes: 0,
    totalNodes: meta.nodes.storedCount(),
    checkedChunks: 0,
    totalChunks: meta.liveChunks,
  };
}

/** Slice length of a check inside the daemon: short enough that NBD reads on other volumes go on. */
export const FSCK_SLICE_MS = 10;

export interface FsckOptions {
  errors?: FsckErrors;
  progress?: FsckProgress;
  slicer?: Slicer;
}

interface Frame {
  id: number;
  n: MapNode;
  i: number;
  mapped: number;
}

export async function checkMetadata(meta: MetaStore, store: ChunkStore, opts: FsckOptions = {}): Promise<FsckReport> {
  const errors = opts.errors ?? new FsckErrors();
  const progress = opts.progress ?? newFsckProgress(meta);
  const slicer = opts.slicer ?? new Slicer(FSCK_SLICE_MS);
  const err = (s: string) => errors.add(s);
  const nodeRefs = new Map<number, number>(); // expected
  const chunkRefs = new Map<number, number>(); // expected
  const visited = new Set<number>();
  const cachedMapped = new Map<number, number>();
  let volumes = 0;
  let snapshots = 0;
  progress.phase = 'maps';

  // A node seen for the first time becomes a frame to walk; one seen before (or unreadable) is
  // just its stored-chunk count. Each distinct node is walked once.
  const enter = (id: number, expectLevel: number, where: string): Frame | number => {
    if (visited.has(id)) return cachedMapped.get(id) ?? 0;
    visited.add(id);
    progress.checkedNodes++;
    let n: MapNode;
    try {
      if (!meta.nodes.has(id)) {
        err(`${where}: map node ${id} is referenced but missing`);
        return 0;
      }
      n = meta.nodes.get(id);
    } catch (e) {
      err(`${where}: map node ${id} cannot be read: ${(e as Error).message}`);
      return 0;
    }
    if (expectLevel >= 0 && n.level !== expectLevel) err(`${where}: map node ${id} is at level ${n.level}, expected ${expectLevel}`);
    return { id, n, i: 0, mapped: 0 };
  };

  // Depth first with an explicit stack (so it can pause between slices), adding one reference to
  // each child of each node; returns the stored chunks under `id`.
  const walk = async (id: number, expectLevel: number, where: string): Promise<number> => {
    const first = enter(id, expectLevel, where);
    if (typeof first === 'number') return first;
    const stack: Frame[] = [first];
    let mappedUnderRoot = 0;
    while (stack.length > 0) {
      const f = stack[stack.length - 1]!;
      const e = f.n.entries;
      let child: Frame | null = null;
      while (f.i < FANOUT && child === null) {
        const v = e[f.i++]!;
        if (v === 0) continue;
        if (f.n.level > 0) {
          nodeRefs.set(v, (nodeRefs.get(v) ?? 0) + 1);
          const c = enter(v, f.n.level - 1, where);
          if (typeof c === 'number') f.mapped += c;
          else child = c;
        } else if (v >= FIRST_SLOT) {
          chunkRefs.set(v, (chunkRefs.get(v) ?? 0) + 1);
          f.mapped++;
        }
      }
      if (child) {
        stack.push(child);
      } else {
        stack.pop();
        cachedMapped.set(f.id, f.mapped);
        if (stack.length > 0) stack[stack.length - 1]!.mapped += f.mapped;
        else mappedUnderRoot = f.mapped;
      }
      const pause = slicer.tick();
      if (pause) await pause;
    }
    return mappedUnderRoot;
  };

  const checkRoot = async (r: RootRecord, where: string) => {
    if (r.root === 0) {
      if (r.mapped !== 0) err(`${where}: maps nothing but records ${r.mapped} mapped chunks`);
      return;
    }
    nodeRefs.set(r.root, (nodeRefs.get(r.root) ?? 0) + 1);
    const mapped = await walk(r.root, r.levels - 1, where);
    if (mapped !== r.mapped) err(`${where}: maps ${mapped} stored chunks but records ${r.mapped}`);
  };

  for (const v of [...meta.volumes.values()]) {
    volumes++;
    await checkRoot(v, `volume ${v.name}`);
    for (const s of v.snapshots) {
      snapshots++;
      await checkRoot(s, `snapshot ${v.name}@${s.name}`);
    }
  }
  // An operation in progress (an intent left by a crash, rolled forward at start) holds roots too.
  for (const r of meta.intents.all()) for (const [i, root] of r.roots.entries()) await checkRoot(root, `intent ${r.id} (${r.kind}) root ${i}`);
  // Nodes waiting for reclaim have no parents but still hold their children.
  for (const id of [...meta.nodes.reclaimQueue()]) {
    if (!nodeRefs.has(id)) nodeRefs.set(id, 0);
    await walk(id, -1, `reclaim queue`);
  }

  let checkedNodes = 0;
  for (const [id, expected] of nodeRefs) {
    checkedNodes++;
    const actual = meta.nodes.refCount(id);
    if (actual !== expected) err(`map node ${id}: refcount is ${actual}, but ${expected} parent(s) reference it`);
    const pause = slicer.tick();
    if (pause) await pause;
  }
  for (const id of meta.nodes.allIds()) {
    if (!visited.has(id)) err(`map node ${id} is leaked: nothing references it`);
    const pause = slicer.tick();
    if (pause) await pause;
  }
  for (const [id, n] of meta.nodes.allRefs()) {
    if (!nodeRefs.has(id) && n !== 0) err(`map node ${id} has refcount ${n} but nothing references it`);
    const pause = slicer.tick();
    if (pause) await pause;
  }

  progress.phase = 'chunks';
  // Every loop over all chunks rests between slices: the daemon's clients wait for no pass of them.
  let live = 0;
  const free = new Set<number>();
  for (const slot of meta.slots.allFree()) {
    if (free.has(slot)) err(`slot ${slot} is on the free list twice`);
    free.add(slot);
    if (slot >= meta.slotLimit || slot < FIRST_SLOT) err(`free slot ${slot} is outside the allocated range`);
    const pause = slicer.tick();
    if (pause) await pause;
  }
  // Every slot a record or a map names: the store must serve each.
  const slots = new Set<number>();
  let maxSlot = -1;
  for (const [slot, rec] of meta.chunks.all()) {
    progress.checkedChunks++;
    live++;
    slots.add(slot);
    if (slot > maxSlot) maxSlot = slot;
    const expected = chunkRefs.get(slot) ?? 0;
    if (expected === 0) err(`chunk ${slot} is leaked: its record says ${rec.refs} reference(s) but no map references it`);
    else if (rec.refs !== expected) err(`chunk ${slot}: refcount is ${rec.refs}, but ${expected} map entr${expected === 1 ? 'y references' : 'ies reference'} it`);
    if (slot >= meta.slotLimit) err(`chunk ${slot} is beyond the allocated slots (${meta.slotLimit})`);
    if (free.has(slot)) err(`chunk ${slot} is live but also on the free list`);
    const pause = slicer.tick();
    if (pause) await pause;
  }
  for (const [slot, n] of chunkRefs) {
    if (!slots.has(slot)) {
      err(`chunk ${slot} is referenced by ${n} map entr${n === 1 ? 'y' : 'ies'} but is missing (no chunk record)`);
      slots.add(slot);
      if (slot > maxSlot) maxSlot = slot;
    }
    const pause = slicer.tick();
    if (pause) await pause;
  }
  if (live !== meta.liveChunks) err(`the superblock counts ${meta.liveChunks} live chunks, but ${live} chunk records exist`);

  progress.phase = 'store';
  // The store must serve every chunk the metadata records (and every one a map references).
  for (const e of await store.check({ count: Math.max(live, chunkRefs.size), maxSlot, slots })) err(e);

  return { ok: errors.list.length === 0, checkedVolumes: volumes, checkedSnapshots: snapshots, checkedNodes, checkedChunks: progress.checkedChunks, errors: errors.list };
}
