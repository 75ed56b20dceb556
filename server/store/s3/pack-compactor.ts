// Gives the bucket's space back. A pack whose chunks are all freed is dropped; one whose live fraction
// falls below --s3-compact-below is rewritten: its live chunks are copied into the open pack (written and
// uploaded like any others), and in one synchronous step their new runs are recorded and the pack's runs and
// record removed, so one commit moves them all. Reads go on meanwhile: until that commit a chunk is read from
// its old place, after it from the new one. A dropped pack's object is deleted only once the bucket's
// metadata no longer names it (published()), and a grace period later, so a read that found the old place
// just before the move still finds the object. Nothing a committed state names is ever deleted.
//
// At start, once the bucket holds everything committed locally, the prefix's pack objects are listed and
// the ones no metadata names (left by a crash between a drop and its delete, or by a fenced writer) deleted.
import { setTimeout as sleep } from 'node:timers/promises';
import type { LeaseLogger, PrefixLease } from './lease.js';
import { isFinal } from './outage-retry.js';
import type { PackEntry } from './pack-format.js';
import { packObjectKey, parsePackObjectKey, SLOT_LIMIT } from './pack-records.js';
import type { PackInfo, S3PackStore } from './s3-pack-store.js';

export interface PackCompactorOptions {
  lease: PrefixLease;
  logger: LeaseLogger;
  /** --s3-compact-below: rewrite a pack once less than this fraction of it is live (0: never). */
  compactBelow: number;
  /** Resolves once everything committed locally so far is named by the bucket's head. */
  published: () => Promise<void>;
  /** How long a dropped pack's object stays before it is deleted (reads that found it may be in flight). */
  graceMs: number;
  /** How often to look for work (ms). */
  intervalMs?: number;
  /** Test-only: a pause after a compaction's copies are written, before its records change. */
  pauseBeforeSwapMs?: number;
}

export class PackCompactor {
  /** Packs whose live fraction changed since they were last looked at. */
  private readonly touched = new Set<number>();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  compacted = 0;
  deleted = 0;

  constructor(
    private readonly store: S3PackStore,
    private readonly opts: PackCompactorOptions,
  ) {
    store.onFreed = (info) => this.touched.add(info.id);
    store.onDropped = (packs) => void this.deleteObjects(packs);
    for (const id of store.packs.keys()) this.touched.add(id);
  }

  start(): void {
    this.timer = setInterval(() => this.kick(), this.opts.intervalMs ?? 2000);
    this.timer.unref();
  }

  /** Looks for work now (unless a pass is running). */
  kick(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.running ??= this.pass().finally(() => (this.running = null));
    return this.running;
  }

  private async pass(): Promise<void> {
    const candidates: PackInfo[] = [];
    // A copy: a Set's iteration visits ids added back during it (a pack to look at again) over and over.
    const ids = [...this.touched];
    this.touched.clear();
    for (const id of ids) {
      const info = this.store.packs.get(id);
      if (!info || info.dropped) continue;
      // Only packs in the bucket whose runs are all committed: a write still on its way to the metadata
      // keeps its pack as it is.
      if (info.state !== 'uploaded' || !this.store.settled(info)) {
        this.touched.add(id); // look again later
        continue;
      }
      const live = info.chunks - info.deadCount;
      if (live === 0 || live < info.chunks * this.opts.compactBelow) candidates.push(info);
    }
    candidates.sort((a, b) => (a.chunks - a.deadCount) / a.chunks - (b.chunks - b.deadCount) / b.chunks);
    for (const info of candidates) {
      if (this.stopped) return;
      try {
        await this.rewrite(info);
      } catch (e) {
        this.touched.add(info.id);
        if (isFinal(e)) throw e;
        this.opts.logger.warn({ err: e, pack: info.id }, `compacting pack ${info.id} failed; it is tried again later`);
        return;
      }
    }
  }

