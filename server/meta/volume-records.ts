// Volume records: each volume's map root, size and snapshots (their roots), kept in the main
// database under `volume/NAME` and committed with everything else.
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { CommitPipeline } from './commit-pipeline.js';
import { RecordSet } from './record-set.js';

export interface RootRecord {
  /** Root map node id, 0 for an empty map. */
  root: number;
  /** Tree height (levels); fixed until a resize grows it. */
  levels: number;
  size: number;
  /** Number of leaf entries that reference a stored chunk (for logical-bytes accounting). */
  mapped: number;
  createdAt: string;
}

export interface SnapshotRecord extends RootRecord {
  name: string;
}

export interface VolumeRecord extends RootRecord {
  name: string;
  domain: string;
  tenant?: string; // absent: no tenant (also every record written before tenants existed)
  origin: { volume: string; snapshot?: string } | null;
  snapshots: SnapshotRecord[];
  incomplete?: true; // being filled by an import that has not finished (absent: complete)
}

/** Every volume's record, by name. */
export class VolumeRecords extends RecordSet<string, VolumeRecord> {
  constructor(main: Database, pipeline: CommitPipeline) {
    super(
      main,
      'volume/',
      pipeline,
      (v) => v.name,
      (value, key) => {
        const v = value as VolumeRecord;
        if (!v || typeof v.name !== 'string' || !Number.isFinite(v.root) || !Array.isArray(v.snapshots))
          throw new ShoalError('corrupt_metadata', `the volume record ${key} is damaged`);
        return v;
      },
    );
  }
}
