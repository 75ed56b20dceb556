// `shoal fsck` on a terminal: one line redrawn in place while the check runs, with what it is at
// and how far it has come (the running daemon's is read from GET /v1/stats, an offline check's
// from the check itself).
import type { FsckProgress } from '../meta/fsck.js';
import { ANSI, bar, type TermOut } from './terminal.js';

type Counts = Omit<FsckProgress, 'phase'> & { phase: FsckProgress['phase'] | null };

const PHASES: Record<FsckProgress['phase'], (p: Counts) => string> = {
  index: (p) => `dedup index: ${p.checkedIndexEntries} of ${p.totalIndexEntries} entries`,
  maps: (p) => `maps: ${p.checkedNodes} of ${p.totalNodes} nodes`,
  chunks: (p) => `chunk records: ${p.checkedChunks} of ${p.totalChunks}`,
  store: () => 'chunk store',
};

function fsckLine(p: Counts, cols: number): string {
  const done = p.checkedIndexEntries + p.checkedNodes + p.checkedChunks;
  const all = p.totalIndexEntries + p.totalNodes + p.totalChunks;
  const fraction = p.phase === 'store' ? 1 : all > 0 ? Math.min(1, done / all) : 0;
  const what = p.phase ? PHASES[p.phase](p) : 'starting';
  const pct = `${(fraction * 100).toFixed(0).padStart(3)}%`;
  const width = Math.max(10, Math.min(40, cols - `fsck  []  ${pct}  ${what}`.length - 1));
  return `fsck  [${bar(fraction, width)}]  ${pct}  ${what}`;
}

/** Draws on a terminal; does nothing elsewhere (the report says it all). */
export class FsckProgressLine {
  private drawn = false;
  private ended = false;

  constructor(private readonly out: TermOut) {}

  get enabled(): boolean {
    return this.out.isTTY === true;
  }

  draw(p: Counts): void {
    if (!this.enabled || this.ended) return; // a poll answered after the check's end draws nothing
    this.out.write(ANSI.clearLine + fsckLine(p, this.out.columns ?? 80));
    this.drawn = true;
  }

  clear(): void {
    this.ended = true;
    if (this.drawn) this.out.write(ANSI.clearLine);
    this.drawn = false;
  }
}
