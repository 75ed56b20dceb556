// The S3 chunk store: chunks in immutable packs of several MiB in a bucket, the local disk and RAM as cache
// tiers in front. A write goes into the open pack, a file in the local tier, at its final place; a full pack
// is sealed and uploaded in the background (pack-uploader.ts). Where each chunk lies is recorded in the
// metadata, with the chunk records that name it (pack-records.ts). A read of a chunk that is neither in RAM
// nor on the local disk fetches byte ranges of its pack (pack-fetcher.ts).
//
// Durability is in two steps. sync() (inside every metadata commit, before its transaction) makes every
// completed write durable on the local disk, so the local metadata never names lost bytes. uploadedThrough()
// (called by the metadata's bucket replica before a commit is named in the bucket) seals the open pack and
// waits for the uploads, so the bucket's metadata never names a pack that is not there. With --s3-sync flush
// a FLUSH waits for both; with async only for the first.
//
// Frees are counted per pack; a pack whose chunks are all freed is deleted, and one whose live fraction
// falls below --s3-compact-below is rewritten: its live chunks are copied into the open pack and its
// records replaced in one commit (pack-compactor.ts). A pack's object is deleted only once the bucket's
// committed metadata no longer names it.
import { ShoalError } from '../../errors.js';
import type { ChunkStore, ChunkTargets, StoreRecordLog, StoreRecordsView, StoreStats } from '../chunk-store.js';
import type { LeaseLogger, PrefixLease } from './lease.js';
import { LocalPack } from './local-pack.js';
import { LocalTier } from './local-tier.js';
import { PackFetcher } from './pack-fetcher.js';
import { PackUploader } from './pack-uploader.js';
import { packSize } from './pack-format.js';
import {
  committedRun,
  decodePackRecord,
  encodePackRecord,
  encodeRun,
  isDead,
  deadChunks,
  markDead,
  PACK_KEYS,
  packIdOfKey,
  packKey,
  packObjectKey,
  RunOverlay,
  type PackRecord,
  type Run,
} from './pack-records.js';

export interface S3PackStoreOptions {
  lease: PrefixLease;
  /** The local tier's directory (inside the data directory). */
  dir: string;
  chunkSize: number;
  /** The store's committed records (the metadata's store-records database). */
  records: StoreRecordsView;
  /** --local-cache-size in bytes. */
  localCacheBytes: number;
  logger: LeaseLogger;
  /** A pack is sealed once it holds this many bytes of chunks (default 8 MiB). */
  packBytes?: number;
  /** Uploads in flight at once (default 4). */
  uploadParallel?: number;
  /** How long a sealed pack waits before its upload (--s3-upload-delay, async mode; default 0). */
  uploadDelayMs?: number;
  /** Test-only: pause after each pack upload (see PackUploader). */
  pauseAfterUploadMs?: number;
}

/** What the store knows of each pack the metadata names (and the open one). */
export interface PackInfo extends PackRecord {
  id: number;
  /** open: being filled; staged: sealed, waiting for its upload; uploaded: in the bucket. */
  state: 'open' | 'staged' | 'uploaded';
  /** Chunks marked dead (kept in step with the bitmap). */
  deadCount: number;
  /** Its record changed since the last take. */
  dirty: boolean;
  /** Its records are to be removed (it was emptied or rewritten); then its object is deleted. */
  dropped: boolean;
  /** Generation of its newest run: its runs are all committed once that generation's commit is done. */
  lastGen: number;
}

const MiB = 2 ** 20;

