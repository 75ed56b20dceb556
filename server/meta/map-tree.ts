// Copy-on-write operations on a volume's map (a radix tree of MapNodes) with exact refcounts,
// in the manner of dm-thin: a node's refcount counts the parents (and roots) that point at it,
// and a chunk's refcount counts the leaf entries that point at it. Sharing a whole tree (a
// snapshot, a clone) is one increment on its root: O(1) whatever the volume's size. A write to
// a shared node copies that node once, adding one reference to each of its children.
//
// All functions here are synchronous: a map changes between two awaits, never across one, so a
// snapshot taken between two operations sees each of them whole.
import { ShoalError } from '../errors.js';
import { FANOUT, FIRST_SLOT, HOLE, levelsFor, type MapNode } from './map-node.js';
import type { MetaStore } from './meta-store.js';
import type { RootRecord } from './volume-records.js';

const POW: number[] = [];
for (let l = 0; l <= 8; l++) POW.push(FANOUT ** l);

/** Index of chunk `ci` within its node at `level`. (Chunk indices exceed 2^32: no bit ops.) */
function slotAt(ci: number, level: number): number {
  return Math.floor(ci / POW[level]) % FANOUT;
}

export function isStored(v: number): boolean {
  return v >= FIRST_SLOT;
}

/** The leaf entry for chunk index `ci` (HOLE, ZERO_CHUNK or a slot). */
export function lookup(meta: MetaStore, r: RootRecord, ci: number): number {
  let id = r.root;
  if (id === 0) return HOLE;
  if (ci >= POW[r.levels]) return HOLE;
  for (let level = r.levels - 1; level >= 0; level--) {
    const n = meta.nodes.get(id);
    const v = n.entries[slotAt(ci, level)];
    if (level === 0) return v;
    if (v === 0) return HOLE;
    id = v;
  }
  return HOLE;
}

/**
 * The entries of the leaf covering chunk `ci`, or null where the whole leaf is a hole.
 * A multi-chunk read walks the tree once per leaf (256 chunks), not once per chunk.
 */
export function leafEntries(meta: MetaStore, r: RootRecord, ci: number): Float64Array | null {
  let id = r.root;
  if (id === 0 || ci >= POW[r.levels]) return null;
  for (let level = r.levels - 1; level > 0; level--) {
    id = meta.nodes.get(id).entries[slotAt(ci, level)];
    if (id === 0) return null;
  }
  return meta.nodes.get(id).entries;
}

/** Makes `id` private to one parent: copies it if shared. Returns the id to use. */
function ensurePrivate(meta: MetaStore, id: number): MapNode {
  const n = meta.nodes.get(id);
  if (meta.nodes.refCount(id) <= 1) return n;
  const copy = meta.nodes.create(n.level, n.entries);
  const e = copy.entries;
  for (let i = 0; i < FANOUT; i++) {
    const v = e[i];
    if (v === 0) continue;
    if (n.level > 0) meta.nodes.inc(v);
    else if (isStored(v)) meta.chunks.inc(v);
  }
  meta.nodes.dec(id);
  return copy;
}

/** Makes the root private, creating it if the map is empty. */
function writableRoot(meta: MetaStore, r: RootRecord): MapNode {
  if (r.root === 0) {
    const n = meta.nodes.create(r.levels - 1);
    r.root = n.id;
    return n;
  }
  const n = ensurePrivate(meta, r.root);
  r.root = n.id;
  return n;
}

/** The private leaf holding chunk `ci`, copying shared nodes on the way down. */
function writableLeaf(meta: MetaStore, r: RootRecord, ci: number): MapNode {
  let node = writableRoot(meta, r);
  for (let level = r.levels - 1; level > 0; level--) {
    const i = slotAt(ci, level);
    const child = node.entries[i];
    let next: MapNode;
    if (child === 0) {
      next = meta.nodes.create(level - 1);
    } else {
      next = ensurePrivate(meta, child);
      if (next.id === child) {
        node = next;
        continue;
      }
    }
    node.entries[i] = next.id;
    meta.nodes.markDirty(node.id);
    node = next;
  }
  return node;
}

