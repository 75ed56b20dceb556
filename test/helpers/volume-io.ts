// Small helpers to write and check byte patterns in exports through real clients (qemu-io, nbdsh).
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Daemon } from './daemon.js';
import { run, nbdPython } from './tools.js';

/** qemu-io commands against an export; throws with qemu-io's output if any command fails. */
export async function qemuIo(d: Daemon, exportName: string, cmds: string[], opts: { readOnly?: boolean } = {}): Promise<string> {
  const args = ['-f', 'raw', ...(opts.readOnly ? ['-r'] : []), d.uri(exportName)];
  for (const c of cmds) args.push('-c', c);
  const r = await run('qemu-io', args);
  const out = r.stdout + r.stderr;
  if (r.status !== 0 || /Pattern verification failed|failed|error/i.test(out)) throw new Error(`qemu-io ${cmds.join(' ; ')} on ${exportName}:\n${out}`);
  return out;
}

/** Asserts that [offset, offset+length) of the export holds `byte` repeated. */
export async function expectPattern(d: Daemon, exportName: string, byte: number, offset: number, length: number): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', '-r', d.uri(exportName), '-c', `read -P 0x${byte.toString(16)} ${offset} ${length}`]);
  const out = r.stdout + r.stderr;
  assert.ok(r.status === 0 && !/Pattern verification failed/.test(out), `${exportName} [${offset}+${length}] should hold 0x${byte.toString(16)}:\n${out}`);
}

/** Runs a libnbd Python snippet with `h` connected to the export; returns stdout. */
export async function withHandle(d: Daemon, exportName: string, body: string, opts: { structured?: boolean } = {}): Promise<string> {
  const script = [
    'import nbd, sys',
    'h = nbd.NBD()',
    opts.structured === false ? 'h.set_request_structured_replies(False)' : "h.add_meta_context('base:allocation')",
    `h.connect_uri(${JSON.stringify(d.unixUri(exportName))})`,
    body,
    'h.shutdown()',
  ].join('\n');
  const r = await nbdPython(script);
  if (r.status !== 0) throw new Error(`nbd script on ${exportName} failed:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/**
 * Python for withHandle: writes `mib` MiB of seeded pseudo-random data at `offset` (the same seed
 * gives the same bytes), then FLUSHes; with `check`, compares them instead and prints True or False.
 */
export function seededData(seed: number, mib: number, offset: number, check = false): string {
  return `
import random
rnd = random.Random(${seed})
ok = True
for i in range(${mib}):
    b = rnd.randbytes(1024 * 1024)
    ${check ? `ok = ok and h.pread(1024 * 1024, ${offset} + i * 1024 * 1024) == b` : `h.pwrite(b, ${offset} + i * 1024 * 1024)`}
h.flush()
print(ok)
`;
}

/**
 * Writes seed `seed`'s first `mib` MiB at `offset` into slots freed (and committed free) before, and
 * asserts that it took them: the local store's chunk file did not grow.
 */
export async function writeIntoFreedSlots(d: Daemon, exportName: string, seed: number, mib: number, offset: number): Promise<void> {
  const fileSize = () => statSync(join(d.dataDir, 'chunks.dat')).size;
  const size0 = fileSize();
  await withHandle(d, exportName, seededData(seed, mib, offset));
  assert.equal(fileSize(), size0, `seed ${seed} should have reused the freed slots (the chunk file did not grow)`);
}

/** GET /v1/stats, asserting it answered. */
export async function stats(d: Daemon): Promise<any> {
  const r = await d.api('GET', '/v1/stats');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

/** Polls GET /v1/stats every 100 ms until `ok` holds (failing after 30 s, with `what`); returns the stats that passed. */
export async function waitForStats(d: Daemon, what: string, ok: (s: any) => boolean): Promise<any> {
  for (let i = 0; ; i++) {
    const s = await stats(d);
    if (ok(s)) return s;
    assert.ok(i < 300, `${what}: not within 30 s (${JSON.stringify(s.dedupIndexing ?? s)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * GET /v1/stats once space reclaim has settled: whole subtrees released by a delete or a TRIM
 * are freed by the background collector, which the consistency check drains first.
 */
export async function settledStats(d: Daemon): Promise<any> {
  await expectFsckClean(d);
  return stats(d);
}

/** POST /v1/fsck on the running daemon, asserting it is clean. */
export async function expectFsckClean(d: Daemon): Promise<void> {
  const r = await d.api('POST', '/v1/fsck');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.ok, true, `fsck found problems: ${JSON.stringify(r.body.errors)}`);
}

/** Asserts an HTTP error reply of the documented shape. */
export function expectApiError(r: { status: number; body: any }, status: number, code: string): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body?.error?.code, code, JSON.stringify(r.body));
  assert.equal(typeof r.body.error.message, 'string');
  assert.ok(r.body.error.message.length > 10, 'the error message should be a sentence');
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
