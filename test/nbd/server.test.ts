// NbdServer as the daemon embeds it: Unix socket handling, close(), observer hooks, revoke.
// These are properties of the engine itself, so they run in-process over the memory provider.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer } from '../../server/nbd/server.js';
import type { NbdObserver } from '../../server/nbd/observer.js';
import { MemoryProvider } from './memory-provider.js';
import { Raw, CMD, ESHUTDOWN, requestMessage } from './raw.js';
import { needTools, runOk } from '../helpers/tools.js';

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'shoal-nbd-srv-'));
}

describe('NbdServer', () => {
  it('listenUnix replaces a socket left by a killed process, but nothing else', async (c) => {
    const dir = tmp();
    const path = join(dir, 'nbd.sock');
    try {
      // A process that listens on the path and is killed with -9 leaves the socket file behind.
      const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise((r) => child.stdout!.once('data', r));
      // While it is alive, we must not steal its socket.
      const provider = new MemoryProvider();
      provider.add('u', 1 << 20);
      const s1 = new NbdServer({ provider });
      await assert.rejects(s1.listenUnix(path), /listening/);
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      assert.ok(existsSync(path), 'stale socket file left behind');
      const s = new NbdServer({ provider });
      await s.listenUnix(path);
      if (needTools(c, 'nbdinfo')) {
        const j = JSON.parse(await runOk('nbdinfo', ['--json', `nbd+unix:///u?socket=${path}`]));
        assert.equal(j.exports[0]['export-size'], 1 << 20);
      }
      await s.close();
      await s1.close();
      // A regular file in the way is an error, and is left alone.
      writeFileSync(path, 'precious');
      await assert.rejects(new NbdServer({ provider }).listenUnix(path), /not a socket/);
      assert.equal(readFileSync(path, 'utf8'), 'precious');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('observer hooks, and close() ends idle and busy connections and releases exports', async () => {
    const events: string[] = [];
    let open = 0;
    const ops = new Map<string, number>();
    const observer: NbdObserver = {
      connectionOpened: () => void open++,
      connectionClosed: () => void open--,
      request: (op, exp, bytes, seconds, ok) => {
        assert.equal(exp, 'o');
        assert.ok(seconds >= 0 && Number.isFinite(seconds));
        if (op === 'read' || op === 'write') assert.equal(bytes, 4096);
        ops.set(`${op}:${ok}`, (ops.get(`${op}:${ok}`) ?? 0) + 1);
        events.push(op);
      },
    };
    const provider = new MemoryProvider({ slowBelow: 4096, slowMs: 300 });
    provider.add('o', 1 << 20);
    const s = new NbdServer({ provider, observer, shutdownGraceMs: 2000 });
    const { port } = await s.listenTcp('127.0.0.1', 0);
    const idle = await Raw.connect(port);
    await idle.handshake('o');
    const busy = await Raw.connect(port);
    await busy.handshake('o', { structured: true, meta: true });
    busy.request(CMD.WRITE, 1n, 8192, 4096, 0, Buffer.alloc(4096, 5));
    assert.equal((await busy.anyReply()).error, 0);
    busy.request(CMD.TRIM, 2n, 8192, 4096);
    busy.request(CMD.WRITE_ZEROES, 3n, 8192, 4096);
    busy.request(CMD.FLUSH, 4n, 0, 0);
    busy.request(CMD.CACHE, 5n, 0, 4096);
    busy.request(CMD.BLOCK_STATUS, 6n, 0, 4096);
    busy.request(CMD.READ, 7n, 1 << 30, 4096); // out of range: not counted (never ran)
    for (let i = 0; i < 6; i++) await busy.anyReply();
    const handshaking = await Raw.connect(port);
    busy.request(CMD.READ, 8n, 0, 4096); // slow: in flight when close() starts
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(open, 3);
    assert.equal(s.connectionCount, 3);
    const t0 = Date.now();
    await s.close();
    assert.ok(Date.now() - t0 < 2500, 'close() did not hang');
    // The in-flight read was answered before the connection closed.
    const r = await busy.anyReply();
    assert.equal(r.handle, 8n);
    assert.equal(r.error, 0);
    assert.ok(await idle.waitClosed() && await busy.waitClosed() && await handshaking.waitClosed());
    assert.equal(open, 0, 'every connectionOpened has its connectionClosed');
    assert.equal(provider.openCount, 0, 'every export closed');
    for (const op of ['write', 'trim', 'write_zeroes', 'flush', 'cache', 'block_status', 'read']) assert.ok(ops.get(`${op}:true`), `observed ${op}`);
    // And new clients are refused.
    await assert.rejects(Raw.connect(port));
  });

  it('revoke fails every request in flight with ESHUTDOWN (structured) and releases the export', async () => {
    const provider = new MemoryProvider({ slowBelow: 4096, slowMs: 200 });
    provider.add('r', 1 << 20);
    provider.add('keep', 1 << 20);
    const s = new NbdServer({ provider });
    const { port } = await s.listenTcp('127.0.0.1', 0);
    try {
      const c = await Raw.connect(port);
      await c.handshake('r', { structured: true });
      const other = await Raw.connect(port);
      await other.handshake('keep');
      // Three in flight: the first, one in the middle and the last of the list of unanswered requests.
      c.write(Buffer.concat([requestMessage(CMD.READ, 1n, 0, 4096), requestMessage(CMD.READ, 2n, 512, 16), requestMessage(CMD.READ, 3n, 1024, 16)]));
      await new Promise((r) => setTimeout(r, 20));
      provider.remove('r');
      const handles: bigint[] = [];
      for (let i = 0; i < 3; i++) {
        const rep = await c.anyReply();
        handles.push(rep.handle);
        assert.equal(rep.error, ESHUTDOWN);
        assert.equal(rep.type, 0x8001);
      }
      assert.deepEqual(handles.sort(), [1n, 2n, 3n]);
      assert.ok(await c.waitClosed());
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(provider.openCount, 1, 'revoked export released, the other kept');
      other.request(CMD.READ, 2n, 8192, 16);
      assert.equal((await other.simpleReply(16)).error, 0);
      other.destroy();
    } finally {
      await s.close();
    }
  });

  it('TCP sockets have TCP_NODELAY (4 KiB reads at depth 1 are not Nagle-delayed)', async () => {
    const provider = new MemoryProvider();
    provider.add('n', 1 << 20);
    const s = new NbdServer({ provider });
    const { port } = await s.listenTcp('127.0.0.1', 0);
    try {
      const c = await Raw.connect(port);
      c.sock.setNoDelay(true);
      await c.handshake('n');
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 200; i++) {
        c.request(CMD.WRITE, BigInt(i), 0, 100, 0, Buffer.alloc(100, i));
        await c.simpleReply();
      }
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      assert.ok(ms < 2000, `200 synchronous small writes took ${ms} ms`);
      c.destroy();
    } finally {
      await s.close();
    }
  });
});
