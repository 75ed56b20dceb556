// The consistency check (dm-thin's thin_check for Shoal): recomputes every refcount from the
// maps and compares it with what the metadata records.
//   - every node reachable from a volume, snapshot or the GC queue exists and has the refcount
//     its parents give it; no node exists that nothing reaches (leak);
//   - every chunk a leaf references has a record with exactly that many references; no record
//     exists that nothing references (leak); no referenced slot is on the free list;
//   - the fingerprint index points only at live chunks with that fingerprint;
//   - each volume's and snapshot's mapped-chunk count and the live-chunk total are right.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { FANOUT, FIRST_SLOT } from './map-node.js';
import { MetaStore, fpKey, type RootRecord } from './meta-store.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { LocalChunkStore } from '../store/local-chunk-store.js';

export interface FsckResult {
  ok: boolean;
  checkedVolumes: number;
  checkedSnapshots: number;
  checkedNodes: number;
  checkedChunks: number;
  errors: string[];
}

const MAX_ERRORS = 1000;

export async function checkMetadata(meta: MetaStore, store: ChunkStore): Promise<FsckResult> {
  const errors: string[] = [];
  const err = (s: string) => {
    if (errors.length < MAX_ERRORS) errors.push(s);
  };
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
      if (!meta.hasNode(id)) {
        err(`${where}: map node ${id} is referenced but missing`);
        return 0;
      }
      n = meta.getNode(id);
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
  // Nodes waiting for the GC have no parents but still hold their children.
  for (const id of meta.sb.gcQueue) {
    if (!nodeRefs.has(id)) nodeRefs.set(id, 0);
    visit(id, -1, `GC queue`);
  }

  let checkedNodes = 0;
  for (const [id, expected] of nodeRefs) {
    checkedNodes++;
    const actual = meta.nodeRefCount(id);
    if (actual !== expected) err(`map node ${id}: refcount is ${actual}, but ${expected} parent(s) reference it`);
  }
  for (const id of meta.allNodeIds()) if (!visited.has(id)) err(`map node ${id} is leaked: nothing references it`);
  for (const [id, n] of meta.allNodeRefs()) if (!nodeRefs.has(id) && n !== 0) err(`map node ${id} has refcount ${n} but nothing references it`);

  let checkedChunks = 0;
  let live = 0;
  const free = new Set<number>(meta.allFreeSlots());
  for (const [slot, rec] of meta.allChunkRecords()) {
    checkedChunks++;
    live++;
    const expected = chunkRefs.get(slot) ?? 0;
    if (expected === 0) err(`chunk ${slot} is leaked: its record says ${rec.refs} reference(s) but no map references it`);
    else if (rec.refs !== expected) err(`chunk ${slot}: refcount is ${rec.refs}, but ${expected} map entr${expected === 1 ? 'y references' : 'ies reference'} it`);
    if (slot >= meta.sb.nextSlot) err(`chunk ${slot} is beyond the allocated slots (${meta.sb.nextSlot})`);
    if (free.has(slot)) err(`chunk ${slot} is live but also on the free list`);
  }
  for (const [slot, n] of chunkRefs) if (!meta.getChunk(slot)) err(`chunk ${slot} is referenced by ${n} map entr${n === 1 ? 'y' : 'ies'} but is missing (no chunk record)`);
  if (live !== meta.sb.liveChunks) err(`the superblock counts ${meta.sb.liveChunks} live chunks, but ${live} chunk records exist`);
  for (const slot of free) if (slot >= meta.sb.nextSlot || slot < FIRST_SLOT) err(`free slot ${slot} is outside the allocated range`);

  for (const [key, slot] of meta.allFingerprints()) {
    const rec = meta.getChunk(slot);
    if (!rec) err(`the fingerprint index points at chunk ${slot}, which is not live`);
    else if (!fpKey(rec.domain, rec.fp, rec.fpOff).equals(key)) err(`the fingerprint index entry for chunk ${slot} does not match its record`);
  }

  let maxSlot = -1;
  for (const s of chunkRefs.keys()) if (s > maxSlot) maxSlot = s;
  for (const e of await store.check({ count: chunkRefs.size, maxSlot })) err(e);

  return { ok: errors.length === 0, checkedVolumes: volumes, checkedSnapshots: snapshots, checkedNodes, checkedChunks, errors };
}

/** `shoal fsck DATA_DIR`: checks a data directory that no daemon is using. */
export async function fsckDataDir(dir: string): Promise<FsckResult> {
  if (!existsSync(join(dir, 'meta.lmdb'))) {
    return { ok: false, checkedVolumes: 0, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 0, errors: [`${dir} is not a Shoal data directory (no meta.lmdb)`] };
  }
  let meta: MetaStore;
  try {
    meta = MetaStore.open(dir, { chunkSize: 0, create: false });
  } catch (e) {
    return { ok: false, checkedVolumes: 0, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 0, errors: [(e as Error).message] };
  }
  const store = await LocalChunkStore.open(dir, meta.chunkSize, { readOnly: true });
  try {
    return await checkMetadata(meta, store);
  } finally {
    await store.close();
    await meta.env.close();
  }
}
