// Gathers chunks into a pack and uploads it as one object, PREFIX/packs/EPOCH/SEQ.pack, created with
// If-None-Match: * (a pack is never overwritten) and only while the lease is held: a fenced daemon's next
// upload fails. The key carries the writer's epoch, so a fenced writer's stray packs never collide with
// the new holder's; they are orphans until swept (docs/s3-store.md). One PUT per pack: no multipart needed
// at 16 MiB and under. One PackWriter per lease: its sequence numbers name the packs of its epoch.
import { ShoalError } from '../../errors.js';
import type { S3Bucket } from './s3-bucket.js';
import type { PrefixLease } from './lease.js';
import { encodePack, packSize, type PackChunk, type PackEntry } from './pack-format.js';
import { writeOrLose } from './conditional-write.js';

export interface UploadedPack {
  key: string;
  size: number;
  entries: PackEntry[];
}

export interface PackWriterOptions {
  lease: PrefixLease;
  /** A pack is uploaded once it holds this many bytes (default 8 MiB). */
  targetBytes?: number;
  /** No pack grows past this (default 16 MiB): a chunk that would cross it waits for the next pack. */
  maxBytes?: number;
}

const MiB = 2 ** 20;

export class PackWriter {
  private readonly bucket: S3Bucket;
  private readonly lease: PrefixLease;
  private readonly targetBytes: number;
  private readonly maxBytes: number;
  private pending: PackChunk[] = [];
  private pendingData = 0;
  private seq = 0;

  constructor(opts: PackWriterOptions) {
    this.lease = opts.lease;
    this.bucket = opts.lease.bucket;
    this.targetBytes = opts.targetBytes ?? 8 * MiB;
    this.maxBytes = opts.maxBytes ?? 16 * MiB;
    if (this.targetBytes > this.maxBytes) throw new ShoalError('invalid_request', `a pack's target size (${this.targetBytes}) is above its limit (${this.maxBytes}).`);
  }

  /** Bytes the pending pack would take if uploaded now. */
  get pendingBytes(): number {
    return this.pending.length === 0 ? 0 : packSize(this.pending.length, this.pendingData);
  }

  get pendingChunks(): number {
    return this.pending.length;
  }

  /** Whether the pending pack has reached its target size and should be uploaded. */
  get full(): boolean {
    return this.pendingBytes >= this.targetBytes;
  }

  /** Whether `length` more bytes of chunk still fit in the pending pack. */
  fits(length: number): boolean {
    return packSize(this.pending.length + 1, this.pendingData + length) <= this.maxBytes;
  }

  /** Adds a chunk (copied: the caller may reuse its buffer). Check fits() first; a chunk that does not fit is refused. */
  add(id: number, data: Buffer): void {
    if (!this.fits(data.length)) {
      throw new ShoalError('invalid_request', `chunk ${id} (${data.length} bytes) does not fit in a pack of at most ${this.maxBytes} bytes holding ${this.pending.length} chunks; upload it first.`);
    }
    this.pending.push({ id, data: Buffer.from(data) });
    this.pendingData += data.length;
  }

  /** Uploads the pending chunks as one pack and starts a new one; null if nothing is pending. */
  async upload(): Promise<UploadedPack | null> {
    if (this.pending.length === 0) return null;
    await this.lease.ensureHeld();
    const { pack, entries } = encodePack(this.pending);
    const key = `${this.lease.prefix}packs/${String(this.lease.epoch).padStart(8, '0')}/${String(this.seq).padStart(10, '0')}.pack`;
    // A lost answer retried meets our own pack (writeOrLose tells); anything else there is another writer's.
    if ((await writeOrLose(this.bucket, key, pack, { ifNoneMatch: '*' })) === null) {
      throw new ShoalError('store_fenced', `${this.bucket.url(key)} already holds another writer's pack: two writers share epoch ${this.lease.epoch} on ${this.lease.url}.`);
    }
    this.seq++;
    this.pending = [];
    this.pendingData = 0;
    return { key, size: pack.length, entries };
  }
}
