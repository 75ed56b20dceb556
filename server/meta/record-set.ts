// Records kept in the main database under a key prefix (`volume/NAME`, `intent/ID`), changed in
// memory and committed with everything else. Values are copied when a commit takes them: the
// records go on changing while the transaction is written.
import type { Database } from 'lmdb';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';

interface Taken<T> {
  puts: Array<[string, T]>;
  deletes: string[];
}

export class RecordSet<K extends string | number, T> implements CommitPart<Taken<T>> {
  protected readonly records = new Map<K, T>();
  private dirty = new Set<K>();
  private deleted = new Set<K>();

  /** Loads every record under `prefix`; `check` throws for a damaged one. */
  constructor(
    private readonly main: Database,
    private readonly prefix: string,
    private readonly pipeline: CommitPipeline,
    keyOf: (value: T) => K,
    check: (value: unknown, key: string) => T,
  ) {
    // Keys are `${prefix}${key}`; '0' sorts right after '/', which ends every prefix.
    const end = prefix.slice(0, -1) + '0';
    for (const { key, value } of main.getRange({ start: prefix, end })) {
      const v = check(value, String(key));
      this.records.set(keyOf(v), v);
    }
  }

  get(key: K): T | undefined {
    return this.records.get(key);
  }

  get size(): number {
    return this.records.size;
  }

  values(): IterableIterator<T> {
    return this.records.values();
  }

  /** Records a new or changed value (later changes to the same object are committed too). */
  put(key: K, value: T): void {
    this.records.set(key, value);
    this.dirty.add(key);
    this.deleted.delete(key);
    this.pipeline.changed();
  }

  delete(key: K): void {
    this.records.delete(key);
    this.dirty.delete(key);
    this.deleted.add(key);
    this.pipeline.changed();
  }

  take(): Taken<T> | null {
    if (this.dirty.size === 0 && this.deleted.size === 0) return null;
    const t: Taken<T> = { puts: [...this.dirty].map((k) => [this.prefix + k, structuredClone(this.records.get(k)!)]), deletes: [...this.deleted].map((k) => this.prefix + k) };
    this.dirty = new Set();
    this.deleted = new Set();
    return t;
  }

  write(t: Taken<T>, w: TxnWriter): void {
    for (const [k, v] of t.puts) w.put('main', this.main, k, v);
    for (const k of t.deletes) w.remove('main', this.main, k);
  }

  settle(): void {}
}
