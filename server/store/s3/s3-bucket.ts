// One bucket's objects, as the S3 store uses them: whole and ranged reads, conditional writes, deletes,
// listings. Every operation has one deadline (--s3-timeout) for all its attempts; each attempt is cut off
// after a third of it, so a request stuck on a dead connection is retried rather than waited out. Transient
// failures (5xx, throttling, the network) are retried with exponential backoff and full jitter; any other
// answer is final. Each HTTP request is counted (S3Stats, and the observer: Prometheus).
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { ShoalError, type ErrorCode } from '../../errors.js';
import { native } from '../../native.js';
import { backoffDelay, classifyS3Failure, type S3Failure } from './s3-failure.js';
import { S3Stats, type S3Observer, type S3Op } from './s3-stats.js';
import { serverDateOf } from './s3-client.js';

export interface S3BucketOptions {
  client: S3Client;
  bucket: string;
  /** The deadline of one operation, all attempts included (--s3-timeout). */
  timeoutMs: number;
  observer?: S3Observer;
  /** First retry waits up to this long; each further retry up to twice as long (default 100 ms). */
  backoffBaseMs?: number;
  /** The longest wait between two attempts (default 5 s). */
  backoffCapMs?: number;
}

export interface S3ObjectInfo {
  /** Without quotes: Ceph 16's RGW compares If-Match with the bare ETag, and a quoted one never matches. */
  etag: string;
  lastModified: Date;
  /** The object's whole size (not the range's). */
  size: number;
  /** The gateway's clock when it answered (its Date header), or null if it sent none or the client was not made by createS3Client. */
  serverDate: Date | null;
}

export interface S3Object extends S3ObjectInfo {
  body: Buffer;
}

export interface S3Entry {
  key: string;
  size: number;
  etag: string;
  lastModified: Date;
}

/** Bytes [offset, offset + length) of an object, or its last `suffix` bytes (all of it if it is shorter). */
export type ByteRange = { offset: number; length: number } | { suffix: number };

/** Create-if-absent, or replace-only-this-version. */
export type PutCondition = { ifNoneMatch: '*' } | { ifMatch: string };

/** A final S3 answer, with its HTTP status so callers can tell "no such key" from "access denied". */
export class S3RequestError extends ShoalError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly s3Status: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/** Bodies up to this size are hashed on the event loop: a thread-pool round trip costs more than their MD5. */
const MD5_INLINE_BYTES = 64 * 1024;

/**
 * The MD5 of an upload's body (what Content-MD5 and a simple PUT's ETag are). A pack's 8 MiB is hashed
 * on the thread pool (the addon's md5: on the event loop it was 30% of the daemon's main thread while
 * writing to RGW); `body` must not change until it resolves.
 */
export function contentMd5(body: Buffer): Promise<Buffer> {
  return body.length <= MD5_INLINE_BYTES ? Promise.resolve(createHash('md5').update(body).digest()) : native().md5(body);
}

export class S3Bucket {
  readonly bucket: string;
  readonly stats = new S3Stats();
  private readonly client: S3Client;
  private readonly timeoutMs: number;
  private readonly attemptTimeoutMs: number;
  private readonly observer: S3Observer | undefined;
  private readonly backoffBaseMs: number;
  private readonly backoffCapMs: number;

  constructor(opts: S3BucketOptions) {
    this.client = opts.client;
    this.bucket = opts.bucket;
    this.timeoutMs = opts.timeoutMs;
    this.attemptTimeoutMs = Math.max(1000, Math.floor(opts.timeoutMs / 3));
    this.observer = opts.observer;
    this.backoffBaseMs = opts.backoffBaseMs ?? 100;
    this.backoffCapMs = opts.backoffCapMs ?? 5000;
  }

  url(key = ''): string {
    return `s3://${this.bucket}/${key}`;
  }

