// The same exercise for every transport (plain TCP, Unix socket, TLS): every command and flag
// through libnbd with structured replies on or off, and qemu-io patterns. The export must be a
// fresh 128 MiB volume (EVERY_COMMAND_SIZE); `readOnlyUri` a read-only export (a snapshot) on the same server.

/** The size of the volume everyCommandScript exercises: room for a 64 MiB request (the maximum) and more. */
export const EVERY_COMMAND_SIZE = 128 * 1024 * 1024;

/** A libnbd Python script for test/nbd/py.ts: prints {"fast": "ok"|"ENOTSUP"} when everything held. */
export function everyCommandScript(structured: boolean, readOnlyUri: string): string {
  return `
ST = ${structured ? 'True' : 'False'}
h = connect(structured=ST, meta=True)
assert h.get_structured_replies_negotiated() == ST
assert h.can_meta_context('base:allocation') == ST
size = h.get_size()
assert size == ${EVERY_COMMAND_SIZE}
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
r = connect('${readOnlyUri}', structured=ST, meta=ST, strict=False)
assert r.is_read_only()
r.pread(4096, 0)
expect_errno(errno.EPERM, r.pwrite, b'x' * 512, 0)
expect_errno(errno.EPERM, r.trim, 4096, 0)
expect_errno(errno.EPERM, r.zero, 4096, 0)
r.flush()
r.shutdown()
h.shutdown()
print(json.dumps({'fast': fast}))
`;
}

/** qemu-io command sequences on a 64 MiB export, each checking what it wrote. */
export const QEMU_IO_SEQUENCES: string[][] = [
  ['write -P 0xab 1000 5000', 'read -P 0xab 1000 5000', 'read -P 0 0 1000', 'read -P 0 6000 2192'],
  ['write -P 0x5c 1048576 1048576', 'read -P 0x5c 1048576 1048576'],
  ['write -P 0x33 31457283 1', 'read -P 0x33 31457283 1', 'read -P 0 31457280 3', 'read -P 0 31457284 4092'],
  ['write -z 1048576 65536', 'read -P 0 1048576 65536', 'read -P 0x5c 1114112 983040'],
  ['discard 1114112 65536', 'read -P 0 1114112 65536'],
  ['write -P 0x7e -f 8388608 12345', 'flush', 'read -P 0x7e 8388608 12345'],
  ['aio_write -P 0x61 20971520 65536', 'aio_write -P 0x62 21037056 65536', 'aio_flush', 'read -P 0x61 20971520 65536', 'read -P 0x62 21037056 65536'],
];
