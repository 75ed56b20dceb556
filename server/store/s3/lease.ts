// One writer per prefix. A daemon holds PREFIX/lease, a small JSON object it rewrites every third of
// --lease-seconds with If-Match on the ETag it last wrote. A second daemon finds a live lease and refuses
// to start, naming the holder. Once the holder stops renewing (it died) and the lease has lapsed by the
// gateway's clock, another daemon takes over with If-Match on the lapsed lease's ETag and the next epoch.
// The former holder, if it comes back, fails its next renewal (its ETag is gone) and is fenced; its
// metadata commits are fenced independently by the commit head (commit-head.ts), so safety never rests on
// clocks. docs/s3-store.md has the whole protocol.
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { ShoalError } from '../../errors.js';
import type { S3Bucket, S3Object } from './s3-bucket.js';
import { readHeadEpoch } from './commit-head.js';
import { writeOrLose } from './conditional-write.js';

export interface LeaseHolder {
  id: string; // random per process: a restarted daemon is a new holder
  host: string;
  pid: number;
}

interface LeaseRecord {
  format: typeof FORMAT;
  holder: LeaseHolder;
  epoch: number;
  seconds: number;
  renewal: number; // makes every write's body (so its ETag, an MD5) unique; tells our own lost-answer write from another's
  released: boolean;
}

/** What the lease and the commit head need to say what happens (pino's logger fits). */
export interface LeaseLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface LeaseOptions {
  bucket: S3Bucket;
  /** The store's prefix: "" or "a/b/". */
  prefix: string;
  /** --lease-seconds: how long the lease outlives its holder's last renewal. */
  seconds: number;
  logger?: LeaseLogger;
  /** Told once, when another daemon has taken the prefix over; the daemon then stops serving writes. */
  onFenced?: (err: ShoalError) => void;
  /** Tests name their holders; a daemon is the process it runs in. */
  holder?: Partial<LeaseHolder>;
}

const FORMAT = 'shoal-lease/1';
const LEASE_KEY = 'lease';
// Last-Modified and Date have one-second resolution: a lease is lapsed only a whole second past its end.
const CLOCK_RESOLUTION_MS = 1000;
// Takeover races are short (one conditional write each): give up after this many lost in a row.
const MAX_RACES = 5;

const silent: LeaseLogger = { info() {}, warn() {}, error() {} };

export class PrefixLease {
  readonly holder: LeaseHolder;
  readonly key: string;
  private record: LeaseRecord;
  private etag: string;
  /** performance.now() until which the lease is ours for sure: the send time of the last write that landed, plus its length. */
  private heldUntil: number;
  private timer: NodeJS.Timeout | null = null;
  private renewing: Promise<void> | null = null;
  private fencedBy: ShoalError | null = null;
  private ended: 'released' | 'stopped' | null = null;
  private readonly log: LeaseLogger;

  private constructor(
    private readonly opts: LeaseOptions,
    holder: LeaseHolder,
    record: LeaseRecord,
    etag: string,
    sentAt: number,
  ) {
    this.holder = holder;
    this.key = opts.prefix + LEASE_KEY;
    this.log = opts.logger ?? silent;
    this.record = record;
    this.etag = etag;
    this.heldUntil = sentAt + record.seconds * 1000;
    this.schedule();
  }

  get epoch(): number {
    return this.record.epoch;
  }

  get url(): string {
    return this.opts.bucket.url(this.opts.prefix);
  }

  get bucket(): S3Bucket {
    return this.opts.bucket;
  }

  get prefix(): string {
    return this.opts.prefix;
  }

  get fenced(): boolean {
    return this.fencedBy !== null;
  }

