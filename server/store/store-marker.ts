// Which store a data directory belongs to. With an S3 store the data directory is only a local copy (the
// metadata, packs staged for upload, cached packs) of one prefix; `store.json` names that prefix, so the
// directory is never served as a local store, or as the copy of another prefix, by mistake.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../errors.js';
import { CHUNK_FILE } from './local-chunk-store.js';

const MARKER = 'store.json';

/** What a data directory holds: a local store, an S3 store's local copy (its URL), or nothing yet. */
export function dataDirStore(dir: string): { kind: 'local' } | { kind: 's3'; url: string } | null {
  const path = join(dir, MARKER);
  if (existsSync(path)) {
    let url: unknown;
    try {
      url = (JSON.parse(readFileSync(path, 'utf8')) as { store?: unknown }).store;
    } catch {
      // reported below
    }
    if (typeof url !== 'string' || !url.startsWith('s3://')) throw new ShoalError('data_dir_unusable', `${path} is damaged: it should name the S3 store whose local copy ${dir} is.`);
    return { kind: 's3', url };
  }
  return existsSync(join(dir, CHUNK_FILE)) ? { kind: 'local' } : null;
}

/** Refuses to use `dir` for `store` ("local" or an S3 URL) if it belongs to another store; marks it for an S3 store. */
export function claimDataDir(dir: string, store: string): void {
  const found = dataDirStore(dir);
  if (store === 'local') {
    if (found?.kind === 's3') throw new ShoalError('data_dir_unusable', `${dir} is the local copy of the S3 store ${found.url}: start with --store ${found.url} (and its --s3-endpoint), or use another --data-dir.`);
    return;
  }
  if (found?.kind === 'local') throw new ShoalError('data_dir_unusable', `${dir} holds a local store's chunks: an S3 store needs a --data-dir of its own (an empty one is filled from the bucket).`);
  if (found?.kind === 's3' && found.url !== store) throw new ShoalError('data_dir_unusable', `${dir} is the local copy of ${found.url}, not of ${store}: use another --data-dir (an empty one is filled from the bucket).`);
  if (!found) writeFileSync(join(dir, MARKER), JSON.stringify({ store }) + '\n');
}
