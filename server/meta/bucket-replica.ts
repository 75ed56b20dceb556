// The metadata's copy in the bucket, kept as the commit pipeline's journal: every commit's LMDB writes
// become a delta object, periodic checkpoints (copies of meta.lmdb) cap how many deltas a restore replays,
// and PREFIX/head (commit-head.ts, fenced) names the checkpoint and the deltas after it. A restore on
// another machine is that checkpoint plus those deltas (replica-restore.ts).
//
// Each delta is first written to the local outbox (PREFIX-independent: <data-dir>/s3/outbox/), so a
// restart on the same disk publishes what was committed but not yet in the bucket. Then, in order: the
// packs its records name are uploaded (uploadedThrough), the deltas are uploaded, and one head commit names
// them all. A delta in the bucket means nothing until the head names it, and the head names it only once
// the packs are there. With --s3-sync flush a commit (and the FLUSH waiting on it) completes when its head
// commit has landed; with async once its delta is fsynced in the outbox, the bucket following within about
// a second plus the uploads (shoal_s3_upload_lag_seconds). While the store is unreachable the uploads are
// retried until they land; nothing committed locally is dropped.
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ShoalError } from '../errors.js';
import type { CommitHead } from '../store/s3/commit-head.js';
import type { LeaseLogger, PrefixLease } from '../store/s3/lease.js';
import { untilDone } from '../store/s3/outage-retry.js';
import type { CommitJournal, CommitOp, CommitPart, TxnWriter } from './commit-pipeline.js';
import { copyMetadata, removeEnvFile, uploadCheckpoint } from './meta-checkpoint.js';
import type { MetaStore } from './meta-store.js';
import { outboxDir, writeOutbox, type OutboxEntry } from './replica-outbox.js';
import {
  checkpointKey,
  deltaKey,
  encodeDelta,
  REPLICA_KEY,
  STATE_FORMAT,
  unnamed,
  withCheckpoint,
  withDelta,
  type CommitId,
  type DbEncoding,
  type ReplicaRecord,
  type ReplicaState,
} from './replica-format.js';

/** What the replica needs of the chunk store: packs named by commits so far reach the bucket first. */
interface UploadBarrier {
  /** A mark covering every chunk written so far. */
  mark(): number;
  /** Resolves once every pack up to `mark` is in the bucket. */
  uploadedThrough(mark: number): Promise<void>;
}

export interface BucketReplicaOptions {
  meta: MetaStore;
  head: CommitHead<ReplicaState>;
  lease: PrefixLease;
  store: UploadBarrier;
  /** The outbox lives under it. */
  dir: string;
  sync: 'flush' | 'async';
  logger: LeaseLogger;
  /** Deltas since the last checkpoint that trigger the next one (default 2,000; a test sets a few). */
  checkpointDeltas?: number;
  /** Test-only: a pause after a checkpoint is uploaded, before the head names it. */
  pauseAfterCheckpointMs?: number;
  /** At close, how long to wait for what is left to be published (--s3-timeout). */
  closeTimeoutMs: number;
}

/** How the replica takes over from what the disk and the bucket hold (replica-restore.ts decides). */
export interface ReplicaResume {
  /** Deltas left in the outbox that the bucket does not name yet, in order. */
  pending: OutboxEntry[];
  /** The local metadata holds commits whose delta is lost: a checkpoint must cover them before more deltas. */
  gap: boolean;
}

const ASYNC_PUBLISH_MS = 1000;
const MAX_BATCH = 512;
const PARALLEL_PUTS = 8;
const DEFAULT_CHECKPOINT_DELTAS = 2000;
const MIN_CHECKPOINT_DELTA_BYTES = 16 * 2 ** 20;

export class BucketReplica implements CommitJournal {
  /** The bucket's committed state (what the head names). */
  private state: ReplicaState;
  /** The newest commit taken locally. */
  private local: ReplicaRecord | null;
  private readonly byGen = new Map<number, ReplicaRecord>();
  private readonly queue: OutboxEntry[] = [];
  private waiters: Array<{ seq: number; resolve: () => void; reject: (e: Error) => void }> = [];
  private publishing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private checkpointing: Promise<void> | null = null;
  private readyCheckpoint: (NonNullable<ReplicaState['checkpoint']> & { mark: number }) | null = null;
  /** Set while the outbox misses a commit the local metadata holds: deltas wait for a checkpoint. */
  private gap: boolean;
  private deltaBytesSinceCheckpoint = 0;
  private failure: ShoalError | null = null;
  private closed = false;
  private readonly outbox: string;
  /** The part that writes the `replica` record into every commit. */
  readonly part: CommitPart<ReplicaRecord>;
  /** Set by close(): everything committed is in the bucket (the lease may be released). */
  drainedAll = false;

