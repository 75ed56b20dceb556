// Snapshots and clones made durable without a commit.
//
// A commit carries every change pending since the last one, on every volume: after a few writes to
// a map shared with a snapshot, the copied nodes' reference counts (~2,000 records for 8 writes, 15-30
// ms of disk here). A snapshot or a clone that committed waited for all of it, so its latency followed
// the whole daemon's write load, not its own size. Where a FLUSH of the volume would go to the flush
// journal, the operation goes there instead, as one more operation of its volume: one small
// synchronous write, and the background commit covers it later. A replay after a crash makes it again
// at its place among the volume's writes.
//
// That place must be exact: the journal orders a volume's changes by when they were told to it, and
// the snapshot shares the map as it is. So new changes of the volume are held back while the ones
// under way finish (VolumeState.quiesce); then none is half applied, and every one in the map has been
// told. Interrupted range operations are rolled forward before a replay, so with one under way (an
// intent record) the operation commits, as it does whenever the volume's FLUSH would.
import type { MetaStore } from '../meta/meta-store.js';
import type { FlushJournal } from './flush-journal.js';
import type { VolumeOp } from './flush-journal-format.js';
import type { VolumeState } from './volume-state.js';

/** How long the volume's changes under way may take to finish before the operation commits instead. */
const QUIESCE_MS = 50;

/**
 * Runs `make` (synchronous: it validates, changes the metadata, and says what it did) and makes its
 * change durable: through the journal as an operation of `st` when it can, else by a commit.
 */
export async function durableChange(meta: MetaStore, journal: FlushJournal | null, st: VolumeState, make: () => VolumeOp): Promise<void> {
  if (journal && meta.intents.size === 0) {
    const q = await st.quiesce(QUIESCE_MS);
    let durable: Promise<void> | undefined;
    try {
      if (q.idle) durable = journal.volumeOp(st, make()) ?? meta.commit();
    } finally {
      q.release();
    }
    // A journal that fails to write leaves the change in memory: a commit makes it durable.
    if (durable) return durable.catch(() => meta.commit());
  }
  make();
  await meta.commit();
}
