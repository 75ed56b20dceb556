// Work that must reach the bucket eventually (a staged pack, a metadata delta, the head naming them) is
// retried for as long as the object store is unreachable or failing: each S3Bucket operation already gives
// up after --s3-timeout, and here the whole operation starts again after a pause, until it lands. Only an
// answer that retrying cannot change ends it: fenced (another daemon owns the prefix) or shut down.
import { setTimeout as sleep } from 'node:timers/promises';
import { ShoalError } from '../../errors.js';
import type { LeaseLogger } from './lease.js';

const FINAL = new Set(['store_fenced', 'shutting_down', 'corrupt_pack', 'corrupt_metadata', 'internal']);
const FIRST_PAUSE_MS = 500;
const MAX_PAUSE_MS = 10_000;

export interface OutageRetryOptions {
  logger: LeaseLogger;
  /** True once the caller is closing: the next failure is final. */
  stopped: () => boolean;
}

/** Whether an error ends the retries. */
export function isFinal(e: unknown): boolean {
  return !(e instanceof ShoalError) || FINAL.has(e.code);
}

/**
 * Runs `op` until it succeeds. A failure is logged once when an outage begins (and once when it ends),
 * not on every attempt.
 */
export async function untilDone<T>(what: string, op: () => Promise<T>, opts: OutageRetryOptions): Promise<T> {
  let failures = 0;
  for (;;) {
    try {
      const v = await op();
      if (failures > 0) opts.logger.info({ attempts: failures + 1 }, `${what}: done after the object store came back`);
      return v;
    } catch (e) {
      if (isFinal(e) || opts.stopped()) throw e;
      if (failures === 0) opts.logger.warn({ err: e }, `${what} failed; retrying until the object store answers`);
      failures++;
      await sleep(Math.min(MAX_PAUSE_MS, FIRST_PAUSE_MS * 2 ** Math.min(failures - 1, 10)));
    }
  }
}
