// Where the S3 store's chunks lie, as records of the metadata database (store-records, committed in the
// same transaction as the chunk records they serve; server/meta/store-records.ts):
//
//   run record   key = first slot of a run (< 2^48)   value: pack id u48, reserved u16, index of the run's
//                first chunk in the pack u32, chunks in the run u32 (16 B)
//   pack record  key = 2^50 + pack id                 value: epoch u32, chunks in the pack u32, then one bit
//                per chunk, set once the chunk is freed (dead)
//
// A slot is found by the run record with the greatest key ≤ slot (floor) that covers it. Chunks are
// chunkSize bytes back to back from the pack's header, so chunk i of a pack is at HEADER_BYTES + i × chunkSize.
// A slot is written once (the store never reuses slots), and compaction moves every live chunk of a pack,
// deleting all its run records and writing new ones in one commit: no stale record ever covers a slot.
import { ShoalError } from '../../errors.js';
import type { StoreRecordsView } from '../chunk-store.js';

/** Slots (and run keys) are below this; pack records above PACK_KEY_BASE. */
export const SLOT_LIMIT = 2 ** 48;
const PACK_KEY_BASE = 2 ** 50;
const RUN_BYTES = 16;
const PACK_HEAD_BYTES = 8;

export interface Run {
  first: number; // first slot
  count: number;
  pack: number;
  index: number; // of the first slot's chunk in the pack
}

export interface PackRecord {
  /** The lease epoch that wrote it: its object is PREFIX/packs/EPOCH/ID.pack. */
  epoch: number;
  /** Chunks the pack holds (grows while it is being filled). */
  chunks: number;
  /**
   * Bit i set: chunk i was freed. A chunk is dropped (by compaction) only once freed: a chunk written as the
   * daemon died, which nothing ever referenced, is kept, never a referenced one lost.
   */
  dead: Uint8Array;
}

export const packKey = (id: number): number => PACK_KEY_BASE + id;
const isPackKey = (key: number): boolean => key >= PACK_KEY_BASE;
export const packIdOfKey = (key: number): number => key - PACK_KEY_BASE;
export const PACK_KEYS = { start: PACK_KEY_BASE, end: PACK_KEY_BASE * 2 };

export function encodeRun(r: Run): Buffer {
  const b = Buffer.alloc(RUN_BYTES);
  b.writeUIntLE(r.pack, 0, 6);
  b.writeUInt32LE(r.index, 8);
  b.writeUInt32LE(r.count, 12);
  return b;
}

function decodeRun(first: number, b: Buffer): Run {
  if (b.length !== RUN_BYTES) throw new ShoalError('corrupt_metadata', `the S3 store's run record at slot ${first} is ${b.length} bytes, not ${RUN_BYTES}`);
  return { first, pack: b.readUIntLE(0, 6), index: b.readUInt32LE(8), count: b.readUInt32LE(12) };
}

export function encodePackRecord(p: PackRecord): Buffer {
  const b = Buffer.alloc(PACK_HEAD_BYTES + Math.ceil(p.chunks / 8));
  b.writeUInt32LE(p.epoch, 0);
  b.writeUInt32LE(p.chunks, 4);
  b.set(p.dead.subarray(0, b.length - PACK_HEAD_BYTES), PACK_HEAD_BYTES);
  return b;
}

export function decodePackRecord(id: number, b: Buffer): PackRecord {
  const chunks = b.length >= PACK_HEAD_BYTES ? b.readUInt32LE(4) : -1;
  if (chunks < 0 || b.length !== PACK_HEAD_BYTES + Math.ceil(chunks / 8)) throw new ShoalError('corrupt_metadata', `the S3 store's record of pack ${id} is ${b.length} bytes, which does not fit ${chunks} chunks`);
  return { epoch: b.readUInt32LE(0), chunks, dead: new Uint8Array(b.subarray(PACK_HEAD_BYTES)) };
}

export function isDead(p: PackRecord, index: number): boolean {
  return (p.dead[index >> 3]! & (1 << (index & 7))) !== 0;
}

/** Marks chunk `index` dead; false if it was already. (The bitmap grows as the pack does.) */
export function markDead(p: PackRecord, index: number): boolean {
  if (isDead(p, index)) return false;
  if (index >> 3 >= p.dead.length) {
    const grown = new Uint8Array(Math.max(p.dead.length * 2, (Math.max(index, p.chunks) >> 3) + 1, 8));
    grown.set(p.dead);
    p.dead = grown;
  }
  p.dead[index >> 3]! |= 1 << (index & 7);
  return true;
}

/** Chunks of the pack freed. */
export function deadChunks(p: PackRecord): number {
  let dead = 0;
  for (let i = 0; i < p.chunks; i++) if (isDead(p, i)) dead++;
  return dead;
}

/** The object key of a pack. */
export function packObjectKey(prefix: string, epoch: number, id: number): string {
  return `${prefix}packs/${String(epoch).padStart(8, '0')}/${String(id).padStart(12, '0')}.pack`;
}

/** The epoch and id of a pack object key, or null for any other key. */
export function parsePackObjectKey(prefix: string, key: string): { epoch: number; id: number } | null {
  const m = /^packs\/(\d{8})\/(\d{12})\.pack$/.exec(key.slice(prefix.length));
  return key.startsWith(prefix) && m ? { epoch: Number(m[1]), id: Number(m[2]) } : null;
}

/** The committed run covering `slot`, if any. */
export function committedRun(view: StoreRecordsView, slot: number): Run | undefined {
  const f = view.floor(slot);
  if (!f || isPackKey(f[0])) return undefined;
  const r = decodeRun(f[0], f[1]);
  return slot < r.first + r.count ? r : undefined;
}

/**
 * Runs not committed yet, for lookups until their commit is done (the metadata view shows them only
 * then). Sorted by first slot; each entry carries the generation of the take that will commit it.
 */
export class RunOverlay {
  private runs: Array<Run & { gen: number }> = [];

  get size(): number {
    return this.runs.length;
  }

  /** Adds a run, or extends the last one if it continues it in the same pack and generation. */
  add(r: Run, gen: number): void {
    const n = this.runs.length;
    const last = n > 0 ? this.runs[n - 1] : undefined;
    if (last && last.gen === gen && last.pack === r.pack && last.first + last.count === r.first && last.index + last.count === r.index) {
      last.count += r.count;
      return;
    }
    if (!last || last.first < r.first) {
      this.runs.push({ ...r, gen });
      return;
    }
    // Out of order (writes completed out of slot order): insert in place.
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.runs[mid].first < r.first) lo = mid + 1;
      else hi = mid;
    }
    this.runs.splice(lo, 0, { ...r, gen });
  }

  /** The run covering `slot`, if any. (Runs never overlap: compaction moves only packs whose runs are all committed.) */
  find(slot: number): Run | undefined {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.runs[mid].first <= slot) lo = mid + 1;
      else hi = mid;
    }
    const r = lo > 0 ? this.runs[lo - 1] : undefined;
    return r && slot < r.first + r.count ? r : undefined;
  }

  /** Forgets the runs of generations up to `gen` (their commit is done: the view shows them). */
  dropThrough(gen: number): void {
    this.runs = this.runs.filter((r) => r.gen > gen);
  }

  /** Every run of pack `pack` (a pack being compacted or dropped). */
  ofPack(pack: number): Run[] {
    return this.runs.filter((r) => r.pack === pack);
  }
}
