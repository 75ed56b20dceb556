// Operations that change many chunks of a volume at once: reflink (share a range of another
// volume, like FICLONERANGE), dedupe (share it only where the bytes are equal, like
// FIDEDUPERANGE) and the tail of a shrink. None of them holds commits back: each commits an
// intent record first (with a frozen copy of its source, one refcount increment whatever the
// size), then works in bounded batches, each committed with the intent's progress, so every
// FLUSH on any volume goes on being answered while it runs. After a crash, the daemon rolls
// every intent forward before it serves: a caller sees either nothing or the whole operation.
import { ShoalError } from '../errors.js';
import { dropRoot, releaseRange, shareChunks, shareRoot } from '../meta/map-tree.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { IntentRecord } from '../meta/intent-records.js';
import type { RootRecord } from '../meta/volume-records.js';
import type { ReadPath } from './read-path.js';
import type { WritePath } from './write-path.js';
import type { VolumeState } from './volume-state.js';
import type { RangeRequest } from './control.js';

/** Chunks per batch of sharing (a few ms of the event loop at most; aligned subtrees go 256 at a time). */
const SHARE_BATCH = 1024;
/** Chunks compared per batch of a dedupe (two reads of 1 MiB at 4 KiB chunks). */
const DEDUPE_BATCH = 256;
/** Bytes per write when a reflink copies unaligned edges. */
const COPY_BYTES = 1024 * 1024;
/** Changes after which an operation waits for a commit, so no commit grows large under it. */
const COMMIT_BATCH = 1024;

interface RangeState extends Record<string, unknown> {
  dst: string;
  source: string;
  sourceOffset: number;
  offset: number;
  length: number;
  /** reflink: the next step; dedupe: 'middle' then 'done'. */
  phase: 'head' | 'middle' | 'tail';
  /** Chunks of the aligned middle done so far. */
  next: number;
  sharedBytes: number;
  copiedBytes: number;
  differentBytes: number;
}

interface ShrinkState extends Record<string, unknown> {
  volume: string;
  /** Bytes [from, to) of the last chunk kept must read as zeroes if the volume grows again. */
  from: number;
  to: number;
}

export interface RangeContext {
  readonly meta: MetaStore;
  readonly reads: ReadPath;
  readonly writes: WritePath;
  state(name: string): VolumeState | undefined;
  /** Released map nodes are waiting: let space reclaim run. */
  reclaim(): void;
  /** A volume's size changed, outside the flush journal (FlushJournal.changedOutside). */
  changedOutside(st: VolumeState): void;
  /** Test-only: how long to wait once an intent is committed, before its work (a window to crash in). */
  readonly pauseAfterIntentMs?: number;
}

export class RangeOperations {
  constructor(private readonly ctx: RangeContext) {}

  /** Shares [sourceOffset, +length) of `src` into `dst` at `offset`; copies what is not chunk-aligned. */
  async reflink(dst: VolumeState, src: RootRecord, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }> {
    const s = await this.run(await this.begin('reflink', dst, src, req));
    return { sharedBytes: s.sharedBytes, copiedBytes: s.copiedBytes };
  }

  /** Shares the chunks of the range that hold equal bytes in both; leaves the rest alone. */
  async dedupe(dst: VolumeState, src: RootRecord, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }> {
    const s = await this.run(await this.begin('dedupe', dst, src, req));
    return { sharedBytes: s.sharedBytes, differentBytes: s.differentBytes };
  }

  /** Commits the intent (with a frozen copy of the source) before any work starts. */
  private async begin(kind: 'reflink' | 'dedupe', dst: VolumeState, src: RootRecord, req: RangeRequest): Promise<IntentRecord> {
    const state: RangeState = { dst: dst.name, source: req.source, sourceOffset: req.sourceOffset, offset: req.offset, length: req.length, phase: kind === 'reflink' ? 'head' : 'middle', next: 0, sharedBytes: 0, copiedBytes: 0, differentBytes: 0 };
    const intent = this.ctx.meta.intents.create(kind, [shareRoot(this.ctx.meta, src)], state);
    await this.ctx.meta.commit();
    await this.testPause();
    return intent;
  }

