// What the S3 layer counts: every HTTP request (each retry is one), by operation and outcome, its
// duration, and the bytes sent and received. The bucket keeps its own totals (tests, /v1/stats) and tells
// an observer (api/metrics.ts, which turns them into shoal_s3_* series) as requests finish.

export type S3Op = 'get' | 'put' | 'delete' | 'list' | 'head' | 'head_bucket' | 'create_bucket' | 'multipart_create' | 'multipart_part' | 'multipart_complete' | 'multipart_abort';

/** How one request ended. Only server_error, throttled, network_error and timeout are retried. */
export type S3Result = 'ok' | 'not_found' | 'precondition_failed' | 'client_error' | 'server_error' | 'throttled' | 'network_error' | 'timeout';

export interface S3Observer {
  s3Request(op: S3Op, result: S3Result, seconds: number, bytesUp: number, bytesDown: number): void;
}

export class S3Stats implements S3Observer {
  /** Requests by "op result", e.g. "put precondition_failed". */
  readonly requests = new Map<string, number>();
  bytesUp = 0;
  bytesDown = 0;

  s3Request(op: S3Op, result: S3Result, _seconds: number, bytesUp: number, bytesDown: number): void {
    const k = `${op} ${result}`;
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
    this.bytesUp += bytesUp;
    this.bytesDown += bytesDown;
  }

  count(op: S3Op, result: S3Result): number {
    return this.requests.get(`${op} ${result}`) ?? 0;
  }
}
