// The online consistency check, run by the volume layer: one at a time (a second call joins the
// first), over a quiescent committed state while reads go on, in slices so its progress can be
// reported. Changes to maps wait for it: control calls at `settled()`, NBD writes, trims and zeroes
// at each volume's range lock, which the check holds whole.
import { checkMetadata, FSCK_SLICE_MS, FsckErrors, newFsckProgress, type FsckProgress } from '../meta/fsck.js';
import type { MetaStore } from '../meta/meta-store.js';
import { Slicer } from '../meta/pacing.js';
import type { SpaceReclaim } from '../meta/space-reclaim.js';
import { checkDedupIndex } from '../dedup/dedup-check.js';
import type { DedupIndex } from '../dedup/dedup-index.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { FsckReport, FsckStatus } from './control.js';
import type { VolumeState } from './volume-state.js';

export interface FsckTargets {
  meta: MetaStore;
  store: ChunkStore;
  dedup: DedupIndex;
  reclaim: SpaceReclaim;
  states: () => Iterable<VolumeState>;
}

export class FsckRunner {
  private run: Promise<FsckReport> | null = null;
  private progress: (FsckProgress & { startedAt: string }) | null = null;
  private lastOk: boolean | null = null;

  /** pauseMs: a rest between slices (tests slow the check down to watch its progress). */
  constructor(
    private readonly t: FsckTargets,
    private readonly pauseMs = 0,
  ) {}

  get running(): boolean {
    return this.run !== null;
  }

  /** Resolves once no check runs. Callers test `running` first, so their checks otherwise stay in the tick of the call. */
  async settled(): Promise<void> {
    while (this.run) await this.run.catch(() => {});
  }

  check(): Promise<FsckReport> {
    this.run ??= this.runCheck().finally(() => (this.run = null));
    return this.run;
  }

  status(): FsckStatus {
    const p = this.progress;
    const zero = { checkedIndexEntries: 0, totalIndexEntries: 0, checkedNodes: 0, totalNodes: 0, checkedChunks: 0, totalChunks: 0 };
    if (!p) return { running: false, phase: null, ...zero, startedAt: null, lastOk: this.lastOk };
    const { phase, startedAt, ...counts } = p;
    const running = this.run !== null;
    return { running, phase: running ? phase : null, ...counts, startedAt, lastOk: this.lastOk };
  }

  /** Reclaim finishes first, so the check sees every reference it let go of released. */
  private async runCheck(): Promise<FsckReport> {
    const { meta, store, dedup } = this.t;
    const releases: Array<() => void> = [];
    try {
      for (const st of [...this.t.states()]) releases.push(await st.lock.acquire(0, Infinity));
      await this.t.reclaim.drain();
      await meta.commit();
      const progress = (this.progress = { ...newFsckProgress(meta, dedup.index.storedCount()), startedAt: new Date().toISOString() });
      const errors = new FsckErrors();
      const slicer = new Slicer(FSCK_SLICE_MS, this.pauseMs);
      await checkDedupIndex(dedup, meta.chunks, errors, progress, slicer);
      const report = await checkMetadata(meta, store, { errors, progress, slicer });
      this.lastOk = report.ok;
      return report;
    } finally {
      for (const release of releases) release();
    }
  }
}
