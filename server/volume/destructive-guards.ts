// Refusals for calls that would destroy data the caller may not know about: a shrink that cuts off
// written bytes, a delete that takes snapshots with it. Each says what would be lost and how to
// confirm (as `qemu-img resize --shrink` and `zfs destroy -r` ask).
import { ShoalError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { VolumeRecord } from '../meta/volume-records.js';
import { forEachEntry, isStored } from '../meta/map-tree.js';
import { formatSize } from '../size.js';

/** Bytes of stored data in [from, r.size): what a shrink to `from` would discard. */
function storedBytesFrom(meta: MetaStore, r: VolumeRecord, from: number): number {
  const cs = meta.chunkSize;
  let bytes = 0;
  forEachEntry(meta, r, Math.floor(from / cs), Infinity, (ci, v) => {
    if (isStored(v)) bytes += Math.min((ci + 1) * cs, r.size) - Math.max(ci * cs, from);
  });
  return bytes;
}

/** A shrink needs `shrink: true`; the refusal says how much written data lies past the new end. */
export function checkShrink(meta: MetaStore, r: VolumeRecord, size: number, shrink: boolean | undefined): void {
  if (size >= r.size || shrink) return;
  const lost = storedBytesFrom(meta, r, size);
  const what =
    lost > 0
      ? `would discard ${formatSize(lost)} (${lost} bytes) of data written past the new end`
      : 'would discard everything past the new end (nothing is written there now)';
  throw new ShoalError(
    'shrink_not_allowed',
    `shrinking volume ${r.name} from ${formatSize(r.size)} to ${formatSize(size)} ${what}; to shrink it anyway, resize with "shrink": true (CLI --shrink)`,
  );
}

/** Deleting a volume that has snapshots needs `recursive: true`; the refusal names them and the clones made from the volume. */
export function checkRecursiveDelete(r: VolumeRecord, clones: number, recursive: boolean | undefined): void {
  const n = r.snapshots.length;
  if (n === 0 || recursive) return;
  const names = r.snapshots.slice(0, 10).map((s) => `${r.name}@${s.name}`).join(', ') + (n > 10 ? ` and ${n - 10} more` : '');
  const cloneNote = clones > 0 ? ` (the ${clones} clone${clones === 1 ? '' : 's'} made from it keep their data)` : '';
  throw new ShoalError(
    'volume_has_dependents',
    `volume ${r.name} has ${n} snapshot${n === 1 ? '' : 's'} (${names}) that deleting it would delete too${cloneNote}; to delete them all, delete with recursive=true (CLI --recursive)`,
  );
}
