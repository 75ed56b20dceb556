// The bucket's copy of the metadata (bucket-replica.ts): what its objects hold and how they are named.
//
//   PREFIX/meta/delta/EPOCH/SEQ       one commit's LMDB writes (msgpack): its sequence number, the epoch
//                                      that wrote it, the commit before it, the databases' encodings, the ops
//   PREFIX/meta/checkpoint/EPOCH-SEQ  a copy of meta.lmdb (LMDB's own compacting copy) as of commit SEQ
//   PREFIX/head                        (commit-head.ts) state: the checkpoint and the deltas after it
//
// Every commit writes the `replica` record in `main` ({seq, epoch, prev}), so a checkpoint knows which
// commit it holds and a local copy knows where it stands against the bucket's.
import { pack, unpack } from 'msgpackr';
import { ShoalError } from '../errors.js';
import type { CommitOp } from './commit-pipeline.js';

/** A commit's place in the replica's history. */
export interface CommitId {
  seq: number;
  epoch: number;
}

/** The `replica` record of `main`: this commit, and the one before it (null for the first). */
export interface ReplicaRecord extends CommitId {
  prev: CommitId | null;
}

export const REPLICA_KEY = 'replica';

/** Options a database was opened with; a restore opens it the same way to replay writes. */
export interface DbEncoding {
  encoding?: string;
  keyEncoding?: string;
}

export interface Delta {
  record: ReplicaRecord;
  dbs: Record<string, DbEncoding>;
  ops: CommitOp[];
}

/** PREFIX/head's state: restore = the checkpoint, then the deltas of each segment in order. */
export interface ReplicaState {
  format: typeof STATE_FORMAT;
  chunkSize: number;
  checkpoint: { key: string; seq: number; epoch: number; bytes: number } | null;
  /** Runs of consecutive deltas written by one epoch, oldest first. */
  deltas: Array<{ epoch: number; from: number; to: number }>;
  /** The newest commit in the bucket. */
  last: CommitId;
}

export const STATE_FORMAT = 'shoal-replica/1';
const DELTA_FORMAT = 'shoal-delta/1';

const pad = (n: number, w: number) => String(n).padStart(w, '0');

export const deltaKey = (prefix: string, epoch: number, seq: number): string => `${prefix}meta/delta/${pad(epoch, 8)}/${pad(seq, 12)}`;
export const checkpointKey = (prefix: string, epoch: number, seq: number): string => `${prefix}meta/checkpoint/${pad(epoch, 8)}-${pad(seq, 12)}.lmdb`;

/** Each delta the state names, in order. */
export function* deltasOf(state: ReplicaState): Iterable<CommitId> {
  for (const s of state.deltas) for (let seq = s.from; seq <= s.to; seq++) yield { seq, epoch: s.epoch };
}

/** The state with commit `c` (the next one) appended. */
export function withDelta(state: ReplicaState, c: CommitId): ReplicaState {
  const deltas = state.deltas.map((s) => ({ ...s }));
  const last = deltas[deltas.length - 1];
  if (last && last.epoch === c.epoch && last.to + 1 === c.seq) last.to = c.seq;
  else deltas.push({ epoch: c.epoch, from: c.seq, to: c.seq });
  return { ...state, deltas, last: { seq: c.seq, epoch: c.epoch } };
}

/** The state with a checkpoint as of its seq: the deltas it holds are no longer named. */
export function withCheckpoint(state: ReplicaState, cp: NonNullable<ReplicaState['checkpoint']>): ReplicaState {
  const deltas = state.deltas.filter((s) => s.to > cp.seq).map((s) => ({ ...s, from: Math.max(s.from, cp.seq + 1) }));
  const last = cp.seq > state.last.seq ? { seq: cp.seq, epoch: cp.epoch } : state.last;
  return { ...state, checkpoint: { key: cp.key, seq: cp.seq, epoch: cp.epoch, bytes: cp.bytes }, deltas, last };
}

/** Object keys `before` names and `after` does not (to delete once `after` is committed). */
export function unnamed(prefix: string, before: ReplicaState, after: ReplicaState): string[] {
  const keep = new Set(names(prefix, after));
  return names(prefix, before).filter((k) => !keep.has(k));
}

function names(prefix: string, s: ReplicaState): string[] {
  const out = s.checkpoint ? [s.checkpoint.key] : [];
  for (const d of deltasOf(s)) out.push(deltaKey(prefix, d.epoch, d.seq));
  return out;
}

export function parseState(raw: unknown, url: string): ReplicaState {
  const s = raw as Partial<ReplicaState> | null;
  const ok =
    s !== null &&
    typeof s === 'object' &&
    s.format === STATE_FORMAT &&
    Number.isInteger(s.chunkSize) &&
    Array.isArray(s.deltas) &&
    s.deltas.every((d) => Number.isInteger(d.epoch) && Number.isInteger(d.from) && Number.isInteger(d.to) && d.from <= d.to) &&
    (s.checkpoint === null || (typeof s.checkpoint?.key === 'string' && Number.isInteger(s.checkpoint.seq))) &&
    Number.isInteger(s.last?.seq) &&
    Number.isInteger(s.last?.epoch);
  if (!ok) throw new ShoalError('corrupt_metadata', `${url} names metadata this Shoal cannot read (not ${STATE_FORMAT}): ${JSON.stringify(raw)?.slice(0, 200)}`);
  return s as ReplicaState;
}

export function encodeDelta(d: Delta): Buffer {
  const names = Object.keys(d.dbs);
  const index = new Map(names.map((n, i) => [n, i]));
  const ops = d.ops.map((o) => (o.value === undefined ? [index.get(o.db)!, o.key] : [index.get(o.db)!, o.key, o.value]));
  return pack({ format: DELTA_FORMAT, record: d.record, dbs: names.map((n) => [n, d.dbs[n]]), ops });
}

export function decodeDelta(body: Buffer, url: string): Delta {
  let raw: { format?: string; record?: ReplicaRecord; dbs?: Array<[string, DbEncoding]>; ops?: unknown[][] };
  try {
    raw = unpack(body) as typeof raw;
  } catch (e) {
    throw new ShoalError('corrupt_metadata', `${url} is not a Shoal metadata delta: ${(e as Error).message}`);
  }
  if (raw?.format !== DELTA_FORMAT || !raw.record || !Array.isArray(raw.dbs) || !Array.isArray(raw.ops)) throw new ShoalError('corrupt_metadata', `${url} is not a Shoal metadata delta (${DELTA_FORMAT})`);
  const dbs = Object.fromEntries(raw.dbs);
  const names = raw.dbs.map(([n]) => n);
  const ops: CommitOp[] = raw.ops.map((o) => {
    const db = names[o[0] as number];
    if (db === undefined) throw new ShoalError('corrupt_metadata', `${url} writes to a database it does not name`);
    return { db, key: o[1] as CommitOp['key'], value: o.length > 2 ? o[2] : undefined };
  });
  return { record: raw.record, dbs, ops };
}
