// Background work (space reclaim, dedup indexing) rests between its commits for a time in
// proportion to what each cost, so clients' requests keep most of the machine.

/** Idles `factor` times as long as the work begun at `t0` (performance.now()) took, at most 200 ms. */
export function restAfter(t0: number, factor: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.min(200, factor * (performance.now() - t0))));
}