  private constructor(
    private readonly opts: BucketReplicaOptions,
    resume: ReplicaResume,
  ) {
    const { meta, head } = opts;
    this.outbox = outboxDir(opts.dir);
    mkdirSync(this.outbox, { recursive: true });
    this.state = head.state ?? { format: STATE_FORMAT, chunkSize: meta.chunkSize, checkpoint: null, deltas: [], last: { seq: 0, epoch: 0 } };
    this.local = (meta.main.get(REPLICA_KEY) as ReplicaRecord | undefined) ?? null;
    this.queue.push(...resume.pending);
    this.gap = resume.gap;
    this.part = {
      take: (gen) => {
        const prev = this.local;
        const rec: ReplicaRecord = { seq: (prev?.seq ?? 0) + 1, epoch: opts.lease.epoch, prev: prev ? { seq: prev.seq, epoch: prev.epoch } : null };
        this.local = rec;
        this.byGen.set(gen, rec);
        return rec;
      },
      write: (rec, w: TxnWriter) => {
        w.put('main', meta.main, REPLICA_KEY, rec);
      },
      settle: (rec, ok) => {
        if (!ok) this.byGen.forEach((r, g) => r === rec && this.byGen.delete(g));
      },
    };
  }

  /** Starts the replica over the local metadata, with what replica-restore found pending. */
  static open(opts: BucketReplicaOptions, resume: ReplicaResume): BucketReplica {
    const r = new BucketReplica(opts, resume);
    opts.meta.pipeline.add(r.part);
    opts.meta.pipeline.journal = r;
    if (r.gap) r.startCheckpoint();
    if (r.queue.length > 0) {
      opts.logger.info({ deltas: r.queue.length }, `publishing ${r.queue.length} commit(s) left in the outbox to ${opts.lease.url}`);
      r.kick();
    }
    return r;
  }

  // ------------------------------------------------------------------ CommitJournal

  async committed(ops: CommitOp[], gen: number): Promise<void> {
    const record = this.byGen.get(gen);
    this.byGen.delete(gen);
    if (!record) throw new ShoalError('internal', `commit ${gen} has no replica record`);
    if (this.failure) throw this.failure;
    const body = encodeDelta({ record, dbs: this.encodingsOf(ops), ops });
    const path = join(this.outbox, `${record.epoch}-${record.seq}.delta`);
    await writeOutbox(path, body, this.opts.sync === 'async');
    this.queue.push({ record, path, bytes: body.length, mark: this.opts.store.mark(), at: performance.now() });
    if (this.opts.sync === 'flush') return this.publishedThrough(record.seq);
    this.schedule();
  }

  /** Resolves once everything committed locally so far is named by the bucket's head. */
  published(): Promise<void> {
    return this.publishedThrough(this.local?.seq ?? 0);
  }