  /**
   * Takes the prefix's lease, or throws store_lease_held naming the daemon that holds it. A lapsed or
   * released lease is taken over with the next epoch.
   */
  static async acquire(opts: LeaseOptions): Promise<PrefixLease> {
    const { bucket } = opts;
    const key = opts.prefix + LEASE_KEY;
    const holder: LeaseHolder = { id: opts.holder?.id ?? randomUUID(), host: opts.holder?.host ?? hostname(), pid: opts.holder?.pid ?? process.pid };
    const log = opts.logger ?? silent;
    for (let race = 0; race < MAX_RACES; race++) {
      const cur = await bucket.get(key);
      let epoch: number;
      let condition: { ifNoneMatch: '*' } | { ifMatch: string };
      if (cur === null) {
        // A first lease starts above any epoch that already sealed the commit head (a lease object
        // removed by hand must not restart the epochs the head has seen).
        epoch = (await readHeadEpoch(bucket, opts.prefix)) + 1;
        condition = { ifNoneMatch: '*' };
      } else {
        const prev = parseLease(cur, bucket.url(key));
        if (!prev.released && !lapsed(cur, prev)) throw heldError(bucket.url(opts.prefix), prev, cur);
        epoch = prev.epoch + 1;
        condition = { ifMatch: cur.etag };
        log.info({ previous: prev.holder, epoch: prev.epoch, released: prev.released }, `taking over ${bucket.url(opts.prefix)} from a ${prev.released ? 'released' : 'lapsed'} lease`);
      }
      const record: LeaseRecord = { format: FORMAT, holder, epoch, seconds: opts.seconds, renewal: 0, released: false };
      const body = encode(record);
      const sentAt = performance.now();
      const etag = await writeOrLose(bucket, key, body, condition);
      if (etag !== null) {
        log.info({ holder, epoch }, `holding ${bucket.url(opts.prefix)} (epoch ${epoch}, lease ${opts.seconds} s)`);
        return new PrefixLease(opts, holder, record, etag, sentAt);
      }
      // Another daemon wrote the lease between our read and our write: read again.
    }
    throw new ShoalError('store_lease_held', `${bucket.url(opts.prefix)}: lost the race for its lease ${MAX_RACES} times in a row to other daemons starting on it; start one daemon per prefix.`);
  }

  /** Resolves if the lease is ours; renews it first if it may have lapsed. Throws store_fenced once another daemon has it. */
  async ensureHeld(): Promise<void> {
    this.throwIfGone();
    if (performance.now() < this.heldUntil) return;
    await this.renew();
    this.throwIfGone();
  }

  /** Rewrites the lease now (If-Match on our ETag). One renewal at a time; a caller joins the one in flight. */
  renew(): Promise<void> {
    this.renewing ??= this.renewOnce().finally(() => {
      this.renewing = null;
    });
    return this.renewing;
  }

  /**
   * Marks the lease released (the next daemon takes over at once, no wait for it to lapse) and stops
   * renewing. Call after the last commit: nothing is written under this lease afterwards.
   */
  async release(): Promise<void> {
    if (this.ended || this.fencedBy) return;
    this.ended = 'released';
    this.clearTimer();
    await this.renewing?.catch(() => {});
    const record = { ...this.record, renewal: this.record.renewal + 1, released: true };
    const etag = await writeOrLose(this.opts.bucket, this.key, encode(record), { ifMatch: this.etag });
    if (etag === null) this.log.warn({ epoch: this.epoch }, `releasing ${this.url}: another daemon had taken it over already`);
    else this.log.info({ epoch: this.epoch }, `released ${this.url}`);
  }

  /** Stops renewing without releasing: the lease lapses after its length, as if this process had died. */
  stop(): void {
    this.ended ??= 'stopped';
    this.clearTimer();
  }

  /** Called by the commit head when its conditional write finds a newer epoch: this daemon is fenced. */
  fence(by: { holder?: LeaseHolder; epoch: number }): ShoalError {
    if (this.fencedBy) return this.fencedBy;
    const who = by.holder ? `Shoal ${describeHolder(by.holder)}` : 'another Shoal daemon';
    const err = new ShoalError('store_fenced', `${this.url} was taken over by ${who} (epoch ${by.epoch}): this daemon (epoch ${this.epoch}) no longer writes to it.`);
    this.fencedBy = err;
    this.clearTimer();
    this.log.error({ epoch: this.epoch, newEpoch: by.epoch, by: by.holder }, `fenced: ${err.message}`);
    this.opts.onFenced?.(err);
    return err;
  }

