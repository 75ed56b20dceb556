// `shoal fsck DATA_DIR`: checks a data directory that no daemon is using. The second entry point
// beside daemon.ts: it opens the layers a check needs (metadata, dedup records, the chunk store)
// read-only, and writes nothing (but the data directory's lock file). A directory a daemon holds
// is not opened: DataDirInUse tells the CLI to ask that daemon instead.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEDUP_DATABASES, DedupIndex } from './dedup/dedup-index.js';
import { checkDedupIndex } from './dedup/dedup-check.js';
import { checkMetadata, FsckErrors, newFsckProgress, type FsckProgress, type FsckReport } from './meta/fsck.js';
import { META_FILE, MetaStore } from './meta/meta-store.js';
import { Slicer } from './meta/pacing.js';
import { LocalChunkStore } from './store/local-chunk-store.js';
import { dataDirStore } from './store/store-marker.js';
import { DataDirInUse, DataDirLock } from './data-dir-lock.js';

const failed = (error: string): FsckReport => ({ ok: false, checkedVolumes: 0, checkedSnapshots: 0, checkedNodes: 0, checkedChunks: 0, errors: [error] });

/** `onProgress` is called as the check goes (at most every 250 ms), with what it has covered. */
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
  // Held for the whole check: no daemon may open the metadata meanwhile (data-dir-lock.ts). If one
  // holds it, DataDirInUse goes to the caller, which checks through that daemon's API instead.
  let lock: DataDirLock;
  try {
    lock = DataDirLock.acquire(dir, 'fsck');
  } catch (e) {
    if (e instanceof DataDirInUse) throw e;
    return failed(`cannot take the lock of ${dir} for the check: ${(e as Error).message}`);
  }
  let meta: MetaStore | undefined;
  let store: LocalChunkStore | undefined;
  try {
    meta = MetaStore.open(dir, { chunkSize: 0, create: false, databases: [...DEDUP_DATABASES] });
    store = await LocalChunkStore.open(dir, meta.chunkSize, { readOnly: true });
    const errors = new FsckErrors();
    const dedup = DedupIndex.open(meta, {}, false);
    const progress: FsckProgress = newFsckProgress(meta, dedup.index.storedCount());
    let last = 0;
    // Nothing else changes the metadata: the walk may rest between slices, and reports its progress there.
    const slicer = new Slicer(100, 0, () => {
      if (!onProgress || performance.now() - last < 250) return;
      last = performance.now();
      onProgress(progress);
    });
    await checkDedupIndex(dedup, meta.chunks, errors, progress, slicer);
    return await checkMetadata(meta, store, { errors, progress, slicer });
  } catch (e) {
    return failed((e as Error).message);
  } finally {
    await store?.close();
    await meta?.discard();
    lock.release();
  }
}