  private publishedThrough(seq: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.state.last.seq >= seq && !this.gap) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ seq, resolve, reject }));
    this.kick();
    return p;
  }

  /** Publishes soon (async mode: about a second after the first commit waiting, so commits share a head write). */
  private schedule(): void {
    if (this.timer || this.publishing) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.kick();
    }, ASYNC_PUBLISH_MS);
    this.timer.unref();
  }

  /** Runs the publisher until the outbox is empty (one pass at a time). */
  private kick(): void {
    if (this.publishing || this.failure || this.closed) return;
    this.publishing = (async () => {
      while (!this.failure && (this.queue.length > 0 || this.readyCheckpoint)) {
        if (!(await this.publishOnce())) break;
      }
    })()
      .catch((e: Error) => this.fail(e))
      .finally(() => {
        this.publishing = null;
        if (this.queue.length > 0 && !this.failure && !this.closed) this.schedule();
      });
  }

  /** Names the next deltas (and a ready checkpoint) in one head commit; false if nothing could be named. */
  private async publishOnce(): Promise<boolean> {
    const opts = this.opts;
    const retry = { logger: opts.logger, stopped: () => this.closed };
    const cp = this.readyCheckpoint;
    let next = this.state;
    let batch: OutboxEntry[] = [];
    if (this.gap) {
      // Only a checkpoint can bridge the missing commit; the deltas after it follow in later passes.
      if (!cp) return false;
      await untilDone('uploading the packs a checkpoint names', () => opts.store.uploadedThrough(cp.mark), retry);
      next = withCheckpoint(next, cp);
    } else {
      batch = this.queue.slice(0, MAX_BATCH).filter((e) => e.record.seq > next.last.seq);
      const mark = Math.max(-1, ...batch.map((e) => e.mark));
      if (batch.length > 0) await opts.store.uploadedThrough(mark);
      await parallel(batch, PARALLEL_PUTS, (e) => untilDone(`uploading ${opts.lease.bucket.url(deltaKey(opts.lease.prefix, e.record.epoch, e.record.seq))}`, () => this.putDelta(e), retry));
      for (const e of batch) {
        if (e.record.prev?.seq !== next.last.seq && !(e.record.prev === null && next.last.seq === 0))
          throw new ShoalError('internal', `commit ${e.record.seq} does not follow ${next.last.seq}, the bucket's last`);
        next = withDelta(next, e.record);
      }
      if (cp && cp.seq <= next.last.seq) next = withCheckpoint(next, cp);
    }
    if (next === this.state) return false;
    const garbage = unnamed(opts.lease.prefix, this.state, next);
    await untilDone(`committing ${opts.lease.url}head`, () => opts.head.commit(next), retry);
    const adopted = next.checkpoint !== this.state.checkpoint;
    this.state = next;
    if (adopted) {
      this.readyCheckpoint = null;
      this.gap = false;
      this.deltaBytesSinceCheckpoint = 0;
      opts.logger.info({ checkpoint: next.checkpoint!.key, seq: next.checkpoint!.seq }, `the bucket's metadata now starts from checkpoint ${next.checkpoint!.seq}`);
    }
    // Entries the head now covers (named, or inside the checkpoint) leave the outbox.
    while (this.queue.length > 0 && this.queue[0].record.seq <= next.last.seq) {
      const e = this.queue.shift()!;
      rmSync(e.path, { force: true });
    }
    for (const e of batch) this.deltaBytesSinceCheckpoint += e.bytes;
    this.waiters = this.waiters.filter((w) => {
      if (w.seq > this.state.last.seq || this.gap) return true;
      w.resolve();
      return false;
    });
    void this.deleteObjects(garbage);
    this.maybeCheckpoint();
    return true;
  }

  private async putDelta(e: OutboxEntry): Promise<void> {
    const { lease } = this.opts;
    const key = deltaKey(lease.prefix, e.record.epoch, e.record.seq);
    const body = readFileSync(e.path);
    await lease.ensureHeld();
    try {
      await lease.bucket.put(key, body, { ifNoneMatch: '*' });
    } catch (err) {
      if (!(err instanceof ShoalError) || err.code !== 's3_precondition_failed') throw err;
      // Our own earlier attempt (its answer lost), or this host's previous process: the same bytes.
      const there = await lease.bucket.get(key);
      if (!there || !there.body.equals(body)) throw new ShoalError('store_fenced', `${lease.bucket.url(key)} holds another writer's delta: two writers share epoch ${e.record.epoch} on ${lease.url}.`);
    }
  }

  private encodingsOf(ops: CommitOp[]): Record<string, DbEncoding> {
    const out: Record<string, DbEncoding> = {};
    for (const o of ops) if (!(o.db in out)) out[o.db] = this.opts.meta.encodings.get(o.db) ?? {};
    return out;
  }

  // ------------------------------------------------------------------ checkpoints

  private maybeCheckpoint(): void {
    if (this.checkpointing || this.readyCheckpoint || this.closed) return;
    let named = 0;
    for (const d of this.state.deltas) named += d.to - d.from + 1;
    const bytesDue = Math.max(MIN_CHECKPOINT_DELTA_BYTES, (this.state.checkpoint?.bytes ?? 0) / 4);
    if (named >= (this.opts.checkpointDeltas ?? DEFAULT_CHECKPOINT_DELTAS) || this.deltaBytesSinceCheckpoint >= bytesDue) this.startCheckpoint();
  }

  private startCheckpoint(): void {
    const opts = this.opts;
    const path = join(opts.dir, 'checkpoint.lmdb');
    this.checkpointing = (async () => {
      const { record, bytes } = await copyMetadata(opts.meta, path);
      const mark = opts.store.mark();
      const key = checkpointKey(opts.lease.prefix, opts.lease.epoch, record.seq);
      await untilDone(
        `uploading checkpoint ${opts.lease.bucket.url(key)}`,
        async () => {
          await opts.lease.ensureHeld();
          await uploadCheckpoint(opts.lease.bucket, key, path, bytes);
        },
        { logger: opts.logger, stopped: () => this.closed },
      );
      removeEnvFile(path);
      if (opts.pauseAfterCheckpointMs) {
        opts.logger.warn({ key }, `test hook: checkpoint ${record.seq} uploaded, pausing ${opts.pauseAfterCheckpointMs} ms before the head names it`);
        await sleep(opts.pauseAfterCheckpointMs);
      }
      this.readyCheckpoint = { key, seq: record.seq, epoch: record.epoch, bytes, mark };
      opts.logger.info({ key, seq: record.seq, bytes }, `checkpoint ${record.seq} of the metadata uploaded (${bytes} bytes)`);
    })()
      .catch((e: Error) => {
        removeEnvFile(path);
        if (!this.closed) opts.logger.warn({ err: e }, 'a metadata checkpoint failed; the next one is tried later');
      })
      .finally(() => {
        this.checkpointing = null;
        if (this.readyCheckpoint) this.kick();
      });
  }

  private async deleteObjects(keys: string[]): Promise<void> {
    const { lease } = this.opts;
    try {
      await parallel(keys, PARALLEL_PUTS, async (k) => {
        if (this.closed) return;
        await lease.ensureHeld();
        await lease.bucket.delete(k);
      });
    } catch (e) {
      if (!this.closed) this.opts.logger.warn({ err: e }, 'deleting metadata objects the head no longer names failed; the next start sweeps them');
    }
  }

  /**
   * Deletes metadata objects of earlier epochs that the head does not name (left by a crash before their
   * delete, or uploaded by a writer that was fenced). Call once the outbox left at start is published.
   */
  async sweep(): Promise<number> {
    const { lease } = this.opts;
    await this.published();
    const keep = new Set<string>(unnamed(lease.prefix, this.state, { ...this.state, checkpoint: null, deltas: [] }));
    const mine = `${String(lease.epoch).padStart(8, '0')}`;
    const stale: string[] = [];
    for await (const o of lease.bucket.list(`${lease.prefix}meta/`)) {
      const rest = o.key.slice(`${lease.prefix}meta/`.length);
      if (keep.has(o.key) || rest.startsWith(`delta/${mine}/`) || rest.startsWith(`checkpoint/${mine}-`)) continue;
      stale.push(o.key);
    }
    await this.deleteObjects(stale);
    if (stale.length > 0) this.opts.logger.info({ deleted: stale.length }, `swept ${stale.length} metadata object(s) the head does not name`);
    return stale.length;
  }

  // ------------------------------------------------------------------ status, fencing, close

  /** How far the bucket is behind the local metadata: the oldest unpublished commit's age (s), and the outbox's bytes. */
  backlog(): { oldestSeconds: number; bytes: number } {
    const first = this.queue[0];
    let bytes = 0;
    for (const e of this.queue) bytes += e.bytes;
    return { oldestSeconds: first ? (performance.now() - first.at) / 1000 : 0, bytes };
  }

  /** The bucket's newest commit. */
  get publishedCommit(): CommitId {
    return this.state.last;
  }

  private fail(e: Error): void {
    const err = e instanceof ShoalError ? e : new ShoalError('io_error', `publishing the metadata failed: ${e.message}`, { cause: e });
    if (this.failure) return;
    this.failure = err;
    if (!this.closed) this.opts.logger.error({ err }, `the metadata can no longer be published to ${this.opts.lease.url}: ${err.message}`);
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  /** Another daemon took the prefix over: nothing more is published. */
  fence(e: ShoalError): void {
    this.fail(e);
  }

  /** Publishes what is left (for up to `timeoutMs`), then stops. Whether everything committed is in the bucket. */
  private async drain(timeoutMs: number): Promise<boolean> {
    if (this.failure) return false;
    const done = this.published().then(
      () => true,
      () => false,
    );
    const ok = await Promise.race([done, sleep(timeoutMs, false, { ref: false })]);
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.checkpointing;
    return ok && this.queue.length === 0;
  }

  /** After the last commit (MetaStore.close): publishes what is left, for up to closeTimeoutMs. */
  async close(): Promise<void> {
    this.drainedAll = await this.drain(this.opts.closeTimeoutMs);
  }
}

async function parallel<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}
