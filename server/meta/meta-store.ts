// The metadata store: map nodes, their refcounts, chunk records (refcount + fingerprint), the
// fingerprint index, the free-slot list and the volume records, kept in LMDB and changed in
// memory between commits.
//
// Why this shape: every change since the last commit lives in in-memory "dirty" overlays, and
// commit() writes them in one LMDB transaction (atomic, fsynced). A crash therefore always
// finds the metadata of the last commit, whole. Chunk data is written before the metadata that
// references it, and commit() fsyncs the data first, so committed metadata never references
// bytes that are not on disk. A freed slot is reused only after the commit that frees it is
// durable (and after every read that may still be reading it has ended), so committed metadata
// never references a slot that was overwritten.
import { open, type RootDatabase, type Database } from 'lmdb';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../errors.js';
import { decodeNode, encodeNode, FANOUT, FIRST_SLOT, type MapNode } from './map-node.js';
import { FingerprintFilter } from './fingerprint-filter.js';
import { native, type FingerprintTableHandle } from '../native.js';

export const META_VERSION = 1;

export interface RootRecord {
  /** Root map node id, 0 for an empty map. */
  root: number;
  /** Tree height (levels); fixed until a resize grows it. */
  levels: number;
  size: number;
  /** Number of leaf entries that reference a stored chunk (for logical-bytes accounting). */
  mapped: number;
  createdAt: string;
}

export interface SnapshotRecord extends RootRecord {
  name: string;
}

export interface VolumeRecord extends RootRecord {
  name: string;
  domain: string;
  tenant?: string; // absent: no tenant (also every record written before tenants existed)
  origin: { volume: string; snapshot?: string } | null;
  snapshots: SnapshotRecord[];
}

export interface Superblock {
  version: number;
  chunkSize: number;
  nextNode: number;
  nextSlot: number;
  domains: Record<string, number>;
  dedupHits: number;
  liveChunks: number;
  /** Node ids whose refcount reached zero and whose children are still to be released. */
  gcQueue: number[];
  /** Sequence number of the next fingerprint-log record. */
  fpLogNext?: number;
}

export interface ChunkRecord {
  refs: number;
  domain: number;
  /** The 32-byte fingerprint is fp[fpOff..fpOff+32): records made by a write share one buffer of keys. */
  fp: Buffer;
  fpOff: number;
}

const CHUNK_REC_BYTES = 40;
/** A fingerprint-log entry: the 36-byte index key, then the slot (48 bits, big-endian). */
const FP_LOG_ENTRY = 42;

function encodeChunk(c: ChunkRecord): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_REC_BYTES);
  b.writeUInt32LE(c.refs, 0);
  b.writeUInt32LE(c.domain, 4);
  c.fp.copy(b, 8, c.fpOff, c.fpOff + 32);
  return b;
}

/** `b` must be the caller's own bytes (getBinary returns a copy): the record keeps a view of them. */
function decodeChunk(b: Uint8Array): ChunkRecord {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return { refs: buf.readUInt32LE(0), domain: buf.readUInt32LE(4), fp: buf, fpOff: 8 };
}

/** Chunks written with dedup off carry an all-zero fingerprint and are never indexed. */
function isZeroFingerprint(c: ChunkRecord): boolean {
  for (let i = c.fpOff; i < c.fpOff + 32; i++) if (c.fp[i] !== 0) return false;
  return true;
}

export function fpKey(domain: number, fp: Buffer, off = 0): Buffer {
  const k = Buffer.allocUnsafe(36);
  k.writeUInt32BE(domain, 0);
  fp.copy(k, 4, off, off + 32);
  return k;
}

// Overlay marker for "deleted since the last commit".
const GONE = null;

export interface MetaStoreHooks {
  /** A slot's chunk was freed: drop it from caches now (invariant 1). */
  chunkFreed?(slot: number): void;
  /** Called inside commit() before the metadata transaction: make chunk data durable. */
  syncData?(): Promise<void>;
  /** A commit made new fingerprint-log entries durable: they can be indexed now. */
  fingerprintsLogged?(): void;
}

export class MetaStore {
  readonly env: RootDatabase;
  private readonly main: Database<any, string>;
  private readonly nodesDb: Database<Buffer, number>;
  private readonly nodeRefsDb: Database<number, number>;
  private readonly chunksDb: Database<Buffer, number>;
  private readonly fpDb: Database<number, Buffer>;
  private readonly freeDb: Database<number, number>;
  private readonly fpLogDb: Database<Buffer, number>;

  sb!: Superblock;
  readonly volumes = new Map<string, VolumeRecord>();

