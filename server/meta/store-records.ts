// The chunk store's own records, for a store whose chunks' places are metadata (an object store:
// which pack holds which chunks). They live in the `store-records` database and join every
// commit, so a chunk record and the record of where its bytes lie are durable together.
import type { Database } from 'lmdb';
import type { StoreRecordLog, StoreRecordsView } from '../store/chunk-store.js';
import type { CommitPart, TxnWriter } from './commit-pipeline.js';

type Taken = Map<number, Buffer | null>;

export class StoreRecords implements CommitPart<Taken>, StoreRecordsView {
  private log: StoreRecordLog | null = null;

  constructor(private readonly db: Database<Buffer, number>) {}

  /** Connects the store that writes these records (once, before the first commit). */
  attach(log: StoreRecordLog): void {
    this.log = log;
  }

  // The view reads what is committed: records not yet committed stay with the store, which
  // looks in its own hands first.
  get(key: number): Buffer | undefined {
    return this.db.getBinary(key) ?? undefined;
  }

  floor(key: number): [number, Buffer] | undefined {
    for (const { key: k, value } of this.db.getRange({ start: key, reverse: true, limit: 1 })) return [k as number, value as Buffer];
    return undefined;
  }

  *entries(range?: { start: number; end: number }): Iterable<[number, Buffer]> {
    for (const { key, value } of this.db.getRange(range ?? {})) yield [key as number, value as Buffer];
  }

  take(): Taken | null {
    return this.log?.takeRecords() ?? null;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const [k, v] of t) {
      if (v === null) w.remove('store-records', this.db, k);
      else w.put('store-records', this.db, k, v);
    }
  }

  settle(_t: Taken, ok: boolean): void {
    if (!ok) this.log?.recordsCommitted(false);
  }

  published(): void {
    this.log?.recordsCommitted(true);
  }
}
