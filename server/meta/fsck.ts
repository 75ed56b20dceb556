// The consistency check (dm-thin's thin_check for Shoal): recomputes every refcount from the
// maps and compares it with what the metadata records.
//   - every node reachable from a volume, snapshot, intent or the reclaim queue exists and has
//     the refcount its parents give it; no node exists that nothing reaches (leak);
//   - every chunk a leaf references has a record with exactly that many references; no record
//     exists that nothing references (leak); no referenced slot is on the free list;
//   - each volume's and snapshot's mapped-chunk count and the live-chunk total are right;
//   - the chunk store can serve every live chunk (it checks itself).
// Run with nothing uncommitted (the daemon commits first). Other layers add their own checks
// (the dedup index: dedup/dedup-check.ts) to the same report.
import { FANOUT, FIRST_SLOT } from './map-node.js';
import type { MetaStore } from './meta-store.js';
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

export async function checkMetadata(meta: MetaStore, store: ChunkStore, errors = new FsckErrors()): Promise<FsckReport> {
  const err = (s: string) => errors.add(s);
  const nodeRefs = new Map<number, number>(); // expected
  const chunkRefs = new Map<number, number>(); // expected
  const visited = new Set<number>();
  let volumes = 0;
  let snapshots = 0;

  // Visits each distinct node once, adding one reference to each of its children.
  const visit = (id: number, expectLevel: number, where: string): number => {
    if (visited.has(id)) return -1;
    visited.add(id);
    let n;
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
    let mapped = 0;
    for (let i = 0; i < FANOUT; i++) {
      const v = n.entries[i];
      if (v === 0) continue;
      if (n.level > 0) {
        nodeRefs.set(v, (nodeRefs.get(v) ?? 0) + 1);
        const m = visit(v, n.level - 1, where);
        if (m >= 0) mapped += m;
        else mapped += cachedMapped.get(v) ?? 0;
      } else if (v >= FIRST_SLOT) {
        chunkRefs.set(v, (chunkRefs.get(v) ?? 0) + 1);
        mapped++;
      }
    }
    cachedMapped.set(id, mapped);
    return mapped;
  };
  const cachedMapped = new Map<number, number>();

  const checkRoot = (r: RootRecord, where: string) => {
    if (r.root === 0) {
      if (r.mapped !== 0) err(`${where}: maps nothing but records ${r.mapped} mapped chunks`);
      return;
    }
    nodeRefs.set(r.root, (nodeRefs.get(r.root) ?? 0) + 1);
    const m = visit(r.root, r.levels - 1, where);
    const mapped = m >= 0 ? m : cachedMapped.get(r.root) ?? 0;
    if (mapped !== r.mapped) err(`${where}: maps ${mapped} stored chunks but records ${r.mapped}`);
  };

  for (const v of meta.volumes.values()) {
    volumes++;
    checkRoot(v, `volume ${v.name}`);
    for (const s of v.snapshots) {
      snapshots++;
      checkRoot(s, `snapshot ${v.name}@${s.name}`);
    }
  }
  // An operation in progress (an intent left by a crash, rolled forward at start) holds roots too.
  for (const r of meta.intents.all()) r.roots.forEach((root, i) => checkRoot(root, `intent ${r.id} (${r.kind}) root ${i}`));
  // Nodes waiting for reclaim have no parents but still hold their children.
  for (const id of meta.nodes.reclaimQueue()) {
    if (!nodeRefs.has(id)) nodeRefs.set(id, 0);
    visit(id, -1, `reclaim queue`);
  }

  let checkedNodes = 0;
  for (const [id, expected] of nodeRefs) {
    checkedNodes++;
    const actual = meta.nodes.refCount(id);
    if (actual !== expected) err(`map node ${id}: refcount is ${actual}, but ${expected} parent(s) reference it`);
  }
  for (const id of meta.nodes.allIds()) if (!visited.has(id)) err(`map node ${id} is leaked: nothing references it`);
  for (const [id, n] of meta.nodes.allRefs()) if (!nodeRefs.has(id) && n !== 0) err(`map node ${id} has refcount ${n} but nothing references it`);

  let checkedChunks = 0;
  let live = 0;
  const free = new Set<number>(meta.slots.allFree());
  let recordMax = -1;
  for (const [slot, rec] of meta.chunks.all()) {
    checkedChunks++;
    live++;
    if (slot > recordMax) recordMax = slot;
    const expected = chunkRefs.get(slot) ?? 0;
    if (expected === 0) err(`chunk ${slot} is leaked: its record says ${rec.refs} reference(s) but no map references it`);
    else if (rec.refs !== expected) err(`chunk ${slot}: refcount is ${rec.refs}, but ${expected} map entr${expected === 1 ? 'y references' : 'ies reference'} it`);
    if (slot >= meta.slotLimit) err(`chunk ${slot} is beyond the allocated slots (${meta.slotLimit})`);
    if (free.has(slot)) err(`chunk ${slot} is live but also on the free list`);
  }
  for (const [slot, n] of chunkRefs) if (!meta.chunks.get(slot)) err(`chunk ${slot} is referenced by ${n} map entr${n === 1 ? 'y' : 'ies'} but is missing (no chunk record)`);
  if (live !== meta.liveChunks) err(`the superblock counts ${meta.liveChunks} live chunks, but ${live} chunk records exist`);
  for (const slot of free) if (slot >= meta.slotLimit || slot < FIRST_SLOT) err(`free slot ${slot} is outside the allocated range`);

  // The store must serve every chunk the metadata records (and every one a map references).
  let maxSlot = -1;
  for (const s of chunkRefs.keys()) if (s > maxSlot) maxSlot = s;
  if (recordMax > maxSlot) maxSlot = recordMax;
  const slots = new Set(chunkRefs.keys());
  for (const [slot] of meta.chunks.all()) slots.add(slot);
  for (const e of await store.check({ count: Math.max(live, chunkRefs.size), maxSlot, slots })) err(e);

  return { ok: errors.list.length === 0, checkedVolumes: volumes, checkedSnapshots: snapshots, checkedNodes, checkedChunks, errors: errors.list };
}
