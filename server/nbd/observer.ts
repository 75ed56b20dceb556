// What the NBD engine reports as it works; the daemon wires it to Prometheus (api/metrics.ts).

/** Observability hooks, all cheap to call. */
export interface NbdObserver {
  connectionOpened(): void;
  connectionClosed(): void;
  /** Called once per completed request. `op` is lower-case: read, write, flush, trim, write_zeroes, cache, block_status. */
  request(op: string, exportName: string, bytes: number, seconds: number, ok: boolean): void;
}