  /** Moves the pack's live chunks into the open pack and drops it, in one commit. */
  private async rewrite(info: PackInfo): Promise<void> {
    const store = this.store;
    const entries = await this.entries(info);
    // Which of its chunks the metadata places here (a chunk written as a daemon died has no run; ids past
    // the slots mark such chunks of a recovered pack), and which of them are not freed.
    const runKeys = new Set<number>();
    const moving: Array<{ slot: number; index: number }> = [];
    entries.forEach((e, i) => {
      if (e.id >= SLOT_LIMIT) return;
      const r = store.locate(e.id);
      if (!r || r.pack !== info.id || r.index + e.id - r.first !== i) return;
      runKeys.add(r.first);
      if (!store.isDead(info, i)) moving.push({ slot: e.id, index: i });
    });
    let placed: Array<{ first: number; count: number; pack: number; index: number }> = [];
    if (moving.length > 0) {
      const bufs = moving.map(() => Buffer.allocUnsafe(store.chunkSize));
      await store.readFromPack(
        info.id,
        moving.map((m) => m.index),
        bufs,
      );
      placed = await store.place(moving.map((m, k) => ({ slot: m.slot, data: bufs[k] })));
      if (this.opts.pauseBeforeSwapMs) {
        this.opts.logger.warn({ pack: info.id }, `test hook: compaction copied pack ${info.id}, pausing ${this.opts.pauseBeforeSwapMs} ms before its records change`);
        await sleep(this.opts.pauseBeforeSwapMs);
      }
    }
    // One synchronous step: the old runs go, the new ones come, the pack is dropped. A chunk freed while
    // it was copied is dead in its new place too.
    for (const k of runKeys) store.removeRun(k);
    const deadNow = new Set(moving.filter((m) => store.isDead(info, m.index)).map((m) => m.slot));
    for (const r of placed) {
      store.recordRun(r);
      const target = store.packs.get(r.pack)!;
      for (let k = 0; k < r.count; k++) if (deadNow.has(r.first + k)) store.markDeadAt(target, r.index + k);
    }
    store.drop(info);
    if (moving.length > 0) this.compacted++;
    this.opts.logger.info({ pack: info.id, moved: moving.length, of: info.chunks }, moving.length > 0 ? `compacting pack ${info.id}: ${moving.length} of ${info.chunks} chunks live, moved` : `pack ${info.id} holds no live chunk: dropped`);
  }

  private async entries(info: PackInfo): Promise<PackEntry[]> {
    return this.store.tier.get(info.id)?.entries() ?? (await this.store.fetcher.index(info));
  }

  /** Deletes dropped packs' objects once the bucket no longer names them, after the grace period. */
  private async deleteObjects(packs: PackInfo[]): Promise<void> {
    const { lease } = this.opts;
    try {
      await this.opts.published();
      await sleep(this.opts.graceMs);
      for (const p of packs) {
        this.store.tier.drop(p.id);
        this.store.fetcher.forget(p.id);
      }
      for (const p of packs) {
        if (this.stopped) return;
        await lease.ensureHeld();
        await lease.bucket.delete(packObjectKey(lease.prefix, p.epoch, p.id));
        this.deleted++;
      }
    } catch (e) {
      // Left for the sweep at the next start.
      if (!this.stopped && !lease.fenced) this.opts.logger.warn({ err: e, packs: packs.map((p) => p.id) }, 'deleting dropped packs failed; the next start sweeps them');
    }
  }

  /**
   * Deletes pack objects that no metadata names. Call once the bucket holds every commit made before the
   * call (`published`): a pack unknown to the local metadata then is unknown to the bucket's too.
   */
  async sweep(): Promise<number> {
    const { lease } = this.opts;
    const known = new Map<number, number>();
    for (const info of this.store.packs.values()) known.set(info.id, info.epoch);
    await this.opts.published();
    let n = 0;
    for await (const o of lease.bucket.list(`${lease.prefix}packs/`)) {
      const k = parsePackObjectKey(lease.prefix, o.key);
      if (!k || known.get(k.id) === k.epoch || this.store.packs.get(k.id)?.epoch === k.epoch) continue;
      await lease.ensureHeld();
      await lease.bucket.delete(o.key);
      n++;
    }
    if (n > 0) this.opts.logger.info({ deleted: n }, `swept ${n} pack object(s) no metadata names`);
    return n;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
