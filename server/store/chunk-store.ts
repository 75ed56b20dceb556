// The chunk backend interface (DESIGN.md "chunks" row): fixed-size chunk bytes addressed by slot
// id. The metadata decides which slots hold what; a store only keeps bytes, and only the store
// knows where they lie (a file offset, an object and a byte range). The shared cache reaches the
// bytes through readChunks alone: its one miss path. The embedded local store is the default; an
// object-store backend (chunks packed into larger objects) fits behind the same shape.

/**
 * Memory a store read fills: `count` targets of one chunk each, owned by the caller until the
 * read settles. The cache hands out its own frames; other callers plain buffers.
 */
export interface ChunkTargets {
  readonly count: number;
  /** Target i (chunkSize bytes) as a Buffer; for a store that fetches bytes and copies them in. */
  view(i: number): Buffer;
  /**
   * Present when the targets can be filled straight from a local file on the thread pool (the
   * cache's page-aligned frames: with an O_DIRECT fd no copy passes through the page cache).
   * Target i is read from byte offset offsets[i]; back-to-back offsets are one preadv. With `which`,
   * only targets which[k], each from offsets[k].
   */
  readFile?(fd: number, offsets: Float64Array, which?: ArrayLike<number>): Promise<number>;
}

/** What a store reports about itself (REST /v1/stats `store`). */
export interface StoreStats {
  kind: 'local' | 's3';
  /** Read requests made to the medium and bytes they returned. */
  reads: number;
  readBytes: number;
  /** Reads bypass the page cache (O_DIRECT). */
  direct: boolean;
  /** Runs of chunks written past the page cache (O_DIRECT), where the store does that. */
  directWrites?: number;
  /** Short writes inside the file answered from memory and written later, before the next sync (the local store's). */
  stagedWrites?: number;
  /** Syncs of the medium begun (the local store's fdatasyncs of its chunk file). */
  syncs?: number;
}

/**
 * For a store whose chunks' places are metadata of their own (an object store: which pack holds a
 * chunk): records it keeps in the metadata database, committed in the same transaction as the
 * chunk records that name those chunks (server/meta/store-records.ts). Keys are numbers (a store
 * picks its scheme, e.g. the first slot of a run), values bytes.
 */
export interface StoreRecordLog {
  /** The records changed since the last call (a value, or null to remove it), or null if none. */
  takeRecords(): Map<number, Buffer | null> | null;
  /** The records last taken are committed (and published, when the metadata has a journal). */
  recordsCommitted(ok: boolean): void;
}

/** The store's committed records, read from the metadata database. */
export interface StoreRecordsView {
  get(key: number): Buffer | undefined;
  /** The record with the greatest key ≤ `key`, if any. */
  floor(key: number): [number, Buffer] | undefined;
  /** Records with keys in [start, end) (all of them without a range), in key order. */
  entries(range?: { start: number; end: number }): Iterable<[number, Buffer]>;
}

export interface ChunkStore {
  readonly chunkSize: number;
  /**
   * Whether a freed slot may be handed out again. A store that writes each chunk once into a
   * larger object (a pack) says no: slots then only grow, and space comes back by compaction.
   */
  readonly reusesSlots: boolean;
  /** For a store with records of its own (see StoreRecordLog); called once, at open. */
  attachRecords?(view: StoreRecordsView): StoreRecordLog;
  /** A chunk is no longer referenced: its space may be reclaimed once that is committed. */
  freed?(slot: number): void;
  /** Reads whole chunks: slot slots[i] into target i, for i < targets.count. */
  readChunks(slots: ArrayLike<number>, targets: ChunkTargets): Promise<void>;
  /**
   * Writes consecutive chunks starting at `slot` (data.length is a multiple of chunkSize). `early`: the
   * caller needs them durable only by the next sync(), so the store may answer before writing them
   * (reading them back from memory until written); without it the bytes are written when this resolves.
   */
  write(slot: number, data: Buffer, early?: boolean): Promise<void>;
  /** Makes every completed write durable. */
  sync(): Promise<void>;
  /**
   * Consistency check (fsck): a sentence for each way the store cannot serve the live chunks,
   * `count` of them with the highest slot `maxSlot` (-1 when there are none), each of `slots`.
   */
  check(live: { count: number; maxSlot: number; slots: Iterable<number> }): Promise<string[]>;
  stats(): StoreStats;
  close(): Promise<void>;
}

/** Plain buffers as read targets (the cache's fallback when no frame is free, and tools). */
export class BufferTargets implements ChunkTargets {
  constructor(private readonly bufs: Buffer[]) {}
  get count(): number {
    return this.bufs.length;
  }
  view(i: number): Buffer {
    return this.bufs[i];
  }
}