  private async renewOnce(): Promise<void> {
    this.throwIfGone();
    const record = { ...this.record, renewal: this.record.renewal + 1 };
    const sentAt = performance.now();
    let etag: string | null;
    try {
      etag = await writeOrLose(this.opts.bucket, this.key, encode(record), { ifMatch: this.etag });
    } catch (e) {
      // S3 did not answer within --s3-timeout: not fenced, but not renewed either. ensureHeld() makes
      // writes wait for a renewal once the lease may have lapsed.
      this.log.warn({ err: e, epoch: this.epoch, lapsesIn: Math.round(this.heldUntil - performance.now()) }, `renewing the lease on ${this.url} failed; retrying`);
      this.schedule();
      throw e;
    }
    if (etag === null) {
      const now = await this.opts.bucket.get(this.key);
      const other = now ? parseLease(now, this.opts.bucket.url(this.key)) : null;
      throw this.fence(other ? { holder: other.holder, epoch: other.epoch } : { epoch: this.epoch + 1 });
    }
    this.record = record;
    this.etag = etag;
    this.heldUntil = sentAt + record.seconds * 1000;
    this.schedule();
  }

  private schedule(): void {
    this.clearTimer();
    if (this.fencedBy || this.ended) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.renew().catch(() => {}); // logged in renewOnce; fencing is reported through fence()
    }, (this.record.seconds * 1000) / 3);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private throwIfGone(): void {
    if (this.fencedBy) throw this.fencedBy;
    if (this.ended) throw new ShoalError('shutting_down', `the lease on ${this.url} was ${this.ended === 'released' ? 'released' : 'given up'}: this daemon no longer writes to it.`);
  }
}

/** Lapsed by the gateway's clock alone: its Date on our read against its Last-Modified on the holder's write. */
function lapsed(obj: S3Object, rec: LeaseRecord): boolean {
  const now = (obj.serverDate ?? new Date()).getTime();
  return now >= obj.lastModified.getTime() + rec.seconds * 1000 + CLOCK_RESOLUTION_MS;
}

function heldError(url: string, rec: LeaseRecord, obj: S3Object): ShoalError {
  const until = new Date(obj.lastModified.getTime() + rec.seconds * 1000 + CLOCK_RESOLUTION_MS).toISOString().replace(/\.\d+Z$/, 'Z');
  return new ShoalError(
    'store_lease_held',
    `${url} is in use by Shoal ${describeHolder(rec.holder)}, epoch ${rec.epoch}, whose lease runs until ${until} unless renewed; stop that daemon, or wait for its lease to lapse (${rec.seconds} s after its last renewal).`,
  );
}

function describeHolder(h: LeaseHolder): string {
  return `on ${h.host} (pid ${h.pid}, holder ${h.id})`;
}

function encode(rec: LeaseRecord): Buffer {
  return Buffer.from(JSON.stringify(rec) + '\n');
}

function parseLease(obj: S3Object, url: string): LeaseRecord {
  let rec: Partial<LeaseRecord> | null = null;
  try {
    rec = JSON.parse(obj.body.toString('utf8')) as Partial<LeaseRecord>;
  } catch {
    // reported below
  }
  if (
    !rec ||
    rec.format !== FORMAT ||
    !Number.isSafeInteger(rec.epoch) ||
    !Number.isSafeInteger(rec.seconds) ||
    !Number.isSafeInteger(rec.renewal) ||
    typeof rec.released !== 'boolean' ||
    !isLeaseHolder(rec.holder)
  ) {
    throw new ShoalError('corrupt_metadata', `${url} is not a Shoal lease (${obj.body.length} bytes that are not ${FORMAT} JSON); remove it only if no daemon uses this prefix.`);
  }
  return rec as LeaseRecord;
}

export function isLeaseHolder(h: unknown): h is LeaseHolder {
  const x = h as Partial<LeaseHolder> | null;
  return typeof x === 'object' && x !== null && typeof x.id === 'string' && typeof x.host === 'string' && typeof x.pid === 'number';
}