export class S3PackStore implements ChunkStore, StoreRecordLog {
  readonly reusesSlots = false;
  readonly chunkSize: number;
  readonly tier: LocalTier;
  readonly fetcher: PackFetcher;
  readonly uploader: PackUploader;
  /** Most chunks a pack holds. */
  readonly capacity: number;
  readonly packs = new Map<number, PackInfo>();
  /** The open pack and the sealed ones whose upload is not done, by id. */
  private readonly local = new Map<number, LocalPack>();
  private open: LocalPack | null = null;
  private readonly sealing = new Set<Promise<void>>();
  private nextPackId: number;
  private readonly overlay = new RunOverlay();
  private pending = new Map<number, Buffer | null>();
  private lastRun: Run | null = null;
  /** Generation of the runs recorded now; the take in flight holds takenGen. */
  private gen = 1;
  private takenGen = 0;
  private committedGen = 0;
  private commitWaiters: Array<{ gen: number; resolve: () => void }> = [];
  private closed = false;
  private fencedBy: ShoalError | null = null;
  private reads = 0;
  private readBytes = 0;
  /** Told once a commit that dropped packs is done (the compactor deletes their objects). */
  onDropped: (packs: PackInfo[]) => void = () => {};
  /** Told when a pack's live fraction changed (the compactor looks at it). */
  onFreed: (pack: PackInfo) => void = () => {};

  private constructor(
    private readonly opts: S3PackStoreOptions,
    readonly records: StoreRecordsView,
  ) {
    this.chunkSize = opts.chunkSize;
    this.capacity = Math.max(1, Math.floor((opts.packBytes ?? 8 * MiB) / opts.chunkSize));
    this.tier = new LocalTier(opts.dir, Math.max(opts.localCacheBytes, 2 * packSize(this.capacity, this.capacity * this.chunkSize)));
    this.fetcher = new PackFetcher(opts.lease.bucket, opts.lease.prefix, opts.chunkSize, this.tier, this.capacity);
    this.uploader = new PackUploader({
      lease: opts.lease,
      logger: opts.logger,
      parallel: opts.uploadParallel ?? 4,
      pauseAfterUploadMs: opts.pauseAfterUploadMs,
      delayMs: opts.uploadDelayMs,
      // Half the tier staged: waiting longer would soon make writes wait for room.
      pressing: () => this.tier.staged * 2 > this.tier.limitBytes,
      uploaded: (p) => this.uploaded(p),
    });
    let maxId = -1;
    for (const [key, value] of records.entries(PACK_KEYS)) {
      const id = packIdOfKey(key);
      const rec = decodePackRecord(id, value);
      this.packs.set(id, { ...rec, id, deadCount: deadChunks(rec), state: 'uploaded', dirty: false, dropped: false, lastGen: 0 });
      if (id > maxId) maxId = id;
    }
    this.nextPackId = maxId + 1;
  }

  /**
   * Opens the store over its committed records. Packs a previous process left staged on this disk (sealed
   * or not) are sealed and queued for upload if the metadata names them, deleted if not.
   */
  static open(opts: S3PackStoreOptions): S3PackStore {
    const s = new S3PackStore(opts, opts.records);
    s.recoverStaged();
    return s;
  }

  private recoverStaged(): void {
    for (const f of this.tier.stagedFiles()) {
      const info = this.packs.get(f.id);
      if (!info || info.epoch !== f.epoch) {
        // Written by a process that died before any commit named it: nothing refers to it.
        LocalPack.create(f.id, f.epoch, f.path, this.chunkSize, this.capacity).remove();
        continue;
      }
      const pack = LocalPack.recover(f.id, f.epoch, f.path, this.chunkSize, this.capacity);
      if (f.id >= this.nextPackId) this.nextPackId = f.id + 1;
      info.state = 'staged';
      this.local.set(f.id, pack);
      const staged = pack.count * this.chunkSize;
      this.tier.stage(staged);
      if (pack.state === 'open') {
        // Chunks no committed run names were written as the daemon died: dead from the start.
        pack.slots.forEach((slot, i) => {
          const r = committedRun(this.records, slot);
          if (!r || r.pack !== f.id || r.index + slot - r.first !== i) this.markDeadAt(info, i);
        });
        info.chunks = pack.count;
        info.dirty = true;
        this.seal(pack);
      } else {
        this.uploader.enqueue(pack, packSize(pack.count, staged));
      }
    }
  }

  // ------------------------------------------------------------------ writes

