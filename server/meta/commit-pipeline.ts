// The commit pipeline: every change to the metadata since the last commit lives in in-memory
// overlays, and a commit writes them all in one LMDB transaction (atomic, fsynced). A crash always
// finds the metadata of the last commit, whole. Chunk data is made durable first (syncData), so
// committed metadata never references bytes that are not on disk.
//
// Each concern (map nodes, chunk records, slots, volume records, the dedup log and index...) is a
// CommitPart: it hands over its overlay synchronously when a commit starts, queues its records
// into the transaction, and learns when the transaction is durable. Nothing ever holds commits
// back: a multi-step operation makes itself crash-atomic with an intent record instead.
import type { Database, Key } from 'lmdb';
import { diskErrorCode, ShoalError } from '../errors.js';
import type { Superblock } from './superblock.js';

/** The error lmdb-js rejects a failed transaction's write promises with (the cause is on its commitError). */
export const LMDB_TXN_FAILED = 'Commit failed (see commitError for details)';

/**
 * MDB_BAD_TXN. The LMDB that lmdb-js bundles keeps its free-page list in memory between
 * transactions, and its save of that list (mdb_freelist_save, "reserved freelist had a data entry
 * with zero-size") now and then fails a commit with this code: seen once in CI, on the commit right
 * after a restart that rolled a dedupe forward, which closed the store and kept the daemon from
 * starting. The commit fails before any page is written and the transaction is aborted whole; the
 * abort drops that in-memory list, so the next transaction rebuilds it from the file, and the same
 * writes queued again commit (tried here: a real aborted commit, its writes queued again, durable
 * after a reopen). So this code alone is retried, a few times; a full disk or an I/O error still
 * closes the store.
 */
const MDB_BAD_TXN = -30782;
/** Attempts at one commit's transaction when LMDB fails it with MDB_BAD_TXN. */
const TXN_ATTEMPTS = 3;

/** One write of a commit as a journal sees it: the database's name, the key, the value (undefined: removed). */
export interface CommitOp {
  db: string;
  key: Key;
  value: unknown;
}

/**
 * Where each commit's writes go once LMDB holds them durably, e.g. an object store that keeps a
 * copy of the metadata (server/meta/bucket-replica.ts). A commit, and every FLUSH waiting on it,
 * completes when committed() resolves; if it rejects, the commit is durable locally and the journal
 * keeps it to retry, and the caller sees the error.
 */
export interface CommitJournal {
  committed(ops: CommitOp[], gen: number): Promise<void>;
  /** After the last commit, before the environment closes: finish (or give up on) what is pending. */
  close?(): Promise<void>;
}

/** Queues a commit's writes into its LMDB transaction, and records them when a journal is attached. */
export class TxnWriter {
  /**
   * The distinct promises of the writes queued: lmdb-js gives every write of one transaction the
   * same promise, which settles when the transaction is durable. All are awaited (were the writes
   * ever split over two transactions, the first one's failure must fail the commit), and each one
   * is handled: when a commit fails (a full disk), lmdb-js rejects them all, and one left unhandled
   * ended the daemon.
   */
  readonly settled: Array<Promise<boolean>> = [];
  readonly ops: CommitOp[] | null;

  /**
   * `fault` (a test hook, SHOAL_TEST_COMMIT_FAULT_EVERY): the writes are not queued at all, and
   * durable() fails as lmdb-js fails an aborted transaction, with `fault` as its cause. MDB_BAD_TXN
   * cannot be brought about on demand; this lets the tests prove that a retried commit writes every
   * record again (kill -9 after it, then fsck).
   */
  constructor(
    journaled: boolean,
    private readonly fault: Error | null = null,
  ) {
    this.ops = journaled ? [] : null;
  }

  put<K extends Key, V>(name: string, db: Database<V, K>, key: K, value: V): void {
    if (this.fault === null) this.track(db.put(key, value));
    this.ops?.push({ db: name, key, value });
  }

  remove<K extends Key>(name: string, db: Database<unknown, K>, key: K): void {
    if (this.fault === null) this.track(db.remove(key));
    this.ops?.push({ db: name, key, value: undefined });
  }

  private track(p: Promise<boolean>): void {
    if (p !== this.settled[this.settled.length - 1]) this.settled.push(p);
  }

