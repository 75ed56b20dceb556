# Writers and verifier for the kill -9 durability test (invariant 2). Run with Debian's python3 (libnbd).
#
#   durability.py write URI WRITER NWRITERS GENBASE SEED   writes until the connection dies
#   durability.py verify URI NWRITERS < durable.json         checks what survived; prints a JSON report
#
# The volume's first LAYOUT_END bytes are cut into regions of varied sizes, contiguous, so that regions
# of different writers share 4 KiB chunks (sub-chunk read-modify-write from several connections).
# Region i belongs to writer i % NWRITERS, which writes it whole, again and again, with increasing
# generation numbers, never with two writes to one region in flight at once.
# Every 512-byte sector of a write is self-describing: a 32-byte header (magic, writer, region, gen,
# sector index) and 480 bytes derived from the header by SHAKE-256, so a sector can be checked alone.
#
# The writer prints, line by line and flushed:
#   D <region> <gen>   generation <gen> of <region> is durable: its write was acknowledged before a
#                      FLUSH was sent and that FLUSH has been answered, or it was a FUA write and has
#                      been acknowledged.
#   S <writes> <flushes>  progress, now and then.
# The verifier gets {region: durable gen} and checks that every sector of such a region holds exactly
# the pattern of a generation >= the durable one (a later write may have landed too), and that every
# other sector holds zeros or a valid pattern of its own region and sector.
import hashlib
import json
import os
import random
import struct
import sys

import nbd

SECTOR = 512
MAGIC = b'SHOALDUR'
# 262144: a write whose run of chunks goes to the chunk file past the page cache (batched-writes.ts).
SIZES = [512, 1024, 4096, 3584, 8192, 65536, 1536, 20480, 4608, 12288, 262144]
LAYOUT_END = 6 * 1024 * 1024


def layout():
    regions = []
    off = 0
    i = 0
    while True:
        size = SIZES[i % len(SIZES)]
        if off + size > LAYOUT_END:
            break
        regions.append((off, size))
        off += size
        i += 1
    return regions


def sector(writer, region, gen, idx):
    head = MAGIC + struct.pack('<IIQQ', writer, region, gen, idx)
    return head + hashlib.shake_256(head).digest(SECTOR - len(head))


def pattern(writer, region, gen, size):
    return b''.join(sector(writer, region, gen, i) for i in range(size // SECTOR))


def write(uri, writer, nwriters, genbase, seed):
    rnd = random.Random(seed)
    regions = layout()
    mine = [r for r in range(len(regions)) if r % nwriters == writer]
    h = nbd.NBD()
    h.connect_uri(uri)
    can_fua = h.can_fua()
    can_flush = h.can_flush()
    gen = {r: genbase for r in mine}
    acked = {}  # region -> last acknowledged gen
    printed = {}  # region -> last gen printed as durable
    inflight = {}  # cookie -> (region, gen, fua, buf)
    busy = set()
    flush = None  # (cookie, snapshot of acked when sent)
    writes = 0
    flushes = 0
    last_flush_at = 0
    depth = 8
    out = sys.stdout

    def durable(r, g):
        if printed.get(r, -1) < g:
            printed[r] = g
            out.write(f'D {r} {g}\n')

    try:
        while True:
            while len(inflight) < depth:
                free = [r for r in rnd.sample(mine, min(len(mine), 16)) if r not in busy]
                if not free:
                    break
                r = free[0]
                gen[r] += 1
                off, size = regions[r]
                buf = pattern(writer, r, gen[r], size)
                fua = can_fua and rnd.random() < 0.2
                c = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if fua else 0)
                inflight[c] = (r, gen[r], fua, buf)
                busy.add(r)
            h.poll(-1)
            for c in list(inflight):
                if h.aio_command_completed(c):  # raises if the write failed
                    r, g, fua, _ = inflight.pop(c)
                    busy.discard(r)
                    acked[r] = g
                    writes += 1
                    if fua:
                        durable(r, g)
            if flush is not None and h.aio_command_completed(flush[0]):
                for r, g in flush[1].items():
                    durable(r, g)
                flushes += 1
                flush = None
                out.write(f'S {writes} {flushes}\n')
            if flush is None and can_flush and writes - last_flush_at >= 24:
                last_flush_at = writes
                flush = (h.aio_flush(), dict(acked))
            out.flush()
    except nbd.Error as e:
        out.write(f'E {e}\n')
        out.flush()


def verify(uri, nwriters):
    durable = {int(k): v for k, v in json.load(sys.stdin).items()}
    regions = layout()
    h = nbd.NBD()
    h.connect_uri(uri)
    data = h.pread(LAYOUT_END, 0) if LAYOUT_END <= 32 * 1024 * 1024 else None
    errors = []
    seen_zero = 0
    seen_gen = 0
    zero = bytes(SECTOR)
    for r, (off, size) in enumerate(regions):
        w = r % nwriters
        need = durable.get(r)
        for i in range(size // SECTOR):
            s = data[off + i * SECTOR: off + (i + 1) * SECTOR]
            if s == zero:
                seen_zero += 1
                if need is not None:
                    errors.append(f'region {r} sector {i} (offset {off + i * SECTOR}): zeros, but gen {need} was durable')
                continue
            if s[:8] != MAGIC:
                errors.append(f'region {r} sector {i} (offset {off + i * SECTOR}): garbage {s[:32].hex()}')
                continue
            sw, sr, sg, si = struct.unpack('<IIQQ', s[8:32])
            if (sw, sr, si) != (w, r, i) or s != sector(sw, sr, sg, si):
                errors.append(f'region {r} sector {i} (offset {off + i * SECTOR}): holds writer {sw} region {sr} gen {sg} sector {si} (or a damaged sector)')
                continue
            seen_gen += 1
            if need is not None and sg < need:
                errors.append(f'region {r} sector {i} (offset {off + i * SECTOR}): gen {sg} but gen {need} was durable')
    print(json.dumps({'errors': errors[:50], 'errorCount': len(errors), 'regions': len(regions), 'durableRegions': len(durable), 'zeroSectors': seen_zero, 'patternSectors': seen_gen}))


if __name__ == '__main__':
    mode = sys.argv[1]
    if mode == 'write':
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif mode == 'verify':
        verify(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f'unknown mode {mode}')
