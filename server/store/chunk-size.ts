// The chunk sizes a store may be created with, in one place (config, the store, the metadata).
// Powers of two: chunks tile NBD block sizes and the cache's page-aligned frames (O_DIRECT).

export const DEFAULT_CHUNK_SIZE = 4096;
const MIN_CHUNK_SIZE = 4096;
const MAX_CHUNK_SIZE = 1024 * 1024;

export function isValidChunkSize(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}

/** The rule, for sentences. */
export const CHUNK_SIZE_RULE = 'a power of two from 4K to 1M';
