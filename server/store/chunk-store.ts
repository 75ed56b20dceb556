// The chunk backend interface: fixed-size chunk bytes addressed by slot id. The volume layer
// decides which slots hold what; a backend only keeps bytes. The embedded local store is the
// default; an object-store backend (chunks packed into larger objects) fits behind the same shape.

export interface ChunkStore {
  readonly chunkSize: number;
  /** Reads one whole chunk into `into` (chunkSize bytes) or a new buffer. */
  read(slot: number, into?: Buffer): Promise<Buffer>;
  /** Writes consecutive chunks starting at `slot` (data.length is a multiple of chunkSize). */
  write(slot: number, data: Buffer): Promise<void>;
  /** Makes every completed write durable. */
  sync(): Promise<void>;
  /** Bytes the backend holds on its medium (for reports). */
  allocatedBytes(): Promise<number>;
  close(): Promise<void>;
}
