// Sealed packs go up to the bucket in the background, a few at a time, each as one PUT with
// If-None-Match: * under PREFIX/packs/EPOCH/ID.pack after the lease is checked (a fenced daemon's next
// upload fails). An upload is retried until it lands while the store is unreachable; the metadata waits
// for it with through(id) before it names the pack in the bucket.
//
// With --s3-sync async a sealed pack may wait (delayMs, --s3-upload-delay) before its upload starts, as
// the kernel's page cache holds dirty pages for dirty_expire_centisecs: a burst of writes then runs at
// the local disk's speed instead of sharing the CPU, the disk and the network with its own uploads, and
// the bucket trails by the delay plus the upload. Measured writing 1 GiB with nbdcopy to the test Ceph on
// this 2-core machine: 0.24x the local store's rate uploading at once, against 0.6x (bench/s3.ts).
// A pack goes at once whatever its age when the local tier fills (pressing()) and when the daemon stops
// (expedite()).
import { setTimeout as sleep } from 'node:timers/promises';
import { ShoalError } from '../../errors.js';
import type { PrefixLease, LeaseLogger } from './lease.js';
import type { LocalPack } from './local-pack.js';
import { packObjectKey } from './pack-records.js';
import { contentMd5 } from './s3-bucket.js';
import { untilDone } from './outage-retry.js';

export interface PackUploaderOptions {
  lease: PrefixLease;
  logger: LeaseLogger;
  /** PUTs in flight at once. */
  parallel: number;
  /** Told once a pack is in the bucket (the store moves its file to the cache). */
  uploaded: (pack: LocalPack) => void;
  /** How long a sealed pack waits before its upload starts (0: at once). */
  delayMs?: number;
  /** Whether uploads should start at once, whatever the delay (the local tier is filling). */
  pressing?: () => boolean;
  /** Test-only: a pause after each pack's PUT, before it counts as uploaded, so a test can kill there. */
  pauseAfterUploadMs?: number;
}

export class PackUploader {
  private readonly queue: LocalPack[] = [];
  /** Packs handed over and not uploaded yet, by id, with the time they were sealed. */
  private readonly pendingIds = new Map<number, { bytes: number; since: number }>();
  private waiters: Array<{ through: number; resolve: () => void; reject: (e: Error) => void }> = [];
  private running = 0;
  private failure: Error | null = null;
  private stopped = false;
  /** Every queued pack goes at once from now on (the daemon is stopping). */
  private expedited = false;
  /** A pump() waits for the oldest queued pack's delay to pass. */
  private timer: NodeJS.Timeout | null = null;
  uploads = 0;

  constructor(private readonly opts: PackUploaderOptions) {}

  /** Queues a sealed pack of `bytes`. */
  enqueue(pack: LocalPack, bytes: number): void {
    this.pendingIds.set(pack.id, { bytes, since: performance.now() });
    this.queue.push(pack);
    this.pump();
  }

  /** Resolves once every pack handed over with an id ≤ `id` is in the bucket. */
  through(id: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (!this.anyPendingThrough(id)) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ through: id, resolve, reject }));
  }

  /** Bytes of packs waiting for (or in) their upload, and how long the oldest has waited (s). */
  backlog(): { bytes: number; oldestSeconds: number } {
    let bytes = 0;
    let oldest = Infinity;
    for (const p of this.pendingIds.values()) {
      bytes += p.bytes;
      if (p.since < oldest) oldest = p.since;
    }
    return { bytes, oldestSeconds: oldest === Infinity ? 0 : (performance.now() - oldest) / 1000 };
  }

  private anyPendingThrough(id: number): boolean {
    for (const k of this.pendingIds.keys()) if (k <= id) return true;
    return false;
  }

  /** Starts every queued upload now, whatever the delay (a stopping daemon hands its backlog over). */
  expedite(): void {
    this.expedited = true;
    this.pump();
  }

  /** Looks again whether queued packs may go (the local tier may be pressing). */
  nudge(): void {
    if (this.queue.length > 0 && this.running < this.opts.parallel) this.pump();
  }

  /** ms until the oldest queued pack may go: 0 when it may now. */
  private waitMs(): number {
    const delay = this.opts.delayMs ?? 0;
    if (delay <= 0 || this.expedited || this.opts.pressing?.()) return 0;
    const since = this.pendingIds.get(this.queue[0].id)?.since ?? 0;
    return Math.max(0, since + delay - performance.now());
  }

  private pump(): void {
    while (!this.stopped && !this.failure && this.running < this.opts.parallel && this.queue.length > 0) {
      const wait = this.waitMs();
      if (wait > 0) {
        // Unref'd: a waiting upload does not keep a stopping process alive (stop() expedites first).
        this.timer ??= setTimeout(() => {
          this.timer = null;
          this.pump();
        }, Math.ceil(wait)).unref();
        return;
      }
      const pack = this.queue.shift()!;
      this.running++;
      this.upload(pack)
        .then(
          () => {
            this.pendingIds.delete(pack.id);
            this.uploads++;
            this.opts.uploaded(pack);
            this.wake();
          },
          (e: Error) => {
            if (this.stopped) return;
            this.failure = e;
            this.opts.logger.error({ err: e, pack: pack.id }, `uploading pack ${pack.id} failed for good: ${e.message}`);
            for (const w of this.waiters.splice(0)) w.reject(e);
          },
        )
        .finally(() => {
          this.running--;
          this.pump();
        });
    }
  }

  private wake(): void {
    this.waiters = this.waiters.filter((w) => {
      if (this.anyPendingThrough(w.through)) return true;
      w.resolve();
      return false;
    });
  }

  private async upload(pack: LocalPack): Promise<void> {
    const { lease } = this.opts;
    const key = packObjectKey(lease.prefix, pack.epoch, pack.id);
    const body = await pack.readAll();
    await untilDone(
      `uploading ${lease.bucket.url(key)}`,
      async () => {
        await lease.ensureHeld();
        await putOnce(lease, key, body);
      },
      { logger: this.opts.logger, stopped: () => this.stopped },
    );
    if (this.opts.pauseAfterUploadMs) {
      this.opts.logger.warn({ pack: pack.id, key }, `test hook: pack uploaded, pausing ${this.opts.pauseAfterUploadMs} ms before it counts`);
      await sleep(this.opts.pauseAfterUploadMs);
    }
  }

  /** Stops starting uploads; waiters of packs not uploaded are told the store is closing. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const e = new ShoalError('shutting_down', 'the S3 store is closing');
    for (const w of this.waiters.splice(0)) w.reject(e);
  }

  /** Whether uploads are still in flight. */
  get busy(): boolean {
    return this.running > 0 || this.queue.length > 0;
  }
}

/**
 * PUT with If-None-Match: *. A 412 means the key exists: our own earlier attempt whose answer was lost
 * (or an upload by the previous process on this host, of the same sealed file) has the same MD5 ETag;
 * anything else is another writer's object under our epoch.
 */
async function putOnce(lease: PrefixLease, key: string, body: Buffer): Promise<void> {
  try {
    await lease.bucket.put(key, body, { ifNoneMatch: '*' });
  } catch (e) {
    if (!(e instanceof ShoalError) || e.code !== 's3_precondition_failed') throw e;
    const there = await lease.bucket.head(key);
    if (there && there.etag === (await contentMd5(body)).toString('hex')) return;
    throw new ShoalError('store_fenced', `${lease.bucket.url(key)} already holds another writer's pack: two writers share epoch ${lease.epoch} on ${lease.url}.`);
  }
}
