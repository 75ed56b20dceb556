// NBD_OPT_STARTTLS the way an attacker on the path would use it: options injected before it,
// bytes injected right behind it, plaintext against --tls require, a second STARTTLS, a TLS
// handshake that never finishes. Each gets a clear refusal; other clients keep being served and
// the volume does not change.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { Raw, OPT, REP, CMD, EINVAL, goData, metaQuery, optionMessage } from '../nbd/raw.js';
import { startTlsDaemon, rawTls, patternIntact, tlsOptions, type Credentials, PATTERN } from './tls-daemon.js';

const NBD_FLAG_SEND_DF = 1 << 7;


describe('STARTTLS safety', () => {
  let keys: TlsKeys;
  let on: Daemon; // --tls on: plaintext and TLS both served
  let req: Daemon; // --tls require
  let alice: Credentials;

  before(async () => {
    if (!haveGnutlsTools()) return;
    keys = await makeTlsKeys();
    alice = { psk: { file: keys.psk, identity: 'alice' } };
    on = await startTlsDaemon(['--tls', 'on', '--tls-psk', keys.psk], (d) => rawTls(d, alice));
    req = await startTlsDaemon(['--tls', 'require', '--tls-psk', keys.psk], (d) => rawTls(d, alice));
  });
  after(async () => {
    await on?.dispose();
    await req?.dispose();
    keys?.dispose();
  });

  it('require: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD in plaintext; nothing is listed or opened', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const c = await Raw.connect(req.nbdPort);
    await c.greet(3);
    const cases: [number, Buffer][] = [
      [OPT.LIST, Buffer.alloc(0)],
      [OPT.GO, goData('v')],
      [OPT.INFO, goData('v')],
      [OPT.STRUCTURED_REPLY, Buffer.alloc(0)],
      [OPT.SET_META, metaQuery('v', ['base:allocation'])],
      [OPT.LIST_META, metaQuery('v', [])],
      [99, Buffer.from('whatever')],
    ];
    for (const [opt, data] of cases) {
      c.sendOption(opt, data);
      const replies = await c.optionReplies();
      assert.equal(replies.length, 1, `option ${opt}: one reply, no export listed or described`);
      assert.equal(replies[0]!.type, REP.ERR_TLS_REQD, `option ${opt}`);
      assert.match(replies[0]!.data.toString(), /requires TLS/);
    }
    // The connection may still upgrade and be served.
    c.sendOption(OPT.STARTTLS);
    assert.equal((await c.optionReply()).type, REP.ACK);
    await c.startTls(tlsOptions(alice));
    const { size } = await c.handshake('v', { greeted: true });
    assert.ok(size > 0);
    c.destroy();

    // ABORT is answered.
    const a = await Raw.connect(req.nbdPort);
    await a.greet(3);
    a.sendOption(OPT.ABORT);
    assert.equal((await a.optionReply()).type, REP.ACK);
    assert.ok(await a.waitClosed());

    // EXPORT_NAME cannot be refused with an error reply: the connection is closed, no export data sent.
    const e = await Raw.connect(req.nbdPort);
    await e.greet(3);
    e.sendOption(OPT.EXPORT_NAME, Buffer.from('v'));
    assert.ok(await e.waitClosed(), 'closed');
    await assert.rejects(e.read(1, 100), /closed/);
    await patternIntact(req, alice);
  });

  it('require: libnbd without TLS is refused with a message, and the refusal is logged', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    const r = await run('nbdinfo', [req.uri('v')]);
    assert.notEqual(r.status, 0);
    // libnbd 1.14 names ENOTSUP; later versions say "server requires TLS encryption first".
    assert.match(r.stderr, /TLS|not supported/i);
    await req.waitForLog(/"msg":"nbd: plaintext client refused: TLS is required"/);
    await patternIntact(req, alice);
  });

  it('options negotiated in plaintext are forgotten when TLS starts (CVE-2021-3716)', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const c = await Raw.connect(on.nbdPort);
    await c.greet(3);
    // What a meddler would slip in before the client's STARTTLS: structured replies and a meta context.
    c.sendOption(OPT.STRUCTURED_REPLY);
    assert.equal((await c.optionReply()).type, REP.ACK);
    c.sendOption(OPT.SET_META, metaQuery('v', ['base:allocation']));
    const meta = await c.optionReplies();
    assert.equal(meta[0]!.type, REP.META_CONTEXT, 'selected in plaintext');
    c.sendOption(OPT.STARTTLS);
    assert.equal((await c.optionReply()).type, REP.ACK);
    await c.startTls(tlsOptions(alice));
    // Over TLS the client asks for nothing but GO: simple replies, no meta context.
    const { flags } = await c.handshake('v', { greeted: true });
    assert.equal(flags & NBD_FLAG_SEND_DF, 0, 'DF is only advertised with structured replies');
    c.request(CMD.READ, 1n, 0, 4096);
    const r = await c.simpleReply(4096);
    assert.equal(r.error, 0);
    assert.ok(r.data.equals(PATTERN.subarray(0, 4096)));
    c.request(CMD.BLOCK_STATUS, 2n, 0, 4096);
    assert.equal((await c.simpleReply()).error, EINVAL, 'no meta context survived STARTTLS');
    c.destroy();
  });

  it('bytes sent right behind STARTTLS, before the ClientHello, are discarded, never processed', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    for (const d of [on, req]) {
      const c = await Raw.connect(d.nbdPort);
      await c.greet(3);
      // One write: STARTTLS, then plaintext options a meddler appends (structured replies, LIST, GO).
      c.write(Buffer.concat([optionMessage(OPT.STARTTLS), optionMessage(OPT.STRUCTURED_REPLY), optionMessage(OPT.LIST), optionMessage(OPT.GO, goData('v'))]));
      assert.equal((await c.optionReply()).type, REP.ACK);
      // startTls fails if any plaintext reply to the injected options arrived after the ACK.
      await c.startTls(tlsOptions(alice));
      await d.waitForLog(/"bytes":\d+,"msg":"nbd: discarded plaintext sent after STARTTLS"/);
      // The first reply over TLS answers the first option sent over TLS.
      c.sendOption(OPT.LIST);
      const list = await c.optionReplies();
      assert.ok(list.every((r) => r.opt === OPT.LIST), 'no reply to an injected option');
      assert.ok(list.some((r) => r.type === REP.SERVER && r.data.subarray(4).toString().startsWith('v')));
      const { flags } = await c.handshake('v', { greeted: true });
      assert.equal(flags & NBD_FLAG_SEND_DF, 0, 'the injected STRUCTURED_REPLY is not in effect');
      c.request(CMD.READ, 3n, 0, 512);
      assert.ok((await c.simpleReply(512)).data.equals(PATTERN.subarray(0, 512)));
      c.destroy();
    }
  });

  it('STARTTLS with TLS already up is NBD_REP_ERR_INVALID, not a second handshake; with data, too', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const c = await rawTls(req, alice);
    c.sendOption(OPT.STARTTLS);
    const again = await c.optionReply();
    assert.equal(again.type, REP.ERR_INVALID);
    assert.match(again.data.toString(), /already/);
    const { size } = await c.handshake('v', { greeted: true });
    assert.ok(size > 0, 'the connection goes on over the first TLS session');
    c.destroy();

    const p = await Raw.connect(req.nbdPort);
    await p.greet(3);
    p.sendOption(OPT.STARTTLS, Buffer.from('junk'));
    assert.equal((await p.optionReply()).type, REP.ERR_INVALID);
    p.destroy();
  });

  it('a TLS handshake that stalls is timed out like the plain one; others are served meanwhile', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const before = (req.log.match(/"tls":true,"msg":"nbd: handshake timed out"/g) ?? []).length;
    const stalled: Raw[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await Raw.connect(req.nbdPort);
      await s.greet(3);
      s.sendOption(OPT.STARTTLS);
      assert.equal((await s.optionReply()).type, REP.ACK);
      // Half a ClientHello record header for one, nothing at all for the others.
      if (i === 0) s.write(Buffer.from([0x16, 0x03, 0x01]));
      stalled.push(s);
    }
    const started = Date.now();
    // Served while the stalled handshakes hang.
    await patternIntact(req, alice);
    for (const s of stalled) assert.ok(await s.waitClosed(6000), 'stalled TLS handshake closed');
    const took = Date.now() - started;
    assert.ok(took >= 1000 && took < 6000, `closed after ${took} ms (timeout 2 s)`);
    await req.waitForLog((log) => (log.match(/"tls":true,"msg":"nbd: handshake timed out"/g) ?? []).length >= before + 3);
    await patternIntact(req, alice);
  });

  it('garbage instead of a ClientHello fails that connection only, with a log line', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const s = await Raw.connect(req.nbdPort);
    await s.greet(3);
    s.sendOption(OPT.STARTTLS);
    assert.equal((await s.optionReply()).type, REP.ACK);
    s.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.ok(await s.waitClosed(), 'closed');
    await req.waitForLog(/"reason":"TLS handshake failed: [^"]+","msg":"nbd: handshake failed, closing"/);
    await patternIntact(req, alice);
  });
});
