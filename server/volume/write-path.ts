// Writes, trims and zeroes of volumes.
//
// A write never changes a stored chunk (invariant 1): it writes whole new chunks (sub-chunk
// writes read the old chunk, patch a copy), fingerprints them, maps each to an identical chunk
// of the same dedup domain if one exists, stores the rest in fresh slots, and only then,
// synchronously, points the map at them.
import { HOLE, ZERO_CHUNK } from '../meta/map-node.js';
import { isStored, lookup, releaseRange, setEntry } from '../meta/map-tree.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import type { DedupIndex } from '../dedup/dedup-index.js';
import { KEY_BYTES } from '../dedup/fingerprinter.js';
import type { WritableMap } from './volume-state.js';
import { float64s, uint32s } from '../native-arrays.js';

/** The fingerprint recorded for chunks written with dedup off (never indexed). */
const NO_FINGERPRINT = Buffer.alloc(32);
/** Writes up to this size also go into the cache. */
const WRITE_THROUGH_BYTES = 64 * 1024;

export interface WritePathOptions {
  /** Inline deduplication (fingerprint every chunk, share identical ones). */
  dedup: boolean;
  /** Compare bytes before mapping a write to an existing chunk with the same fingerprint. */
  verifyDedup: boolean;
}

type Plan =
  | { kind: 'hole'; ci: number }
  // slot < 0: the chunk stored by plan -1 - slot of this write
  | { kind: 'dedup'; ci: number; slot: number; bytes: Buffer; k: number }
  // k: which of the write's fingerprint keys is this chunk's (-1 without dedup); index: log it
  | { kind: 'store'; ci: number; slot: number; bytes: Buffer; k: number; index: boolean };
type StorePlan = Plan & { kind: 'store' };

export class WritePath {
  readonly chunkSize: number;
  private readonly zeroChunk: Buffer;

  constructor(
    private readonly meta: MetaStore,
    private readonly store: ChunkStore,
    private readonly cache: ChunkCache,
    private readonly dedup: DedupIndex,
    private readonly opts: WritePathOptions,
  ) {
    this.chunkSize = meta.chunkSize;
    this.zeroChunk = Buffer.alloc(this.chunkSize);
  }

  /**
   * `early`: nothing waits to see this write durable before the next FLUSH's commit (not a write a
   * sync writer's journal record races): a small one's chunks may be answered from memory before
   * they reach the chunk file (ChunkStore.write).
   */
  async write(m: WritableMap, offset: number, data: Buffer, early = false): Promise<void> {
    const cs = this.chunkSize;
    const from = Math.floor(offset / cs);
    const to = Math.floor((offset + data.length - 1) / cs) + 1;
    // A free range is taken at once: no promise to wait for (nearly every write).
    const release = m.lock.tryAcquire(from, to) ?? (await m.lock.acquire(from, to));
    try {
      await this.writeLocked(m, offset, data, early);
    } finally {
      release();
    }
  }

