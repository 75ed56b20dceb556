// The volume layer's side of the NBD port (export-port.ts): one export per volume (read-write)
// and per snapshot (VOLUME@SNAPSHOT, read-only), each opened connection a VolumeExport. Besides
// base:allocation, each offers qemu:dirty-bitmap:BASE for every older snapshot (changes.ts).
import { ShoalError } from '../errors.js';
import type { RootRecord, SnapshotRecord } from '../meta/volume-records.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import { DIRTY_BITMAP_PREFIX, type ChangeTracker } from './changes.js';
import { MAX_REQUEST_BYTES, type BlockExport, type ExportListing, type ExportProvider, type Extent, type NbdSession, type ReadResult, type ZeroOptions } from './export-port.js';
import { volumeOfExport } from './names.js';
import type { ReadPath } from './read-path.js';
import type { FlushJournal } from './flush-journal.js';
import type { WritePath } from './write-path.js';
import type { ExportConnection, VolumeState } from './volume-state.js';

/** What the exports need of the rest of the volume layer. */
export interface ExportContext {
  readonly states: ReadonlyMap<string, VolumeState>;
  readonly reads: ReadPath;
  readonly writes: WritePath;
  readonly cache: ChunkCache;
  readonly changes: ChangeTracker;
  /** Makes every write `st` completed durable (FLUSH, FUA). */
  flush(st: VolumeState): Promise<void>;
  /** Before a write, trim or zero: a promise to wait for while too many changes wait for a commit, or null. */
  admit(): Promise<void> | null;
  /** Where FLUSH and FUA make writes durable, if not by a commit: told of each write, trim and zero before its reply. */
  readonly journal: FlushJournal | null;
  /** False once the daemon is shutting down: no new export is opened. */
  isOpen(): boolean;
  /** Throws if nothing may be written any more (another daemon took the store over). */
  checkWritable(): void;
  /** TLS identities that see every tenant's volumes (--tls-admins). */
  readonly admins: ReadonlySet<string>;
}

function checkRange(size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size)
    throw new ShoalError('out_of_range', `range ${offset}+${length} is outside the volume (size ${size})`);
}

export class VolumeExports implements ExportProvider {
  /** NBD requests begun on any export: background work paces itself by it. */
  requests = 0;
  private readonly readerIds = new Map<string, number>();

  constructor(private readonly ctx: ExportContext) {}

  /**
   * Whether a client may see a volume. Over TLS its identity (PSK identity, or certificate CN with
   * --tls-verify-peer) is a tenant: it sees that tenant's volumes only, and a client without an
   * identity those without a tenant; --tls-admins see all. Without TLS (loopback, the Unix socket,
   * protected by where they listen) every volume is visible.
   */
  private visible(st: VolumeState, session: NbdSession | undefined): boolean {
    if (!session?.tls) return true;
    if (session.identity !== null && this.ctx.admins.has(session.identity)) return true;
    return (st.record.tenant ?? null) === session.identity;
  }

  listExports(session?: NbdSession): ExportListing[] {
    const out: ExportListing[] = [];
    for (const st of this.ctx.states.values()) {
      if (!this.visible(st, session)) continue;
      out.push({ name: st.name, description: `Shoal volume ${st.name} (${st.record.size} bytes, domain ${st.record.domain})` });
      for (const s of st.record.snapshots) out.push({ name: `${st.name}@${s.name}`, description: `Shoal snapshot ${s.name} of ${st.name} (read-only)` });
    }
    return out;
  }

  defaultExportName(): string | null {
    return this.ctx.states.size === 1 ? [...this.ctx.states.keys()][0] : null;
  }

  /** The named export, or null: another tenant's volume is answered exactly as one that does not exist. */
  openExport(name: string, onRevoke: () => void, session?: NbdSession): BlockExport | null {
    if (!this.ctx.isOpen()) return null;
    const found = this.find(name, session);
    return found && new VolumeExport(this, this.ctx, found.st, found.snap, name, onRevoke);
  }

  metaContexts(exportName: string, session?: NbdSession): string[] {
    const found = this.find(exportName, session);
    return found ? this.ctx.changes.bases(found.st, found.snap).map((b) => DIRTY_BITMAP_PREFIX + b.name) : [];
  }

  /** The volume and snapshot an export name names, if the session may see them, or null. */
  private find(name: string, session?: NbdSession): { st: VolumeState; snap: SnapshotRecord | undefined } | null {
    const at = name.indexOf('@');
    const st = this.ctx.states.get(volumeOfExport(name));
    if (!st || !this.visible(st, session)) return null;
    if (at < 0) return { st, snap: undefined };
    const snap = st.record.snapshots.find((s) => s.name === name.slice(at + 1));
    return snap ? { st, snap } : null;
  }

  /** A small number per export name: the cache counts distinct readers of each chunk by it. */
  readerIdFor(exportName: string): number {
    let id = this.readerIds.get(exportName);
    if (id === undefined) this.readerIds.set(exportName, (id = this.readerIds.size + 1));
    return id;
  }

  /** Chunks loaded from the store for reads of the volume and its snapshots (its cache misses). */
  cacheLoadsOf(volume: string): number {
    let n = 0;
    for (const [exportName, id] of this.readerIds) if (volumeOfExport(exportName) === volume) n += this.ctx.cache.storeLoads.get(id) ?? 0;
    return n;
  }
}

/** One NBD connection's view of a volume or snapshot. */
class VolumeExport implements BlockExport, ExportConnection {
  readonly description: string;
  readonly readOnly: boolean;
  readonly blockSize: { minimum: number; preferred: number; maximum: number };
  readonly multiConn = true;
  readonly snapshot: string | undefined;
  private closed = false;
  private revoked = false;
  private readonly readerId: number;