  async write(slot: number, data: Buffer): Promise<void> {
    this.checkWritable();
    const cs = this.chunkSize;
    const n = data.length / cs;
    await this.tier.reserve(data.length);
    this.checkWritable();
    this.uploader.nudge();
    const writes: Array<Promise<void>> = [];
    for (let done = 0; done < n; ) {
      const p = this.openPack();
      const k = Math.min(n - done, this.capacity - p.count);
      const { index, written } = p.append(slot + done, data.subarray(done * cs, (done + k) * cs), k);
      const run: Run = { first: slot + done, count: k, pack: p.id, index };
      writes.push(written.then(() => this.recordRun(run)));
      if (p.count >= this.capacity) this.rotate();
      done += k;
    }
    await Promise.all(writes);
  }

  /**
   * Appends chunks the store already holds to the open pack (compaction's moves); their runs are recorded
   * by the caller, in one step with the removal of their old records.
   */
  async place(chunks: Array<{ slot: number; data: Buffer }>): Promise<Run[]> {
    this.checkWritable();
    await this.tier.reserve(chunks.length * this.chunkSize);
    const runs: Run[] = [];
    const writes: Array<Promise<void>> = [];
    for (const c of chunks) {
      const p = this.openPack();
      const { index, written } = p.append(c.slot, c.data, 1);
      const last = runs[runs.length - 1];
      if (last && last.pack === p.id && last.first + last.count === c.slot && last.index + last.count === index) last.count++;
      else runs.push({ first: c.slot, count: 1, pack: p.id, index });
      writes.push(written);
      if (p.count >= this.capacity) this.rotate();
    }
    await Promise.all(writes);
    return runs;
  }

  /** Records a run whose chunks are written: a record for the next commit, and a lookup until then. */
  recordRun(r: Run): void {
    this.overlay.add(r, this.gen);
    const last = this.lastRun;
    if (last && last.pack === r.pack && last.first + last.count === r.first && last.index + last.count === r.index) {
      last.count += r.count;
      this.pending.set(last.first, encodeRun(last));
    } else {
      this.lastRun = { ...r };
      this.pending.set(r.first, encodeRun(r));
    }
    const info = this.packs.get(r.pack)!;
    if (r.index + r.count > info.chunks) info.chunks = r.index + r.count;
    info.lastGen = this.gen;
    info.dirty = true;
  }

  /** Removes a run record (its chunks were moved, or its pack dropped) with the next commit. */
  removeRun(first: number): void {
    if (this.lastRun?.first === first) this.lastRun = null;
    this.pending.set(first, null);
  }

  private openPack(): LocalPack {
    if (this.open) return this.open;
    const id = this.nextPackId++;
    const epoch = this.opts.lease.epoch;
    const p = LocalPack.create(id, epoch, this.tier.stagingPath(epoch, id), this.chunkSize, this.capacity);
    // Its upload waits (async): it will be read back from the disk, not the page cache. In flush mode the
    // upload follows the next FLUSH, and reads the pages, then drops them.
    if ((this.opts.uploadDelayMs ?? 0) > 0) p.dropWhenSynced();
    this.open = p;
    this.local.set(id, p);
    this.packs.set(id, { id, epoch, chunks: 0, dead: new Uint8Array(0), deadCount: 0, state: 'open', dirty: true, dropped: false, lastGen: this.gen });
    return p;
  }

  /** Seals the open pack (in the background) and queues its upload. */
  private rotate(): void {
    const p = this.open;
    if (!p) return;
    this.open = null;
    this.seal(p);
  }

  private seal(p: LocalPack): void {
    const info = this.packs.get(p.id)!;
    info.state = 'staged';
    const sealing = p.seal(true).then(
      (bytes) => {
        this.sealing.delete(sealing);
        info.chunks = p.count;
        info.dirty = true;
        this.uploader.enqueue(p, bytes);
      },
      (e: Error) => {
        this.sealing.delete(sealing);
        throw e;
      },
    );
    this.sealing.add(sealing);
    sealing.catch((e: Error) => this.opts.logger.error({ err: e, pack: p.id }, `sealing pack ${p.id} failed: ${e.message}`));
  }

