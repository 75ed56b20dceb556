// A small in-memory ExportProvider for protocol tests of the NBD engine (not the real volume store).
// Sparse: only written 64 KiB pages hold memory, so multi-TiB exports cost nothing.
import { ShoalError } from '../../server/errors.js';
import type { BlockExport, ExportListing, ExportProvider, Extent, NbdSession, ZeroOptions } from '../../server/volume/export-port.js';
import { EXTENT_HOLE, EXTENT_ZERO, MAX_REQUEST_BYTES } from '../../server/volume/export-port.js';

const PAGE = 65536;

export class MemoryVolume {
  pages = new Map<number, Buffer>();
  flushes = 0;
  constructor(
    public name: string,
    public size: number,
    public readOnly = false,
  ) {}

  read(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const pg = Math.floor(abs / PAGE);
      const inPg = abs - pg * PAGE;
      const n = Math.min(PAGE - inPg, length - pos);
      const p = this.pages.get(pg);
      if (p) p.copy(out, pos, inPg, inPg + n);
      pos += n;
    }
    return out;
  }

  write(offset: number, data: Buffer): void {
    let pos = 0;
    while (pos < data.length) {
      const abs = offset + pos;
      const pg = Math.floor(abs / PAGE);
      const inPg = abs - pg * PAGE;
      const n = Math.min(PAGE - inPg, data.length - pos);
      let p = this.pages.get(pg);
      if (!p) this.pages.set(pg, (p = Buffer.alloc(PAGE)));
      data.copy(p, inPg, pos, pos + n);
      pos += n;
    }
  }

  /** Zeroes a range; whole pages become holes unless keep is set. */
  zero(offset: number, length: number, keep: boolean): void {
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const pg = Math.floor(abs / PAGE);
      const inPg = abs - pg * PAGE;
      const n = Math.min(PAGE - inPg, length - pos);
      const p = this.pages.get(pg);
      if (p) {
        if (n === PAGE && !keep) this.pages.delete(pg);
        else p.fill(0, inPg, inPg + n);
      } else if (keep) {
        this.pages.set(pg, Buffer.alloc(PAGE));
      }
      pos += n;
    }
  }

  extents(offset: number, length: number): Extent[] {
    const out: Extent[] = [];
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const pg = Math.floor(abs / PAGE);
      const inPg = abs - pg * PAGE;
      const n = Math.min(PAGE - inPg, length - pos);
      const flags = this.pages.has(pg) ? 0 : EXTENT_HOLE | EXTENT_ZERO;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += n;
      else out.push({ length: n, flags });
      pos += n;
      if (out.length > 1000) break;
    }
    return out;
  }
}

export interface MemoryProviderOptions {
  /** Delay (ms) applied to reads whose offset is in [0, slowBelow): lets tests force out-of-order replies. */
  slowBelow?: number;
  slowMs?: number;
  /** Delay (ms) applied to every write: lets tests check that FLUSH waits for earlier writes. */
  slowWriteMs?: number;
}

export class MemoryProvider implements ExportProvider {
  volumes = new Map<string, MemoryVolume>();
  /** name -> revoke callbacks of open exports */
  open = new Map<string, Set<() => void>>();
  openCount = 0;
  constructor(public opts: MemoryProviderOptions = {}) {}

  add(name: string, size: number, readOnly = false): MemoryVolume {
    const v = new MemoryVolume(name, size, readOnly);
    this.volumes.set(name, v);
    return v;
  }

  /** Deletes a volume, revoking its open exports (like DELETE ?force=true). */
  remove(name: string): void {
    this.volumes.delete(name);
    for (const cb of this.open.get(name) ?? []) cb();
  }

  listExports(_session?: NbdSession): ExportListing[] {
    return [...this.volumes.values()].map((v) => ({ name: v.name, description: describe(v) }));
  }

  defaultExportName(): string | null {
    return this.volumes.keys().next().value ?? null;
  }

  openExport(name: string, onRevoke: () => void, _session?: NbdSession): BlockExport | null {
    const v = this.volumes.get(name);
    if (!v) return null;
    let set = this.open.get(name);
    if (!set) this.open.set(name, (set = new Set()));
    set.add(onRevoke);
    this.openCount++;
    let closed = false;
    const opts = this.opts;
    const alive = () => {
      if (this.volumes.get(name) !== v) throw new ShoalError('volume_deleted', `volume ${name} was deleted`);
    };
    const exp: BlockExport = {
      name,
      description: describe(v),
      size: v.size,
      readOnly: v.readOnly,
      blockSize: { minimum: 1, preferred: 4096, maximum: MAX_REQUEST_BYTES },
      multiConn: true,
      async read(offset, length) {
        if (opts.slowBelow !== undefined && offset < opts.slowBelow) await new Promise((r) => setTimeout(r, opts.slowMs ?? 50));
        alive();
        return { data: v.read(offset, length), release() {} };
      },
      async write(offset, data) {
        if (opts.slowWriteMs) await new Promise((r) => setTimeout(r, opts.slowWriteMs));
        alive();
        if (v.readOnly) throw new ShoalError('read_only', 'read-only');
        v.write(offset, data);
      },
      async trim(offset, length) {
        alive();
        v.zero(offset, length, false);
      },
      async writeZeroes(offset, length, o: ZeroOptions) {
        alive();
        if (o.fastZero && o.noHole) throw new ShoalError('not_supported', 'fast zero with no-hole is not fast here');
        v.zero(offset, length, o.noHole);
      },
      async flush() {
        alive();
        v.flushes++;
      },
      async cache() {
        alive();
      },
      async blockStatus(offset, length) {
        alive();
        return v.extents(offset, length);
      },
      close: () => {
        if (closed) return;
        closed = true;
        this.openCount--;
        set!.delete(onRevoke);
      },
    };
    return exp;
  }
}

function describe(v: MemoryVolume): string {
  return `Shoal volume ${v.name}${v.readOnly ? ' (read-only)' : ''}`;
}
