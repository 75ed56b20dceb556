// `shoal fsck DATA_DIR`: checks a data directory that no daemon is using. The second entry point
// beside daemon.ts: it opens the layers a check needs (metadata, dedup records, the chunk store)
// read-only, and writes nothing.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DedupIndex } from './dedup/dedup-index.js';
import { checkDedupIndex } from './dedup/dedup-check.js';
import { checkMetadata, FsckErrors, type FsckReport } from './meta/fsck.js';
import { META_FILE, MetaStore } from './meta/meta-store.js';
import { LocalChunkStore } from './store/local-chunk-store.js';
import { dataDirStore } from './store/store-marker.js';

const failed = (error: string): FsckReport => ({ ok: false, checkedVolumes: 0, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 0, errors: [error] });

export async function fsckDataDir(dir: string): Promise<FsckReport> {
  if (!existsSync(join(dir, META_FILE))) return failed(`${dir} is not a Shoal data directory (no ${META_FILE})`);
  const kind = (() => {
    try {
      return dataDirStore(dir);
    } catch (e) {
      return e as Error;
    }
  })();
  if (kind instanceof Error) return failed(kind.message);
  // Its chunks are in the bucket: only the daemon that holds the prefix's lease can check them.
  if (kind?.kind === 's3') return failed(`${dir} is the local copy of ${kind.url}: check it with \`shoal fsck\` against the daemon serving it (its packs are in the bucket)`);
  let meta: MetaStore;
  try {
    meta = MetaStore.open(dir, { chunkSize: 0, create: false });
  } catch (e) {
    return failed((e as Error).message);
  }
  try {
    const errors = new FsckErrors();
    checkDedupIndex(DedupIndex.open(meta, {}, false), meta.chunks, errors);
    const store = await LocalChunkStore.open(dir, meta.chunkSize, { readOnly: true });
    try {
      return await checkMetadata(meta, store, errors);
    } finally {
      await store.close();
    }
  } catch (e) {
    return failed((e as Error).message);
  } finally {
    await meta.discard();
  }
}
