// Intent records make a multi-step operation crash-atomic without holding commits back: the
// intent is committed first, the work is done in bounded batches (each committed with the
// intent's progress, in the same transaction), and at start every intent left by a crash is
// rolled forward to the end. The volume layer defines the operations; here they are only
// durable records, kept in the main database under `intent/ID`.
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { CommitPipeline } from './commit-pipeline.js';
import { RecordSet } from './record-set.js';
import type { RootRecord } from './volume-records.js';
import type { Superblock } from './superblock.js';

export interface IntentRecord {
  id: number;
  /** The operation (the volume layer's name for it). */
  kind: string;
  /** Map roots the operation holds (e.g. a frozen copy of its source): fsck counts their references. */
  roots: RootRecord[];
  /** The operation's arguments and progress (plain JSON-like data). */
  state: Record<string, unknown>;
}

export class IntentRecords extends RecordSet<number, IntentRecord> {
  constructor(
    main: Database,
    private readonly sb: Superblock,
    pipeline: CommitPipeline,
  ) {
    super(
      main,
      'intent/',
      pipeline,
      (r) => r.id,
      (value, key) => {
        const r = value as IntentRecord;
        if (!r || !Number.isInteger(r.id) || typeof r.kind !== 'string' || !Array.isArray(r.roots) || typeof r.state !== 'object')
          throw new ShoalError('corrupt_metadata', `the intent record ${key} is damaged`);
        return r;
      },
    );
  }

  /** A new intent, committed with the next commit (the caller commits before starting the work). */
  create(kind: string, roots: RootRecord[], state: Record<string, unknown>): IntentRecord {
    const id = (this.sb.nextIntent = (this.sb.nextIntent ?? 0) + 1);
    const r: IntentRecord = { id, kind, roots, state };
    this.put(id, r);
    return r;
  }

  /** The record (its state, its roots) changed: commit it with the work done so far. */
  update(r: IntentRecord): void {
    this.put(r.id, r);
  }

  /** The operation is done: its record goes in the same commit as its last changes. */
  finish(r: IntentRecord): void {
    this.delete(r.id);
  }

  all(): IntentRecord[] {
    return [...this.values()];
  }
}
