// Bad bytes on the NBD socket: each case gets an error reply or a closed connection — never a
// crash, a hang, another client disturbed, or a changed volume.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startTarget, type Target } from './target.js';
import { Raw, CMD, OPT, REP, EINVAL, EPERM, metaQuery, goData } from './raw.js';

const SIZE = 16 * 1024 * 1024;
const PATTERN = Buffer.alloc(256 * 1024);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i * 7 + 3) & 0xff;

/** Serving process memory in bytes (RSS of the daemon, or ArrayBuffers in-process). */
function servingMemory(t: Target): number {
  if (t.pid === process.pid) return process.memoryUsage().arrayBuffers;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${t.pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('nbd bad input', () => {
  let t: Target;
  let ro: string;
  before(async () => {
    t = await startTarget({ memory: { slowWriteMs: 0 } });
    await t.createVolume('bad', SIZE);
    const c = await Raw.connect(t.port);
    await c.handshake('bad');
    c.request(CMD.WRITE, 1n, 0, PATTERN.length, 0, PATTERN);
    assert.equal((await c.simpleReply()).error, 0);
    c.request(CMD.FLUSH, 2n, 0, 0);
    assert.equal((await c.simpleReply()).error, 0);
    c.request(CMD.DISC, 3n, 0, 0);
    assert.ok(await c.waitClosed());
    ro = await t.createReadOnly('bad', 'ro');
  });
  after(async () => {
    await t?.dispose();
  });

  /** A fresh client still gets served, and the volume still holds exactly PATTERN then zeroes. */
  async function unchanged(): Promise<void> {
    const c = await Raw.connect(t.port);
    try {
      await c.handshake('bad', { structured: false });
      c.request(CMD.READ, 42n, 0, PATTERN.length + 4096);
      const r = await c.simpleReply(PATTERN.length + 4096);
      assert.equal(r.error, 0);
      assert.ok(r.data.subarray(0, PATTERN.length).equals(PATTERN), 'pattern intact');
      assert.ok(r.data.subarray(PATTERN.length).equals(Buffer.alloc(4096)), 'nothing written past it');
      c.request(CMD.READ, 43n, SIZE - 4096, 4096);
      const tail = await c.simpleReply(4096);
      assert.ok(tail.data.equals(Buffer.alloc(4096)), 'end of the volume untouched');
    } finally {
      c.destroy();
    }
  }

  async function client(structured = false, meta = false): Promise<Raw> {
    const c = await Raw.connect(t.port);
    await c.handshake('bad', { structured, meta });
    return c;
  }

  it('wrong request magic closes that connection only', async () => {
    const other = await client();
    const c = await client();
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x12345678, 0);
    h.writeUInt16BE(CMD.WRITE, 6);
    h.writeUInt32BE(4096, 24);
    c.write(Buffer.concat([h, Buffer.alloc(4096, 0xee)]));
    assert.ok(await c.waitClosed(), 'closed');
    // Garbage after a valid request is the same thing.
    const g = await client();
    g.request(CMD.READ, 1n, 0, 512);
    g.write(Buffer.from('this is not an NBD request at all, not even close'));
    assert.equal((await g.simpleReply(512)).error, 0);
    assert.ok(await g.waitClosed());
    // The connection opened before is unaffected.
    other.request(CMD.READ, 9n, 0, 16);
    const r = await other.simpleReply(16);
    assert.ok(r.data.equals(PATTERN.subarray(0, 16)));
    other.destroy();
    await unchanged();
  });

  it('unknown commands and flags get EINVAL and the connection goes on', async () => {
    for (const structured of [false, true]) {
      const c = await client(structured);
      for (const [type, flags] of [
        [99, 0],
        [8, 0], // NBD_CMD_RESIZE: not advertised
        [CMD.READ, 1 << 9],
        [CMD.TRIM, 1 << 1], // NO_HOLE on TRIM
        [CMD.READ, 1 << 5], // PAYLOAD_LEN without extended headers
      ]) {
        c.request(type, 77n, 0, 512, flags);
        const r = await c.anyReply();
        assert.equal(r.handle, 77n);
        assert.equal(r.error, EINVAL, `type ${type} flags ${flags}`);
        if (structured) {
          assert.equal(r.type, 0x8001, 'NBD_REPLY_TYPE_ERROR');
          assert.equal(r.flags & 1, 1, 'DONE');
          const msgLen = r.payload.readUInt16BE(4);
          assert.ok(msgLen > 0 && r.payload.length === 6 + msgLen, 'error message');
        }
      }
      c.request(CMD.READ, 78n, 0, 8);
      const ok = await c.anyReply();
      assert.equal(ok.error, 0);
      if (structured) assert.ok(ok.payload.subarray(8).equals(PATTERN.subarray(0, 8)));
      else assert.ok((await c.read(8)).equals(PATTERN.subarray(0, 8)));
      c.destroy();
    }
    await unchanged();
  });

  it('out-of-range, zero-length and oversized requests get EINVAL; write payloads are skipped', async () => {
    const c = await client();
    const cases: [number, bigint, number][] = [
      [CMD.READ, BigInt(SIZE), 1],
      [CMD.READ, BigInt(SIZE - 100), 4096],
      [CMD.READ, 1n << 63n, 512],
      [CMD.READ, (1n << 64n) - 256n, 512], // offset + length wraps in 64 bits
      [CMD.READ, (1n << 53n) + 1n, 1],
      [CMD.READ, 0n, 0],
      [CMD.TRIM, BigInt(SIZE - 4096), 8192],
      [CMD.TRIM, 0n, 0],
      [CMD.WRITE_ZEROES, BigInt(SIZE), 4096],
      [CMD.CACHE, BigInt(SIZE), 4096],
      [CMD.READ, 0n, 65 * 1024 * 1024], // above the advertised maximum
      [CMD.WRITE, 0n, 0],
    ];
    let handle = 100n;
    for (const [type, off, len] of cases) {
      c.request(type, ++handle, off, len);
      const r = await c.simpleReply();
      assert.equal(r.handle, handle);
      assert.equal(r.error, EINVAL, `type ${type} offset ${off} length ${len}`);
    }
    // Writes that are refused still have their payload consumed, never applied.
    for (const [off, len] of [[BigInt(SIZE - 10), 4096], [1n << 62n, 65536], [0n, 65 * 1024 * 1024]] as [bigint, number][]) {
      c.request(CMD.WRITE, ++handle, off, len, 0, Buffer.alloc(len, 0xee));
      const r = await c.simpleReply();
      assert.equal(r.handle, handle);
      assert.equal(r.error, EINVAL);
    }
    // Still in sync.
    c.request(CMD.READ, ++handle, 0, 4);
    const r = await c.simpleReply(4);
    assert.equal(r.handle, handle);
    assert.ok(r.data.equals(PATTERN.subarray(0, 4)));
    c.destroy();
    await unchanged();
  });

  it('block status without a negotiated context is EINVAL; writes to a read-only export EPERM', async () => {
    for (const structured of [false, true]) {
      const c = await client(structured, false);
      c.request(CMD.BLOCK_STATUS, 5n, 0, 4096);
      assert.equal((await c.anyReply()).error, EINVAL);
      c.destroy();
    }
    const r = await Raw.connect(t.port);
    await r.handshake(ro);
    r.request(CMD.WRITE, 6n, 0, 4096, 0, Buffer.alloc(4096, 0xee));
    assert.equal((await r.simpleReply()).error, EPERM);
    r.request(CMD.TRIM, 7n, 0, 4096);
    assert.equal((await r.simpleReply()).error, EPERM);
    r.request(CMD.WRITE_ZEROES, 8n, 0, 4096);
    assert.equal((await r.simpleReply()).error, EPERM);
    r.request(CMD.READ, 9n, 0, 16);
    assert.ok((await r.simpleReply(16)).data.equals(PATTERN.subarray(0, 16)));
    r.destroy();
    // A meta context selected for another export does not carry over to this one.
    const m = await Raw.connect(t.port);
    await m.greet(3);
    m.sendOption(OPT.STRUCTURED_REPLY);
    await m.optionReply();
    m.sendOption(OPT.SET_META, metaQuery(ro, ['base:allocation']));
    await m.optionReplies();
    m.sendOption(OPT.GO, goData('bad'));
    assert.equal((await m.optionReplies()).at(-1)!.type, REP.ACK);
    m.request(CMD.BLOCK_STATUS, 10n, 0, 4096);
    assert.equal((await m.anyReply()).error, EINVAL);
    m.destroy();
    await unchanged();
  });

  it('a client vanishing in the middle of a write payload changes nothing', async () => {
    for (const [len, sent] of [[65536, 10000], [4096, 4095], [1024 * 1024, 700000], [512, 0]]) {
      const c = await client();
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(CMD.WRITE, 6);
      h.writeBigUInt64BE(1n, 8);
      h.writeBigUInt64BE(0n, 16);
      h.writeUInt32BE(len, 24);
      c.write(Buffer.concat([h, Buffer.alloc(sent, 0xee)]));
      await new Promise((r) => setTimeout(r, 50));
      c.destroy();
    }
    // Mid-header too.
    const c = await client();
    c.write(Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0, 0]));
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    await new Promise((r) => setTimeout(r, 100));
    await unchanged();
  });

  it('a client that never reads its replies cannot make the server buffer without bound', async () => {
    const c = await client();
    const before = servingMemory(t);
    // 256 reads of 16 MiB: 4 GiB of replies nobody reads.
    const hs = [];
    for (let i = 0; i < 256; i++) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(CMD.READ, 6);
      h.writeBigUInt64BE(BigInt(i), 8);
      h.writeUInt32BE(16 * 1024 * 1024, 24);
      hs.push(h);
    }
    c.write(Buffer.concat(hs));
    // And a flood of tiny requests behind them.
    const tiny = Buffer.alloc(28);
    tiny.writeUInt32BE(0x25609513, 0);
    tiny.writeUInt16BE(CMD.FLUSH, 6);
    c.write(Buffer.concat(Array(20000).fill(tiny)));
    c.sock.pause();
    let peak = 0;
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 100));
      peak = Math.max(peak, servingMemory(t) - before);
    }
    assert.ok(peak < 600 * 1024 * 1024, `server held ${Math.round(peak / 1048576)} MiB for one client`);
    c.destroy();
    await unchanged();
  });

  it('FLUSH waits for the writes received before it', async () => {
    // Memory target: writes take 100 ms, so a flush that did not wait would be answered first.
    const own = await startTarget({ memory: { slowWriteMs: 100 } });
    try {
      await own.createVolume('f', 1 << 20);
      const c = await Raw.connect(own.port);
      await c.handshake('f');
      c.request(CMD.WRITE, 1n, 0, 4096, 0, Buffer.alloc(4096, 1));
      c.request(CMD.WRITE, 2n, 4096, 4096, 1, Buffer.alloc(4096, 2)); // FUA
      c.request(CMD.FLUSH, 3n, 0, 0);
      const order = [(await c.simpleReply()).handle, (await c.simpleReply()).handle, (await c.simpleReply()).handle];
      assert.equal(order[2], 3n, `flush answered last: ${order}`);
      c.request(CMD.READ, 4n, 0, 8192);
      const r = await c.simpleReply(8192);
      assert.ok(r.data.equals(Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)])));
      c.destroy();
    } finally {
      await own.dispose();
    }
  });
});
