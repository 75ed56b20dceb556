// NBD transmission: every command and flag through libnbd (structured replies on and off),
// qemu-io patterns, pipelining, multi-conn, big offsets, revoke.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { needTools, runOk } from '../helpers/tools.js';
import { startTarget, type Target } from './target.js';
import { Raw, CMD, ESHUTDOWN } from './raw.js';
import { py } from './py.js';

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
      const out = await py(
        t.uri(vol),
        `
ST = ${structured ? 'True' : 'False'}
h = connect(structured=ST, meta=True)
assert h.get_structured_replies_negotiated() == ST
assert h.can_meta_context('base:allocation') == ST
size = h.get_size()
assert size == ${SIZE}
MiB = 1 << 20
Z = lambda n: bytes(n)

# READ / WRITE, FUA, aligned and not
data = os.urandom(65536)
h.pwrite(data, 4096)
assert h.pread(65536, 4096) == data
h.pwrite(b'\\xab' * 4096, MiB, nbd.CMD_FLAG_FUA)
assert h.pread(4096, MiB) == b'\\xab' * 4096
h.pwrite(b'xyz', MiB + 4097)
assert h.pread(8, MiB + 4094) == b'\\xab\\xab\\0' + b'xyz' + b'\\0\\0'
assert h.pread(512, size - 512) == Z(512)
h.pwrite(b'\\x01' * 512, size - 512)
assert h.pread(512, size - 512) == b'\\x01' * 512
# the largest payload we advertise, both ways
big = os.urandom(h.get_block_size(nbd.SIZE_MAXIMUM))
assert len(big) == 64 * MiB, len(big)
h.pwrite(big, 16 * MiB)
assert h.pread(len(big), 16 * MiB) == big
if ST:
    chunks = []
    got = h.pread_structured(65536, 4096, lambda sub, off, st, err: chunks.append((off, st)) or 0, nbd.CMD_FLAG_DF)
    assert got == data and len(chunks) == 1 and chunks[0][1] == nbd.READ_DATA, chunks

# FLUSH
h.flush()

# TRIM (with FUA)
h.pwrite(b'\\x11' * (2 * MiB), 2 * MiB)
h.trim(MiB, 2 * MiB, nbd.CMD_FLAG_FUA)
assert h.pread(MiB, 2 * MiB) == Z(MiB)
assert h.pread(MiB, 3 * MiB) == b'\\x11' * MiB

# WRITE_ZEROES, NO_HOLE, FAST_ZERO
h.pwrite(b'\\x22' * MiB, 5 * MiB)
h.zero(65536, 5 * MiB)
h.zero(4096, 5 * MiB + 65536, nbd.CMD_FLAG_NO_HOLE)
h.zero(100, 5 * MiB + 200000, nbd.CMD_FLAG_FUA)
assert h.pread(MiB, 5 * MiB)[:65536 + 4096] == Z(65536 + 4096)
assert h.pread(200100, 5 * MiB)[200000:] == Z(100)
assert h.pread(MiB, 5 * MiB)[200100:] == b'\\x22' * (MiB - 200100)
fast = 'ok'
try:
    h.zero(65536, 7 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, e
    fast = 'ENOTSUP'
h.zero(65536, 8 * MiB, nbd.CMD_FLAG_FAST_ZERO)

# CACHE
h.cache(MiB, 0)
h.cache(size, 0)

# BLOCK_STATUS
if ST:
    ext = extents(h, 32 * MiB, 0)
    assert len(ext) >= 1 and ext[0][0] > 0
    assert sum(e[0] for e in ext) <= 32 * MiB
    # the written range at 4096 is data (HOLE clear), never-written 100 MiB+ reads as zero
    assert ext[0][1] & 1 == 0 or ext[0][0] <= 4096, ext[:3]
    far = extents(h, MiB, 100 * MiB)
    assert far[0][1] & 2 == 2, far
    one = extents(h, 32 * MiB, 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1, one
    # a request running past the end is refused by libnbd itself; ask for the exact tail
    tail = extents(h, 4096, size - 4096)
    assert sum(e[0] for e in tail) == 4096

# Errors the server must return (strict mode off, so libnbd sends what it would normally refuse)
b = connect(structured=ST, meta=ST, strict=False)
expect_errno(errno.EINVAL, b.pread, 4096, size - 100)
expect_errno(errno.EINVAL, b.pread, 1, size)
expect_errno(errno.EINVAL, b.pwrite, b'x' * 10, size - 5)
expect_errno(errno.EINVAL, b.trim, 8192, size - 4096)
expect_errno(errno.EINVAL, b.zero, 8192, size - 4096)
expect_errno(errno.EINVAL, b.cache, 8192, size - 4096)
b.flush(nbd.CMD_FLAG_FUA)                                                 # FUA is accepted on every command
b.pread(512, 0, nbd.CMD_FLAG_FUA)
expect_errno(errno.EINVAL, b.pread, 512, 0, 1 << 6)                      # unknown flag
expect_errno(errno.EINVAL, b.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)        # flag of another command
expect_errno(errno.EINVAL, b.pwrite, b'x' * 512, 0, nbd.CMD_FLAG_NO_HOLE)
expect_errno(errno.EINVAL, b.trim, 4096, 0, nbd.CMD_FLAG_FAST_ZERO)
assert b.pread(4, MiB) == b'\\xab' * 4                                     # connection still fine, nothing written
if not ST:
    expect_errno(errno.EINVAL, b.pread, 512, 0, nbd.CMD_FLAG_DF)          # DF needs structured replies
b.shutdown()

# Read-only export
r = connect('${t.uri(ro)}', structured=ST, meta=ST, strict=False)
assert r.is_read_only()
r.pread(4096, 0)
expect_errno(errno.EPERM, r.pwrite, b'x' * 512, 0)
expect_errno(errno.EPERM, r.trim, 4096, 0)
expect_errno(errno.EPERM, r.zero, 4096, 0)
r.flush()
r.shutdown()
h.shutdown()
print(json.dumps({'fast': fast}))
`,
      );
      const r = JSON.parse(out);
      if (t.kind === 'memory') assert.equal(r.fast, 'ENOTSUP', 'FAST_ZERO failure surfaces as ENOTSUP');
    });
  }

  it('qemu-io: aligned and unaligned patterns round-trip', async (c) => {
    if (!needTools(c, 'qemu-io')) return;
    const uri = t.uri('tx-qemu');
    const cmds = [
      ['write -P 0xab 1000 5000', 'read -P 0xab 1000 5000', 'read -P 0 0 1000', 'read -P 0 6000 2192'],
      ['write -P 0x5c 1048576 1048576', 'read -P 0x5c 1048576 1048576'],
      ['write -P 0x33 31457283 1', 'read -P 0x33 31457283 1', 'read -P 0 31457280 3', 'read -P 0 31457284 4092'],
      ['write -z 1048576 65536', 'read -P 0 1048576 65536', 'read -P 0x5c 1114112 983040'],
      ['discard 1114112 65536', 'read -P 0 1114112 65536'],
      ['write -P 0x7e -f 8388608 12345', 'flush', 'read -P 0x7e 8388608 12345'],
      ['aio_write -P 0x61 20971520 65536', 'aio_write -P 0x62 21037056 65536', 'aio_flush', 'read -P 0x61 20971520 65536', 'read -P 0x62 21037056 65536'],
    ];
    for (const seq of cmds) {
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
