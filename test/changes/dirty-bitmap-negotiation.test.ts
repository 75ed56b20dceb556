// Negotiating qemu:dirty-bitmap:SNAPSHOT meta contexts (doc/proto.md "Metadata querying", qemu's
// docs/interop/nbd.rst): what LIST offers for which export, what SET selects, several contexts
// answered in one BLOCK_STATUS, and what happens to bad queries and to a base deleted meanwhile.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, nbdPython } from '../helpers/tools.js';
import { qemuIo, MiB } from '../helpers/volume-io.js';
import { Raw, OPT, REP, CMD, EINVAL, goData, metaQuery } from '../nbd/raw.js';

const REP_ERR_TOO_BIG = 0x80000009;

let d: Daemon;
before(async () => {
  d = await startDaemon();
  await d.createVolume('nv', 8 * MiB);
  await qemuIo(d, 'nv', ['write -P 0x01 0 4M']);
  for (const s of ['s1', 's2']) {
    assert.equal((await d.api('POST', '/v1/volumes/nv/snapshots', { name: s })).status, 201);
    await qemuIo(d, 'nv', [s === 's1' ? 'write -P 0x02 1M 64k' : 'write -P 0x03 2M 4k']);
  }
});
after(async () => {
  await d?.dispose();
});

/** A raw connection past the greeting, with structured replies on. */
async function structured(): Promise<Raw> {
  const c = await Raw.connect(d.nbdPort);
  await c.greet(3);
  c.sendOption(OPT.STRUCTURED_REPLY);
  assert.equal((await c.optionReply()).type, REP.ACK);
  return c;
}

/** The context names (and ids) of a LIST or SET reply, asserting it ends in ACK. */
async function contexts(c: Raw, opt: number, exportName: string, queries: string[]): Promise<Array<{ id: number; name: string }>> {
  c.sendOption(opt, metaQuery(exportName, queries));
  const replies = await c.optionReplies();
  assert.equal(replies.at(-1)!.type, REP.ACK, `reply 0x${replies.at(-1)!.type.toString(16)}: ${replies.at(-1)!.data}`);
  return replies.filter((r) => r.type === REP.META_CONTEXT).map((r) => ({ id: r.data.readUInt32BE(0), name: r.data.subarray(4).toString() }));
}

const names = (cs: Array<{ name: string }>) => cs.map((c) => c.name).sort();

test('LIST offers the older snapshots of the export, by exact name or with qemu: and qemu:dirty-bitmap: wildcards', async () => {
  const c = await structured();
  try {
    const L = OPT.LIST_META;
    assert.deepEqual(names(await contexts(c, L, 'nv', [])), ['base:allocation', 'qemu:dirty-bitmap:s1', 'qemu:dirty-bitmap:s2']);
    assert.deepEqual(names(await contexts(c, L, 'nv', ['qemu:dirty-bitmap:'])), ['qemu:dirty-bitmap:s1', 'qemu:dirty-bitmap:s2']);
    assert.deepEqual(names(await contexts(c, L, 'nv', ['qemu:'])), ['qemu:dirty-bitmap:s1', 'qemu:dirty-bitmap:s2']);
    assert.deepEqual(names(await contexts(c, L, 'nv', ['qemu:dirty-bitmap:s2', 'base:'])), ['base:allocation', 'qemu:dirty-bitmap:s2']);
    // A snapshot export offers only snapshots older than itself; the oldest, none.
    assert.deepEqual(names(await contexts(c, L, 'nv@s2', ['qemu:dirty-bitmap:'])), ['qemu:dirty-bitmap:s1']);
    assert.deepEqual(names(await contexts(c, L, 'nv@s1', ['qemu:dirty-bitmap:'])), []);
    // Unknown snapshots, other volumes' names, unknown exports and namespaces: nothing, no error.
    assert.deepEqual(await contexts(c, L, 'nv', ['qemu:dirty-bitmap:nope', 'qemu:dirty-bitmap:nv@s1', 'x-other:']), []);
    assert.deepEqual(names(await contexts(c, L, 'no-such-export', ['qemu:'])), []);
    // LIST reserves the id: it is 0.
    assert.ok((await contexts(c, L, 'nv', [])).every((x) => x.id === 0));
  } finally {
    c.destroy();
  }
});

test('SET selects exact names only, with distinct non-zero ids; the unknown, the newer and the wildcard select nothing', async () => {
  const c = await structured();
  try {
    const S = OPT.SET_META;
    const sel = await contexts(c, S, 'nv', ['qemu:dirty-bitmap:s1', 'base:allocation', 'qemu:dirty-bitmap:s2', 'qemu:dirty-bitmap:s1']);
    assert.deepEqual(names(sel), ['base:allocation', 'qemu:dirty-bitmap:s1', 'qemu:dirty-bitmap:s2']);
    assert.ok(sel.every((x) => x.id !== 0));
    assert.equal(new Set(sel.map((x) => x.id)).size, 3);
    assert.deepEqual(await contexts(c, S, 'nv', ['qemu:dirty-bitmap:', 'qemu:', 'qemu:dirty-bitmap:nope']), []);
    assert.deepEqual(await contexts(c, S, 'nv@s1', ['qemu:dirty-bitmap:s2']), [], 'a newer snapshot is not a base');
  } finally {
    c.destroy();
  }
});

