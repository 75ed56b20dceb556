// Map nodes and their refcounts (dm-thin refcounts its b-tree nodes the same way): a node's
// refcount counts the parents and roots that point at it. Nodes read or written stay in memory
// (clean ones may be dropped by trim); changes since the last commit are overlays that the
// commit pipeline writes. A node whose refcount reaches zero joins the reclaim queue, kept in the
// superblock, and is released by space reclaim a slice at a time.
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';
import { decodeEntries, decodeNode, encodeNode, FANOUT, sparseEntries, type MapNode } from './map-node.js';
import { NodeRecordCache } from './node-record-cache.js';
import type { Superblock } from './superblock.js';

interface Taken {
  bufs: Map<number, Buffer>;
  refs: Map<number, number>; // 0: removed
  deleted: Set<number>;
}

export class NodeStore implements CommitPart<Taken> {
  private readonly cache = new Map<number, MapNode>();
  // Clean nodes' records read by entriesOf, compactly (node-record-cache.ts).
  private readonly records = new NodeRecordCache();
  private dirty = new Set<number>();
  private deleted = new Set<number>();
  private refs = new Map<number, number>();
  // Committed refcounts of nodes read since (a write path checks every node on its way down).
  private readonly refsClean = new Map<number, number>();
  // What a commit in flight took: LMDB does not show it until its transaction is done.
  private committing: Taken | null = null;

  constructor(
    private readonly nodesDb: Database<Buffer, number>,
    private readonly refsDb: Database<number, number>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
  ) {}

  get(id: number): MapNode {
    let n = this.cache.get(id);
    if (n) return n;
    if (this.deleted.has(id) || this.committing?.deleted.has(id)) throw new ShoalError('corrupt_metadata', `map node ${id} was used after it was freed`);
    const buf = this.nodesDb.getBinary(id);
    if (!buf) throw new ShoalError('corrupt_metadata', `map node ${id} is missing from the metadata`);
    n = decodeNode(id, buf);
    this.cache.set(id, n);
    return n;
  }

  /**
   * The non-zero entries of node `id` into idx/val (see decodeEntries), returning how many. A node
   * with no uncommitted change is read from its record as stored (kept compactly for the next
   * walk), not decoded to 256 entries: for walks that visit many nodes once (a diff of two maps),
   * where that costs a third of a cached node's 256-entry scan and keeps the hot nodes in memory.
   */
  entriesOf(id: number, idx: Uint8Array, val: Float64Array): number {
    // First: a kept record is never of a dirty or committing node (markDirty forgets it, and only
    // reads from LMDB are kept).
    const kept = this.records.entriesOf(id, idx, val);
    if (kept >= 0) return kept;
    if (this.dirty.has(id)) return sparseEntries(this.cache.get(id)!.entries, idx, val);
    const pending = this.committing?.bufs.get(id);
    if (pending) return decodeEntries(id, pending, idx, val);
    if (this.deleted.has(id) || this.committing?.deleted.has(id)) throw new ShoalError('corrupt_metadata', `map node ${id} was used after it was freed`);
    const buf = this.nodesDb.getBinaryFast(id); // valid until the next read: decoded at once
    if (!buf) throw new ShoalError('corrupt_metadata', `map node ${id} is missing from the metadata`);
    const n = decodeEntries(id, buf, idx, val);
    this.records.add(id, buf, buf.length);
    return n;
  }

  /** Whether a node record exists (for fsck). */
  has(id: number): boolean {
    if (this.cache.has(id)) return true;
    if (this.deleted.has(id) || this.committing?.deleted.has(id)) return false;
    return this.nodesDb.getBinary(id) !== undefined;
  }

  create(level: number, entries?: Float64Array): MapNode {
    const id = this.sb.nextNode++;
    const node: MapNode = { id, level, entries: entries ? new Float64Array(entries) : new Float64Array(FANOUT) };
    this.cache.set(id, node);
    this.dirty.add(id);
    this.setRefs(id, 1);
    this.pipeline.changed();
    return node;
  }

  markDirty(id: number): void {
    this.dirty.add(id);
    this.records.forget(id);
    this.pipeline.changed();
  }

  refCount(id: number): number {
    let v = this.refs.get(id);
    if (v === undefined && this.committing) v = this.committing.refs.get(id);
    if (v === undefined) v = this.refsClean.get(id);
    if (v === undefined) {
      v = this.refsDb.get(id) ?? 0;
      if (this.refsClean.size > 1_000_000) this.refsClean.clear();
      this.refsClean.set(id, v);
    }
    return v;
  }

  private setRefs(id: number, n: number): void {
    this.refs.set(id, n);
    this.refsClean.set(id, n); // what LMDB will hold once committed
  }

  inc(id: number): void {
    this.setRefs(id, this.refCount(id) + 1);
    this.pipeline.changed();
  }

