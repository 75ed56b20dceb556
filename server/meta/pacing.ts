// Background work (space reclaim, dedup indexing) rests between its commits for a time in
// proportion to what each cost, so clients' requests keep most of the machine.
import { setTimeout as sleep } from 'node:timers/promises';

/** Longest rest: background work comes back at least this often, however long its last step took. */
const MAX_REST_MS = 200;

/** How long to rest after work begun at `t0` (performance.now()): `factor` times what it took, at least `minMs`, at most 200 ms. */
export function restFor(t0: number, factor: number, minMs = 0): number {
  return Math.max(minMs, Math.min(MAX_REST_MS, factor * (performance.now() - t0)));
}

/** Idles for restFor(t0, factor, minMs). */
export async function restAfter(t0: number, factor: number, minMs = 0): Promise<void> {
  await sleep(restFor(t0, factor, minMs));
}

/**
 * Cuts a long synchronous walk (fsck) into slices of `sliceMs` with a turn of the event loop
 * between them, so the daemon keeps answering (the API reports the walk's progress meanwhile).
 * `pauseMs`: how long each turn lasts (0: setImmediate). `betweenSlices`, when given, replaces the
 * turn of the loop: it is called and the walk goes on at once, for a walk with nothing else to
 * serve (the offline check, which reports its progress there).
 */
export class Slicer {
  private until: number;
  private n = 0;

  constructor(
    private readonly sliceMs: number,
    private readonly pauseMs = 0,
    private readonly betweenSlices?: () => void,
  ) {
    this.until = performance.now() + sliceMs;
  }

  /** Call once per item: resolves at once (undefined) unless the slice is over. Looks at the clock every 64 calls. */
  tick(): Promise<void> | undefined {
    if ((++this.n & 63) !== 0 || performance.now() < this.until) return undefined;
    if (this.betweenSlices) {
      this.betweenSlices();
      this.until = performance.now() + this.sliceMs;
      return undefined;
    }
    return this.rest();
  }

  private async rest(): Promise<void> {
    await new Promise((r) => (this.pauseMs > 0 ? setTimeout(r, this.pauseMs) : setImmediate(r)));
    this.until = performance.now() + this.sliceMs;
  }
}
