// The local disk in front of the bucket (--local-cache-size): packs being filled and sealed packs waiting
// for their upload (staged: they cannot be dropped), and copies of packs uploaded or read recently (cached:
// dropped least recently used first). Staged and cached bytes share one bound; when staged packs alone
// fill it (the bucket is unreachable, or slower than the writes), writes wait for uploads to make room.
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../../errors.js';
import { LocalPack } from './local-pack.js';

export class LocalTier {
  readonly stagingDir: string;
  readonly cacheDir: string;
  /** Cached copies by pack id, least recently used first. */
  private readonly cached = new Map<number, LocalPack>();
  private stagedBytes = 0;
  private cachedBytes = 0;
  private waiters: Array<{ bytes: number; resolve: () => void; reject: (e: Error) => void }> = [];
  private closed = false;

  constructor(
    dir: string,
    readonly limitBytes: number,
  ) {
    this.stagingDir = join(dir, 'staging');
    this.cacheDir = join(dir, 'cache');
    mkdirSync(this.stagingDir, { recursive: true });
    // Which chunks a cached copy holds is known only to the process that filled it: start empty.
    rmSync(this.cacheDir, { recursive: true, force: true });
    mkdirSync(this.cacheDir, { recursive: true });
  }

  /** Files a previous process left staged: name → {epoch, id}. */
  stagedFiles(): Array<{ path: string; epoch: number; id: number }> {
    const out: Array<{ path: string; epoch: number; id: number }> = [];
    for (const name of readdirSync(this.stagingDir)) {
      const m = /^(\d+)-(\d+)\.pack$/.exec(name);
      if (m) out.push({ path: join(this.stagingDir, name), epoch: Number(m[1]), id: Number(m[2]) });
      else rmSync(join(this.stagingDir, name), { force: true });
    }
    return out.sort((a, b) => a.id - b.id);
  }

  stagingPath(epoch: number, id: number): string {
    return join(this.stagingDir, `${epoch}-${id}.pack`);
  }

  cachePath(epoch: number, id: number): string {
    return join(this.cacheDir, `${epoch}-${id}.pack`);
  }

  get used(): number {
    return this.stagedBytes + this.cachedBytes;
  }

  get staged(): number {
    return this.stagedBytes;
  }

  get cachedPacks(): number {
    return this.cached.size;
  }

  /**
   * Waits until `bytes` more can be staged within the bound (cached copies are dropped for them first),
   * then counts them as staged. A single request larger than the whole bound is let through alone.
   */
  async reserve(bytes: number): Promise<void> {
    if (this.closed) throw new ShoalError('shutting_down', 'the local tier is closed');
    this.evictFor(bytes);
    if (this.stagedBytes + bytes <= this.limitBytes || this.stagedBytes === 0) {
      this.stagedBytes += bytes;
      return;
    }
    await new Promise<void>((resolve, reject) => this.waiters.push({ bytes, resolve, reject }));
  }

  /** Counts bytes as staged at once, whatever the bound (packs a previous process left to upload). */
  stage(bytes: number): void {
    this.stagedBytes += bytes;
  }

  /** A staged pack is uploaded: its file becomes a cached copy (moved to the cache directory). */
  promote(pack: LocalPack, stagedBytes: number): LocalPack {
    pack.moveTo(this.cachePath(pack.epoch, pack.id));
    pack.state = 'cached';
    this.stagedBytes -= stagedBytes;
    this.cached.set(pack.id, pack);
    this.cachedBytes += pack.bytes;
    this.evictFor(0);
    this.wake();
    return pack;
  }

  /** The cached copy of a pack, marked as recently used. */
  get(id: number): LocalPack | undefined {
    const p = this.cached.get(id);
    if (p) {
      this.cached.delete(id);
      this.cached.set(id, p);
    }
    return p;
  }

  /** A sparse copy of a remote pack to fill, if the bound leaves room for `bytes` of it; else null. */
  sparse(id: number, epoch: number, chunkSize: number, chunks: number, bytes: number): LocalPack | null {
    const existing = this.get(id);
    if (existing) return existing;
    this.evictFor(bytes);
    if (this.used + bytes > this.limitBytes) return null;
    const p = LocalPack.sparse(id, epoch, this.cachePath(epoch, id), chunkSize, chunks);
    this.cached.set(id, p);
    return p;
  }

  /** Counts bytes written into a cached copy. */
  grew(bytes: number): void {
    this.cachedBytes += bytes;
  }

  /** Drops a cached copy (its pack was deleted or rewritten). */
  drop(id: number): void {
    const p = this.cached.get(id);
    if (!p) return;
    this.cached.delete(id);
    this.cachedBytes -= p.bytes;
    p.remove();
    this.wake();
  }

  private evictFor(bytes: number): void {
    for (const [id, p] of this.cached) {
      if (this.used + bytes <= this.limitBytes) return;
      this.cached.delete(id);
      this.cachedBytes -= p.bytes;
      p.remove();
    }
  }

  private wake(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0];
      this.evictFor(w.bytes);
      if (this.stagedBytes + w.bytes > this.limitBytes && this.stagedBytes > 0) return;
      this.waiters.shift();
      this.stagedBytes += w.bytes;
      w.resolve();
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new ShoalError('shutting_down', 'the local tier is closed'));
    for (const p of this.cached.values()) p.close();
    this.cached.clear();
  }
}