  /** Creates the bucket unless it exists; refuses one that exists but is not ours. */
  async ensureBucket(): Promise<void> {
    if (await this.bucketAnswers()) return;
    try {
      await this.request('create_bucket', '', async (signal) => {
        await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }), { abortSignal: signal });
        return { value: undefined, bytesDown: 0 };
      });
    } catch (e) {
      // Another daemon (or our own earlier attempt, whose answer was lost) created it meanwhile.
      if (e instanceof S3RequestError && (e.cause as { name?: string } | undefined)?.name === 'BucketAlreadyOwnedByYou') return;
      // RGW answers a create that races another of the same owner with BucketAlreadyExists too: the
      // bucket is ours if it now answers us (one that is not ours refuses the HEAD).
      if (e instanceof S3RequestError && (e.cause as { name?: string } | undefined)?.name === 'BucketAlreadyExists' && (await this.bucketAnswers().catch(() => false))) return;
      throw e;
    }
  }

  /** Whether the bucket exists and answers us (false: it does not exist; a refusal throws). */
  private async bucketAnswers(): Promise<boolean> {
    try {
      await this.request('head_bucket', '', async (signal) => {
        await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal });
        return { value: undefined, bytesDown: 0 };
      });
      return true;
    } catch (e) {
      if (e instanceof S3RequestError && e.s3Status === 404) return false;
      throw e;
    }
  }

  /**
   * The object, or the `range` of it; null if there is no such key. With `into`, the body is read into
   * it (its start: `body` is a view of it) rather than into new memory; a longer body is an error.
   */
  async get(key: string, range?: ByteRange, into?: Buffer): Promise<S3Object | null> {
    const header = range === undefined ? undefined : rangeHeader(range, this.url(key));
    try {
      return await this.request('get', key, async (signal) => {
        const cmd = new GetObjectCommand({ Bucket: this.bucket, Key: key, ...(header ? { Range: header } : {}) });
        const out = await this.client.send(cmd, { abortSignal: signal });
        const body = await readBody(out.Body, signal, into, () => this.url(key));
        const size = out.ContentRange ? Number(/\/(\d+)$/.exec(out.ContentRange)?.[1] ?? body.length) : body.length;
        return { value: { body, etag: bare(out.ETag), lastModified: out.LastModified ?? new Date(0), size, serverDate: serverDateOf(out) }, bytesDown: body.length };
      });
    } catch (e) {
      if (e instanceof S3RequestError && e.s3Status === 404) return null;
      throw e;
    }
  }

  /** The object's ETag, size and time, or null if there is no such key. */
  async head(key: string): Promise<S3ObjectInfo | null> {
    try {
      return await this.request('head', key, async (signal) => {
        const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
        return { value: { etag: bare(out.ETag), lastModified: out.LastModified ?? new Date(0), size: out.ContentLength ?? 0, serverDate: serverDateOf(out) }, bytesDown: 0 };
      });
    } catch (e) {
      if (e instanceof S3RequestError && e.s3Status === 404) return null;
      throw e;
    }
  }

  /**
   * Writes `body` at `key`. With a condition, S3 writes only if the key is absent (ifNoneMatch '*') or still
   * holds that ETag (ifMatch); otherwise it throws s3_precondition_failed. A retried conditional write whose
   * first attempt landed also fails that way: callers that must know read the key back.
   */
  async put(key: string, body: Buffer, condition?: PutCondition): Promise<{ etag: string; serverDate: Date | null }> {
    // S3 checks the MD5 and refuses a body damaged on the way (400 BadDigest).
    const md5 = (await contentMd5(body)).toString('base64');
    const cond = condition === undefined ? {} : 'ifMatch' in condition ? { IfMatch: condition.ifMatch } : { IfNoneMatch: '*' };
    return this.request(
      'put',
      key,
      async (signal) => {
        const out = await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentMD5: md5, ...cond }), { abortSignal: signal });
        return { value: { etag: bare(out.ETag), serverDate: serverDateOf(out) }, bytesDown: 0 };
      },
      body.length,
    );
  }

  /**
   * Writes an object of `size` bytes in parts of `partBytes` (at least 5 MiB, S3's minimum), `parallel` at a
   * time, each read by `readPart(offset, length)`: for objects too large to hold in memory at once (a metadata
   * checkpoint). An upload that fails is aborted, so its parts do not linger in the bucket.
   */
  async putMultipart(key: string, size: number, readPart: (offset: number, length: number) => Promise<Buffer>, opts: { partBytes?: number; parallel?: number } = {}): Promise<{ etag: string }> {
    const partBytes = Math.max(5 * 2 ** 20, opts.partBytes ?? 16 * 2 ** 20);
    const parts = Math.max(1, Math.ceil(size / partBytes));
    const uploadId = await this.request('multipart_create', key, async (signal) => {
      const out = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      if (!out.UploadId) throw new ShoalError('s3_error', `S3 started a multipart upload of ${this.url(key)} without an upload id.`);
      return { value: out.UploadId, bytesDown: 0 };
    });
    try {
      const etags: string[] = new Array(parts);
      let next = 0;
      const worker = async () => {
        while (next < parts) {
          const n = next++;
          const body = await readPart(n * partBytes, Math.min(partBytes, size - n * partBytes));
          const md5 = (await contentMd5(body)).toString('base64');
          etags[n] = await this.request(
            'multipart_part',
            key,
            async (signal) => {
              const out = await this.client.send(
                new UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: n + 1, Body: body, ContentLength: body.length, ContentMD5: md5 }),
                { abortSignal: signal },
              );
              return { value: bare(out.ETag), bytesDown: 0 };
            },
            body.length,
          );
        }
      };
      await Promise.all(Array.from({ length: Math.min(parts, opts.parallel ?? 4) }, worker));
      return await this.request('multipart_complete', key, async (signal) => {
        const out = await this.client.send(
          new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) } }),
          { abortSignal: signal },
        );
        return { value: { etag: bare(out.ETag) }, bytesDown: 0 };
      });
    } catch (e) {
      await this.request('multipart_abort', key, async (signal) => {
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }), { abortSignal: signal });
        return { value: undefined, bytesDown: 0 };
      }).catch(() => {}); // the bucket's lifecycle rules are the last resort for parts left behind
      throw e;
    }
  }

  /** Deletes `key`; deleting a key that does not exist succeeds, as in S3. */
  async delete(key: string): Promise<void> {
    await this.request('delete', key, async (signal) => {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      return { value: undefined, bytesDown: 0 };
    });
  }

  /** Every key under `prefix`, in key order, a page (one request) at a time. */
  async *list(prefix: string, opts: { startAfter?: string } = {}): AsyncGenerator<S3Entry> {
    let token: string | undefined;
    do {
      const page = await this.request('list', prefix, async (signal) => {
        const out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token, ...(token ? {} : { StartAfter: opts.startAfter }) }),
          { abortSignal: signal },
        );
        return { value: out, bytesDown: 0 };
      });
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key, size: o.Size ?? 0, etag: bare(o.ETag), lastModified: o.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /** Runs one operation: attempts with per-attempt timeouts, backoff between them, one deadline for all. */
  private async request<T>(op: S3Op, key: string, attempt: (signal: AbortSignal) => Promise<{ value: T; bytesDown: number }>, bytesUp = 0): Promise<T> {
    const deadline = performance.now() + this.timeoutMs;
    let last: S3Failure | null = null;
    for (let n = 1; ; n++) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) throw this.gaveUp(op, key, n - 1, last);
      const abort = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        abort.abort();
      }, Math.min(remaining, this.attemptTimeoutMs));
      const started = performance.now();
      let failure: S3Failure;
      try {
        const { value, bytesDown } = await attempt(abort.signal);
        this.record(op, 'ok', started, bytesUp, bytesDown);
        return value;
      } catch (e) {
        failure = classifyS3Failure(e, timedOut);
        this.record(op, failure.result, started, 0, 0);
        if (!failure.retryable) throw this.refused(op, key, failure, e);
      } finally {
        clearTimeout(timer);
      }
      last = failure;
      const delay = backoffDelay(n, this.backoffBaseMs, this.backoffCapMs);
      if (performance.now() + delay >= deadline) throw this.gaveUp(op, key, n, last);
      await sleep(delay);
    }
  }

  private record(op: S3Op, result: Parameters<S3Observer['s3Request']>[1], started: number, up: number, down: number): void {
    const seconds = (performance.now() - started) / 1000;
    this.stats.s3Request(op, result, seconds, up, down);
    this.observer?.s3Request(op, result, seconds, up, down);
  }

  private gaveUp(op: S3Op, key: string, attempts: number, last: S3Failure | null): ShoalError {
    return new S3RequestError(
      's3_timeout',
      `S3 did not complete a ${op} of ${this.url(key)} within ${this.timeoutMs / 1000}s (--s3-timeout; ${attempts} attempt${attempts === 1 ? '' : 's'}${last ? `, the last: ${last.detail}` : ''}).`,
      last?.status,
    );
  }

  private refused(op: S3Op, key: string, f: S3Failure, cause: unknown): ShoalError {
    if (f.result === 'precondition_failed') {
      return new S3RequestError('s3_precondition_failed', `S3 refused the conditional ${op} of ${this.url(key)}: the object is no longer the version it was conditioned on (${f.detail}).`, f.status, { cause });
    }
    return new S3RequestError('s3_error', `S3 refused a ${op} of ${this.url(key)}: ${f.detail}.`, f.status, { cause });
  }
}