  /** write() with the chunks it touches already held in the volume's range lock. */
  private async writeLocked(m: WritableMap, offset: number, data: Buffer, early = false): Promise<void> {
    const cs = this.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + data.length - 1) / cs);
    const g = this.meta.slots.enterRead();
    try {
      // 1. The new content of every chunk touched.
      const chunks: Buffer[] = new Array(last - first + 1);
      for (let ci = first; ci <= last; ci++) {
        const cStart = ci * cs;
        const from = Math.max(offset, cStart);
        const to = Math.min(offset + data.length, cStart + cs);
        if (from === cStart && to === cStart + cs) {
          chunks[ci - first] = data.subarray(from - offset, to - offset);
        } else {
          const v = lookup(this.meta, m.record, ci);
          const merged = Buffer.allocUnsafe(cs);
          if (isStored(v)) await this.cache.copyChunk(v, -1, merged);
          else merged.fill(0);
          data.copy(merged, from - cStart, from - offset, to - offset);
          chunks[ci - first] = merged;
        }
      }
      await this.commitChunks(m, first, chunks, offset % cs === 0 && data.length % cs === 0 ? data : null, early);
    } finally {
      this.meta.slots.exitRead(g);
    }
  }

  /** Maps chunk indices first.. to the given contents (dedup, store, then map). */
  private async commitChunks(m: WritableMap, first: number, chunks: Buffer[], contiguous: Buffer | null, early: boolean): Promise<void> {
    const cs = this.chunkSize;
    // 2. All-zero chunks become holes; the rest are fingerprinted in one batch.
    const nonZero: number[] = [];
    for (let i = 0; i < chunks.length; i++) if (!chunks[i].equals(this.zeroChunk)) nonZero.push(i);
    const nz = nonZero.length;
    const all = nz === chunks.length;
    let keys = this.opts.dedup && nz > 0 ? this.dedup.keys(all ? chunks : nonZero.map((i) => chunks[i]), all ? contiguous : null, m.domain) : null;
    // Small writes are hashed on the event loop and come back as a Buffer: no await (a microtask) for them.
    if (keys instanceof Promise) keys = await keys;

    // 3. Find identical chunks already stored in this domain (and repeated within this write).
    const candidates = float64s(nz).fill(-1); // slot, or -1
    if (keys) this.dedup.lookup(keys, nz, candidates);
    const verify = this.opts.verifyDedup || this.dedup.weakFingerprints;
    if (verify) {
      // Compare bytes before trusting a fingerprint: load every candidate first, in runs.
      const slots = [...new Set(candidates.filter((c) => c >= 0))].sort((a, b) => a - b);
      if (slots.length > 0) await this.cache.load(slots, -1);
    }
    const plans: Plan[] = [];
    const stores: StorePlan[] = []; // the 'store' plans, gathered as they are made (no filter() after)
    // Chunks this write stores, by the first 48 bits of their fingerprint (a number key: no string
    // per chunk); a match is only taken when the bytes are equal.
    const seen = keys && nz > 1 ? new Map<number, number>() : null;
    let k = 0;
    for (let i = 0; i < chunks.length; i++) {
      const ci = first + i;
      if (k >= nz || nonZero[k] !== i) {
        plans.push({ kind: 'hole', ci });
        continue;
      }
      const kk = k;
      const candidate = candidates[k++];
      const bytes = chunks[i];
      // BLAKE3-256 is a cryptographic fingerprint, so a match alone is safe (invariant 6), as
      // with ZFS dedup=on; verifyDedup adds a byte comparison (ZFS dedup=verify).
      if (candidate >= 0 && (!verify || (await this.sameBytes(candidate, bytes)))) {
        plans.push({ kind: 'dedup', ci, slot: candidate, bytes, k: kk });
        continue;
      }
      if (!keys) {
        stores.push({ kind: 'store', ci, slot: 0, bytes, k: -1, index: false });
        plans.push(stores[stores.length - 1]);
        continue;
      }
      const prefix = seen ? keys.readUIntBE(kk * KEY_BYTES + 4, 6) : 0;
      const prior = seen?.get(prefix);
      const priorPlan = prior === undefined ? undefined : plans[prior];
      if (priorPlan?.kind === 'store' && priorPlan.bytes.equals(bytes)) {
        plans.push({ kind: 'dedup', ci, slot: -1 - prior!, bytes, k: kk }); // resolved after the store
        continue;
      }
      seen?.set(prefix, plans.length);
      stores.push({ kind: 'store', ci, slot: 0, bytes, k: kk, index: candidate < 0 && prior === undefined });
      plans.push(stores[stores.length - 1]);
    }

    const small = chunks.length * cs <= WRITE_THROUGH_BYTES;
    // 4. Store new chunks in fresh slots, consecutive slots in one write. A small write's chunks go
    // into the cache below, before the map points at them (and the insert drops what the cache held
    // for a reused slot): the slots' reuse needs no drop of its own (a native call and two hash
    // probes per 4 KiB write, ~2% of the event loop). Only small writes go early: a large one into
    // scattered freed slots, staged, made 256 direct writes a MiB (server/store/batched-writes.ts).
    await this.storePlans(stores, small, early && small);

    // 5. Point the map at them, synchronously (no await until done).
    let retry: StorePlan[] | null = null; // made only when a dedup candidate was freed meanwhile
    const logged = keys ? new NewFingerprints(plans.length) : null;
    for (const p of plans) {
      if (p.kind === 'hole') {
        setEntry(this.meta, m.record, p.ci, HOLE);
      } else if (p.kind === 'store') {
        this.addChunk(m, p, keys, logged);
        // Write-through for small writes (filesystem metadata, journals: read again soon). A large
        // stream is rarely re-read at once; copying 1 GiB of it into the arena was 10% of the time.
        if (small) this.cache.insert(p.slot, p.bytes);
        setEntry(this.meta, m.record, p.ci, p.slot);
      } else {
        const slot = p.slot < 0 ? (plans[-1 - p.slot] as StorePlan).slot : p.slot;
        // Rewriting the bytes a chunk already maps (a re-run copy, a no-op rewrite): nothing to do.
        if (lookup(this.meta, m.record, p.ci) === slot) continue;
        // The candidate may have been freed while we compared bytes: then store ours instead.
        if (this.meta.chunks.incIfLive(slot)) {
          setEntry(this.meta, m.record, p.ci, slot);
          this.dedup.countHit();
        } else (retry ??= []).push({ kind: 'store', ci: p.ci, slot: 0, bytes: p.bytes, k: p.k, index: keys !== null });
      }
    }
    if (logged) logged.flush(this.dedup, keys!);
    m.touched();
    if (retry) {
      await this.storePlans(retry);
      for (const p of retry) {
        this.addChunk(m, p, keys, logged);
        setEntry(this.meta, m.record, p.ci, p.slot);
      }
      if (logged) logged.flush(this.dedup, keys!);
      m.touched();
    }
  }

  /**
   * Registers a stored chunk: its fingerprint is key k of the write's keys (none without dedup);
   * one to be indexed is gathered into `logged`, flushed once the write's chunks are all added.
   */
  private addChunk(m: WritableMap, p: StorePlan, keys: Buffer | null, logged: NewFingerprints | null): void {
    if (keys === null || p.k < 0) return this.meta.chunks.add(p.slot, m.domain, NO_FINGERPRINT, 0);
    this.meta.chunks.add(p.slot, m.domain, keys, p.k * KEY_BYTES + 4);
    if (p.index) logged!.add(p.k, p.slot);
  }

  /** Whether a stored chunk holds `bytes` (its access was counted by the load before). */
  private async sameBytes(slot: number, bytes: Buffer): Promise<boolean> {
    const existing = Buffer.allocUnsafe(this.chunkSize);
    await this.cache.copyChunk(slot, -1, existing, false);
    return existing.equals(bytes);
  }

  /**
   * Stores each plan's bytes in a fresh slot; `cached`: the caller inserts them into the cache before
   * mapping them; `early`: see write().
   */
  private async storePlans(stores: StorePlan[], cached = false, early = false): Promise<void> {
    if (stores.length === 0) return;
    const slots = this.meta.slots.allocMany(stores.length, cached);
    for (let k = 0; k < stores.length; k++) stores[k].slot = slots[k];
    let written: Promise<unknown>;
    if (stores.length === 1) written = this.store.write(stores[0].slot, stores[0].bytes, early); // a 4 KiB write: no arrays
    else {
      const writes: Promise<void>[] = [];
      let i = 0;
      while (i < stores.length) {
        let j = i + 1;
        while (j < stores.length && stores[j].slot === stores[j - 1].slot + 1) j++;
        const run = stores.slice(i, j);
        const buf = run.length === 1 ? run[0].bytes : (adjacent(run) ?? Buffer.concat(run.map((p) => p.bytes)));
        writes.push(this.store.write(run[0].slot, buf, early));
        i = j;
      }
      written = Promise.all(writes);
    }
    try {
      await written;
    } catch (e) {
      for (const p of stores) this.meta.slots.releaseUnused(p.slot);
      throw e;
    }
  }

  // ------------------------------------------------------------------ trim / zero

  /** Releases the chunks the range covers entirely (partial edges are left as they are). */
  async trim(m: WritableMap, offset: number, length: number): Promise<void> {
    const cs = this.chunkSize;
    const from = Math.ceil(offset / cs);
    const to = Math.floor((offset + length) / cs);
    if (from >= to) return;
    const release = await m.lock.acquire(from, to);
    try {
      releaseRange(this.meta, m.record, from, to);
      m.touched();
    } finally {
      release();
    }
  }

  /**
   * Makes the range read as zeroes: whole chunks released (or marked zero), edges rewritten. All of
   * it under one hold of the range lock: an overlapping write waits for the whole zero, not only for
   * the step it overlaps, so the two map in the order the flush journal numbers them (at completion),
   * and a replay puts them back the same way.
   */
  async zero(m: WritableMap, offset: number, length: number, noHole: boolean): Promise<void> {
    const cs = this.chunkSize;
    const end = offset + length;
    const from = Math.ceil(offset / cs);
    const to = Math.floor(end / cs);
    const release = await m.lock.acquire(Math.floor(offset / cs), Math.ceil(end / cs));
    try {
      if (from >= to) {
        // Within one chunk, or across one boundary without a whole chunk.
        await this.writeLocked(m, offset, Buffer.alloc(length));
        return;
      }
      if (offset < from * cs) await this.writeLocked(m, offset, Buffer.alloc(from * cs - offset));
      if (end > to * cs) await this.writeLocked(m, to * cs, Buffer.alloc(end - to * cs));
      releaseRange(this.meta, m.record, from, to);
      // Allocated zeroes: no chunk is stored, but block status reports data, not a hole.
      if (noHole) for (let ci = from; ci < to; ci++) setEntry(this.meta, m.record, ci, ZERO_CHUNK);
      m.touched();
    } finally {
      release();
    }
  }
}

/** If the runs' bytes lie back to back in one buffer (an aligned request), one view of them, no copy. */
function adjacent(run: Array<{ bytes: Buffer }>): Buffer | null {
  const first = run[0].bytes;
  let end = first.byteOffset + first.length;
  for (let k = 1; k < run.length; k++) {
    const b = run[k].bytes;
    if (b.buffer !== first.buffer || b.byteOffset !== end) return null;
    end += b.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}

/** A write's chunks to be logged for dedup: key numbers and slots, handed over in one call. */
class NewFingerprints {
  private readonly which: Uint32Array;
  private readonly slots: Float64Array;
  private n = 0;

  constructor(max: number) {
    this.which = uint32s(max);
    this.slots = float64s(max);
  }

  add(k: number, slot: number): void {
    this.which[this.n] = k;
    this.slots[this.n++] = slot;
  }

  flush(dedup: DedupIndex, keys: Buffer): void {
    dedup.remember(keys, this.which, this.slots, this.n);
    this.n = 0;
  }
}