test('a failed SET clears the selection, and BLOCK_STATUS without one is EINVAL', async () => {
  const c = await structured();
  try {
    assert.equal((await contexts(c, OPT.SET_META, 'nv', ['qemu:dirty-bitmap:s1'])).length, 1);
    const bad = metaQuery('nv', ['qemu:dirty-bitmap:s1']);
    bad.writeUInt32BE(5, 4 + 2); // query count past the option's end
    c.sendOption(OPT.SET_META, bad);
    assert.equal((await c.optionReply()).type, REP.ERR_INVALID);
    c.sendOption(OPT.GO, goData('nv'));
    assert.equal((await c.optionReplies()).at(-1)!.type, REP.ACK);
    c.request(CMD.BLOCK_STATUS, 7n, 0, 4096);
    const r = await c.anyReply();
    assert.equal(r.handle, 7n);
    assert.equal(r.error, EINVAL);
  } finally {
    c.destroy();
  }
});

test('more contexts than one SET may select: NBD_REP_ERR_TOO_BIG, and nothing selected', async () => {
  await d.createVolume('many', MiB);
  for (let i = 0; i < 64; i++) assert.equal((await d.api('POST', '/v1/volumes/many/snapshots', { name: `m${i}` })).status, 201);
  const all = ['base:allocation', ...Array.from({ length: 64 }, (_, i) => `qemu:dirty-bitmap:m${i}`)];
  const ok = await structured();
  try {
    assert.equal((await contexts(ok, OPT.SET_META, 'many', all.slice(0, 64))).length, 64);
  } finally {
    ok.destroy();
  }
  const c = await structured();
  try {
    assert.equal((await contexts(c, OPT.SET_META, 'many', ['base:allocation'])).length, 1);
    c.sendOption(OPT.SET_META, metaQuery('many', all));
    const r = await c.optionReply();
    assert.equal(r.type, REP_ERR_TOO_BIG, `0x${r.type.toString(16)}`);
    assert.match(r.data.toString(), /at most 64/);
    c.sendOption(OPT.GO, goData('many'));
    assert.equal((await c.optionReplies()).at(-1)!.type, REP.ACK);
    c.request(CMD.BLOCK_STATUS, 9n, 0, 4096);
    assert.equal((await c.anyReply()).error, EINVAL, 'the earlier selection went with the failed SET');
  } finally {
    c.destroy();
  }
});

test('one BLOCK_STATUS answers every selected context, each in its own chunk; REQ_ONE gives one extent each', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const r = await nbdPython(
    `
import nbd
h = nbd.NBD()
for c in ('base:allocation', 'qemu:dirty-bitmap:s1', 'qemu:dirty-bitmap:s2'):
    h.add_meta_context(c)
h.connect_uri(${JSON.stringify(d.unixUri('nv'))})
seen = {}
def cb(meta, off, entries, err):
    seen[meta] = list(entries)
    return 0
h.block_status(8 << 20, 0, cb)
assert seen['base:allocation'][:2] == [4 << 20, 0], seen
# s1 -> now: 1M+64k (after s1) and 2M+4k (after s2) are dirty; s2 -> now: only 2M+4k.
assert seen['qemu:dirty-bitmap:s1'] == [1 << 20, 0, 64 << 10, 1, (1 << 20) - (64 << 10), 0, 4096, 1, (6 << 20) - 4096, 0], seen
assert seen['qemu:dirty-bitmap:s2'] == [2 << 20, 0, 4096, 1, (6 << 20) - 4096, 0], seen
seen.clear()
h.block_status((7 << 20) - 4096, (1 << 20) + 4096, cb, nbd.CMD_FLAG_REQ_ONE)
assert seen == {'base:allocation': [(3 << 20) - 4096, 0], 'qemu:dirty-bitmap:s1': [(64 << 10) - 4096, 1], 'qemu:dirty-bitmap:s2': [(1 << 20) - 4096, 0]}, seen
print('ok')
`,
  );
  assert.equal(r.status, 0, r.stderr + r.stdout);
});

test('a base deleted while a client holds its bitmap: BLOCK_STATUS fails with EINVAL, the connection and other contexts live on', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  await d.createVolume('gone', MiB);
  assert.equal((await d.api('POST', '/v1/volumes/gone/snapshots', { name: 'old' })).status, 201);
  const script = `
import nbd, sys, errno
h = nbd.NBD()
h.add_meta_context('qemu:dirty-bitmap:old')
h.connect_uri(${JSON.stringify(d.unixUri('gone'))})
h.block_status(4096, 0, lambda *a: 0)
print('ready', flush=True)
sys.stdin.readline()
try:
    h.block_status(4096, 0, lambda *a: 0)
    print('answered')
except nbd.Error as e:
    print('errno', errno.errorcode.get(e.errnum))
print('read', len(h.pread(4096, 0)))
`;
  const { spawn } = await import('node:child_process');
  const child = spawn('/usr/bin/python3', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (b) => (err += b));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (b) => {
      out += b;
      if (out.includes('ready')) resolve();
    });
    child.once('exit', () => reject(new Error(`python exited early: ${err}`)));
  });
  assert.equal((await d.api('DELETE', '/v1/volumes/gone/snapshots/old')).status, 204);
  child.stdin.end('\n');
  await new Promise((r) => child.once('close', r));
  assert.match(out, /errno EINVAL/, err);
  assert.match(out, /read 4096/);
});
