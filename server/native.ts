// Loads the native addon built from addon/ by `npm install` (scripts/build-addon.mjs).
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';

export interface NativeAddon {
  /** BLAKE3-256 of each chunkSize piece of data, 32 bytes each, on the calling thread. */
  fingerprintSync(data: Uint8Array, chunkSize: number): Buffer;
  /** The same on libuv's thread pool. */
  fingerprint(data: Uint8Array, chunkSize: number): Promise<Buffer>;
}

function findRoot(): string {
  // dist/server/native.js or server/native.ts: the package root is the first parent with addon/.
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(d, 'addon', 'binding.gyp'))) return d;
    d = dirname(d);
  }
  throw new Error('cannot find the Shoal package root (addon/binding.gyp)');
}

let cached: NativeAddon | undefined;
export function native(): NativeAddon {
  if (cached) return cached;
  const path = join(findRoot(), 'addon', 'build', 'Release', 'shoal.node');
  if (!existsSync(path)) throw new Error(`the native addon is not built (${path} is missing): run \`npm install\` or \`npm run build:addon\``);
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