/**
 * Points chunk `ci` at `value`. The caller has already taken the reference that `value`
 * (if stored) now holds; the old value's reference is dropped here.
 */
export function setEntry(meta: MetaStore, r: RootRecord, ci: number, value: number): void {
  if (ci >= POW[r.levels]) throw new ShoalError('out_of_range', `chunk ${ci} is outside the map`);
  const leaf = writableLeaf(meta, r, ci);
  const i = slotAt(ci, 0);
  const old = leaf.entries[i];
  if (old === value) {
    if (isStored(value)) meta.chunks.dec(value); // the caller's extra reference
    return;
  }
  leaf.entries[i] = value;
  meta.nodes.markDirty(leaf.id);
  if (isStored(old)) {
    r.mapped--;
    meta.chunks.dec(old);
  }
  if (isStored(value)) r.mapped++;
}

/** Releases every entry for chunk indices in [from, to): whole subtrees by one decrement. */
export function releaseRange(meta: MetaStore, r: RootRecord, from: number, to: number): void {
  to = Math.min(to, POW[r.levels]);
  if (r.root === 0 || from >= to) return;
  if (from === 0 && to >= POW[r.levels]) {
    meta.nodes.dec(r.root, r.mapped);
    r.mapped = 0;
    r.root = 0;
    return;
  }
  const root = writableRoot(meta, r);
  releaseIn(meta, r, root, 0, from, to);
}

function releaseIn(meta: MetaStore, r: RootRecord, node: MapNode, base: number, from: number, to: number): void {
  const childSpan = POW[node.level];
  const first = Math.max(0, Math.floor((from - base) / childSpan));
  const last = Math.min(FANOUT - 1, Math.floor((to - 1 - base) / childSpan));
  let changed = false;
  for (let i = first; i <= last; i++) {
    const v = node.entries[i];
    if (v === 0) continue;
    const cBase = base + i * childSpan;
    const cEnd = cBase + childSpan;
    if (node.level === 0) {
      if (isStored(v)) {
        r.mapped--;
        meta.chunks.dec(v);
      }
      node.entries[i] = 0;
      changed = true;
    } else if (from <= cBase && to >= cEnd) {
      const m = countMapped(meta, v);
      r.mapped -= m;
      meta.nodes.dec(v, m);
      node.entries[i] = 0;
      changed = true;
    } else {
      const child = ensurePrivate(meta, v);
      if (child.id !== v) {
        node.entries[i] = child.id;
        changed = true;
      }
      releaseIn(meta, r, child, cBase, from, to);
    }
  }
  if (changed) meta.nodes.markDirty(node.id);
}

/** Stored-chunk entries under a node (walks it: used when a subtree is released whole). */
function countMapped(meta: MetaStore, id: number): number {
  const n = meta.nodes.get(id);
  let c = 0;
  const e = n.entries;
  if (n.level === 0) {
    for (let i = 0; i < FANOUT; i++) if (e[i] >= FIRST_SLOT) c++;
  } else {
    for (let i = 0; i < FANOUT; i++) if (e[i] !== 0) c += countMapped(meta, e[i]);
  }
  return c;
}

/** A new root record sharing `src`'s map (snapshot, clone): one increment. */
export function shareRoot(meta: MetaStore, src: RootRecord): RootRecord {
  if (src.root !== 0) meta.nodes.inc(src.root);
  return { root: src.root, levels: src.levels, size: src.size, mapped: src.mapped, createdAt: new Date().toISOString() };
}

/** Drops a root's reference to its map (the GC releases what nothing else uses). */
export function dropRoot(meta: MetaStore, r: RootRecord): void {
  if (r.root !== 0) meta.nodes.dec(r.root, r.mapped);
  r.root = 0;
  r.mapped = 0;
}

/** Grows the tree so it can map `chunks` indices (a new root above the old one). */
export function growLevels(meta: MetaStore, r: RootRecord, chunks: number): void {
  const need = levelsFor(chunks);
  while (r.levels < need) {
    if (r.root !== 0) {
      const top = meta.nodes.create(r.levels);
      top.entries[0] = r.root; // the old root's reference moves to the new parent
      meta.nodes.markDirty(top.id);
      r.root = top.id;
    }
    r.levels++;
  }
}