  private uploaded(p: LocalPack): void {
    const info = this.packs.get(p.id);
    if (info && info.state === 'staged') info.state = 'uploaded';
    this.local.delete(p.id);
    this.tier.promote(p, p.count * this.chunkSize);
  }

  /** Makes every completed write durable on the local disk (the open pack's file, and packs being sealed). */
  async sync(): Promise<void> {
    const waits: Array<Promise<void>> = [...this.sealing];
    if (this.open) waits.push(this.open.sync());
    await Promise.all(waits);
  }

  /** The newest pack holding any written chunk: what uploadedThrough() must cover for the commits so far. */
  mark(): number {
    return this.nextPackId - 1;
  }

  /**
   * Resolves once every pack up to `mark` is in the bucket, sealing the open pack first if it is one of
   * them (so the bucket's metadata may name them all).
   */
  async uploadedThrough(mark: number): Promise<void> {
    if (this.open && this.open.id <= mark && this.open.count > 0) this.rotate();
    await Promise.all([...this.sealing]);
    await this.uploader.through(mark);
  }

  // ------------------------------------------------------------------ reads

  async readChunks(slots: ArrayLike<number>, targets: ChunkTargets): Promise<void> {
    const n = targets.count;
    if (n === 0) return;
    if (this.closed) throw new ShoalError('shutting_down', 'the chunk store is closed');
    const groups = new Map<number, { indexes: number[]; bufs: Buffer[]; at: number[] }>();
    let run: Run | undefined;
    for (let i = 0; i < n; i++) {
      const s = slots[i];
      if (!run || s < run.first || s >= run.first + run.count) run = this.locate(s);
      if (!run) throw new ShoalError('io_error', `chunk ${s} has no place in the S3 store (no pack holds it)`);
      let g = groups.get(run.pack);
      if (!g) groups.set(run.pack, (g = { indexes: [], bufs: [], at: [] }));
      g.indexes.push(run.index + s - run.first);
      g.bufs.push(targets.view(i));
      g.at.push(i);
    }
    await Promise.all([...groups].map(([pack, g]) => this.readFromPack(pack, g.indexes, g.bufs, { targets, at: g.at })));
    this.reads++;
    this.readBytes += n * this.chunkSize;
  }

  /**
   * Chunks `indexes` of pack `id` into `bufs`: from the local disk where they are, else from the bucket.
   * With `frames` (bufs[k] is target at[k]), a local copy may read straight into the targets' frames.
   */
  async readFromPack(id: number, indexes: number[], bufs: Buffer[], frames?: { targets: ChunkTargets; at: number[] }): Promise<void> {
    sortTogether(indexes, bufs, frames?.at);
    const local = this.local.get(id) ?? this.tier.get(id);
    if (local && indexes.every((i) => local.has(i))) return local.read(indexes, bufs, frames);
    const info = this.packs.get(id);
    if (!info) throw new ShoalError('io_error', `pack ${id} is not known to the S3 store`);
    if (!local) return this.fetcher.read(info, indexes, bufs);
    const here: number[] = [];
    const hereBufs: Buffer[] = [];
    const hereAt: number[] = [];
    const there: number[] = [];
    const thereBufs: Buffer[] = [];
    indexes.forEach((i, k) => {
      if (!local.has(i)) return void (there.push(i), thereBufs.push(bufs[k]));
      here.push(i);
      hereBufs.push(bufs[k]);
      if (frames) hereAt.push(frames.at[k]);
    });
    await Promise.all([local.read(here, hereBufs, frames && { targets: frames.targets, at: hereAt }), this.fetcher.read(info, there, thereBufs)]);
  }

  /** The run holding `slot`: uncommitted runs first, then the committed records. */
  locate(slot: number): Run | undefined {
    return this.overlay.find(slot) ?? committedRun(this.records, slot);
  }

  // ------------------------------------------------------------------ frees