  /** Resolves once every write is durable; rejects with the first failure. */
  durable(): Promise<unknown> {
    if (this.fault !== null) {
      const commitError = Promise.reject(this.fault);
      commitError.catch(() => {}); // read by the pipeline; never left unhandled
      return Promise.reject(Object.assign(new Error(LMDB_TXN_FAILED), { commitError }));
    }
    return Promise.all(this.settled);
  }
}

export interface CommitPart<T> {
  /**
   * Takes the changes made since the last commit (later ones go to the next commit), or null if
   * there are none. Until settle(), lookups must still see what was taken: LMDB shows it only
   * once the transaction is done. `gen` is the commit's generation.
   */
  take(gen: number): T | null;
  /**
   * Queues the taken records into the transaction through `w`. lmdb-js puts every asynchronous
   * write issued in one synchronous stretch into one transaction, and runs its b-tree work on its
   * own write thread. (A transaction() callback runs that work on the event loop: the profile
   * showed ~10 us per record there, a 1 s stall per 256 MiB of new chunks.)
   */
  write(taken: T, w: TxnWriter): void;
  /** The transaction is durable (ok) or failed (then the store is closed: memory is ahead of disk). */
  settle(taken: T, ok: boolean): void;
  /** Optional: the commit is complete, its journal included (called in commit order). */
  published?(taken: T): void;
}

export class CommitPipeline {
  private readonly parts: Array<CommitPart<unknown>> = [];
  private chain: Promise<void> = Promise.resolve();
  private pending: Promise<void> | null = null;
  private changes = 0;
  private gen = 1;
  private closed = false;
  private running = false;
  /** What closed the pipeline, if a commit failed (a full disk: no_space). */
  failure: ShoalError | null = null;
  /** The most changes one commit has taken since the store opened (its synchronous stretch grows with them). */
  largestCommit = 0;
  /**
   * The last commit's synchronous stretch (taking the changes and queueing their records into the
   * transaction) per change taken, in ms: 0.2-0.4 us for random writes, up to ~2 us when a clone's first
   * writes copy shared leaves (every chunk of such a leaf gains a reference, which the commit folds into
   * its record when no slice did it first). 0 before a commit of 1,000 changes or more.
   */
  stretchPerChange = 0;
  /** The longest synchronous stretch of a commit since the store opened, in ms. */
  longestStretchMs = 0;
  /** Makes chunk data durable; runs inside every commit before its metadata is written. */
  syncData: () => Promise<void> = () => Promise.resolve();
  /** Called after each durable commit. */
  committed: () => void = () => {};
  /** Told how long each durable commit took, from taking the changes to LMDB's fsync (its data sync included). */
  timed: (seconds: number) => void = () => {};
  /** Where commits go once durable in LMDB (none for a purely local store). */
  journal: CommitJournal | null = null;
  /** Told when LMDB failed a commit's transaction with MDB_BAD_TXN and it is queued again. */
  retried: (cause: Error, attempt: number) => void = () => {};
  /** Test hook (SHOAL_TEST_COMMIT_FAULT_EVERY): every n-th commit's first transaction fails as MDB_BAD_TXN does. */
  faultEvery = 0;

  constructor(
    private readonly main: Database,
    private readonly sb: () => Superblock,
  ) {}

  add<T>(part: CommitPart<T>): void {
    this.parts.push(part as CommitPart<unknown>);
  }

  /** Notes `n` changes to be committed (parts call it for every change they make). */
  changed(n = 1): void {
    this.changes += n;
  }

  /** Changes not yet committed. */
  get pendingChanges(): number {
    return this.changes;
  }

