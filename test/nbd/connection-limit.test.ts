// --max-connections (default 1024): connection 1025 is told why in the handshake
// (NBD_REP_ERR_SHUTDOWN with a message) and closed, with a log line; once one closes, new clients
// are served again. Refused clients are not counted as connections.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { Raw, OPT, REP, CMD, goData } from './raw.js';

const LIMIT = 1024;

describe('NBD connection limit', () => {
  let d: Daemon;
  const held: Raw[] = [];
  before(async () => {
    d = await startDaemon(); // the default limit
    await d.createVolume('v', 1024 * 1024);
  });
  after(async () => {
    for (const c of held) c.destroy();
    await d?.dispose();
  });

  async function connections(): Promise<number> {
    const m = /^shoal_nbd_connections (\d+)$/m.exec((await d.api('GET', '/metrics')).body);
    return Number(m![1]);
  }

  it(`refuses connection ${LIMIT + 1} with a reason, and serves again once one closes`, async (t) => {
    // Idle clients that finished the handshake, like attached block devices.
    for (let i = 0; i < LIMIT; i++) {
      const c = await Raw.connect(d.nbdPort);
      held.push(c);
      await c.handshake('v');
    }
    assert.equal(await connections(), LIMIT);

    const over = await Raw.connect(d.nbdPort);
    await over.greet(3);
    over.sendOption(OPT.GO, goData('v'));
    const r = await over.optionReply();
    assert.equal(r.type, REP.ERR_SHUTDOWN);
    assert.match(r.data.toString(), /too many connections \(limit 1024\); try again later/);
    over.sendOption(OPT.ABORT);
    assert.equal((await over.optionReply()).type, REP.ACK);
    assert.ok(await over.waitClosed());
    await d.waitForLog(/"limit":1024,"refused":\d+,"peer":"127\.0\.0\.1","msg":"nbd: connection limit reached, refusing new clients"/);

    const clients = needTools(t, 'nbdinfo', 'qemu-img');
    if (clients) {
      const lib = await run('nbdinfo', [d.uri('v')]);
      assert.notEqual(lib.status, 0);
      // libnbd 1.14 prints strerror(ESHUTDOWN); later versions "server is shutting down".
      assert.match(lib.stderr, /transport endpoint shutdown|shutting down/, 'libnbd names NBD_REP_ERR_SHUTDOWN');
      const qemu = await run('qemu-img', ['info', d.uri('v')]);
      assert.notEqual(qemu.status, 0);
      assert.match(qemu.stderr, /too many connections \(limit 1024\)/, 'QEMU shows the server\'s message');
    }
    // A refused client that never says anything is closed too, and is never counted.
    const silent = await Raw.connect(d.nbdPort);
    assert.ok(await silent.waitClosed(8000), 'silent over-limit client closed');
    assert.equal(await connections(), LIMIT);

    // The held connections still work.
    const first = held[0]!;
    first.request(CMD.READ, 1n, 0, 512);
    assert.equal((await first.simpleReply(512)).error, 0);

    // One leaves; the next client is served.
    held.pop()!.destroy();
    const deadline = Date.now() + 5000;
    for (;;) {
      const c = await Raw.connect(d.nbdPort);
      await c.greet(3);
      c.sendOption(OPT.GO, goData('v'));
      const replies = await c.optionReplies();
      const last = replies[replies.length - 1]!;
      if (last.type === REP.ACK) {
        held.push(c);
        break;
      }
      c.destroy();
      assert.equal(last.type, REP.ERR_SHUTDOWN);
      assert.ok(Date.now() < deadline, 'served again within 5 s of a close');
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(await connections(), LIMIT);
    held.pop()!.destroy();
    if (clients) {
      // And a real client too, once that close has been seen.
      const until = Date.now() + 5000;
      while ((await run('nbdinfo', [d.uri('v')])).status !== 0) {
        assert.ok(Date.now() < until, 'nbdinfo served again');
        await new Promise((res) => setTimeout(res, 50));
      }
      assert.match(await runOk('nbdinfo', [d.uri('v')]), /export-size: 1048576/);
    }
  });
});