  freed(slot: number): void {
    const r = this.locate(slot);
    const info = r && this.packs.get(r.pack);
    if (!r || !info) return; // a chunk whose write failed: it never took a place
    if (this.markDeadAt(info, r.index + slot - r.first)) this.onFreed(info);
  }

  /** Marks chunk `index` of a pack dead; false if it was already. */
  markDeadAt(info: PackInfo, index: number): boolean {
    if (!markDead(info, index)) return false;
    info.deadCount++;
    info.dirty = true;
    return true;
  }

  isDead(info: PackInfo, index: number): boolean {
    return isDead(info, index);
  }

  /** Drops a pack's record with the next commit (its object goes once that is named in the bucket). */
  drop(info: PackInfo): void {
    info.dropped = true;
    info.dirty = true;
  }

  /** Whether every run of the pack is committed. */
  settled(info: PackInfo): boolean {
    return info.lastGen <= this.committedGen;
  }

  /** Resolves once the commit that takes what is pending now is complete. */
  nextCommit(): Promise<void> {
    const gen = this.gen;
    return new Promise((resolve) => this.commitWaiters.push({ gen, resolve }));
  }

  // ------------------------------------------------------------------ StoreRecordLog

  attachRecords(view: StoreRecordsView): StoreRecordLog {
    if (view !== this.records) throw new ShoalError('internal', 'the S3 store was opened over other records');
    return this;
  }

  takeRecords(): Map<number, Buffer | null> | null {
    const dropped: PackInfo[] = [];
    for (const info of this.packs.values()) {
      if (!info.dirty) continue;
      info.dirty = false;
      if (info.dropped) {
        this.pending.set(packKey(info.id), null);
        dropped.push(info);
      } else this.pending.set(packKey(info.id), encodePackRecord(info));
    }
    this.takenGen = this.gen++;
    this.lastRun = null;
    if (dropped.length > 0) this.takenDrops.set(this.takenGen, dropped);
    if (this.pending.size === 0) {
      // Nothing of ours in this commit; still one generation on, so waiters move with commits.
      this.finishGen(this.takenGen);
      return null;
    }
    const t = this.pending;
    this.pending = new Map();
    return t;
  }
  private readonly takenDrops = new Map<number, PackInfo[]>();

  recordsCommitted(ok: boolean): void {
    if (!ok) return;
    this.overlay.dropThrough(this.takenGen);
    this.finishGen(this.takenGen);
  }

  private finishGen(gen: number): void {
    this.committedGen = gen;
    const dropped = this.takenDrops.get(gen);
    if (dropped) {
      this.takenDrops.delete(gen);
      for (const p of dropped) this.packs.delete(p.id);
      this.onDropped(dropped);
    }
    this.commitWaiters = this.commitWaiters.filter((w) => {
      if (w.gen > gen) return true;
      w.resolve();
      return false;
    });
  }

  // ------------------------------------------------------------------ fencing, checks, figures

  /** Another daemon took the prefix over: no more writes or uploads. */
  fence(e: ShoalError): void {
    this.fencedBy ??= e;
    this.uploader.stop();
  }

  private checkWritable(): void {
    if (this.fencedBy) throw this.fencedBy;
    if (this.closed) throw new ShoalError('shutting_down', 'the chunk store is closed');
  }