  constructor(
    private readonly exports: VolumeExports,
    private readonly ctx: ExportContext,
    private readonly st: VolumeState,
    private readonly snap: SnapshotRecord | undefined,
    readonly name: string,
    private readonly onRevoke: () => void,
  ) {
    this.readOnly = snap !== undefined;
    this.snapshot = snap?.name;
    this.description = snap ? `Shoal snapshot ${snap.name} of ${st.name} (read-only)` : `Shoal volume ${st.name}`;
    this.blockSize = { minimum: 1, preferred: Math.max(4096, ctx.reads.chunkSize), maximum: MAX_REQUEST_BYTES };
    this.readerId = exports.readerIdFor(name);
    st.attach(this);
  }

  get size(): number {
    return this.rec().size;
  }

  private rec(): RootRecord {
    return this.snap ?? this.st.record;
  }

  revoke(): void {
    if (this.revoked) return;
    this.revoked = true;
    this.onRevoke();
  }

  private live(): void {
    if (this.revoked || this.st.deleted) throw new ShoalError('volume_deleted', `export ${this.name} was removed`);
    this.exports.requests++;
  }

  private writable(offset: number, length: number): void {
    this.live();
    if (this.readOnly) throw new ShoalError('read_only', `export ${this.name} is a read-only snapshot`);
    this.ctx.checkWritable();
    checkRange(this.st.record.size, offset, length);
  }

  read(offset: number, length: number): ReadResult | Promise<ReadResult> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    this.st.io.reads++;
    this.st.io.readBytes += length;
    return this.ctx.reads.read(r, offset, length, this.readerId);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.writable(offset, data.length);
    const admit = this.admitted(offset, data.length);
    if (admit) await admit;
    this.st.io.writes++;
    this.st.io.writtenBytes += data.length;
    const j = this.ctx.journal;
    try {
      if (j) {
        // A sync writer's write (journaled as it arrives) is not `early`: see WritePath.write.
        if (j.journalsEarly(this.st, offset, data.length, fua)) return await j.writeEarly(this.st, offset, data, fua, () => this.ctx.writes.write(this.st, offset, data));
        await this.ctx.writes.write(this.st, offset, data, !fua);
        j.completed(this.st, 'write', offset, data.length, data);
        if (fua) await j.flush(this.st);
        return;
      }
      await this.ctx.writes.write(this.st, offset, data, !fua);
    } finally {
      this.st.changeDone();
    }
    if (fua) await this.ctx.flush(this.st);
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.writable(offset, length);
    const admit = this.admitted(offset, length);
    if (admit) await admit;
    try {
      await this.ctx.writes.trim(this.st, offset, length);
      this.ctx.journal?.completed(this.st, 'trim', offset, length, null);
    } finally {
      this.st.changeDone();
    }
    if (fua) await this.ctx.flush(this.st);
  }

  async writeZeroes(offset: number, length: number, o: ZeroOptions): Promise<void> {
    this.writable(offset, length);
    const admit = this.admitted(offset, length);
    if (admit) await admit;
    try {
      await this.ctx.writes.zero(this.st, offset, length, o.noHole);
      this.ctx.journal?.completed(this.st, 'zero', offset, length, null, o.noHole);
    } finally {
      this.st.changeDone();
    }
    if (o.fua) await this.ctx.flush(this.st);
  }

  /**
   * Registers a change about to be made, once it may start: null at once (the usual case, no promise
   * per request), or a promise to wait for. It waits while too many changes wait for a commit
   * (CommitScheduler.admit) and while a snapshot is taken (VolumeState.quiesce), checking again after
   * each wait that the change may still be made.
   */
  private admitted(offset: number, length: number): Promise<void> | null {
    const pile = this.ctx.admit();
    return pile ? this.afterPile(pile, offset, length) : this.changeStarted(offset, length);
  }

  private async afterPile(pile: Promise<void>, offset: number, length: number): Promise<void> {
    await pile;
    this.writable(offset, length);
    await this.changeStarted(offset, length);
  }

  /** Counts the change as under way: at once (null), or once no snapshot holds it back (startChange). */
  private changeStarted(offset: number, length: number): Promise<void> | null {
    const wait = this.st.changeStarts();
    return wait ? this.startChange(wait, offset, length) : null;
  }

  /**
   * A change held back while a snapshot is taken (VolumeState.quiesce): waits, checks again that it
   * may go on, and counts it as under way. The fast path (nothing held back) does not come here.
   */
  private async startChange(wait: Promise<void>, offset: number, length: number): Promise<void> {
    for (let w: Promise<void> | null = wait; w; w = this.st.changeStarts()) {
      await w;
      this.writable(offset, length);
    }
  }

  async flush(): Promise<void> {
    this.live();
    if (!this.readOnly) this.ctx.checkWritable();
    await this.ctx.flush(this.st);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    await this.ctx.reads.prefetch(r, offset, length, this.readerId);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    return this.ctx.reads.blockStatus(r, offset, length);
  }

  async metaContextStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    this.live();
    const r = this.rec();
    checkRange(r.size, offset, length);
    if (!context.startsWith(DIRTY_BITMAP_PREFIX)) throw new ShoalError('not_supported', `export ${this.name} has no meta context ${context}`);
    const base = this.ctx.changes.base(this.st, this.snap, context.slice(DIRTY_BITMAP_PREFIX.length));
    return this.ctx.changes.status(base, this.st, this.snap, offset, length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.st.detach(this);
  }
}
