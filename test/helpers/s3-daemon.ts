// A Shoal daemon on an S3 store of the test Ceph (test/helpers/ceph.ts), and the libnbd script the S3
// tests write and check volumes with: blocks of seeded random bytes at distinct places, so a later run
// (another daemon, after a restore) can compute what each volume must hold.
import assert from 'node:assert/strict';
import { Daemon, type DaemonOptions } from './daemon.js';
import type { CephS3 } from './ceph.js';
import { PY, run } from './tools.js';

export interface S3DaemonOptions extends DaemonOptions {
  /** The gateway to use (a PrivateGateway's), default the shared one. */
  endpoint?: string;
}

/** Options for a Daemon on s3://BUCKET/PREFIX of the test cluster; `args` and `env` add to them. */
export function s3Daemon(ceph: CephS3, store: string, o: S3DaemonOptions = {}): Daemon {
  return new Daemon({
    dataDir: o.dataDir,
    args: ['--store', store, '--s3-endpoint', o.endpoint ?? ceph.endpoint, ...(o.args ?? [])],
    env: {
      AWS_ACCESS_KEY_ID: ceph.accessKeyId,
      AWS_SECRET_ACCESS_KEY: ceph.secretAccessKey,
      AWS_REGION: ceph.region,
      NODE_ENV: 'test',
      ...(o.env ?? {}),
    },
  });
}

/**
 * One write or check of a volume: `count` blocks of `size` bytes at distinct places (block i at
 * i × stride + shift), each holding random bytes from `seed`. A check reads the whole export and
 * compares it with what a list of writes, applied in order over zeroes, leaves.
 */
export interface Blocks {
  seed: number;
  count: number;
  size: number;
  stride: number;
  shift?: number;
}

const PY_BLOCKS = `
import nbd, random, sys, json, hashlib
spec = json.loads(sys.argv[1])
def blocks(b, total):
    r = random.Random(b['seed'])
    places = r.sample(range((total - b.get('shift', 0)) // b['stride']), b['count'])
    return [(i * b['stride'] + b.get('shift', 0), r.randbytes(b['size'])) for i in places]
h = nbd.NBD()
h.connect_uri(spec['uri'])
total = h.get_size()
if spec['op'] == 'write':
    # All in flight at once (pipelined), then FLUSH; or each with FUA, one after the other.
    flags = nbd.CMD_FLAG_FUA if spec['mode'] == 'fua' else 0
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), off, flags=flags) for b in spec['blocks'] for off, d in blocks(b, total)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        h.aio_command_completed(c)
    if spec['mode'] == 'flush':
        h.flush()
else:
    want = bytearray(total)
    for b in spec['blocks']:
        for off, d in blocks(b, total):
            want[off:off + len(d)] = d
if spec['op'] == 'scan':
    # Block by block, so one failing read does not hide the others: which fail (and how), which differ.
    import errno
    failed, wrong, names = [], [], set()
    for off in range(0, total, 4096):
        try:
            if h.pread(4096, off) != want[off:off + 4096]:
                wrong.append(off)
        except nbd.Error as e:
            failed.append(off)
            names.add(errno.errorcode.get(e.errnum, str(e.errnum)))
    print(json.dumps({'failed': failed, 'wrong': wrong, 'errnos': sorted(names)}))
elif spec['op'] == 'check':
    got = bytearray()
    for off in range(0, total, 4 << 20):
        got += h.pread(min(4 << 20, total - off), off)
    bad = [off for off in range(0, total, 4096) if got[off:off + 4096] != want[off:off + 4096] and not any(a <= off < z for a, z in spec.get('skip', []))]
    print(json.dumps({'bad': bad[:10], 'badCount': len(bad), 'sha': hashlib.sha256(got).hexdigest()}))
h.shutdown()
`;

/** Writes blocks into an export: pipelined then one FLUSH ('flush'), each with FUA ('fua'), or neither ('none'). */
export async function writeBlocks(d: Daemon, exportName: string, mode: 'flush' | 'fua' | 'none', blocks: Blocks[]): Promise<void> {
  const r = await run(PY, ['-c', PY_BLOCKS, JSON.stringify({ op: 'write', uri: d.unixUri(exportName), mode, blocks })], { timeoutMs: 120_000 });
  if (r.status !== 0) throw new Error(`writing ${exportName} failed:\n${r.stderr}`);
}

/** Asserts the export holds exactly what `blocks` wrote over zeroes, except in `skip` ranges [from, to). */
export async function expectBlocks(d: Daemon, exportName: string, blocks: Blocks[], skip: Array<[number, number]> = []): Promise<void> {
  const r = await run(PY, ['-c', PY_BLOCKS, JSON.stringify({ op: 'check', uri: d.unixUri(exportName), blocks, skip })], { timeoutMs: 120_000 });
  assert.equal(r.status, 0, `reading ${exportName} failed:\n${r.stderr}`);
  const out = JSON.parse(r.stdout) as { bad: number[]; badCount: number };
  assert.equal(out.badCount, 0, `${exportName}: ${out.badCount} 4 KiB block(s) differ from what was written, first at offsets ${out.bad.join(', ')}`);
}

/**
 * Reads an export 4 KiB block at a time against what `blocks` wrote over zeroes: the offsets whose read
 * failed (with the errno names) and those that read back anything else.
 */
export async function scanBlocks(d: Daemon, exportName: string, blocks: Blocks[]): Promise<{ failed: number[]; wrong: number[]; errnos: string[] }> {
  const r = await run(PY, ['-c', PY_BLOCKS, JSON.stringify({ op: 'scan', uri: d.unixUri(exportName), blocks })], { timeoutMs: 120_000 });
  assert.equal(r.status, 0, `scanning ${exportName} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout) as { failed: number[]; wrong: number[]; errnos: string[] };
}

/**
 * Starts a daemon on a prefix whose former holder was killed: it refuses while that lease runs, so this
 * tries again until the lease has lapsed (within `timeoutMs`). Returns how many refusals it saw.
 */
export async function startAfterLease(d: Daemon, timeoutMs = 20_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (let refused = 0; ; refused++) {
    try {
      await d.start();
      return refused;
    } catch (e) {
      if (!/is in use by Shoal/.test((e as Error).message) || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