/** The node at `level` covering chunk `ci` in `r` (0 if absent). */
function nodeAt(meta: MetaStore, r: RootRecord, level: number, ci: number): number {
  if (level >= r.levels) return 0;
  let id = r.root;
  for (let l = r.levels - 1; l > level && id !== 0; l--) id = meta.nodes.get(id).entries[slotAt(ci, l)];
  return id;
}

/**
 * Makes dst's chunks [dstFrom, dstFrom+count) map what src's chunks [srcFrom, ...) map.
 * Where both sides align on a whole subtree, the subtree is shared by one increment.
 * Returns the number of chunk entries that now share a stored chunk.
 */
export function shareChunks(meta: MetaStore, dst: RootRecord, src: RootRecord, dstFrom: number, srcFrom: number, count: number): void {
  if (count <= 0) return;
  const dstTo = dstFrom + count;
  // Release first: the destination range takes exactly the source's entries.
  releaseRange(meta, dst, dstFrom, dstTo);
  const root = writableRoot(meta, dst);
  shareIn(meta, dst, src, root, 0, dstFrom, dstTo, dstFrom - srcFrom);
}

function shareIn(meta: MetaStore, dst: RootRecord, src: RootRecord, node: MapNode, base: number, from: number, to: number, delta: number): void {
  const childSpan = POW[node.level];
  const first = Math.max(0, Math.floor((from - base) / childSpan));
  const last = Math.min(FANOUT - 1, Math.floor((to - 1 - base) / childSpan));
  let changed = false;
  for (let i = first; i <= last; i++) {
    const cBase = base + i * childSpan;
    const cEnd = cBase + childSpan;
    if (node.level === 0) {
      const v = lookup(meta, src, cBase - delta);
      if (v !== 0) {
        if (isStored(v)) {
          meta.chunks.inc(v);
          dst.mapped++;
        }
        node.entries[i] = v;
        changed = true;
      }
      continue;
    }
    const srcBase = cBase - delta;
    if (from <= cBase && to >= cEnd && srcBase % childSpan === 0) {
      // Whole child subtree, aligned on both sides: share the source's node.
      const s = nodeAt(meta, src, node.level - 1, srcBase);
      if (s !== 0) {
        meta.nodes.inc(s);
        dst.mapped += countMapped(meta, s);
        node.entries[i] = s; // dst's entry was released above, so it was a hole
        changed = true;
      }
      continue;
    }
    const childId = node.entries[i];
    let child: MapNode;
    if (childId === 0) {
      child = meta.nodes.create(node.level - 1);
      node.entries[i] = child.id;
      changed = true;
    } else {
      child = ensurePrivate(meta, childId);
      if (child.id !== childId) {
        node.entries[i] = child.id;
        changed = true;
      }
    }
    shareIn(meta, dst, src, child, cBase, from, to, delta);
  }
  if (changed) meta.nodes.markDirty(node.id);
}

/**
 * Calls `fn(ci, value)` for every non-hole leaf entry with ci in [from, to), in order, skipping
 * empty subtrees. `fn` returns false to stop early.
 */
export function forEachEntry(meta: MetaStore, r: RootRecord, from: number, to: number, fn: (ci: number, v: number) => boolean | void): void {
  if (r.root === 0) return;
  walk(meta, r.root, r.levels - 1, 0, from, Math.min(to, POW[r.levels]), fn);
}

function walk(meta: MetaStore, id: number, level: number, base: number, from: number, to: number, fn: (ci: number, v: number) => boolean | void): boolean {
  const n = meta.nodes.get(id);
  const childSpan = POW[level];
  const first = Math.max(0, Math.floor((from - base) / childSpan));
  const last = Math.min(FANOUT - 1, Math.floor((to - 1 - base) / childSpan));
  for (let i = first; i <= last; i++) {
    const v = n.entries[i];
    if (v === 0) continue;
    if (level === 0) {
      if (fn(base + i, v) === false) return false;
    } else if (!walk(meta, v, level - 1, base + i * childSpan, from, to, fn)) return false;
  }
  return true;
}

