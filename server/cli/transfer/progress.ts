// Progress of a long CLI operation (import, export). On a terminal: one line redrawn in place —
// a bar, bytes done of the total, the rate over the last seconds and the time left. Off a
// terminal (a log, CI): one JSON line every few seconds, and a last one when it ends.
import { formatSize } from '../../size.js';
import { RateMeter } from '../../rate-meter.js';
import { ANSI, bar, formatDuration, formatRate, type TermOut } from '../terminal.js';

export type Outcome = 'done' | 'failed' | 'interrupted';

export interface ProgressOptions {
  /** What is going on, as the line starts: "import vm1". */
  label: string;
  total: number;
  out: TermOut;
  /** Fields every JSON line carries (operation, volume, file). */
  fields: Record<string, string>;
  /** Off a terminal: ms between JSON lines (default 2000). */
  jsonEveryMs?: number;
}

const DRAW_EVERY_MS = 200;

export class Progress {
  private done = 0;
  private readonly meter = new RateMeter();
  private timer: NodeJS.Timeout | null = null;
  private readonly tty: boolean;
  private readonly started = performance.now();

  constructor(private readonly o: ProgressOptions) {
    this.tty = o.out.isTTY === true;
  }

  start(): this {
    this.timer = setInterval(() => this.emit(), this.tty ? DRAW_EVERY_MS : (this.o.jsonEveryMs ?? 2000));
    this.timer.unref();
    if (this.tty) this.emit();
    return this;
  }

  add(n: number): void {
    this.done += n;
    this.meter.add(n);
  }

  /** For tools that report a fraction (qemu-img -p). */
  set(done: number): void {
    if (done > this.done) this.add(done - this.done);
  }

  get bytesDone(): number {
    return this.done;
  }

  /** Stops drawing; the last line says how it ended. */
  finish(outcome: Outcome): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.emit(outcome);
  }

  /** Overall rate while the last seconds' is not known yet. */
  private rate(): number {
    const r = this.meter.perSecond();
    if (r > 0) return r;
    const s = (performance.now() - this.started) / 1000;
    return s > 0 ? this.done / s : 0;
  }

  private emit(outcome?: Outcome): void {
    const total = this.o.total;
    const rate = outcome ? this.done / Math.max(0.001, (performance.now() - this.started) / 1000) : this.rate();
    const left = rate > 0 ? (total - this.done) / rate : Infinity;
    const fraction = total > 0 ? this.done / total : 1;
    if (!this.tty) {
      const line = {
        event: outcome ?? 'progress',
        ...this.o.fields,
        doneBytes: this.done,
        totalBytes: total,
        percent: Math.round(fraction * 1000) / 10,
        bytesPerSecond: Math.round(rate),
        ...(outcome ? { seconds: Math.round((performance.now() - this.started) / 100) / 10 } : { secondsLeft: Number.isFinite(left) ? Math.round(left) : null }),
      };
      this.o.out.write(JSON.stringify(line) + '\n');
      return;
    }
    const pct = `${(fraction * 100).toFixed(0).padStart(3)}%`;
    const figures = `${formatSize(this.done)} / ${formatSize(total)}`;
    const tail = outcome
      ? `${formatRate(rate)}  ${outcome === 'done' ? `done in ${formatDuration((performance.now() - this.started) / 1000)}` : outcome}`
      : `${formatRate(rate)}  ${formatDuration(left)} left`;
    const cols = this.o.out.columns ?? 80;
    const fixed = `${this.o.label}  []  ${pct}  ${figures}  ${tail}`.length;
    const width = Math.max(10, Math.min(40, cols - fixed - 1));
    this.o.out.write(`${ANSI.clearLine}${this.o.label}  [${bar(fraction, width)}]  ${pct}  ${figures}  ${tail}${outcome ? '\n' : ''}`);
  }
}