  /** Runs (or, after a crash, resumes) a reflink or dedupe to its end. */
  private async run(intent: IntentRecord): Promise<RangeState> {
    const s = intent.state as RangeState;
    const src = intent.roots[0];
    const cs = this.ctx.meta.chunkSize;
    const { sourceOffset, offset, length } = s;
    // The chunk-aligned middle can be shared; it needs both offsets at the same place in a chunk.
    const aligned = sourceOffset % cs === offset % cs;
    const headLen = aligned ? Math.min(length, (cs - (offset % cs)) % cs) : length;
    const midChunks = aligned ? Math.floor((length - headLen) / cs) : 0;
    const tailLen = length - headLen - midChunks * cs;
    try {
      if (intent.kind === 'reflink') {
        if (s.phase === 'head') {
          await this.copy(intent, src, sourceOffset, offset, headLen);
          this.advance(intent, { phase: 'middle', copiedBytes: s.copiedBytes + headLen });
        }
        if (s.phase === 'middle') {
          await this.shareMiddle(intent, src, (sourceOffset + headLen) / cs, (offset + headLen) / cs, midChunks);
          this.advance(intent, { phase: 'tail' });
        }
        await this.copy(intent, src, sourceOffset + length - tailLen, offset + length - tailLen, tailLen);
        s.copiedBytes += tailLen;
      } else {
        await this.compareAndShare(intent, src, Math.floor(length / cs));
        const tail = length % cs;
        if (tail > 0) {
          // A partial chunk cannot be shared; equal bytes need nothing.
          const dst = this.live(s.dst);
          const a = await this.ctx.reads.readBytes(src, sourceOffset + length - tail, tail);
          const b = await this.ctx.reads.readBytes(dst.record, offset + length - tail, tail);
          if (!a.equals(b)) s.differentBytes += tail;
        }
      }
    } catch (e) {
      // The destination is gone: nothing is left to do. Any other failure (an I/O error) leaves
      // the intent in place, to be rolled forward at the next start.
      if (e instanceof ShoalError && e.code === 'volume_deleted') await this.finish(intent);
      throw e;
    }
    await this.finish(intent);
    return s;
  }

  /** Records progress with the changes it describes (the same synchronous step, the same commit). */
  private advance(intent: IntentRecord, changes: Partial<RangeState>): void {
    Object.assign(intent.state, changes);
    this.ctx.meta.intents.update(intent);
  }

  /** Drops the frozen source and the intent together, and commits. */
  private async finish(intent: IntentRecord): Promise<void> {
    for (const r of intent.roots) dropRoot(this.ctx.meta, r);
    this.ctx.meta.intents.finish(intent);
    await this.ctx.meta.commit();
    this.ctx.reclaim();
  }

  private live(name: string): VolumeState {
    const st = this.ctx.state(name);
    if (!st || st.deleted) throw new ShoalError('volume_deleted', `volume ${name} was deleted while the operation ran`);
    return st;
  }

  /** Between batches: lets other work run, and commits once changes pile up. */
  private async pause(): Promise<void> {
    if (this.ctx.meta.pendingChanges >= COMMIT_BATCH) await this.ctx.meta.commit();
    else await new Promise((r) => setImmediate(r));
  }

  /** Copies bytes from the frozen source through the write path (an idempotent step). */
  private async copy(intent: IntentRecord, src: RootRecord, from: number, to: number, len: number): Promise<void> {
    for (let done = 0; done < len; done += COPY_BYTES) {
      const n = Math.min(COPY_BYTES, len - done);
      const buf = await this.ctx.reads.readBytes(src, from + done, n);
      await this.ctx.writes.write(this.live((intent.state as RangeState).dst), to + done, buf);
      await this.pause();
    }
  }

  private async shareMiddle(intent: IntentRecord, src: RootRecord, sFrom: number, dFrom: number, chunks: number): Promise<void> {
    const s = intent.state as RangeState;
    const cs = this.ctx.meta.chunkSize;
    while (s.next < chunks) {
      const dst = this.live(s.dst);
      const n = Math.min(SHARE_BATCH, chunks - s.next);
      const release = await dst.lock.acquire(dFrom + s.next, dFrom + s.next + n);
      try {
        shareChunks(this.ctx.meta, dst.record, src, dFrom + s.next, sFrom + s.next, n);
        dst.touched();
        this.advance(intent, { next: s.next + n, sharedBytes: s.sharedBytes + n * cs });
      } finally {
        release();
      }
      await this.pause();
    }
  }

