// `shoal fsck DATA_DIR`: checks a data directory that no daemon is using. The second entry point
// beside daemon.ts: it opens the layers a check needs (metadata, dedup records, the chunk store)
// read-only, and writes nothing.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEDUP_DATABASES, DedupIndex } from './dedup/dedup-index.js';
import { checkDedupIndex } from './dedup/dedup-check.js';
import { checkMetadata, FsckErrors, newFsckProgress, type FsckProgress, type FsckReport } from './meta/fsck.js';
import { META_FILE, MetaStore } from './meta/meta-store.js';
import { Slicer } from './meta/pacing.js';
import { LocalChunkStore } from './store/local-chunk-store.js';
import { dataDirStore } from './store/store-marker.js';

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
  let meta: MetaStore | undefined;
  let store: LocalChunkStore | undefined;
  try {
    // The chunk size is the metadata's; the store opens asynchronously, before the check.
    const first = MetaStore.open(dir, { chunkSize: 0, create: false });
    const chunkSize = first.chunkSize;
    await first.discard();
    store = await LocalChunkStore.open(dir, chunkSize, { readOnly: true });
    // From here to the end of the walk nothing yields to the event loop: lmdb-js renews its read
    // transaction at the next turn, and the check must see one snapshot (the superblock, volume
    // records, nodes and chunk records of one commit), since a daemon may be committing beside it.
    meta = MetaStore.open(dir, { chunkSize: 0, create: false, databases: [...DEDUP_DATABASES] });
    const errors = new FsckErrors();
    const dedup = DedupIndex.open(meta, {}, false);
    const progress: FsckProgress = newFsckProgress(meta, dedup.index.storedCount());
    let last = 0;
    const slicer = new Slicer(100, 0, () => {
      if (!onProgress || performance.now() - last < 250) return;
      last = performance.now();
      onProgress(progress);
    });
    const indexChecked = checkDedupIndex(dedup, meta.chunks, errors, progress, slicer);
    const report = checkMetadata(meta, store, { errors, progress, slicer });
    await indexChecked;
    return await report;
  } catch (e) {
    return failed((e as Error).message);
  } finally {
    await store?.close();
    await meta?.discard();
  }
}