  // Node cache: every node read or written stays here (clean ones may be dropped by trimNodeCache).
  private readonly nodes = new Map<number, MapNode>();
  private dirtyNodes = new Set<number>();
  private deletedNodes = new Set<number>();
  private nodeRefs = new Map<number, number | null>();
  // Committed refcounts of nodes read since (a write path checks every node on its way down).
  private readonly nodeRefsClean = new Map<number, number>();
  private chunks = new Map<number, ChunkRecord | null>();
  private fps = new Map<string, number | null>(); // key: hex of fpKey
  private freeAdds = new Set<number>();
  private freeDeletes = new Set<number>();
  private volumesDirty = new Set<string>();
  private volumesDeleted = new Set<string>();
  private sbDirty = false;

  // Overlays of a commit in flight: LMDB does not show them until its transaction is done.
  private committing: {
    nodeRefs: Map<number, number | null>;
    chunks: Map<number, ChunkRecord | null>;
    fps: Map<string, number | null>;
    deletedNodes: Set<number>;
  } | null = null;

  /** Slots free and safe to reuse now. */
  private reusable: number[] = [];
  /**
   * Slots freed since the last commit. (Plain numbers: they all get the generation of the commit
   * that makes them durable. An object per freed slot is young garbage that lives until the
   * commit, and scavenges of 5-17 ms were among the stalls other volumes saw while 8 GiB was deleted.)
   */
  private freedSinceCommit: number[] = [];
  /**
   * Slots whose free is durable, one group per commit, waiting for readers of an older
   * generation to finish. (Grouped: every read calls releaseReusable, which now looks at a few
   * groups, not at each of thousands of slots.)
   */
  private awaitingReaders: Array<{ gen: number; slots: number[] }> = [];
  /** decChunk's scratch index key (no Buffer per freed chunk). */
  private readonly freeKey = Buffer.allocUnsafe(36);

  // Reader generations: an operation that may read chunk slots holds a generation; a slot freed
  // at generation g is reused only once no operation holding a generation <= g is running.
  private gen = 1;
  private readonly active = new Map<number, number>();

  private commitChain: Promise<void> = Promise.resolve();
  private holds = 0;
  private holdWaiters: Array<() => void> = [];
  private commitPending: Promise<void> | null = null;
  private changes = 0;
  hooks: MetaStoreHooks = {};
  private closed = false;
  /** Bloom filter in front of the fingerprint index; rebuilt in the background at start. */
  private filter: FingerprintFilter;

  // The fingerprint log. Inserting each new chunk's fingerprint into the on-disk index at write
  // time (a b-tree keyed by random 256-bit values: every commit copies leaf pages all over it)
  // nearly doubled the CPU and added a quarter to the disk writes of a unique sequential write.
  // So new fingerprints go to a log first, as in ZFS's dedup log: one LMDB record per commit
  // holding all of that commit's entries (a sequential append), plus a native hash table in
  // memory that lookups consult first. The index takes them later, in slices, when writes pause or the log
  // grows past FP_LOG_MAX (mergeFingerprintLog, driven by the garbage collector). A crash loses
  // nothing: the log records are committed with the chunks they name and reloaded at start.
  // (The table is native: see addon/src/fingerprint-table.cc for the measurement.)
  private readonly fpLogTable: FingerprintTableHandle = new (native().FingerprintTable)(); // key -> slot, not in fpDb yet
  private fpLogBuf = Buffer.allocUnsafe(64 * FP_LOG_ENTRY); // entries logged since the last commit
  private fpLogLen = 0; // bytes used in fpLogBuf
  private readonly fpLogRecords: Array<{ seq: number; blob: Buffer; next: number }> = []; // durable, oldest first; next: byte offset
  private fpLogDeletes: number[] = []; // records fully merged, to remove in the next commit
  /**
   * Chunks stored or referenced again by writes so far: the collector compares it over time to
   * see writes pause (a write of data already stored logs nothing, but still needs the disk).
   */
  writeActivity = 0;
  private fpLogUnmerged = 0; // entries of durable records not yet looked at by a merge

  private constructor(readonly dir: string, env: RootDatabase) {
    this.env = env;
    this.filter = new FingerprintFilter(0);
    this.main = env.openDB({ name: 'main', encoding: 'msgpack' });
    this.nodesDb = env.openDB({ name: 'nodes', encoding: 'binary' });
    this.nodeRefsDb = env.openDB({ name: 'node-refs', encoding: 'msgpack' });
    this.chunksDb = env.openDB({ name: 'chunks', encoding: 'binary' });
    this.fpDb = env.openDB({ name: 'fingerprints', encoding: 'msgpack', keyEncoding: 'binary' });
    this.freeDb = env.openDB({ name: 'free-slots', encoding: 'msgpack' });
    this.fpLogDb = env.openDB({ name: 'fingerprint-log', encoding: 'binary' });
  }