function rangeHeader(range: ByteRange, url: string): string {
  if ('suffix' in range) {
    if (!Number.isSafeInteger(range.suffix) || range.suffix <= 0) throw new ShoalError('invalid_range', `a read of the end of ${url} needs a positive length, not ${range.suffix}.`);
    return `bytes=-${range.suffix}`;
  }
  if (!Number.isSafeInteger(range.offset) || !Number.isSafeInteger(range.length) || range.offset < 0 || range.length <= 0) {
    throw new ShoalError('invalid_range', `a ranged read of ${url} needs a non-negative offset and a positive length, not ${range.offset}+${range.length}.`);
  }
  return `bytes=${range.offset}-${range.offset + range.length - 1}`;
}

/** S3 quotes ETags; RGW 16 compares If-Match with the bare value (a quoted one never matches). */
function bare(etag: string | undefined): string {
  return (etag ?? '').replace(/^"|"$/g, '');
}

/**
 * The whole body, in `into` if given; an abort (the attempt's timeout) destroys the stream, so a stalled
 * body ends the attempt.
 */
async function readBody(body: unknown, signal: AbortSignal, into: Buffer | undefined, url: () => string): Promise<Buffer> {
  if (!(body instanceof Readable)) throw new ShoalError('internal', 'the S3 client returned a body that is not a Node stream.');
  const onAbort = () => body.destroy(new Error('the S3 read timed out'));
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const part of body) {
      const b = part as Buffer;
      if (into) {
        if (n + b.length > into.length) throw new ShoalError('io_error', `${url()} returned more bytes than the ${into.length} asked for`);
        b.copy(into, n);
      } else parts.push(b);
      n += b.length;
    }
    if (into) return into.subarray(0, n);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
