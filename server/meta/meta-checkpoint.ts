// Checkpoints of the metadata in the bucket: LMDB's compacting copy of meta.lmdb (taken in a read
// transaction, so commits go on meanwhile), uploaded whole, or in parts once it is large; and the way back,
// in parallel ranges. The copy knows which commit it holds from its own `replica` record.
import { open as openLmdb } from 'lmdb';
import { closeSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { ShoalError } from '../errors.js';
import type { S3Bucket } from '../store/s3/s3-bucket.js';
import type { MetaStore } from './meta-store.js';
import { REPLICA_KEY, type ReplicaRecord } from './replica-format.js';

/** Checkpoints up to this size go up in one PUT; larger ones in parts of PART_BYTES. */
const SINGLE_PUT_BYTES = 64 * 2 ** 20;
const PART_BYTES = 16 * 2 ** 20;
const PARALLEL = 4;

/** Copies the metadata to `path`; returns the commit the copy holds and its size. */
export async function copyMetadata(meta: MetaStore, path: string): Promise<{ record: ReplicaRecord; bytes: number }> {
  removeEnvFile(path);
  await meta.backup(path);
  const record = readReplicaRecord(path);
  if (!record) throw new ShoalError('internal', `the metadata copy at ${path} has no replica record`);
  return { record, bytes: statSync(path).size };
}

/** The `replica` record of an LMDB file (a copy, or a data directory's metadata), or null if it has none. */
export function readReplicaRecord(path: string): ReplicaRecord | null {
  const env = openLmdb({ path, readOnly: true, maxDbs: 16 });
  try {
    return (env.openDB({ name: 'main', encoding: 'msgpack' }).get(REPLICA_KEY) as ReplicaRecord | undefined) ?? null;
  } finally {
    void env.close();
  }
}

export async function uploadCheckpoint(bucket: S3Bucket, key: string, path: string, bytes: number): Promise<void> {
  if (bytes <= SINGLE_PUT_BYTES) {
    await bucket.put(key, await readFile(path));
    return;
  }
  const fd = openSync(path, 'r');
  try {
    await bucket.putMultipart(
      key,
      bytes,
      async (offset, length) => {
        const b = Buffer.allocUnsafe(length);
        let got = 0;
        while (got < length) got += readSync(fd, b, got, length - got, offset + got);
        return b;
      },
      { partBytes: PART_BYTES, parallel: PARALLEL },
    );
  } finally {
    closeSync(fd);
  }
}

/** Downloads a checkpoint of `bytes` to `path`, PARALLEL ranges of PART_BYTES at a time. */
export async function downloadCheckpoint(bucket: S3Bucket, key: string, bytes: number, path: string): Promise<void> {
  removeEnvFile(path);
  const fd = openSync(path, 'w');
  try {
    const parts = Math.max(1, Math.ceil(bytes / PART_BYTES));
    let next = 0;
    const worker = async () => {
      while (next < parts) {
        const n = next++;
        const offset = n * PART_BYTES;
        const obj = await bucket.get(key, { offset, length: Math.min(PART_BYTES, bytes - offset) });
        if (!obj) throw new ShoalError('corrupt_metadata', `${bucket.url(key)}, the checkpoint the head names, is missing`);
        if (obj.size !== bytes) throw new ShoalError('corrupt_metadata', `${bucket.url(key)} is ${obj.size} bytes, not the ${bytes} the head names`);
        let done = 0;
        while (done < obj.body.length) done += writeSync(fd, obj.body, done, obj.body.length - done, offset + done);
      }
    };
    await Promise.all(Array.from({ length: Math.min(parts, PARALLEL) }, worker));
  } finally {
    closeSync(fd);
  }
}

/** Removes an LMDB file and its lock file. */
export function removeEnvFile(path: string): void {
  rmSync(path, { force: true });
  rmSync(`${path}-lock`, { force: true });
}
