// One chunk cache for every volume, keyed by the physical chunk (slot) id, so a chunk shared by
// a hundred clones is cached once (invariant 5). One byte budget for the whole daemon.
//
// Eviction is S3-FIFO (a small probation FIFO, a main FIFO with a small use counter, and a
// ghost list of recently evicted ids): a chunk read once (a backup, a `dd`) passes through the
// small queue and leaves without pushing out the working set in the main queue.
// Concurrent misses on one slot share one backend read (coalescing).

interface Entry {
  slot: number;
  buf: Buffer;
  freq: number; // 0..3, bumped on hit
  inMain: boolean;
  alive: boolean;
  // Distinct readers (volume ids) that read this entry, for the sharing factor.
  readers: number[];
}

export interface CacheStats {
  capacityBytes: number;
  bytes: number;
  entries: number;
  hits: number;
  misses: number;
  evictions: number;
  coalesced: number;
  servedBytes: number;
  sharingFactor: number;
}

const MAX_TRACKED_READERS = 64;

export class ChunkCache {
  private readonly map = new Map<number, Entry>();
  private small: Entry[] = [];
  private smallHead = 0;
  private main: Entry[] = [];
  private mainHead = 0;
  private ghost = new Set<number>();
  private smallBytes = 0;
  private mainBytes = 0;
  private readonly inflight = new Map<number, Promise<Buffer>>();
  // Slots dropped while a load was in flight: that load's result must not enter the cache.
  private readonly droppedDuringLoad = new Set<number>();
  private readerRefs = 0; // Σ distinct readers over entries

  hits = 0;
  misses = 0;
  evictions = 0;
  coalesced = 0;
  servedBytes = 0;

  constructor(
    readonly capacityBytes: number,
    readonly chunkSize: number,
  ) {}

  get bytes(): number {
    return this.smallBytes + this.mainBytes;
  }

  /** The cached bytes of `slot` without counting a hit (bytes just loaded for this caller). */
  peek(slot: number): Buffer | undefined {
    return this.map.get(slot)?.buf;
  }

  /** The cached bytes of `slot`, or undefined. Counts a hit for `reader`. */
  get(slot: number, reader: number): Buffer | undefined {
    const e = this.map.get(slot);
    if (!e) return undefined;
    this.hits++;
    this.servedBytes += e.buf.length;
    if (e.freq < 3) e.freq++;
    this.noteReader(e, reader);
    return e.buf;
  }

  private noteReader(e: Entry, reader: number): void {
    const r = e.readers;
    if (r.length >= MAX_TRACKED_READERS) return;
    for (let i = 0; i < r.length; i++) if (r[i] === reader) return;
    r.push(reader);
    this.readerRefs++;
  }

  /**
   * The bytes of `slot` from the cache or, on a miss, from `loader` (one call for any number of
   * concurrent misses on the same slot).
   */
  async fetch(slot: number, reader: number, loader: (slot: number) => Promise<Buffer>): Promise<Buffer> {
    const hit = this.get(slot, reader);
    if (hit) return hit;
    const pending = this.inflight.get(slot);
    if (pending) {
      this.coalesced++;
      const b = await pending;
      const e = this.map.get(slot);
      if (e) this.noteReader(e, reader);
      return b;
    }
    this.misses++;
    const p = loader(slot);
    this.inflight.set(slot, p);
    try {
      const buf = await p;
      if (!this.droppedDuringLoad.has(slot)) this.insert(slot, buf, reader);
      return buf;
    } finally {
      this.inflight.delete(slot);
      this.droppedDuringLoad.delete(slot);
    }
  }

  /**
   * Loads several missing slots at once: runs of consecutive slots not cached and not already
   * being loaded go to `loadRun` as one request each. Resolves when all are loaded.
   */
  async fetchRuns(slots: number[], reader: number, loadRun: (first: number, count: number) => Promise<Buffer[]>): Promise<void> {
    const waits: Promise<unknown>[] = [];
    let i = 0;
    while (i < slots.length) {
      const s = slots[i];
      if (this.map.has(s)) {
        this.get(s, reader);
        i++;
        continue;
      }
      const pending = this.inflight.get(s);
      if (pending) {
        this.coalesced++;
        waits.push(pending);
        i++;
        continue;
      }
      let j = i + 1;
      while (j < slots.length && slots[j] === slots[j - 1] + 1 && !this.map.has(slots[j]) && !this.inflight.has(slots[j])) j++;
      const count = j - i;
      this.misses += count;
      const run = loadRun(s, count);
      for (let k = 0; k < count; k++) {
        const slot = s + k;
        const p = run.then((bufs) => bufs[k]);
        this.inflight.set(slot, p);
        waits.push(
          p.then(
            (b) => {
              if (!this.droppedDuringLoad.has(slot)) this.insert(slot, b, reader);
            },
          ).finally(() => {
            this.inflight.delete(slot);
            this.droppedDuringLoad.delete(slot);
          }),
        );
      }
      i = j;
    }
    await Promise.all(waits);
  }