  /** The generation of the next commit: a reader holds the one current when it started. */
  get generation(): number {
    return this.gen;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Whether a commit is under way: its changes taken, not yet durable. */
  get committing(): boolean {
    return this.running;
  }

  /** Settles (never rejects) once every commit started or asked for so far has ended. */
  whenIdle(): Promise<void> {
    return this.chain;
  }

  /**
   * Makes everything done so far durable. Concurrent callers share commits: a caller waits for
   * the commit in flight (which may not include its changes) and then for one more.
   */
  commit(): Promise<void> {
    if (this.pending) return this.pending;
    const p = this.chain.then(async () => {
      this.pending = null;
      this.running = true;
      try {
        await this.run();
      } finally {
        this.running = false;
      }
    });
    this.pending = p;
    this.chain = p.catch(() => {});
    return p;
  }

  private async run(): Promise<void> {
    if (this.closed) throw new ShoalError('shutting_down', 'the metadata store is closed');
    if (this.changes === 0) return;
    // 1. Take the overlays as they are now, synchronously: later changes go to the next commit.
    const started = performance.now();
    const gen = this.gen++;
    const taken = this.parts.map((p) => p.take(gen));
    // Taking is part of the stretch: chunk records read there the references counted blind.
    const took = performance.now() - started;
    const sb = structuredClone(this.sb());
    const changes = this.changes;
    if (changes > this.largestCommit) this.largestCommit = changes;
    this.changes = 0;
    let w: TxnWriter;
    try {
      // 2. Chunk data first: committed metadata must never point at bytes not on disk.
      await this.syncData();
      // 3. All metadata in one transaction, resolved once it is fsynced.
      for (let attempt = 1; ; attempt++) {
        const fault = this.faultEvery > 0 && attempt === 1 && gen % this.faultEvery === 0 ? badTxnFault() : null;
        w = new TxnWriter(this.journal !== null, fault);
        const t0 = performance.now();
        this.queue(taken, sb, w);
        const stretch = (attempt === 1 ? took : 0) + performance.now() - t0;
        if (stretch > this.longestStretchMs) this.longestStretchMs = stretch;
        if (changes >= 1000) this.stretchPerChange = stretch / changes;
        try {
          await w.durable();
          break;
        } catch (e) {
          const cause = await causeOf(e);
          if (attempt >= TXN_ATTEMPTS || (cause as { code?: unknown } | null)?.code !== MDB_BAD_TXN) throw cause;
          // Aborted whole, nothing of it on disk: the same records go into a new transaction.
          this.retried(cause as Error, attempt);
        }
      }
    } catch (cause) {
      // The in-memory state is ahead of the disk and cannot be reconciled: stop accepting work.
      this.closed = true;
      for (let i = 0; i < this.parts.length; i++) if (taken[i] !== null) this.parts[i].settle(taken[i], false);
      this.failure = new ShoalError(diskErrorCode(cause), `metadata commit failed: ${(cause as Error).message}`, { cause });
      throw this.failure;
    }
    for (let i = 0; i < this.parts.length; i++) if (taken[i] !== null) this.parts[i].settle(taken[i], true);
    this.timed((performance.now() - started) / 1000);
    this.committed();
    // 4. The journal (an object store's copy of the metadata), if any: a FLUSH completes with it.
    if (this.journal) await this.journal.committed(w.ops!, gen);
    for (let i = 0; i < this.parts.length; i++) if (taken[i] !== null) this.parts[i].published?.(taken[i]);
  }

  /** Queues every part's taken records into `w`'s transaction. */
  private queue(taken: unknown[], sb: Superblock, w: TxnWriter): void {
    // The superblock goes first and again last: the batch's promise settles when the whole batch is durable.
    w.put('main', this.main, 'superblock', sb);
    for (let i = 0; i < this.parts.length; i++) if (taken[i] !== null) this.parts[i].write(taken[i], w);
    w.put('main', this.main, 'superblock', sb);
  }

  /** Refuses further commits (after a final one, at close). */
  close(): void {
    this.closed = true;
  }
}

/** What failed a transaction: lmdb-js hangs the write's own error (ENOSPC, EIO, MDB_BAD_TXN) on a promise rejected with it. */
async function causeOf(e: unknown): Promise<unknown> {
  const detail = (e as { commitError?: Promise<unknown> } | null)?.commitError;
  if (!(detail instanceof Promise)) return e;
  return Promise.race([detail.then(() => e, (x: unknown) => x), new Promise((r) => setTimeout(r, 100, e))]);
}

/** The error LMDB's free-list save fails a commit with (see MDB_BAD_TXN), for the test hook. */
function badTxnFault(): Error {
  const message = 'MDB_BAD_TXN: Transaction must abort, has a child, or is invalid: reserved freelist had a data entry with zero-size (test hook)';
  return Object.assign(new Error(message), { code: MDB_BAD_TXN });
}
