// At start with an S3 store: decides whether the metadata on the local disk can be used as it is, or must
// be rebuilt from the bucket, and rebuilds it (restore = the head's checkpoint, then its deltas in order).
//
// The local copy is usable when the bucket's newest commit is one the local copy went through (same
// sequence number, same writer epoch: the local `replica` record, or the records of its outbox, say which
// epoch made each of their commits). It may be ahead: commits in the outbox are published next, and if a
// commit's delta is lost (written after its LMDB transaction, when the process died) a checkpoint bridges
// it. Anything else (an empty disk, a copy from before another daemon took the prefix over, a copy of
// another history) is discarded and the bucket's metadata restored.
import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { S3Bucket } from '../store/s3/s3-bucket.js';
import type { LeaseLogger } from '../store/s3/lease.js';
import type { ReplicaResume } from './bucket-replica.js';
import { clearOutbox, readOutbox } from './replica-outbox.js';
import { downloadCheckpoint, readReplicaRecord, removeEnvFile } from './meta-checkpoint.js';
import { META_FILE, openMetaEnv } from './meta-store.js';
import { decodeDelta, deltaKey, deltasOf, type CommitId, type ReplicaState } from './replica-format.js';

export interface PrepareOptions {
  dataDir: string;
  /** The S3 store's local directory (outbox, staged packs), discarded with a stale copy. */
  s3Dir: string;
  /** The head's state (null: the prefix holds no metadata yet). */
  state: ReplicaState | null;
  bucket: S3Bucket;
  prefix: string;
  logger: LeaseLogger;
}

/** Deltas fetched ahead of the one being applied. */
const PREFETCH = 16;

/**
 * Leaves in the data directory the metadata to serve: the local copy if it continues the bucket's, else
 * the bucket's (restored), else none (a new prefix). Returns what the replica must publish first.
 */
export async function prepareMetadata(o: PrepareOptions): Promise<ReplicaResume & { restored: boolean }> {
  const metaPath = join(o.dataDir, META_FILE);
  const last: CommitId = o.state?.last ?? { seq: 0, epoch: 0 };
  const local = existsSync(metaPath) ? readReplicaRecord(metaPath) : null;
  if (local) {
    const outbox = readOutbox(o.s3Dir);
    // Which epoch made each commit the local copy knows of.
    const epochAt = new Map<number, number>([[0, 0]]);
    for (const r of [local, ...outbox.map((e) => e.record)]) {
      epochAt.set(r.seq, r.epoch);
      if (r.prev) epochAt.set(r.prev.seq, r.prev.epoch);
    }
    if (local.seq >= last.seq && epochAt.get(last.seq) === last.epoch) {
      const pending = [];
      let expected = last.seq + 1;
      for (const e of outbox) {
        if (e.record.seq === expected) {
          pending.push(e);
          expected++;
        } else rmSync(e.path, { force: true }); // named already, or past a lost one (a checkpoint covers it)
      }
      const gap = expected <= local.seq;
      if (gap) o.logger.warn({ local: local.seq, bucket: last.seq }, `the local metadata holds commits up to ${local.seq} whose deltas are not all in the outbox; a checkpoint will bring the bucket up to it`);
      return { pending, gap, restored: false };
    }
    o.logger.warn(
      { local: { seq: local.seq, epoch: local.epoch }, bucket: last },
      `the metadata in ${o.dataDir} (commit ${local.seq}, epoch ${local.epoch}) does not continue the bucket's (commit ${last.seq}, epoch ${last.epoch}): it is discarded`,
    );
  }
  discardLocal(metaPath, o.s3Dir);
  if (!o.state) return { pending: [], gap: false, restored: false };
  await restore(o.state, metaPath, o);
  return { pending: [], gap: false, restored: true };
}

function discardLocal(metaPath: string, s3Dir: string): void {
  removeEnvFile(metaPath);
  clearOutbox(s3Dir);
  rmSync(join(s3Dir, 'staging'), { recursive: true, force: true });
}

/** Rebuilds meta.lmdb from the bucket: the checkpoint, then every delta after it, each checked to follow the one before. */
async function restore(state: ReplicaState, metaPath: string, o: PrepareOptions): Promise<void> {
  const started = performance.now();
  const tmp = `${metaPath}.restoring`;
  removeEnvFile(tmp);
  const cp = state.checkpoint;
  const deltas = [...deltasOf(state)];
  o.logger.info({ checkpoint: cp?.key ?? null, deltas: deltas.length }, `restoring the metadata from ${o.bucket.url(o.prefix)}: ${cp ? `checkpoint ${cp.seq} (${cp.bytes} bytes)` : 'no checkpoint'}, then ${deltas.length} delta(s)`);
  if (cp) await downloadCheckpoint(o.bucket, cp.key, cp.bytes, tmp);
  const env = openMetaEnv(tmp);
  try {
    const dbs = new Map<string, Database>();
    let prev: CommitId | null = cp ? { seq: cp.seq, epoch: cp.epoch } : null;
    const fetches: Array<Promise<Buffer>> = [];
    const fetch = (i: number) => {
      const d = deltas[i];
      const key = deltaKey(o.prefix, d.epoch, d.seq);
      const p = o.bucket.get(key).then((obj) => {
        if (!obj) throw new ShoalError('corrupt_metadata', `${o.bucket.url(key)}, a delta the head names, is missing`);
        return obj.body;
      });
      p.catch(() => {}); // awaited in turn; one that fails after an earlier failure must not go unhandled
      return p;
    };
    for (let i = 0; i < Math.min(PREFETCH, deltas.length); i++) fetches.push(fetch(i));
    for (let i = 0; i < deltas.length; i++) {
      const body = await fetches[i];
      if (i + PREFETCH < deltas.length) fetches.push(fetch(i + PREFETCH));
      const url = o.bucket.url(deltaKey(o.prefix, deltas[i].epoch, deltas[i].seq));
      const delta = decodeDelta(body, url);
      const r = delta.record;
      if (r.seq !== deltas[i].seq || r.epoch !== deltas[i].epoch || (r.prev?.seq ?? 0) !== (prev?.seq ?? 0) || (r.prev?.epoch ?? 0) !== (prev?.epoch ?? 0))
        throw new ShoalError('corrupt_metadata', `${url} holds commit ${r.seq} of epoch ${r.epoch} after ${JSON.stringify(r.prev)}, where the head expects commit ${deltas[i].seq} after ${JSON.stringify(prev)}`);
      env.transactionSync(() => {
        for (const op of delta.ops) {
          let db = dbs.get(op.db);
          if (!db) dbs.set(op.db, (db = env.openDB({ name: op.db, ...(delta.dbs[op.db] as object) })));
          if (op.value === undefined) db.removeSync(op.key);
          else db.putSync(op.key, op.value);
        }
      });
      prev = { seq: r.seq, epoch: r.epoch };
      fetches[i] = Promise.resolve(Buffer.alloc(0)); // let it go
    }
  } finally {
    await env.close();
  }
  renameSync(tmp, metaPath);
  rmSync(`${tmp}-lock`, { force: true });
  o.logger.info({ seconds: Math.round((performance.now() - started) / 100) / 10 }, `metadata restored from ${o.bucket.url(o.prefix)} up to commit ${state.last.seq}`);
}