  /**
   * Drops one reference; at zero the node joins the reclaim queue (its children are released
   * later). `mapped`: the chunk references under it, when the caller knows them (a whole map or
   * subtree let go), for the estimate of what reclaim has left.
   */
  dec(id: number, mapped = 0): void {
    const n = this.refCount(id) - 1;
    if (n < 0) throw new ShoalError('corrupt_metadata', `map node ${id} lost more references than it had`);
    this.setRefs(id, n);
    if (n === 0) {
      this.sb.gcQueue.push(id);
      this.sb.gcPendingChunks = (this.sb.gcPendingChunks ?? 0) + mapped;
    }
    this.pipeline.changed();
  }

  /** Removes a node whose refcount is zero and whose children have been released. */
  remove(id: number): void {
    this.records.forget(id);
    this.cache.delete(id);
    this.dirty.delete(id);
    this.deleted.add(id);
    this.refs.set(id, 0);
    this.refsClean.delete(id);
    // Whatever the estimate still counts was shared elsewhere and will not be released.
    if (this.sb.gcQueue.length === 0) this.sb.gcPendingChunks = 0;
    this.pipeline.changed();
  }

  // ---------------------------------------------------------------- the reclaim queue

  /** Nodes whose refcount reached zero and whose children are still to be released. */
  get reclaimBacklog(): number {
    return this.sb.gcQueue.length;
  }

  /** Chunk references the queue may still release: an upper bound (see Superblock.gcPendingChunks). */
  get reclaimPendingChunks(): number {
    return this.sb.gcQueue.length === 0 ? 0 : Math.max(0, this.sb.gcPendingChunks ?? 0);
  }

  /** Reclaim released `n` chunk references. */
  releasedChunks(n: number): void {
    this.sb.gcPendingChunks = Math.max(0, (this.sb.gcPendingChunks ?? 0) - n);
  }

  /** The node to release next (the queue's last), or undefined. */
  nextToReclaim(): number | undefined {
    const q = this.sb.gcQueue;
    return q.length > 0 ? q[q.length - 1] : undefined;
  }

  /** Takes `id` (the queue's last) off the queue: its release has begun. */
  beginReclaim(id: number): void {
    const q = this.sb.gcQueue;
    if (q[q.length - 1] !== id) throw new ShoalError('internal', `node ${id} is not next in the reclaim queue`);
    q.pop();
    this.pipeline.changed();
  }

  /** Puts a node whose release was cut short back on the queue, released entries zeroed. */
  resumeLater(id: number): void {
    this.sb.gcQueue.push(id);
    this.markDirty(id);
  }

  /** The queue's nodes (fsck: they have no parents but still hold their children). */
  reclaimQueue(): readonly number[] {
    return this.sb.gcQueue;
  }

  // ---------------------------------------------------------------- memory, iteration

  /** Drops clean nodes from memory when more than `max` are held (they reload from LMDB). */
  trim(max: number): void {
    // Not while a commit is in flight: LMDB still holds the older version of nodes it writes.
    if (this.cache.size <= max || this.committing) return;
    for (const id of this.cache.keys()) {
      if (this.cache.size <= max * 0.8) break;
      if (!this.dirty.has(id)) this.cache.delete(id);
    }
  }

  /** How many nodes are stored (LMDB's own count: O(1); fsck's total). */
  storedCount(): number {
    return (this.nodesDb.getStats() as { entryCount: number }).entryCount;
  }

  /** Every stored node id (only meaningful with nothing uncommitted: fsck commits first). */
  *allIds(): Iterable<number> {
    for (const k of this.nodesDb.getKeys()) yield k as number;
  }

  *allRefs(): Iterable<[number, number]> {
    for (const { key, value } of this.refsDb.getRange({})) yield [key as number, value as number];
  }

  // ---------------------------------------------------------------- CommitPart

  take(): Taken | null {
    if (this.dirty.size === 0 && this.refs.size === 0 && this.deleted.size === 0) return null;
    const bufs = new Map<number, Buffer>();
    for (const id of this.dirty) {
      const n = this.cache.get(id);
      if (n) bufs.set(id, encodeNode(n));
    }
    const t: Taken = { bufs, refs: this.refs, deleted: this.deleted };
    this.committing = t;
    this.dirty = new Set();
    this.deleted = new Set();
    this.refs = new Map();
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const [id, buf] of t.bufs) w.put('nodes', this.nodesDb, id, buf);
    for (const id of t.deleted) w.remove('nodes', this.nodesDb, id);
    for (const [id, n] of t.refs) {
      if (n === 0) w.remove('node-refs', this.refsDb, id);
      else w.put('node-refs', this.refsDb, id, n);
    }
  }

  settle(): void {
    this.committing = null;
  }
}