  /** Puts freshly written chunk bytes in the cache (write-through, probationary). */
  insert(slot: number, buf: Buffer, reader = -1): void {
    if (this.capacityBytes < buf.length) return;
    const old = this.map.get(slot);
    if (old) this.remove(old);
    const inMain = this.ghost.delete(slot);
    const e: Entry = { slot, buf, freq: 0, inMain, alive: true, readers: [] };
    if (reader >= 0) this.noteReader(e, reader);
    this.map.set(slot, e);
    if (inMain) {
      this.main.push(e);
      this.mainBytes += buf.length;
    } else {
      this.small.push(e);
      this.smallBytes += buf.length;
    }
    this.evictToFit();
  }

  /** The slot's chunk was freed or its slot reused: forget it (invariant 1). */
  drop(slot: number): void {
    const e = this.map.get(slot);
    if (e) this.remove(e);
    this.ghost.delete(slot);
    if (this.inflight.has(slot)) this.droppedDuringLoad.add(slot);
  }

  private remove(e: Entry): void {
    e.alive = false;
    this.map.delete(e.slot);
    this.readerRefs -= e.readers.length;
    if (e.inMain) this.mainBytes -= e.buf.length;
    else this.smallBytes -= e.buf.length;
  }

  private evictToFit(): void {
    const smallTarget = this.capacityBytes / 10;
    while (this.bytes > this.capacityBytes) {
      if (this.smallBytes > smallTarget || this.mainHead >= this.main.length) this.evictSmall();
      else this.evictMain();
    }
    this.compact();
  }

  private evictSmall(): void {
    while (this.smallHead < this.small.length) {
      const e = this.small[this.smallHead++];
      if (!e.alive) continue;
      this.smallBytes -= e.buf.length;
      if (e.freq > 0) {
        // Read again while on probation: it is part of a working set.
        e.inMain = true;
        e.freq = 0;
        this.main.push(e);
        this.mainBytes += e.buf.length;
      } else {
        e.alive = false;
        this.map.delete(e.slot);
        this.readerRefs -= e.readers.length;
        this.evictions++;
        this.ghost.add(e.slot);
        if (this.ghost.size > this.capacityBytes / this.chunkSize) {
          const first = this.ghost.values().next().value as number;
          this.ghost.delete(first);
        }
      }
      return;
    }
    this.evictMain();
  }

  private evictMain(): void {
    while (this.mainHead < this.main.length) {
      const e = this.main[this.mainHead++];
      if (!e.alive) continue;
      if (e.freq > 0) {
        e.freq--;
        this.main.push(e);
        continue;
      }
      e.alive = false;
      this.map.delete(e.slot);
      this.readerRefs -= e.readers.length;
      this.mainBytes -= e.buf.length;
      this.evictions++;
      return;
    }
    if (this.smallHead < this.small.length) this.evictSmall();
  }

  // Queues are arrays with a head index; drop the consumed prefix now and then (amortised O(1)).
  private compact(): void {
    if (this.smallHead > 4096 && this.smallHead * 2 > this.small.length) {
      this.small = this.small.slice(this.smallHead);
      this.smallHead = 0;
    }
    if (this.mainHead > 4096 && this.mainHead * 2 > this.main.length) {
      this.main = this.main.slice(this.mainHead);
      this.mainHead = 0;
    }
  }

  stats(): CacheStats {
    const bytes = this.bytes;
    return {
      capacityBytes: this.capacityBytes,
      bytes,
      entries: this.map.size,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      coalesced: this.coalesced,
      servedBytes: this.servedBytes,
      // Logical bytes the cached chunks stand for (one per distinct volume reading each), per byte held.
      sharingFactor: bytes === 0 ? 0 : (this.readerRefs * this.chunkSize) / bytes,
    };
  }
}
