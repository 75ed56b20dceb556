// A running total and how fast it moved over the last few seconds, for progress figures (reclaim,
// dedup indexing) that /v1/stats reports as a rate. add() is cheap: it notes a sample at most once
// a second, so a hot loop may call it per item.

/** Samples kept: the rate covers at most WINDOW_S seconds. */
const WINDOW_S = 10;

export class RateMeter {
  /** Everything added since the daemon started. */
  total = 0;
  // (time in ms, total) at most one a second, oldest first.
  private readonly times: number[] = [];
  private readonly totals: number[] = [];
  private lastAdd = -Infinity;

  constructor(private readonly now: () => number = () => performance.now()) {}

  add(n: number): void {
    this.total += n;
    const t = this.now();
    this.lastAdd = t;
    const last = this.times.length - 1;
    if (last >= 0 && t - this.times[last]! < 1000) return;
    this.times.push(t);
    this.totals.push(this.total);
    if (this.times.length > WINDOW_S + 1) {
      this.times.shift();
      this.totals.shift();
    }
  }

  /** Units per second over the last WINDOW_S seconds (0 when nothing moved in that time). */
  perSecond(): number {
    const t = this.now();
    if (t - this.lastAdd > WINDOW_S * 1000) return 0;
    // The oldest sample inside the window; if none is, the newest before it (the total has not moved since).
    let i = this.times.findIndex((x) => t - x <= WINDOW_S * 1000);
    if (i < 0) i = this.times.length - 1;
    if (i < 0) return 0;
    const dt = (t - this.times[i]!) / 1000;
    return dt <= 0 ? 0 : (this.total - this.totals[i]!) / dt;
  }
}
