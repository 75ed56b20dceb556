// The bucket's copy of the metadata (bucket-replica.ts): what its objects hold and how they are named.
//
//   PREFIX/meta/delta/EPOCH/SEQ       one commit's LMDB writes: its sequence number, the epoch
//                                      that wrote it, the commit before it, the databases' encodings, the ops
//                                      (shoal-delta/2: in columns, see encodeDelta; /1, msgpack of an array
//                                      per op, is still read)
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
const DELTA_FORMAT_V1 = 'shoal-delta/1';
const DELTA_FORMAT = 'shoal-delta/2';

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

/** A column's marks in `len`: the op deletes its key, or its value is in `values` (not bytes). */
const DELETED = -1;
const NOT_BYTES = -2;
/** How a shoal-delta/2 body starts (a /1 body is one msgpack map, whose first byte is never this 's'). */
const MAGIC = Buffer.from(`${DELTA_FORMAT}\n`);

/**
 * A commit's ops in columns, in their order: MAGIC, the header's length (u32 LE), the header (msgpack:
 * the record, the databases, and the columns), then every value that is bytes, back to back. The
 * columns: each op's database (`db`), its key (`key`, NaN where the key is not a number: then the next
 * of `keys`), and its value's length (`len`, or DELETED, or NOT_BYTES: then the next of `values`).
 * Why: a commit of written chunks is mostly one record per chunk (a number key, ~90 bytes of value);
 * msgpack of an array per op cost the event loop ~230 ms per GiB written with an S3 store, and msgpack
 * of the bytes as one field another copy into fresh memory (~150 ms per GiB here). This copies each
 * value once, into the body.
 */
export function encodeDelta(d: Delta): Buffer {
  const names = Object.keys(d.dbs);
  if (names.length > 256) throw new ShoalError('internal', `a commit wrote to ${names.length} databases; a delta names at most 256`);
  const index = new Map(names.map((n, i) => [n, i]));
  const n = d.ops.length;
  const db = new Uint8Array(n);
  const key = new Float64Array(n);
  const len = new Int32Array(n);
  const keys: unknown[] = [];
  const values: unknown[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const o = d.ops[i];
    db[i] = index.get(o.db)!;
    if (typeof o.key === 'number') key[i] = o.key;
    else {
      key[i] = NaN;
      keys.push(o.key);
    }
    const v = o.value;
    if (v === undefined) len[i] = DELETED;
    else if (v instanceof Uint8Array) {
      len[i] = v.length;
      bytes += v.length;
    } else {
      len[i] = NOT_BYTES;
      values.push(v);
    }
  }
  const header = pack({ record: d.record, dbs: names.map((name) => [name, d.dbs[name]]), db: bytesOf(db), key: bytesOf(key), len: bytesOf(len), keys, values });
  const body = Buffer.allocUnsafe(MAGIC.length + 4 + header.length + bytes);
  MAGIC.copy(body, 0);
  body.writeUInt32LE(header.length, MAGIC.length);
  header.copy(body, MAGIC.length + 4);
  let at = MAGIC.length + 4 + header.length;
  for (let i = 0; i < n; i++) {
    if (len[i] < 0) continue;
    body.set(d.ops[i].value as Uint8Array, at);
    at += len[i];
  }
  return body;
}

