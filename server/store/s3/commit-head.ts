// The commit point of a prefix's metadata: PREFIX/head, a small JSON object naming the current metadata
// (the caller's `state`, e.g. the keys of the last checkpoint and deltas). Every commit rewrites it with
// If-Match on the ETag of the previous commit, and a daemon that takes the prefix over first seals it:
// rewrites it, state unchanged, with its own epoch. After the seal, a former holder's commit finds another
// ETag and fails, whatever the clocks say, so readers (who trust only what the head names) never see
// metadata written by a fenced daemon. docs/s3-store.md has the whole protocol.
import { ShoalError } from '../../errors.js';
import type { S3Bucket, S3Object, PutCondition } from './s3-bucket.js';
import { isLeaseHolder, type LeaseHolder, type PrefixLease } from './lease.js';
import { writeOrLose } from './conditional-write.js';

interface HeadRecord<T> {
  format: typeof FORMAT;
  epoch: number; // the lease epoch of the daemon that wrote it
  holder: LeaseHolder;
  seq: number; // one more on every write (commit or seal): no two bodies are alike
  state: T | null; // null until the first commit
}

const FORMAT = 'shoal-head/1';
const HEAD_KEY = 'head';
const MAX_RACES = 5;

export class CommitHead<T> {
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    private readonly lease: PrefixLease,
    private readonly key: string,
    private record: HeadRecord<T>,
    private etag: string,
  ) {}

  /** The last committed state (what the previous holder committed last, right after a takeover). */
  get state(): T | null {
    return this.record.state;
  }

  get seq(): number {
    return this.record.seq;
  }

  /**
   * Seals the head with the lease's epoch, keeping its state. A former holder's commit that lands before
   * the seal is kept (the seal is written on top of it); one that comes after fails.
   */
  static async open<T>(lease: PrefixLease): Promise<CommitHead<T>> {
    const bucket = lease.bucket;
    const key = lease.prefix + HEAD_KEY;
    for (let race = 0; race < MAX_RACES; race++) {
      const cur = await bucket.get(key);
      let record: HeadRecord<T>;
      let condition: PutCondition;
      if (cur === null) {
        record = { format: FORMAT, epoch: lease.epoch, holder: lease.holder, seq: 0, state: null };
        condition = { ifNoneMatch: '*' };
      } else {
        const prev = parseHead<T>(cur, bucket.url(key));
        if (prev.epoch > lease.epoch) throw lease.fence(prev);
        record = { format: FORMAT, epoch: lease.epoch, holder: lease.holder, seq: prev.seq + 1, state: prev.state };
        condition = { ifMatch: cur.etag };
      }
      await lease.ensureHeld();
      const etag = await writeOrLose(bucket, key, encode(record), condition);
      if (etag !== null) return new CommitHead<T>(lease, key, record, etag);
      // The former holder committed between our read and our seal: seal on top of that commit.
    }
    throw new ShoalError('store_fenced', `${bucket.url(key)} kept changing under the seal ${MAX_RACES} times in a row: another daemon is writing to ${lease.url}.`);
  }

  /**
   * Makes `state` the committed state. Commits run one at a time, in call order. Throws store_fenced (and
   * fences the lease) if another daemon has sealed the head since.
   */
  commit(state: T): Promise<void> {
    const run = this.chain.then(async () => {
      await this.lease.ensureHeld();
      const record: HeadRecord<T> = { ...this.record, seq: this.record.seq + 1, state };
      const etag = await writeOrLose(this.lease.bucket, this.key, encode(record), { ifMatch: this.etag });
      if (etag === null) {
        const now = await this.lease.bucket.get(this.key);
        throw this.lease.fence(now ? parseHead<T>(now, this.lease.bucket.url(this.key)) : { epoch: this.record.epoch + 1 });
      }
      this.record = record;
      this.etag = etag;
    });
    this.chain = run.catch(() => {});
    return run;
  }
}

/** The epoch that last wrote the head, 0 if there is none: a first lease starts above it. */
export async function readHeadEpoch(bucket: S3Bucket, prefix: string): Promise<number> {
  const cur = await bucket.get(prefix + HEAD_KEY);
  return cur ? parseHead(cur, bucket.url(prefix + HEAD_KEY)).epoch : 0;
}

function encode<T>(rec: HeadRecord<T>): Buffer {
  return Buffer.from(JSON.stringify(rec) + '\n');
}

function parseHead<T>(obj: S3Object, url: string): HeadRecord<T> {
  let rec: Partial<HeadRecord<T>> | null = null;
  try {
    rec = JSON.parse(obj.body.toString('utf8')) as Partial<HeadRecord<T>>;
  } catch {
    // reported below
  }
  if (!rec || rec.format !== FORMAT || !Number.isSafeInteger(rec.epoch) || !Number.isSafeInteger(rec.seq) || !isLeaseHolder(rec.holder) || rec.state === undefined) {
    throw new ShoalError('corrupt_metadata', `${url} is not a Shoal commit head (${obj.body.length} bytes that are not ${FORMAT} JSON).`);
  }
  return rec as HeadRecord<T>;
}
