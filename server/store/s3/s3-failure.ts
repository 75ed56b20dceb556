// Tells what a failed S3 request means: which outcome to count, and whether trying again can help.
// 5xx, throttling and the network are transient (a gateway restarting, a saturated cluster); any other
// 4xx is an answer (412 lost a conditional race, 404 has no such key, 403 has no access) and is final.
import type { S3Result } from './s3-stats.js';

export interface S3Failure {
  result: S3Result;
  retryable: boolean;
  /** One phrase for logs and error sentences: "503 SlowDown", "connect ECONNREFUSED 127.0.0.1:7480". */
  detail: string;
  status: number | undefined;
}

const THROTTLE_CODES = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'TooManyRequests', 'RequestLimitExceeded']);
// 400s that S3 sends for a request that took too long on the wire: the same request can succeed.
const TRANSIENT_4XX = new Set(['RequestTimeout', 'RequestTimeoutException']);

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

export function classifyS3Failure(e: unknown, timedOut: boolean): S3Failure {
  const err = (typeof e === 'object' && e !== null ? e : { message: String(e) }) as SdkError;
  if (timedOut) return { result: 'timeout', retryable: true, detail: 'no answer in time', status: undefined };
  const status = err.$metadata?.httpStatusCode;
  const name = err.name ?? 'Error';
  if (status === undefined) {
    // No HTTP answer at all: refused, reset, DNS, a socket that closed mid-body.
    return { result: 'network_error', retryable: true, detail: err.code ? `${err.message ?? err.code}` : `${name}: ${err.message ?? ''}`.trim(), status };
  }
  const detail = `${status} ${name}`;
  if (status === 429 || THROTTLE_CODES.has(name)) return { result: 'throttled', retryable: true, detail, status };
  if (status >= 500) return { result: 'server_error', retryable: true, detail, status };
  if (TRANSIENT_4XX.has(name)) return { result: 'server_error', retryable: true, detail, status };
  if (status === 404) return { result: 'not_found', retryable: false, detail, status };
  if (status === 412) return { result: 'precondition_failed', retryable: false, detail, status };
  return { result: 'client_error', retryable: false, detail, status };
}

/**
 * Delay before retry number `retry` (1 = the first retry): exponential from `baseMs`, capped at `capMs`,
 * with "full jitter" (uniform in [0, that]) so many clients that failed together do not retry together.
 */
export function backoffDelay(retry: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(retry - 1, 30));
  return Math.floor(random() * ceiling);
}
