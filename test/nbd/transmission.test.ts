// NBD transmission: every command and flag through libnbd (structured replies on and off),
// qemu-io patterns, pipelining, multi-conn, big offsets, revoke.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { needTools, runOk } from '../helpers/tools.js';
import { startTarget, type Target } from './target.js';
import { Raw, CMD, ESHUTDOWN } from './raw.js';
import { py } from './py.js';
import { everyCommandScript, QEMU_IO_SEQUENCES } from './every-command.js';

const SIZE = 128 * 1024 * 1024;
const TIB = 2 ** 40;

describe('nbd transmission', () => {
  let t: Target;
  let ro: string;
  before(async () => {
    // In memory mode, reads below 64 KiB take 150 ms: lets the pipelining test see replies overtake.
    t = await startTarget({ memory: { slowBelow: 65536, slowMs: 150 } });
    await t.createVolume('tx-s', SIZE);
    await t.createVolume('tx-n', SIZE);
    await t.createVolume('tx-qemu', SIZE);
    await t.createVolume('tx-pipe', SIZE);
    await t.createVolume('tx-multi', SIZE);
    await t.createVolume('tx-big', 16 * TIB);
    await t.createVolume('tx-revoke', SIZE);
    ro = await t.createReadOnly('tx-n', 'ro');
  });
  after(async () => {
    await t?.dispose();
  });

  for (const structured of [true, false]) {
    it(`every command and flag, structured replies ${structured ? 'on' : 'off'}`, async (c) => {
      if (!needTools(c, 'nbdsh')) return;
      const vol = structured ? 'tx-s' : 'tx-n';
      const out = await py(t.uri(vol), everyCommandScript(structured, t.uri(ro)));
      const r = JSON.parse(out);
      if (t.kind === 'memory') assert.equal(r.fast, 'ENOTSUP', 'FAST_ZERO failure surfaces as ENOTSUP');
    });
  }

  it('qemu-io: aligned and unaligned patterns round-trip', async (c) => {
    if (!needTools(c, 'qemu-io')) return;
    const uri = t.uri('tx-qemu');
    for (const seq of QEMU_IO_SEQUENCES) {
      const out = await runOk('qemu-io', ['-f', 'raw', uri, ...seq.flatMap((s) => ['-c', s])]);
      assert.doesNotMatch(out, /Pattern verification failed|error|failed/i, out);
    }
    // And qemu-img sees the allocation through block status.
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', '-f', 'raw', uri]));
    assert.ok(map.some((e: any) => e.data === true) && map.some((e: any) => e.zero === true), JSON.stringify(map));
  });

  it('pipelining: many requests in flight, replies out of order, all correct', async (c) => {
    if (!needTools(c, 'nbdsh')) return;
    const out = await py(
      t.uri('tx-pipe'),
      `
h = connect()
N = 128
for i in range(N):
    h.aio_pwrite(bytes([i]) * 4096 + bytes([255 - i]) * 4096, i * 65536)
while h.aio_in_flight() > 0:
    h.poll(-1)
order = []
bufs = []
for i in range(N):
    buf = nbd.Buffer(8192)
    bufs.append(buf)
    h.aio_pread(buf, i * 65536, completion=lambda err, i=i: order.append(i) or 1)
assert h.aio_in_flight() > 1
while h.aio_in_flight() > 0:
    h.poll(-1)
assert sorted(order) == list(range(N))
for i, buf in enumerate(bufs):
    assert bytes(buf.to_bytearray()) == bytes([i]) * 4096 + bytes([255 - i]) * 4096, i
# mixed writes + flush + reads in one burst
for i in range(N):
    h.aio_pwrite(bytes([i ^ 0x5a]) * 4096, 16 * 1048576 + i * 4096)
h.aio_flush()
while h.aio_in_flight() > 0:
    h.poll(-1)
assert h.pread(N * 4096, 16 * 1048576) == b''.join(bytes([i ^ 0x5a]) * 4096 for i in range(N))
print(json.dumps({'first_done': order[0], 'last_done': order[-1]}))
`,
    );
    const r = JSON.parse(out);
    // Memory target: the read of offset 0 is slow, so later replies overtake it.
    if (t.kind === 'memory') assert.notEqual(r.first_done, 0, 'replies were sent out of order');
  });

  it('multi-conn: write on one connection, flush on another, read on a third', async (c) => {
    if (!needTools(c, 'nbdsh')) return;
    await py(
      t.uri('tx-multi'),
      `
a, b, c = connect(), connect(), connect()
assert a.can_multi_conn()
pat = os.urandom(131072)
assert c.pread(len(pat), 3 << 20) == bytes(len(pat))
a.pwrite(pat, 3 << 20)
b.flush()
assert c.pread(len(pat), 3 << 20) == pat
c.pwrite(b'\\x99' * 4096, 3 << 20, nbd.CMD_FLAG_FUA)
assert a.pread(4096, 3 << 20) == b'\\x99' * 4096
for x in (a, b, c):
    x.shutdown()
`,
    );
    if (needTools(c, 'nbdcopy')) {
      // nbdcopy uses several connections when CAN_MULTI_CONN is advertised.
      await runOk('nbdcopy', ['--connections=4', t.uri('tx-multi'), t.uri('tx-pipe')]);
      await py(t.uri('tx-pipe'), `h = connect()\nassert h.pread(4096, 3 << 20) == b'\\x99' * 4096\n`);
    }
  });

  it('16 TiB export: offsets above 2^32 and 2^40, whole-range trim in one request', async (c) => {
    if (!needTools(c, 'nbdsh')) return;
    await py(
      t.uri('tx-big'),
      `
h = connect(strict=False)
size = h.get_size()
assert size == ${16 * TIB}
for off in (size - 4096, (1 << 40) + 123, (1 << 32) - 7, 5 << 32):
    p = os.urandom(4096)
    h.pwrite(p, off)
    assert h.pread(4096, off) == p, off
h.flush()
# TRIM and WRITE_ZEROES of 2^32 - 512 bytes in one request (mkfs trims whole devices like this)
h.trim((1 << 32) - 512, 1 << 41)
h.zero((1 << 32) - 512, 1 << 41)
h.trim(0xffffffff, 0)
ext = extents(h, 0xffffffff, 1 << 42)
assert sum(e[0] for e in ext) <= 0xffffffff and ext[0][0] > 0
expect_errno(errno.EINVAL, h.pread, 4096, size)
expect_errno(errno.EINVAL, h.pread, 1, (1 << 63) + 5)
expect_errno(errno.EINVAL, h.pread, 4096, (1 << 64) - 4096)
h.shutdown()
`,
    );
  });

  it('revoke: in-flight and later requests fail with ESHUTDOWN, then the connection closes', async () => {
    if (!t.forceDelete) return;
    const c = await Raw.connect(t.port);
    try {
      await c.handshake('tx-revoke');
      // A write so the volume is in use, then (memory target) a slow read that is still running.
      c.request(CMD.WRITE, 1n, 65536, 4, 0, Buffer.from('abcd'));
      assert.equal((await c.simpleReply()).error, 0);
      c.request(CMD.READ, 2n, 0, 4096);
      await t.forceDelete('tx-revoke');
      // Either an ESHUTDOWN reply for the read in flight, or the connection closes; never a hang.
      try {
        const r = await c.simpleReply(4096);
        if (t.kind === 'memory') {
          assert.equal(r.error, ESHUTDOWN);
          assert.equal(r.handle, 2n);
        }
      } catch (e) {
        assert.match(String(e), /closed/);
      }
      assert.ok(await c.waitClosed(8000), 'connection closed after revoke');
      if (t.memory) {
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(t.memory.open.get('tx-revoke')?.size ?? 0, 0, 'export closed');
      }
    } finally {
      c.destroy();
    }
  });
});