  private async compareAndShare(intent: IntentRecord, src: RootRecord, chunks: number): Promise<void> {
    const s = intent.state as RangeState;
    const cs = this.ctx.meta.chunkSize;
    const sFrom = s.sourceOffset / cs;
    const dFrom = s.offset / cs;
    while (s.next < chunks) {
      const dst = this.live(s.dst);
      const n = Math.min(DEDUPE_BATCH, chunks - s.next);
      const from = dFrom + s.next;
      const release = await dst.lock.acquire(from, from + n);
      try {
        const a = await this.ctx.reads.readBytes(src, (sFrom + s.next) * cs, n * cs);
        const b = await this.ctx.reads.readBytes(dst.record, from * cs, n * cs);
        // Contiguous runs of equal chunks are shared by one call each; all of it synchronously,
        // with the progress that records it.
        let shared = 0;
        let different = 0;
        let runStart = -1;
        for (let i = 0; i <= n; i++) {
          const eq = i < n && a.subarray(i * cs, i * cs + cs).equals(b.subarray(i * cs, i * cs + cs));
          if (eq && runStart < 0) runStart = i;
          if (!eq && runStart >= 0) {
            shareChunks(this.ctx.meta, dst.record, src, from + runStart, sFrom + s.next + runStart, i - runStart);
            shared += (i - runStart) * cs;
            runStart = -1;
          }
          if (!eq && i < n) different += cs;
        }
        dst.touched();
        this.advance(intent, { next: s.next + n, sharedBytes: s.sharedBytes + shared, differentBytes: s.differentBytes + different });
      } finally {
        release();
      }
      await this.pause();
    }
  }

  // ------------------------------------------------------------------ shrink

  /**
   * Shrinks a volume with no clients: the map past the new end is released and the size set in
   * one synchronous step; when the new end falls inside a chunk, the rest of that chunk must read
   * as zeroes if the volume grows again, which needs a write, so an intent for that write is
   * committed with the new size and rolled forward after a crash.
   */
  async shrink(st: VolumeState, size: number): Promise<void> {
    const cs = this.ctx.meta.chunkSize;
    const r = st.record;
    const cut = Math.ceil(size / cs);
    const release = await st.lock.acquire(0, Infinity);
    try {
      releaseRange(this.ctx.meta, r, cut, Infinity);
      const end = Math.min(r.size, cut * cs);
      r.size = size;
      const intent = size < end ? this.ctx.meta.intents.create('shrink', [], { volume: st.name, from: size, to: end } satisfies ShrinkState) : null;
      st.touched();
      this.ctx.changedOutside(st);
      await this.ctx.meta.commit();
      if (intent) {
        await this.testPause();
        await this.zeroTail(intent, st);
      }
    } finally {
      release();
    }
    this.ctx.reclaim();
  }

  private async zeroTail(intent: IntentRecord, st: VolumeState): Promise<void> {
    const s = intent.state as ShrinkState;
    await this.ctx.writes.write(st, s.from, Buffer.alloc(s.to - s.from));
    this.ctx.meta.intents.finish(intent);
    st.touched();
    await this.ctx.meta.commit();
  }

  private async testPause(): Promise<void> {
    if (this.ctx.pauseAfterIntentMs) await new Promise((r) => setTimeout(r, this.ctx.pauseAfterIntentMs));
  }

  // ------------------------------------------------------------------ after a crash

  /** Finishes every operation a crash interrupted; the daemon serves only once this is done. */
  async rollForward(log?: { info(obj: unknown, msg?: string): void }): Promise<void> {
    for (const intent of this.ctx.meta.intents.all()) {
      log?.info({ intent: intent.id, kind: intent.kind, state: intent.state }, 'finishing an operation interrupted by a crash');
      if (intent.kind === 'reflink' || intent.kind === 'dedupe') {
        // A destination deleted before the crash: the frozen source is dropped with the intent.
        await this.run(intent).catch((e) => {
          if (!(e instanceof ShoalError && e.code === 'volume_deleted')) throw e;
        });
      } else if (intent.kind === 'shrink') {
        const st = this.ctx.state((intent.state as ShrinkState).volume);
        if (st) await this.zeroTail(intent, st);
        else await this.finish(intent);
      } else throw new ShoalError('corrupt_metadata', `intent ${intent.id} is of an unknown kind ${JSON.stringify(intent.kind)}`);
    }
  }
}
