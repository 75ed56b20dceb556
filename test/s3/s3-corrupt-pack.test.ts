// A pack object damaged in the bucket (bit rot, a bad copy, a buggy tool) is never served: a daemon
// restoring from the bucket checks every fetched chunk against the pack's index (CRC-32, on the thread
// pool) and answers a read of a damaged chunk with EIO, naming the object in its log, while the rest of
// the volume reads back intact and the daemon goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { needTools, PY, run } from '../helpers/tools.js';
import { s3Daemon, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { MiB } from '../helpers/volume-io.js';
import { HEADER_BYTES } from '../../server/store/s3/pack-format.js';

// Reads every 4 KiB block of an export: the offsets whose read failed (and the errno names), and those that
// read back other than \`blocks\` wrote (as test/helpers/s3-daemon.ts writes them: seeded random bytes).
const PY_READ_ALL = `
import nbd, sys, json, errno, random
b = json.loads(sys.argv[2])
h = nbd.NBD()
h.connect_uri(sys.argv[1])
total = h.get_size()
r = random.Random(b['seed'])
places = r.sample(range((total - b.get('shift', 0)) // b['stride']), b['count'])
want = bytearray(total)
for i in places:
    off = i * b['stride'] + b.get('shift', 0)
    want[off:off + b['size']] = r.randbytes(b['size'])
bad, wrong, names = [], [], set()
for off in range(0, total, 4096):
    try:
        if h.pread(4096, off) != want[off:off + 4096]:
            wrong.append(off)
    except nbd.Error as e:
        bad.append(off)
        names.add(errno.errorcode.get(e.errnum, str(e.errnum)))
print(json.dumps({'bad': bad, 'wrong': wrong, 'errnos': sorted(names)}))
`;

test('a pack damaged in the bucket: its chunks read as EIO, the rest of the volume is intact, the daemon serves on', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const name = uniqueBucketName('rot');
  const store = `s3://${name}/p`;
  const small = { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024) }; // a few packs of 64 chunks
  const a = s3Daemon(ceph, store, { env: small });
  const b = s3Daemon(ceph, store, {});
  t.after(async () => {
    await a.dispose();
    await b.dispose();
  });
  await a.start();
  await a.createVolume('img', 1 * MiB);
  const blocks: Blocks = { seed: 77, count: 16, size: 64 * 1024, stride: 64 * 1024 }; // all of it
  await writeBlocks(a, 'img', 'flush', [blocks]);
  await a.stop(); // everything in the bucket, the lease released

  // Flip one bit in the data of one pack object (its chunk 1), rewritten in place.
  const bucket = await openTestBucket(ceph, name);
  const keys: string[] = [];
  for await (const o of bucket.list('p/packs/')) if (o.key.endsWith('.pack')) keys.push(o.key);
  assert.ok(keys.length >= 4, `1 MiB in 256 KiB packs makes several objects (${keys.length})`);
  const victim = keys[1]!;
  const obj = await bucket.get(victim);
  assert.ok(obj);
  const body = Buffer.from(obj.body);
  body[HEADER_BYTES + 4096 + 100]! ^= 0x08;
  await bucket.put(victim, body);

  // A new host reads the volume from the bucket.
  await b.start();
  const readAll = async () => {
    const r = await run(PY, ['-c', PY_READ_ALL, b.unixUri('img'), JSON.stringify(blocks)], { timeoutMs: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { bad: number[]; wrong: number[]; errnos: string[] };
  };
  const out = await readAll();
  assert.ok(out.bad.length > 0, 'a read of the damaged chunk fails');
  assert.deepEqual(out.errnos, ['EIO']);
  assert.ok(out.bad.length <= 64, `only chunks of the damaged pack fail (${out.bad.length} blocks)`);
  // The log says which object is damaged, at error level (lines reach the test a little after the fact).
  const named = new RegExp(`"level":50.*nbd: read failed: s3://${name}/${victim.replace(/[/.]/g, '\\$&')} is not a valid pack: chunk \\d+ \\(at \\d+\\) does not match its checksum`);
  await b.waitForLog(named, 5000);
  // Everything else reads back as written (no damaged byte is ever served), and the daemon serves on.
  assert.deepEqual(out.wrong, [], 'every block that reads at all holds what was written');
  const again = await readAll();
  assert.deepEqual(again.bad, out.bad, 'the same blocks fail again, no others');
  assert.deepEqual(again.wrong, []);
  // One line per connection for its failed reads (a guest retrying a damaged block does not flood the log).
  await new Promise((r) => setTimeout(r, 300));
  const lines = b.log.split('\n').filter((l) => l.includes('nbd: read failed')).length;
  assert.ok(lines >= 1 && lines <= 2, `${lines} log lines for ${out.bad.length + again.bad.length} failed reads on two connections`);
  assert.equal((await b.api('GET', '/healthz')).status, 200);
});
