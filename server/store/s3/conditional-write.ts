// A conditional write whose outcome is known even when its answer was lost. S3Bucket retries a request
// that got no answer; if the first attempt had landed, the retry meets its own write and gets 412. The
// lease and the commit head write bodies that never repeat (holder id, epoch, a counter), so reading the
// key back tells our write from another writer's.
import { ShoalError } from '../../errors.js';
import type { PutCondition, S3Bucket } from './s3-bucket.js';

/** Writes `body` under `condition`: the new ETag, or null if another writer got there first. */
export async function writeOrLose(bucket: S3Bucket, key: string, body: Buffer, condition: PutCondition): Promise<string | null> {
  try {
    return (await bucket.put(key, body, condition)).etag;
  } catch (e) {
    if (!(e instanceof ShoalError) || e.code !== 's3_precondition_failed') throw e;
    const now = await bucket.get(key);
    return now && now.body.equals(body) ? now.etag : null;
  }
}
