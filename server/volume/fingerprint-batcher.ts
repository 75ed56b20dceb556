// Fingerprints for the data path's writes, off the event loop, in as few thread-pool jobs as the
// load allows: while one job runs, the writes that arrive wait for it and then go in one job
// together (native fingerprintMany). One job in flight hashes ~4-5 GB/s, far more than a write
// stream needs; the measured cost was per job (see addon/src/fingerprint.cc: ~58 us of event
// loop per job in the daemon), so a stream of 256 KiB writes now pays it once per several.
import { native } from '../native.js';

interface Waiting {
  data: Uint8Array;
  domain: number;
  resolve(keys: Buffer): void;
  reject(e: unknown): void;
}

export class FingerprintBatcher {
  private running = false;
  private queue: Waiting[] = [];

  constructor(private readonly chunkSize: number) {}

  /** The 36-byte index keys (domain, then BLAKE3-256) of each chunk of `data`. */
  keys(data: Uint8Array, domain: number): Promise<Buffer> {
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
      .fingerprintMany(batch.map((w) => w.data), domains, this.chunkSize)
      .then(
        (all) => {
          // Each write gets a view of its own keys: no copy.
          let off = 0;
          for (const w of batch) {
            const len = Math.ceil(w.data.length / this.chunkSize) * 36;
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