  /** Opens (or creates, with `chunkSize`) the metadata in `dir`. */
  static open(dir: string, opts: { chunkSize: number; create?: boolean }): MetaStore {
    mkdirSync(dir, { recursive: true });
    let env: RootDatabase;
    try {
      env = open({
        path: join(dir, 'meta.lmdb'),
        maxDbs: 16,
        // Commit resolves only once the transaction is fsynced: the FLUSH reply depends on it.
        overlappingSync: false,
        noSync: false,
        mapSize: 2 ** 40,
        pageSize: 4096,
      } as any);
    } catch (e) {
      throw new ShoalError('corrupt_metadata', `cannot open the metadata in ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const m = new MetaStore(dir, env);
    m.load(opts.chunkSize, opts.create ?? true);
    m.filter = new FingerprintFilter(m.sb.liveChunks * 1.5);
    m.loadFingerprintLog();
    if (opts.create !== false) m.buildFilter(m.filter);
    return m;
  }

  private load(chunkSize: number, create: boolean): void {
    let sb: Superblock | undefined;
    try {
      sb = this.main.get('superblock');
    } catch (e) {
      throw new ShoalError('corrupt_metadata', `the metadata superblock cannot be read: ${(e as Error).message}`);
    }
    if (!sb && !create) throw new ShoalError('corrupt_metadata', `${this.dir} holds no Shoal metadata superblock`);
    if (!sb && ([...this.main.getKeys({ limit: 1 })].length > 0 || [...this.chunksDb.getKeys({ limit: 1 })].length > 0))
      throw new ShoalError('corrupt_metadata', `the metadata in ${this.dir} has records but no superblock: it is damaged (refusing to start over on top of it)`);
    if (!sb) {
      sb = { version: META_VERSION, chunkSize, nextNode: 1, nextSlot: FIRST_SLOT, domains: { default: 1 }, dedupHits: 0, liveChunks: 0, gcQueue: [] };
      this.sb = sb;
      this.main.putSync('superblock', sb);
    } else {
      if (typeof sb !== 'object' || sb.version !== META_VERSION || !Number.isInteger(sb.chunkSize) || !Number.isInteger(sb.nextSlot) || !Number.isInteger(sb.nextNode))
        throw new ShoalError('corrupt_metadata', `the metadata superblock is damaged or of an unknown version (${JSON.stringify(sb)?.slice(0, 200)})`);
      sb.gcQueue ??= [];
      this.sb = sb;
    }
    for (const { key, value } of this.main.getRange({ start: 'volume/', end: 'volume0' })) {
      const v = value as VolumeRecord;
      if (!v || typeof v.name !== 'string' || !Number.isFinite(v.root) || !Array.isArray(v.snapshots))
        throw new ShoalError('corrupt_metadata', `the volume record ${String(key)} is damaged`);
      this.volumes.set(v.name, v);
    }
    for (const key of this.freeDb.getKeys()) this.reusable.push(key as number);
  }

  /**
   * Reads the fingerprint log back after a restart. An entry counts only if its chunk is still
   * live with that fingerprint (it may have been freed, and its slot reused, since it was logged)
   * and the index does not already have it (a record merged in part before a crash).
   */
  private loadFingerprintLog(): void {
    for (const { key, value } of this.fpLogDb.getRange({})) {
      const seq = key as number;
      const blob = Buffer.isBuffer(value) ? Buffer.from(value) : (value as Buffer); // kept for merging: our own copy
      if (!Buffer.isBuffer(blob) || blob.length % FP_LOG_ENTRY !== 0) throw new ShoalError('corrupt_metadata', `fingerprint log record ${seq} is damaged`);
      let live = 0;
      for (let off = 0; off < blob.length; off += FP_LOG_ENTRY) {
        const k = blob.subarray(off, off + 36);
        const slot = blob.readUIntBE(off + 36, 6);
        const b = this.chunksDb.getBinary(slot);
        if (!b) continue;
        const c = decodeChunk(b);
        if (c.refs <= 0 || !fpKey(c.domain, c.fp, c.fpOff).equals(k) || this.fpDb.get(k) === slot) continue;
        this.fpLogTable.set(blob, off, slot);
        this.filter.addKey(blob, off);
        live++;
      }
      if (live === 0) {
        this.fpLogDeletes.push(seq); // nothing left in it
        continue;
      }
      this.fpLogRecords.push({ seq, blob, next: 0 });
      this.fpLogUnmerged += blob.length / FP_LOG_ENTRY;
    }
  }

  /** Durable fingerprint-log entries the index has not taken in yet. */
  get fpLogBacklog(): number {
    return this.fpLogUnmerged;
  }

  /** Fingerprints held in memory by the log (pending, durable or not). */
  get fpLogSize(): number {
    return this.fpLogTable.size;
  }

  /**
   * Moves up to `max` logged fingerprints (oldest first) into the index overlay; the next commit
   * writes them to the index and drops the log records they emptied, in one transaction.
   * Returns how many entries it looked at.
   */
  mergeFingerprintLog(max: number): number {
    let n = 0;
    while (n < max && this.fpLogRecords.length > 0) {
      const r = this.fpLogRecords[0];
      const blob = r.blob;
      while (r.next < blob.length && n < max) {
        const off = r.next;
        r.next += FP_LOG_ENTRY;
        n++;
        this.fpLogUnmerged--;
        const slot = blob.readUIntBE(off + 36, 6);
        // Gone from the table: freed since, or merged from a newer record.
        if (!this.fpLogTable.deleteIf(blob, off, slot)) continue;
        this.fps.set(blob.toString('latin1', off, off + 36), slot);
        this.changes++;
      }
      if (r.next < blob.length) break;
      this.fpLogRecords.shift();
      this.fpLogDeletes.push(r.seq);
      this.changes++;
    }
    return n;
  }

  get chunkSize(): number {
    return this.sb.chunkSize;
  }

  // ---------------------------------------------------------------- reader generations

  enterRead(): number {
    const g = this.gen;
    this.active.set(g, (this.active.get(g) ?? 0) + 1);
    return g;
  }

  exitRead(g: number): void {
    const n = (this.active.get(g) ?? 1) - 1;
    if (n <= 0) this.active.delete(g);
    else this.active.set(g, n);
  }

  private oldestActive(): number {
    let min = Infinity;
    for (const g of this.active.keys()) if (g < min) min = g;
    return min;
  }

  // ---------------------------------------------------------------- nodes

  getNode(id: number): MapNode {
    let n = this.nodes.get(id);
    if (n) return n;
    if (this.deletedNodes.has(id) || this.committing?.deletedNodes.has(id))
      throw new ShoalError('corrupt_metadata', `map node ${id} was used after it was freed`);
    const buf = this.nodesDb.getBinary(id);
    if (!buf) throw new ShoalError('corrupt_metadata', `map node ${id} is missing from the metadata`);
    n = decodeNode(id, buf);
    this.nodes.set(id, n);
    return n;
  }

  /** Whether a node record exists (for fsck). */
  hasNode(id: number): boolean {
    if (this.nodes.has(id)) return true;
    if (this.deletedNodes.has(id) || this.committing?.deletedNodes.has(id)) return false;
    return this.nodesDb.getBinary(id) !== undefined;
  }

  newNode(level: number, entries?: Float64Array): MapNode {
    const id = this.sb.nextNode++;
    this.sbDirty = true;
    const node: MapNode = { id, level, entries: entries ? new Float64Array(entries) : new Float64Array(FANOUT) };
    this.nodes.set(id, node);
    this.dirtyNodes.add(id);
    this.setNodeRefs(id, 1);
    this.changes++;
    return node;
  }

  markNodeDirty(id: number): void {
    this.dirtyNodes.add(id);
    this.changes++;
  }

  nodeRefCount(id: number): number {
    let v = this.nodeRefs.get(id);
    if (v === undefined && this.committing) v = this.committing.nodeRefs.get(id);
    if (v === undefined) v = this.nodeRefsClean.get(id);
    if (v === undefined) {
      v = this.nodeRefsDb.get(id) ?? 0;
      if (this.nodeRefsClean.size > 1_000_000) this.nodeRefsClean.clear();
      this.nodeRefsClean.set(id, v as number);
    }
    return v ?? 0;
  }

  private setNodeRefs(id: number, n: number): void {
    this.nodeRefs.set(id, n);
    this.nodeRefsClean.set(id, n); // what LMDB will hold once committed
  }

  incNode(id: number): void {
    this.setNodeRefs(id, this.nodeRefCount(id) + 1);
    this.changes++;
  }

  /** Drops one reference; at zero the node goes to the GC queue (its children are released later). */
  decNode(id: number): void {
    const n = this.nodeRefCount(id) - 1;
    if (n < 0) throw new ShoalError('corrupt_metadata', `map node ${id} lost more references than it had`);
    this.setNodeRefs(id, n);
    if (n === 0) {
      this.sb.gcQueue.push(id);
      this.sbDirty = true;
    }
    this.changes++;
  }

  /** Removes a node whose refcount is zero and whose children have been released. */
  deleteNode(id: number): void {
    this.nodes.delete(id);
    this.dirtyNodes.delete(id);
    this.deletedNodes.add(id);
    this.nodeRefs.set(id, GONE);
    this.nodeRefsClean.delete(id);
    this.changes++;
  }

  // ---------------------------------------------------------------- chunks

  getChunk(slot: number): ChunkRecord | undefined {
    let v = this.chunks.get(slot);
    if (v === undefined && this.committing) v = this.committing.chunks.get(slot);
    if (v === undefined) {
      // Records read from LMDB are kept until the next commit changes LMDB (doCommit clears them):
      // a write of data already stored reads each candidate's record to check it, then again to
      // add the reference, a whole request's worth in between.
      const r = this.recentReads.get(slot);
      if (r !== undefined) return r;
      const b = this.chunksDb.getBinary(slot);
      if (!b) return undefined;
      v = decodeChunk(b);
      if (this.recentReads.size >= 4096) this.recentReads.clear();
      this.recentReads.set(slot, v);
      return v;
    }
    return v ?? undefined;
  }
  private readonly recentReads = new Map<number, ChunkRecord>();

  /** Whether slot holds a live chunk with the fingerprint key keys[off..off+36) (domain, fingerprint). */
  private chunkHasKey(slot: number, keys: Buffer, off: number): boolean {
    const c = this.getChunk(slot);
    return c !== undefined && c.refs > 0 && c.domain === keys.readUInt32BE(off) && c.fp.compare(keys, off + 4, off + 36, c.fpOff, c.fpOff + 32) === 0;
  }

  chunkRefCount(slot: number): number {
    return this.getChunk(slot)?.refs ?? 0;
  }

  /**
   * One more reference to a chunk, if it is still live (a dedup candidate may have been freed
   * since it was looked up); false if it is not. One record read, where chunkRefCount() then
   * incChunk() read it twice.
   */
  incChunkIfLive(slot: number): boolean {
    const c = this.getChunk(slot);
    if (!c || c.refs <= 0) return false;
    this.chunks.set(slot, { refs: c.refs + 1, domain: c.domain, fp: c.fp, fpOff: c.fpOff });
    this.writeActivity++;
    this.changes++;
    return true;
  }

  incChunk(slot: number): void {
    if (!this.incChunkIfLive(slot)) throw new ShoalError('corrupt_metadata', `chunk ${slot} was referenced after it was freed`);
  }

  /**
   * decChunk's record read: from the overlays as getChunk, or else from LMDB into one scratch
   * record, valid until the next call, without allocating. (Space reclaim frees millions of chunks
   * that are read once: a Buffer, an object and a recentReads entry each were young garbage, and
   * the delete benchmark ran three times as many scavenges of 5 ms and more as without it.)
   */
  private chunkForRelease(slot: number): ChunkRecord | undefined {
    let v = this.chunks.get(slot);
    if (v === undefined && this.committing) v = this.committing.chunks.get(slot);
    if (v !== undefined) return v ?? undefined;
    const r = this.recentReads.get(slot);
    if (r !== undefined) return r;
    // LMDB's shared buffer, overwritten by the next read: copied out at once, byte by byte (lmdb-js
    // sets its `length` to the value's size over a larger array, which Buffer#copy does not take).
    const b = this.chunksDb.getBinaryFast(slot);
    if (!b) return undefined;
    const s = this.releaseRec;
    for (let i = 0; i < CHUNK_REC_BYTES; i++) s.fp[i] = b[i];
    s.refs = s.fp.readUInt32LE(0);
    s.domain = s.fp.readUInt32LE(4);
    return s;
  }
  private readonly releaseRec: ChunkRecord = { refs: 0, domain: 0, fp: Buffer.alloc(CHUNK_REC_BYTES), fpOff: 8 };

  decChunk(slot: number): void {
    const c = this.chunkForRelease(slot);
    if (!c || c.refs <= 0) throw new ShoalError('corrupt_metadata', `chunk ${slot} lost more references than it had`);
    if (c.refs > 1) {
      // A record kept in the overlay needs its own bytes, not the scratch record's.
      const fp = c === this.releaseRec ? Buffer.from(c.fp) : c.fp;
      this.chunks.set(slot, { refs: c.refs - 1, domain: c.domain, fp, fpOff: c.fpOff });
    } else {
      this.chunks.set(slot, GONE);
      const key = this.freeKey;
      key.writeUInt32BE(c.domain, 0);
      c.fp.copy(key, 4, c.fpOff, c.fpOff + 32);
      if (!this.fpLogTable.deleteIf(key, 0, slot) && !isZeroFingerprint(c)) {
        // Not in the log (where it never reached the index): drop its index entry, if any,
        // without reading the index first. That read was a random LMDB page read on the event
        // loop per freed chunk: deleting 8 GiB stalled reads on other volumes for up to 65 ms.
        // (Were the entry another live chunk's, with the same fingerprint, written unindexed
        // with dedup off or as a collision, it would only cost that chunk future dedup hits.)
        this.fps.set(key.toString('latin1'), GONE);
      }
      this.freedSinceCommit.push(slot);
      this.freeAdds.add(slot);
      this.sb.liveChunks--;
      this.sbDirty = true;
      this.hooks.chunkFreed?.(slot);
    }
    this.changes++;
  }

  /** A slot for new chunk data: a free one whose free is durable, or a new one. */
  allocSlot(): number {
    this.sbDirty = true;
    const s = this.reusable.pop();
    if (s !== undefined) {
      if (this.freeAdds.has(s)) this.freeAdds.delete(s);
      else this.freeDeletes.add(s);
      this.hooks.chunkFreed?.(s);
      return s;
    }
    return this.sb.nextSlot++;
  }

  /** Returns a slot allocated by allocSlot that ended up unused (e.g. the write failed). */
  releaseUnusedSlot(slot: number): void {
    if (this.freeDeletes.delete(slot)) {
      // It came from the durable free list and nothing references it: reusable at once.
      this.reusable.push(slot);
      return;
    }
    this.freeAdds.add(slot);
    this.freedSinceCommit.push(slot);
  }

  /**
   * Registers freshly written chunk data with one reference. Its fingerprint is fp[fpOff..+32).
   * (No Buffer per chunk: the records of one write share its buffer of keys, which kept 256 Ki
   * views per GiB written off the GC's hands.) A chunk to be found by later writes is then
   * logged with logFingerprints.
   */
  addChunk(slot: number, domain: number, fp: Buffer, fpOff: number): void {
    this.chunks.set(slot, { refs: 1, domain, fp, fpOff });
    this.writeActivity++;
    this.sb.liveChunks++;
    this.sbDirty = true;
    this.changes++;
  }

  /**
   * Makes chunks added by addChunk findable by dedup: for i < n, key number which[i] of `keys`
   * (36 bytes each, see lookupFingerprints) names slots[i]. They go to the dedup log (its native
   * table and the next commit's log record, in one native call per write) and the filter. Only
   * for chunks whose bytes the caller found nowhere else (not for a collision).
   */
  logFingerprints(keys: Buffer, which: Uint32Array, slots: Float64Array, n: number): void {
    if (n === 0) return;
    const need = this.fpLogLen + n * FP_LOG_ENTRY;
    if (need > this.fpLogBuf.length) {
      let size = this.fpLogBuf.length * 2;
      while (size < need) size *= 2;
      const bigger = Buffer.allocUnsafe(size);
      this.fpLogBuf.copy(bigger, 0, 0, this.fpLogLen);
      this.fpLogBuf = bigger;
    }
    this.fpLogLen = this.fpLogTable.logMany(keys, which, slots, n, this.fpLogBuf, this.fpLogLen);
    for (let i = 0; i < n; i++) this.filter.addKey(keys, which[i] * 36);
  }

  /**
   * For each of the n 36-byte keys in `keys` (native().fingerprint with a domain makes them):
   * out[i] = the live chunk holding those bytes in that domain if the index knows one, else -1.
   */
  lookupFingerprints(keys: Buffer, n: number, out: Float64Array): void {
    // The log's table first, for all of them in one call; then what is not in it.
    if (this.fpLogTable.getMany(keys, n, out) === n) return;
    const overlays = this.fps.size > 0 || (this.committing !== null && this.committing.fps.size > 0);
    // Data already stored usually comes back in the order it was first written, and new chunks
    // take consecutive slots: after a match at slot s, chunk s + 1 is tried first, by its record
    // (which the dedup hit reads anyway), before a random read of the on-disk index.
    let guess = -1;
    for (let i = 0; i < n; i++) {
      const off = i * 36;
      if (out[i] >= 0) {
        guess = out[i] + 1;
        continue;
      }
      if (guess >= 0 && this.chunkHasKey(guess, keys, off)) {
        out[i] = guess++;
        continue;
      }
      guess = -1;
      if (overlays) {
        // Index entries changed since the last commit (merged from the log, or removed).
        const k = keys.toString('latin1', off, off + 36);
        let v = this.fps.get(k);
        if (v === undefined && this.committing) v = this.committing.fps.get(k);
        if (v !== undefined) {
          out[i] = v ?? -1;
          continue;
        }
      }
      // Most new data is not stored yet: the filter says so without touching the disk.
      if (this.filter.ready && !this.filter.mayContainKey(keys, off)) continue;
      out[i] = this.fpDb.get(keys.subarray(off, off + 36)) ?? -1;
      if (out[i] >= 0) guess = out[i] + 1;
    }
  }

  /**
   * Fills `f` (the filter in use, not yet ready) from the on-disk index a slice at a time; then it
   * answers lookups. Fingerprints added meanwhile go into `f` through addChunk.
   */
  private buildFilter(f: FingerprintFilter): void {
    let start: Buffer | undefined;
    const slice = () => {
      if (this.closed) return;
      let n = 0;
      let lastKey: Buffer | undefined;
      for (const key of this.fpDb.getKeys({ start, limit: 20_000 }) as Iterable<Buffer>) {
        if (start && n === 0 && key.equals(start)) continue; // the range start is inclusive
        f.addKey(key, 0);
        lastKey = Buffer.from(key);
        n++;
      }
      if (lastKey && n > 0) {
        start = lastKey;
        setImmediate(slice);
        return;
      }
      f.ready = true;
    };
    setImmediate(slice);
  }

  domainId(name: string, create: boolean): number | undefined {
    let id = this.sb.domains[name];
    if (id === undefined && create) {
      id = Math.max(0, ...Object.values(this.sb.domains)) + 1;
      this.sb.domains[name] = id;
      this.sbDirty = true;
    }
    return id;
  }

  countDedupHit(): void {
    this.sb.dedupHits++;
    this.sbDirty = true;
  }

  // ---------------------------------------------------------------- volumes

  putVolume(v: VolumeRecord): void {
    this.volumes.set(v.name, v);
    this.volumesDirty.add(v.name);
    this.volumesDeleted.delete(v.name);
    this.changes++;
  }

  deleteVolumeRecord(name: string): void {
    this.volumes.delete(name);
    this.volumesDirty.delete(name);
    this.volumesDeleted.add(name);
    this.changes++;
  }

  // ---------------------------------------------------------------- commit

  /** Changes not yet committed. */
  get pendingChanges(): number {
    return this.changes;
  }

  /**
   * Makes everything done so far durable. Concurrent callers share commits: a caller waits for
   * the commit in flight (which may not include its changes) and then for one more.
   */
  commit(): Promise<void> {
    if (this.commitPending) return this.commitPending;
    const p = this.commitChain.then(() => {
      this.commitPending = null;
      return this.doCommit();
    });
    this.commitPending = p;
    this.commitChain = p.catch(() => {});
    return p;
  }

  /**
   * Runs `fn` with commits held back, so a multi-step operation (reflink, dedupe) reaches the
   * disk whole or not at all. `fn` must not await commit() itself.
   */
  async atomically<T>(fn: () => Promise<T>): Promise<T> {
    this.holds++;
    try {
      return await fn();
    } finally {
      if (--this.holds === 0) {
        const w = this.holdWaiters;
        this.holdWaiters = [];
        for (const f of w) f();
      }
    }
  }

  private async doCommit(): Promise<void> {
    while (this.holds > 0) await new Promise<void>((r) => this.holdWaiters.push(r));
    if (this.closed) throw new ShoalError('shutting_down', 'the metadata store is closed');
    if (this.changes === 0 && !this.sbDirty && this.freedSinceCommit.length === 0 && this.fpLogLen === 0) return;
    // 1. Take the overlays as they are now, synchronously: later changes go to the next commit.
    const nodeBufs: Array<[number, Buffer]> = [];
    for (const id of this.dirtyNodes) {
      const n = this.nodes.get(id);
      if (n) nodeBufs.push([id, encodeNode(n)]);
    }
    const snap = {
      nodeRefs: this.nodeRefs,
      chunks: this.chunks,
      fps: this.fps,
      deletedNodes: this.deletedNodes,
    };
    const freeAdds = this.freeAdds;
    const freeDeletes = this.freeDeletes;
    const volPuts = [...this.volumesDirty].map((n) => this.volumes.get(n)!).filter(Boolean).map((v) => structuredClone(v));
    const volDels = [...this.volumesDeleted];
    const freed = this.freedSinceCommit;
    const commitGen = this.gen++;
    // This commit's log record: the entries logged since the last one. (Some may be freed
    // already: merging and loading both skip an entry the table or the chunk record disowns.)
    let logRecord: { seq: number; blob: Buffer } | null = null;
    if (this.fpLogLen > 0) {
      this.sb.fpLogNext = (this.sb.fpLogNext ?? 1) + 1;
      logRecord = { seq: this.sb.fpLogNext - 1, blob: this.fpLogBuf.subarray(0, this.fpLogLen) };
      this.fpLogBuf = Buffer.allocUnsafe(this.fpLogBuf.length);
      this.fpLogLen = 0;
    }
    const logDeletes = this.fpLogDeletes;
    this.fpLogDeletes = [];
    const sb = structuredClone(this.sb);

    this.committing = snap;
    this.dirtyNodes = new Set();
    this.deletedNodes = new Set();
    this.nodeRefs = new Map();
    this.chunks = new Map();
    this.fps = new Map();
    this.freeAdds = new Set();
    this.freeDeletes = new Set();
    this.volumesDirty = new Set();
    this.volumesDeleted = new Set();
    this.freedSinceCommit = [];
    this.sbDirty = false;
    this.changes = 0;

    try {
      // 2. Chunk data first: committed metadata must never point at bytes not on disk.
      await this.hooks.syncData?.();
      // 3. All metadata in one transaction; the promise resolves once it is fsynced. These are
      // lmdb-js's asynchronous writes: every one issued in this synchronous stretch goes into the
      // same transaction (lmdb-js batches one event turn into one transaction; nothing here calls
      // transactionSync, which could split it), and its b-tree work runs on lmdb-js's write
      // thread. (A transaction() callback runs that work on the event loop: the profile showed
      // ~10 us per record there, a 1 s stall per 256 MiB of new chunks.)
      let last: Promise<boolean> = this.main.put('superblock', sb);
      for (const [id, buf] of nodeBufs) last = this.nodesDb.put(id, buf);
      for (const id of snap.deletedNodes) last = this.nodesDb.remove(id);
      for (const [id, n] of snap.nodeRefs) last = n === null || n === 0 ? this.nodeRefsDb.remove(id) : this.nodeRefsDb.put(id, n);
      for (const [slot, c] of snap.chunks) last = c === null ? this.chunksDb.remove(slot) : this.chunksDb.put(slot, encodeChunk(c));
      for (const [k, slot] of snap.fps) {
        const key = Buffer.from(k, 'latin1');
        last = slot === null ? this.fpDb.remove(key) : this.fpDb.put(key, slot);
      }
      if (logRecord) last = this.fpLogDb.put(logRecord.seq, logRecord.blob);
      for (const seq of logDeletes) last = this.fpLogDb.remove(seq);
      for (const s of freeAdds) last = this.freeDb.put(s, 1);
      for (const s of freeDeletes) last = this.freeDb.remove(s);
      for (const v of volPuts) last = this.main.put('volume/' + v.name, v);
      for (const n of volDels) last = this.main.remove('volume/' + n);
      // The superblock again, last: the batch's promise settles when the whole batch is durable.
      last = this.main.put('superblock', sb);
      await last;
    } catch (e) {
      // The in-memory state is ahead of the disk and cannot be reconciled: stop accepting work.
      this.closed = true;
      throw new ShoalError('io_error', `metadata commit failed: ${(e as Error).message}`, { cause: e });
    } finally {
      this.committing = null;
    }
    // Merge only what is durable: a record merged before its own commit could lose entries.
    if (logRecord) {
      this.fpLogRecords.push({ seq: logRecord.seq, blob: logRecord.blob, next: 0 });
      this.fpLogUnmerged += logRecord.blob.length / FP_LOG_ENTRY;
      this.hooks.fingerprintsLogged?.();
    }
    this.recentReads.clear(); // LMDB changed
    // 4. Frees are durable now; the slots become reusable once older readers are gone.
    // (Each was freed at a generation <= commitGen: gen only moves on at a commit.)
    if (freed.length > 0) this.awaitingReaders.push({ gen: commitGen, slots: freed });
    this.releaseReusable();
  }

  /** Moves durably-freed slots that no running reader can still be reading to the reusable list. */
  releaseReusable(): void {
    if (this.awaitingReaders.length === 0) return;
    const oldest = this.oldestActive();
    // Groups are in commit order, so in generation order: release from the front.
    let k = 0;
    while (k < this.awaitingReaders.length && this.awaitingReaders[k].gen < oldest) {
      for (const slot of this.awaitingReaders[k].slots) this.reusable.push(slot);
      k++;
    }
    if (k > 0) this.awaitingReaders.splice(0, k);
  }

  /** Drops clean nodes from memory when the cache holds more than `max` (they reload from LMDB). */
  trimNodeCache(max: number): void {
    // Not while a commit is in flight: LMDB still holds the older version of nodes it writes.
    if (this.nodes.size <= max || this.committing) return;
    for (const id of this.nodes.keys()) {
      if (this.nodes.size <= max * 0.8) break;
      if (!this.dirtyNodes.has(id)) this.nodes.delete(id);
    }
  }

  // ---------------------------------------------------------------- iteration (fsck)

  *allNodeIds(): Iterable<number> {
    // Only valid with no uncommitted changes (fsck commits first).
    for (const k of this.nodesDb.getKeys()) yield k as number;
  }

  *allChunkRecords(): Iterable<[number, ChunkRecord]> {
    for (const { key, value } of this.chunksDb.getRange({})) yield [key as number, decodeChunk(Buffer.from(value as Buffer))];
  }

  *allNodeRefs(): Iterable<[number, number]> {
    for (const { key, value } of this.nodeRefsDb.getRange({})) yield [key as number, value as number];
  }

  *allFingerprints(): Iterable<[Buffer, number]> {
    for (const { key, value } of this.fpDb.getRange({})) yield [key as Buffer, value as number];
  }

  *allFreeSlots(): Iterable<number> {
    for (const k of this.freeDb.getKeys()) yield k as number;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async close(): Promise<void> {
    if (!this.closed) {
      await this.commit().catch(() => {});
      this.closed = true;
    }
    await this.env.close();
  }
}