  /**
   * Every live chunk has a place in a pack the metadata knows and has not freed; every pack holding one is
   * in the bucket (listed), and its index there names the chunk at that place. Pack objects no metadata
   * names are not errors (dropped packs wait out a grace period; a start sweeps what a crash left).
   */
  async check(live: { count: number; maxSlot: number; slots: Iterable<number> }): Promise<string[]> {
    const errors: string[] = [];
    const byPack = new Map<number, Array<{ slot: number; index: number }>>();
    for (const slot of live.slots) {
      const r = this.locate(slot);
      const info = r && this.packs.get(r.pack);
      if (!r) errors.push(`chunk ${slot} is live but no pack holds it`);
      else if (!info || info.dropped) errors.push(`chunk ${slot} is live but its pack ${r.pack} is ${info ? 'dropped' : 'unknown to the metadata'}`);
      else {
        const index = r.index + slot - r.first;
        if (isDead(info, index)) errors.push(`chunk ${slot} is live but pack ${r.pack} counts it freed`);
        let l = byPack.get(r.pack);
        if (!l) byPack.set(r.pack, (l = []));
        l.push({ slot, index });
      }
    }
    const { bucket, prefix } = this.opts.lease;
    // Which packs were in the bucket before the listing began: one whose upload ends while the listing
    // runs (a compaction's new pack, a FLUSH's) is uploaded by the time it is looked at, but may be missing
    // from a listing that passed its name already. That read as a pack missing from the bucket, in a CI run.
    const uploaded = new Set<number>();
    for (const id of byPack.keys()) if (this.packs.get(id)?.state === 'uploaded') uploaded.add(id);
    const inBucket = new Set<string>();
    for await (const o of bucket.list(`${prefix}packs/`)) inBucket.add(o.key);
    await Promise.all(
      [...byPack].map(async ([id, chunks]) => {
        const info = this.packs.get(id);
        if (!info || !uploaded.has(id)) return; // staged on the local disk, read from there (or dropped since)
        const key = packObjectKey(prefix, info.epoch, id);
        if (!inBucket.has(key)) return errors.push(`pack ${id} holds ${chunks.length} live chunk(s) but ${bucket.url(key)} is missing`);
        const entries = await this.fetcher.index(info).catch((e: Error) => e);
        if (entries instanceof Error) return errors.push(`pack ${id}: ${entries.message}`);
        for (const c of chunks)
          if (entries[c.index]?.id !== c.slot) errors.push(`chunk ${c.slot}: the metadata places it at ${c.index} of pack ${id}, but the pack's index there names ${entries[c.index]?.id ?? 'nothing'}`);
      }),
    );
    return errors;
  }

  stats(): StoreStats {
    return { kind: 's3', reads: this.reads, readBytes: this.readBytes, direct: false };
  }

  /** Bytes staged on the local disk and not in the bucket yet, and how long the oldest has waited (s). */
  backlog(): { bytes: number; oldestSeconds: number } {
    const up = this.uploader.backlog();
    const open = this.open && this.open.count > 0 ? this.open.count * this.chunkSize : 0;
    return { bytes: up.bytes + open, oldestSeconds: up.oldestSeconds };
  }

  /** Uploads everything staged now, whatever --s3-upload-delay says (the daemon is stopping). */
  expedite(): void {
    this.uploader.expedite();
  }

  /**
   * Seals the open pack and waits (up to `timeoutMs`) for staged packs to reach the bucket, then stops.
   * What is still staged stays on the local disk for the next start.
   */
  async close(timeoutMs = 0): Promise<void> {
    if (this.closed) return;
    if (!this.fencedBy && timeoutMs > 0) {
      this.expedite();
      const drained = this.uploadedThrough(this.mark()).catch(() => {});
      await Promise.race([drained, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    }
    this.closed = true;
    this.uploader.stop();
    await Promise.allSettled([...this.sealing]);
    for (const p of this.local.values()) p.close();
    this.tier.close();
  }
}

/** Sorts indexes ascending, keeping bufs (and at) in step. */
function sortTogether(indexes: number[], bufs: Buffer[], at?: number[]): void {
  let sorted = true;
  for (let i = 1; i < indexes.length && sorted; i++) if (indexes[i] < indexes[i - 1]) sorted = false;
  if (sorted) return;
  const order = indexes.map((_, i) => i).sort((a, b) => indexes[a] - indexes[b]);
  const ix = order.map((i) => indexes[i]);
  const bs = order.map((i) => bufs[i]);
  indexes.splice(0, indexes.length, ...ix);
  bufs.splice(0, bufs.length, ...bs);
  if (at) {
    const as = order.map((i) => at[i]);
    at.splice(0, at.length, ...as);
  }
}

