// The fingerprint index: dedup key (domain, fingerprint) → slot of a live chunk with those bytes,
// an LMDB b-tree keyed by random 256-bit values. New fingerprints reach it through the dedup log
// (dedup-log.ts), never at write time. A Bloom filter in front of it answers "not stored" for
// new data without a disk read; it is filled from the index in the background at start.
import type { Database } from 'lmdb';
import type { CommitPart, CommitPipeline, TxnWriter } from '../meta/commit-pipeline.js';
import { FingerprintFilter } from './fingerprint-filter.js';
import { KEY_BYTES } from './fingerprinter.js';

type Taken = Map<string, number | null>; // key: latin1 of the 36-byte key; null: removed

export class FingerprintIndex implements CommitPart<Taken> {
  // Entries changed since the last commit (merged from the log, or removed), and the commit's in flight.
  private changes: Taken = new Map();
  private committing: Taken | null = null;
  readonly filter: FingerprintFilter;
  private closed = false;

  constructor(
    private readonly db: Database<number, Buffer>,
    private readonly pipeline: CommitPipeline,
    expectedEntries: number,
  ) {
    this.filter = new FingerprintFilter(expectedEntries * 1.5);
  }

  /** The slot the index gives for the key at keys[off..off+36), or -1. */
  lookup(keys: Buffer, off: number): number {
    // Most new data is not stored yet: the filter says so without touching the disk. First, before
    // the overlays: every key put there came from the dedup log, which added it to the filter (a
    // removal needs no check: a key the filter never had maps nowhere), and a lookup in them built a
    // string per write.
    if (this.filter.ready && !this.filter.mayContainKey(keys, off)) return -1;
    if (this.changes.size > 0 || (this.committing !== null && this.committing.size > 0)) {
      const k = keys.toString('latin1', off, off + KEY_BYTES);
      let v = this.changes.get(k);
      if (v === undefined && this.committing) v = this.committing.get(k);
      if (v !== undefined) return v ?? -1;
    }
    return this.db.get(keys.subarray(off, off + KEY_BYTES)) ?? -1;
  }

  /** Whether the committed index maps `key` to `slot` (loading the log at start). */
  hasCommitted(key: Buffer, slot: number): boolean {
    return this.db.get(key) === slot;
  }

  /** Maps the key at keys[off..off+36) to slot (committed with the next commit). */
  put(keys: Buffer, off: number, slot: number): void {
    this.changes.set(keys.toString('latin1', off, off + KEY_BYTES), slot);
    this.pipeline.changed();
  }

  /**
   * Drops the key's entry, without reading the index first. That read was a random LMDB page read
   * on the event loop per freed chunk: deleting 8 GiB stalled reads on other volumes for up to
   * 65 ms. (Were the entry another live chunk's, with the same fingerprint, written unindexed with
   * dedup off or as a collision, it would only cost that chunk future dedup hits.)
   */
  remove(key: Buffer): void {
    this.changes.set(key.toString('latin1'), null);
    this.pipeline.changed();
  }

  /**
   * Fills the filter (not yet ready) from the on-disk index a slice at a time; then it answers
   * lookups. Fingerprints added meanwhile go into it through the dedup log.
   */
  buildFilter(): void {
    const f = this.filter;
    let start: Buffer | undefined;
    const slice = () => {
      if (this.closed) return;
      let n = 0;
      let lastKey: Buffer | undefined;
      for (const key of this.db.getKeys({ start, limit: 20_000 }) as Iterable<Buffer>) {
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

  /** Every committed entry (fsck). */
  /** Committed entries (LMDB's own count: O(1)). */
  storedCount(): number {
    return (this.db.getStats() as { entryCount: number }).entryCount;
  }

  *all(): Iterable<[Buffer, number]> {
    for (const { key, value } of this.db.getRange({})) yield [key as Buffer, value as number];
  }

  close(): void {
    this.closed = true;
  }

  take(): Taken | null {
    if (this.changes.size === 0) return null;
    const t = this.changes;
    this.committing = t;
    this.changes = new Map();
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const [k, slot] of t) {
      const key = Buffer.from(k, 'latin1');
      if (slot === null) w.remove('fingerprints', this.db, key);
      else w.put('fingerprints', this.db, key, slot);
    }
  }

  settle(): void {
    this.committing = null;
  }
}
