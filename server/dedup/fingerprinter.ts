// Fingerprints of written chunks: the dedup keys, 36 bytes each (the domain, big-endian, then
// BLAKE3-256 of the chunk), all of a write's in one Buffer built by the addon, so the write path
// makes no per-chunk objects.
//
// Small batches hash on the event loop (cheaper than the thread-pool hop); larger ones on the
// pool, where concurrent writes share jobs: while one job runs, the writes that arrive wait for
// it and then go in one job together (native fingerprintMany). One job in flight hashes ~4-5 GB/s,
// far more than a write stream needs; the measured cost was per job (see addon/src/fingerprint.cc:
// ~58 us of event loop per job in the daemon), so a stream of 256 KiB writes pays it once per several.
import { native } from '../native.js';

/** Hashing a batch smaller than this on the event loop costs less than the thread-pool hop. */
const ASYNC_HASH_BYTES = 64 * 1024;
/** Bytes of one dedup key: a u32 domain, then the 32-byte fingerprint. */
export const KEY_BYTES = 36;

interface Waiting {
  data: Uint8Array;
  domain: number;
  resolve(keys: Buffer): void;
  reject(e: unknown): void;
}

export class Fingerprinter {
  private running = false;
  private queue: Waiting[] = [];

  /**
   * @param override test-only: replaces BLAKE3 by a weak fingerprint (to force collisions and
   *   prove that dedup then compares bytes, invariant 6)
   */
  constructor(
    private readonly chunkSize: number,
    private readonly override?: (chunk: Buffer) => Buffer,
  ) {}

  /** Whether fingerprints can collide (the test override): matches must then be checked byte by byte. */
  get weak(): boolean {
    return this.override !== undefined;
  }

  /**
   * The keys of `chunks` (whole chunks) in `domain`. `contiguous`, when given, holds the same
   * bytes back to back (an aligned request): hashed without a copy.
   */
  keys(chunks: Buffer[], contiguous: Buffer | null, domain: number): Promise<Buffer> | Buffer {
    const cs = this.chunkSize;
    const addon = native();
    if (this.override) {
      const keys = Buffer.allocUnsafe(chunks.length * KEY_BYTES);
      for (let i = 0; i < chunks.length; i++) {
        keys.writeUInt32BE(domain, i * KEY_BYTES);
        this.override(chunks[i]).copy(keys, i * KEY_BYTES + 4, 0, 32);
      }
      return keys;
    }
    if (contiguous && contiguous.length >= ASYNC_HASH_BYTES) return this.pooled(contiguous, domain);
    if (!contiguous && chunks.length * cs >= ASYNC_HASH_BYTES) return this.pooled(Buffer.concat(chunks), domain);
    // Into a Buffer from Node's pool: a new external Buffer from the addon per write cost more than
    // hashing a 4 KiB chunk.
    const keys = Buffer.allocUnsafe(chunks.length * KEY_BYTES);
    if (contiguous) addon.fingerprintInto(contiguous, cs, domain, keys, 0);
    else for (let i = 0; i < chunks.length; i++) addon.fingerprintInto(chunks[i], cs, domain, keys, i * KEY_BYTES);
    return keys;
  }

  /** The keys of each chunk of `data`, hashed on the thread pool together with other waiting writes. */
  private pooled(data: Uint8Array, domain: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ data, domain, resolve, reject });
      if (!this.running) this.run();
    });
  }

  private run(): void {
    const batch = this.queue;
    this.queue = [];
    this.running = true;
    const domains = new Float64Array(batch.length);
    for (let i = 0; i < batch.length; i++) domains[i] = batch[i].domain;
    native()
      .fingerprintMany(
        batch.map((w) => w.data),
        domains,
        this.chunkSize,
      )
      .then(
        (all) => {
          // Each write gets a view of its own keys: no copy.
          let off = 0;
          for (const w of batch) {
            const len = Math.ceil(w.data.length / this.chunkSize) * KEY_BYTES;
            w.resolve(all.subarray(off, off + len));
            off += len;
          }
        },
        (e) => {
          for (const w of batch) w.reject(e);
        },
      )
      .finally(() => {
        this.running = false;
        if (this.queue.length > 0) this.run();
      });
  }
}