const bytesOf = (a: ArrayBufferView): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** A typed array over a copy of `b` (msgpack's bytes need not be aligned for it), or null if `b` is not bytes of whole elements. */
function column<T>(b: unknown, size: number, make: (buf: ArrayBuffer) => T): T | null {
  if (!(b instanceof Uint8Array) || b.length % size !== 0) return null;
  const copy = new ArrayBuffer(b.length);
  new Uint8Array(copy).set(b);
  return make(copy);
}

interface DeltaHeader {
  record?: ReplicaRecord;
  dbs?: Array<[string, DbEncoding]>;
  db?: unknown;
  key?: unknown;
  len?: unknown;
  keys?: unknown[];
  values?: unknown[];
}

export function decodeDelta(body: Buffer, url: string): Delta {
  const bad = (why: string) => new ShoalError('corrupt_metadata', `${url} is not a Shoal metadata delta (${DELTA_FORMAT}): ${why}`);
  const unpacked = (b: Buffer): unknown => {
    try {
      return unpack(b);
    } catch (e) {
      throw new ShoalError('corrupt_metadata', `${url} is not a Shoal metadata delta: ${(e as Error).message}`);
    }
  };
  if (body.length < MAGIC.length || !body.subarray(0, MAGIC.length).equals(MAGIC)) return decodeDeltaV1(unpacked(body) as DeltaV1, url);
  const headerLength = body.length >= MAGIC.length + 4 ? body.readUInt32LE(MAGIC.length) : -1;
  if (headerLength < 0 || MAGIC.length + 4 + headerLength > body.length) throw bad('it ends inside its header');
  const raw = unpacked(body.subarray(MAGIC.length + 4, MAGIC.length + 4 + headerLength)) as DeltaHeader | null;
  const bin = body.subarray(MAGIC.length + 4 + headerLength);
  if (!raw?.record || !Array.isArray(raw.dbs) || !Array.isArray(raw.keys) || !Array.isArray(raw.values)) throw bad('its fields are missing');
  const db = column(raw.db, 1, (b) => new Uint8Array(b));
  const key = column(raw.key, 8, (b) => new Float64Array(b));
  const len = column(raw.len, 4, (b) => new Int32Array(b));
  if (!db || !key || !len || key.length !== db.length || len.length !== db.length) throw bad('its columns differ in length');
  const names = raw.dbs.map(([n]) => n);
  const ops: CommitOp[] = new Array(db.length);
  let k = 0;
  let v = 0;
  let at = 0;
  for (let i = 0; i < db.length; i++) {
    const name = names[db[i]];
    if (name === undefined) throw bad('it writes to a database it does not name');
    let opKey: unknown = key[i];
    if (Number.isNaN(key[i])) {
      if (k >= raw.keys.length) throw bad('an op has no key');
      opKey = raw.keys[k++];
    }
    let value: unknown;
    if (len[i] === DELETED) value = undefined;
    else if (len[i] === NOT_BYTES) {
      if (v >= raw.values.length) throw bad('an op has no value');
      value = raw.values[v++];
    } else {
      if (len[i] < 0 || at + len[i] > bin.length) throw bad('a value runs past its bytes');
      value = bin.subarray(at, at + len[i]);
      at += len[i];
    }
    ops[i] = { db: name, key: opKey as CommitOp['key'], value };
  }
  if (k !== raw.keys.length || v !== raw.values.length || at !== bin.length) throw bad('it holds more than its ops');
  return { record: raw.record, dbs: Object.fromEntries(raw.dbs), ops };
}

type DeltaV1 = { format?: string; record?: ReplicaRecord; dbs?: Array<[string, DbEncoding]>; ops?: unknown[][] } | null;

/** shoal-delta/1, written before 2026-12-05's second stop: an array [db, key, value?] per op. */
function decodeDeltaV1(raw: DeltaV1, url: string): Delta {
  if (raw?.format !== DELTA_FORMAT_V1 || !raw.record || !Array.isArray(raw.dbs) || !Array.isArray(raw.ops)) throw new ShoalError('corrupt_metadata', `${url} is not a Shoal metadata delta (${DELTA_FORMAT_V1})`);
  const dbs = Object.fromEntries(raw.dbs);
  const names = raw.dbs.map(([n]) => n);
  const ops: CommitOp[] = raw.ops.map((o) => {
    const db = names[o[0] as number];
    if (db === undefined) throw new ShoalError('corrupt_metadata', `${url} writes to a database it does not name`);
    return { db, key: o[1] as CommitOp['key'], value: o.length > 2 ? o[2] : undefined };
  });
  return { record: raw.record, dbs, ops };
}
