// The replica's local outbox (<data-dir>/s3/outbox/): each commit's delta is written here first, so a
// restart on the same disk publishes what was committed but not yet in the bucket (bucket-replica.ts).
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeDelta, type ReplicaRecord } from './replica-format.js';

export function outboxDir(dir: string): string {
  return join(dir, 'outbox');
}

/** A commit in the local outbox, not yet named by the bucket's head. */
export interface OutboxEntry {
  record: ReplicaRecord;
  path: string;
  bytes: number;
  /** The store's mark when it was committed: the packs to upload before it is named. */
  mark: number;
  /** performance.now() at commit, for the lag. */
  at: number;
}

/** Reads the outbox a previous process left: its entries, in order. */
export function readOutbox(dir: string): OutboxEntry[] {
  const box = outboxDir(dir);
  let names: string[];
  try {
    names = readdirSync(box);
  } catch {
    return [];
  }
  const out: OutboxEntry[] = [];
  for (const name of names) {
    const path = join(box, name);
    if (!/^\d+-\d+\.delta$/.test(name)) {
      rmSync(path, { force: true });
      continue;
    }
    let record: ReplicaRecord;
    let body: Buffer;
    try {
      body = readFileSync(path);
      record = decodeDelta(body, path).record;
    } catch {
      // Written as the process died (the commit's FLUSH never completed): not a commit to publish.
      rmSync(path, { force: true });
      continue;
    }
    out.push({ record, path, bytes: body.length, mark: Number.MAX_SAFE_INTEGER, at: performance.now() });
  }
  return out.sort((a, b) => a.record.seq - b.record.seq);
}

/** Removes the outbox (the local metadata it belonged to is being replaced). */
export function clearOutbox(dir: string): void {
  rmSync(outboxDir(dir), { recursive: true, force: true });
}

export async function writeOutbox(path: string, body: Buffer, durable: boolean): Promise<void> {
  const fh = await openFile(path, 'w');
  try {
    await fh.writeFile(body);
    if (durable) await fh.datasync();
  } finally {
    await fh.close();
  }
}
