// NBD handshake: what real clients (nbdinfo, libnbd) and raw sockets see during option haggling.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { needTools, run, runOk } from '../helpers/tools.js';
import { startTarget, type Target } from './target.js';
import { NbdServer } from '../../server/nbd/server.js';
import { MemoryProvider } from './memory-provider.js';
import { Raw, OPT, REP, CMD, goData, metaQuery } from './raw.js';
import { py } from './py.js';

const SIZE = 64 * 1024 * 1024;

describe('nbd handshake', () => {
  let t: Target;
  let ro: string;
  before(async () => {
    t = await startTarget();
    await t.createVolume('hs-vol', SIZE);
    await t.createVolume('hs-other', 2 * SIZE);
    ro = await t.createReadOnly('hs-vol', 'snap1');
  });
  after(async () => {
    await t?.dispose();
  });

  /** nbdinfo still answers: the server survived whatever the previous client did. */
  async function stillServes() {
    const info = JSON.parse(await runOk('nbdinfo', ['--json', t.uri('hs-vol')]));
    assert.equal(info.exports[0]['export-size'], SIZE);
  }

  it('nbdinfo --list shows every export with a description', async (c) => {
    if (!needTools(c, 'nbdinfo')) return;
    const j = JSON.parse(await runOk('nbdinfo', ['--list', '--json', t.uri('hs-vol')]));
    const byName = new Map<string, any>(j.exports.map((e: any) => [e['export-name'], e]));
    for (const n of ['hs-vol', 'hs-other', ro]) {
      assert.ok(byName.has(n), `export ${n} listed`);
      assert.equal(typeof byName.get(n).description, 'string', `${n} has a description`);
      assert.ok(byName.get(n).description.length > 0);
    }
    assert.equal(byName.get('hs-other')['export-size'], 2 * SIZE);
    assert.equal(byName.get(ro).is_read_only, true);
    assert.equal(byName.get('hs-vol').is_read_only, false);
    if (t.kind === 'memory') assert.equal(byName.get('hs-vol').description, 'Shoal volume hs-vol');
    // The human-readable listing too.
    const text = await runOk('nbdinfo', ['--list', t.uri('hs-vol')]);
    assert.match(text, /export="hs-other":\n\s+description: \S/);
  });

  it('nbdinfo --json reports size, block sizes and capabilities', async (c) => {
    if (!needTools(c, 'nbdinfo')) return;
    const e = JSON.parse(await runOk('nbdinfo', ['--json', t.uri('hs-vol')])).exports[0];
    assert.equal(e['export-name'], 'hs-vol');
    assert.equal(e['export-size'], SIZE);
    assert.equal(e.is_read_only, false);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_cache', 'can_multi_conn', 'can_df']) assert.equal(e[k], true, k);
    assert.ok(e.block_size_minimum >= 1 && e.block_size_minimum <= 4096);
    assert.ok(e.block_size_preferred >= e.block_size_minimum);
    assert.ok(e.block_size_maximum >= 64 * 1024 && e.block_size_maximum <= 64 * 1024 * 1024, `max ${e.block_size_maximum}`);
    const r = JSON.parse(await runOk('nbdinfo', ['--json', t.uri(ro)])).exports[0];
    assert.equal(r.is_read_only, true);
    for (const k of ['can_trim', 'can_zero', 'can_fast_zero']) assert.equal(r[k], false, `${k} on a read-only export`);
    assert.equal(r.can_flush, true);
  });

  it('nbdinfo --can / --is agree with what is advertised', async (c) => {
    if (!needTools(c, 'nbdinfo')) return;
    for (const cap of ['connect', 'read', 'write', 'flush', 'fua', 'trim', 'zero', 'fast-zero', 'cache', 'multi-conn', 'structured-reply', 'df']) {
      const r = await run('nbdinfo', ['--can', cap, t.uri('hs-vol')]);
      assert.equal(r.status, 0, `--can ${cap}: ${r.stderr}`);
    }
    assert.equal((await run('nbdinfo', ['--is', 'read-only', t.uri('hs-vol')])).status, 2);
    assert.equal((await run('nbdinfo', ['--is', 'read-only', t.uri(ro)])).status, 0);
    assert.equal((await run('nbdinfo', ['--can', 'write', t.uri(ro)])).status, 2);
    assert.equal((await run('nbdinfo', ['--can', 'trim', t.uri(ro)])).status, 2);
    assert.equal((await run('nbdinfo', ['--is', 'rotational', t.uri('hs-vol')])).status, 2);
    // Block status: the map is served (base:allocation negotiated).
    const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', t.uri('hs-vol')]));
    assert.ok(Array.isArray(map) && map.length >= 1);
    assert.equal(map.reduce((s: number, e: any) => s + e.length, 0), SIZE);
  });

  it('the Unix socket serves the same exports', async (c) => {
    if (!needTools(c, 'nbdinfo')) return;
    const e = JSON.parse(await runOk('nbdinfo', ['--json', t.unixUri('hs-other')])).exports[0];
    assert.equal(e['export-size'], 2 * SIZE);
  });

  it('an unknown export is refused and the server keeps serving', async (c) => {
    if (!needTools(c, 'nbdinfo')) return;
    const r = await run('nbdinfo', [t.uri('no-such-volume')]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /no-such-volume|unknown|not found/i);
    await stillServes();
  });

  it('OPT_INFO returns name, description and block size (libnbd opt mode)', async (c) => {
    if (!needTools(c, 'nbdsh')) return;
    const out = await py(
      t.uri('hs-vol'),
      `
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.set_request_block_size(True)
h.connect_uri(URI)
h.set_export_name('hs-other')
h.opt_info()
r = {'size': h.get_size(), 'desc': h.get_export_description(), 'canon': h.get_canonical_export_name(),
     'min': h.get_block_size(nbd.SIZE_MINIMUM), 'pref': h.get_block_size(nbd.SIZE_PREFERRED), 'max': h.get_block_size(nbd.SIZE_MAXIMUM),
     'ro': h.is_read_only()}
h.set_export_name('missing')
try:
    h.opt_info()
    r['missing'] = 'ok'
except nbd.Error as e:
    r['missing'] = str(e)
# The handshake continues after a failed option: list and then GO still work.
r['list'] = []
h.opt_list(lambda name, desc: r['list'].append(name) or 0)
r['ctx'] = []
h.opt_list_meta_context(lambda name: r['ctx'].append(name) or 0)
h.set_export_name('hs-vol')
h.opt_go()
r['go_size'] = h.get_size()
print(json.dumps(r))
h.shutdown()
`,
    );
    const r = JSON.parse(out);
    assert.equal(r.size, 2 * SIZE);
    assert.equal(r.canon, 'hs-other');
    assert.ok(r.desc.length > 0);
    assert.ok(r.min >= 1 && r.pref >= r.min && r.max >= r.pref);
    assert.equal(r.ro, false);
    assert.notEqual(r.missing, 'ok');
    assert.ok(r.list.includes('hs-vol') && r.list.includes(ro));
    assert.deepEqual(r.ctx, ['base:allocation']);
    assert.equal(r.go_size, SIZE);
  });

  it('raw: unknown options get ERR_UNSUP and the handshake continues', async () => {
    const c = await Raw.connect(t.port);
    try {
      const hf = await c.greet(3);
      assert.equal(hf & 3, 3, 'FIXED_NEWSTYLE and NO_ZEROES offered');
      for (const opt of [4242, 12, 11, 0]) {
        c.sendOption(opt, Buffer.from('junk'));
        const r = await c.optionReply();
        assert.equal(r.opt, opt);
        assert.equal(r.type, REP.ERR_UNSUP, `option ${opt}`);
      }
      // STARTTLS: refused (no TLS configured), handshake goes on.
      c.sendOption(OPT.STARTTLS);
      const tls = await c.optionReply();
      assert.ok(tls.type === REP.ERR_POLICY || tls.type === REP.ERR_UNSUP);
      // LIST: one SERVER reply per export, then ACK.
      c.sendOption(OPT.LIST);
      const list = await c.optionReplies();
      assert.equal(list.at(-1)!.type, REP.ACK);
      const names = list.filter((r) => r.type === REP.SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
      assert.ok(names.includes('hs-vol') && names.includes('hs-other'));
      // LIST with data is invalid.
      c.sendOption(OPT.LIST, Buffer.from('x'));
      assert.equal((await c.optionReply()).type, REP.ERR_INVALID);
      // Meta contexts need structured replies first.
      c.sendOption(OPT.SET_META, metaQuery('hs-vol', ['base:allocation']));
      assert.equal((await c.optionReply()).type, REP.ERR_INVALID);
      c.sendOption(OPT.STRUCTURED_REPLY);
      assert.equal((await c.optionReply()).type, REP.ACK);
      // "base:" lists the base namespace.
      c.sendOption(OPT.LIST_META, metaQuery('hs-vol', ['base:']));
      const lm = await c.optionReplies();
      assert.equal(lm.length, 2);
      assert.equal(lm[0].type, REP.META_CONTEXT);
      assert.equal(lm[0].data.subarray(4).toString(), 'base:allocation');
      // A query for something we do not have: just ACK.
      c.sendOption(OPT.SET_META, metaQuery('hs-vol', ['x-other:thing']));
      assert.deepEqual((await c.optionReplies()).map((r) => r.type), [REP.ACK]);
      // Truncated meta query (count says 2, one present).
      const bad = metaQuery('hs-vol', ['base:allocation']);
      bad.writeUInt32BE(2, 4 + 6);
      c.sendOption(OPT.SET_META, bad);
      assert.equal((await c.optionReply()).type, REP.ERR_INVALID);
      c.sendOption(OPT.SET_META, metaQuery('hs-vol', ['base:allocation']));
      const sm = await c.optionReplies();
      assert.equal(sm[0].type, REP.META_CONTEXT);
      assert.notEqual(sm[0].data.readUInt32BE(0), 0, "SET_META_CONTEXT hands out a non-zero context id");
      // GO for an unknown export: ERR_UNKNOWN, still negotiating.
      c.sendOption(OPT.GO, goData('nope'));
      assert.equal((await c.optionReply()).type, REP.ERR_UNKNOWN);
      // GO whose name length lies about the option length: ERR_INVALID.
      const lie = goData('hs-vol');
      lie.writeUInt32BE(1000, 0);
      c.sendOption(OPT.GO, lie);
      assert.equal((await c.optionReply()).type, REP.ERR_INVALID);
      // INFO with NAME, DESCRIPTION, BLOCK_SIZE requests.
      c.sendOption(OPT.INFO, goData('hs-vol', [1, 2, 3]));
      const info = await c.optionReplies();
      const kinds = info.filter((r) => r.type === REP.INFO).map((r) => r.data.readUInt16BE(0));
      assert.deepEqual([...kinds].sort(), [0, 1, 2, 3]);
      assert.equal(info.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 1)!.data.subarray(2).toString(), 'hs-vol');
      // Finally GO, then a read works and block status is allowed.
      c.sendOption(OPT.GO, goData('hs-vol'));
      const go = await c.optionReplies();
      assert.equal(go.at(-1)!.type, REP.ACK);
      c.request(CMD.BLOCK_STATUS, 7n, 0, 4096);
      const bs = await c.anyReply();
      assert.equal(bs.type, 5);
      assert.equal(bs.handle, 7n);
      c.request(CMD.DISC, 8n, 0, 0);
      assert.ok(await c.waitClosed());
    } finally {
      c.destroy();
    }
  });

  it('raw: NBD_OPT_EXPORT_NAME (old clients), with and without NO_ZEROES', async () => {
    for (const noZeroes of [true, false]) {
      const c = await Raw.connect(t.port);
      try {
        await c.greet(noZeroes ? 3 : 1);
        c.sendOption(OPT.EXPORT_NAME, Buffer.from('hs-vol'));
        const r = await c.read(noZeroes ? 10 : 134);
        assert.equal(Number(r.readBigUInt64BE(0)), SIZE);
        assert.equal(r.readUInt16BE(8) & 1, 1, 'HAS_FLAGS');
        if (!noZeroes) assert.ok(r.subarray(10).equals(Buffer.alloc(124)));
        c.request(CMD.READ, 0xdeadbeefcafen, 4096, 512);
        const rep = await c.simpleReply(512);
        assert.equal(rep.error, 0);
        assert.equal(rep.handle, 0xdeadbeefcafen);
        assert.equal(rep.data.length, 512);
      } finally {
        c.destroy();
      }
    }
    // Unknown name with EXPORT_NAME: the only possible answer is closing.
    const c = await Raw.connect(t.port);
    await c.greet(3);
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    assert.ok(await c.waitClosed());
  });

  it('raw: malformed handshakes close that connection only', async (c) => {
    const cases: [string, (r: Raw) => Promise<void>][] = [
      ['unknown client flags', async (r) => void (await r.greet(0x80))],
      ['bad option magic', async (r) => {
        await r.greet(3);
        r.write(Buffer.from('GARBAGE!GARBAGE!GARBAGE!'));
      }],
      ['option length too large', async (r) => {
        await r.greet(3);
        r.sendOption(OPT.GO, Buffer.alloc(0), 0x7fffffff);
      }],
      ['garbage instead of client flags', async (r) => {
        await r.read(18);
        r.write(Buffer.from('\xff\xff\xff\xffhello there, not nbd at all'.repeat(4)));
      }],
      ['non-fixed client sending a non-EXPORT_NAME option', async (r) => {
        await r.greet(0);
        r.sendOption(OPT.LIST);
      }],
      ['client aborts', async (r) => {
        await r.greet(3);
        r.sendOption(OPT.ABORT);
        assert.equal((await r.optionReply()).type, REP.ACK);
      }],
    ];
    for (const [name, fn] of cases) {
      const r = await Raw.connect(t.port);
      await fn(r);
      assert.ok(await r.waitClosed(), `${name}: connection closed`);
      r.destroy();
    }
    // A client that lies about an option's length and then hangs up mid-option.
    const r = await Raw.connect(t.port);
    await r.greet(3);
    r.sendOption(OPT.GO, Buffer.alloc(3), 100);
    r.destroy();
    if (needTools(c, 'nbdinfo')) await stillServes();
  });

  it('a stuck client is dropped after the handshake timeout', async () => {
    // Engine property, tested in-process with a short timeout whatever the target.
    const provider = new MemoryProvider();
    provider.add('x', 1 << 20);
    const s = new NbdServer({ provider, handshakeTimeoutMs: 300 });
    const { port } = await s.listenTcp('127.0.0.1', 0);
    try {
      const r = await Raw.connect(port);
      await r.greet(3);
      const t0 = Date.now();
      assert.ok(await r.waitClosed(5000));
      assert.ok(Date.now() - t0 >= 200);
      // A client that finished the handshake is not subject to it.
      const ok = await Raw.connect(port);
      await ok.handshake('x');
      await new Promise((res) => setTimeout(res, 500));
      ok.request(CMD.READ, 1n, 0, 16);
      assert.equal((await ok.simpleReply(16)).error, 0);
      ok.destroy();
    } finally {
      await s.close();
    }
    assert.equal(provider.openCount, 0, 'exports closed');
  });
});
