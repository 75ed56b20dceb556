// A volume's state while the daemon runs: its record (committed by the metadata layer), its dedup
// domain id, the lock that serialises overlapping writes, and the NBD connections open on it.
import { ShoalError } from '../errors.js';
import type { SnapshotRecord, VolumeRecord } from '../meta/volume-records.js';
import { RangeLock } from './range-lock.js';

/** What the volume layer needs of one open export (volume-exports.ts). */
export interface ExportConnection {
  /** The snapshot it reads, if it is a snapshot export. */
  readonly snapshot: string | undefined;
  revoke(): void;
}

/** What a write, trim or zero needs to know about the map it changes. */
export interface WritableMap {
  readonly name: string;
  readonly record: VolumeRecord;
  readonly domain: number;
  readonly lock: RangeLock;
  /** Called after the record changed (marks it for the next commit). */
  touched(): void;
}

export class VolumeState implements WritableMap {
  readonly lock = new RangeLock();
  readonly conns = new Set<ExportConnection>();
  private readonly snapshotReaders = new Map<string, number>();
  /** Deleted: exports fail with volume_deleted, long operations stop. */
  deleted = false;
  /** NBD reads and writes accepted on the volume and its snapshots, and their bytes (shoal top, metrics). */
  readonly io = { reads: 0, writes: 0, readBytes: 0, writtenBytes: 0 };
  /** Writes, trims and zeroes between their start and their journal entry (see quiesce()). */
  private changing = 0;
  /** Set while quiesce() holds new changes back; they start once it is resolved. */
  private gate: Promise<void> | null = null;
  private idle: Array<() => void> = [];

  constructor(
    public record: VolumeRecord,
    readonly domain: number,
    private readonly onTouched: (st: VolumeState) => void,
  ) {}

  get name(): string {
    return this.record.name;
  }

  touched(): void {
    this.onTouched(this);
  }

  /**
   * A write, trim or zero starts: null, or a promise to wait for before calling this again (quiesce()
   * holds changes back). Every start is paired with changeDone() once the change is in the journal.
   */
  changeStarts(): Promise<void> | null {
    if (this.gate) return this.gate;
    this.changing++;
    return null;
  }

  changeDone(): void {
    if (--this.changing === 0) for (const wake of this.idle.splice(0)) wake();
  }

  /**
   * Holds new changes back and waits (at most `maxMs`) until none is under way: then every change in
   * the map has been told to the flush journal, and none is half applied. Returns whether it got there,
   * and the function that lets changes go on (to be called either way).
   */
  async quiesce(maxMs: number): Promise<{ idle: boolean; release: () => void }> {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    while (this.gate) await this.gate;
    this.gate = gate;
    const release = () => {
      if (this.gate === gate) this.gate = null;
      open();
    };
    if (this.changing === 0) return { idle: true, release };
    let timer: NodeJS.Timeout | undefined;
    const idle = await new Promise<boolean>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idle.push(wake);
      timer = setTimeout(() => {
        this.idle = this.idle.filter((w) => w !== wake);
        resolve(false);
      }, maxMs);
    });
    return { idle, release };
  }

  /** Its snapshot `name`; snapshot_not_found if it has none. */
  snapshot(name: string): SnapshotRecord {
    const s = this.record.snapshots.find((x) => x.name === name);
    if (!s) throw new ShoalError('snapshot_not_found', `volume ${this.name} has no snapshot ${JSON.stringify(name)}`);
    return s;
  }

  attach(c: ExportConnection): void {
    this.conns.add(c);
    if (c.snapshot !== undefined) this.snapshotReaders.set(c.snapshot, (this.snapshotReaders.get(c.snapshot) ?? 0) + 1);
  }

  detach(c: ExportConnection): void {
    if (this.conns.delete(c) && c.snapshot !== undefined) this.snapshotReaders.set(c.snapshot, (this.snapshotReaders.get(c.snapshot) ?? 1) - 1);
  }

  /** Connections reading `snapshot`. */
  readersOf(snapshot: string): number {
    return this.snapshotReaders.get(snapshot) ?? 0;
  }

  /** Connections to the volume itself (not to its snapshots). */
  writers(): ExportConnection[] {
    return [...this.conns].filter((c) => c.snapshot === undefined);
  }

  /** Cuts off the connections `which` selects (all by default): their requests fail with ESHUTDOWN. */
  revoke(which: (c: ExportConnection) => boolean = () => true): void {
    for (const c of [...this.conns]) if (which(c)) c.revoke();
  }
}
