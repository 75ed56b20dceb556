// `shoal fsck DATA_DIR`: checks a data directory that no daemon is using. The second entry point
// beside daemon.ts: it opens the layers a check needs (metadata, dedup records, the chunk store)
// read-only, and writes nothing.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DedupIndex } from './dedup/dedup-index.js';
import { checkDedupIndex } from './dedup/dedup-check.js';
import { checkMetadata, FsckErrors, newFsckProgress, type FsckProgress, type FsckReport } from './meta/fsck.js';
import { META_FILE, MetaStore } from './meta/meta-store.js';
import { Slicer } from './meta/pacing.js';
import { LocalChunkStore } from './store/local-chunk-store.js';
import { dataDirStore } from './store/store-marker.js';

const failed = (error: string): FsckReport => ({ ok: false, checkedVolumes: 0, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 0, errors: [error] });

/** `onProgress` is called as the check goes (between slices of 100 ms), with what it has covered. */
export async function fsckDataDir(dir: string, onProgress?: (p: FsckProgress) => void): Promise<FsckReport> {
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
  let timer: NodeJS.Timeout | null = null;
  try {
    const errors = new FsckErrors();
    const dedup = DedupIndex.open(meta, {}, false);
    const progress: FsckProgress = newFsckProgress(meta, dedup.index.storedCount());
    if (onProgress) timer = setInterval(() => onProgress(progress), 250);
    // Nothing else runs in this process: long slices, a turn of the loop only so progress is shown.
    const slicer = new Slicer(100);
    await checkDedupIndex(dedup, meta.chunks, errors, progress, slicer);
    const store = await LocalChunkStore.open(dir, meta.chunkSize, { readOnly: true });
    try {
      return await checkMetadata(meta, store, { errors, progress, slicer });
    } finally {
      await store.close();
    }
  } catch (e) {
    return failed((e as Error).message);
  } finally {
    if (timer) clearInterval(timer);
    await meta.discard();
  }
}
