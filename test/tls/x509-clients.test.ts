// NBD over TLS with X.509 certificates (--tls require --tls-certificates DIR --tls-verify-peer),
// through the clients users have: nbdinfo, nbdcopy and libnbd over nbds:// and nbds+unix://,
// qemu-io and qemu-img with tls-creds-x509, fio's nbd engine. Every command, reply type and meta
// context works as it does in plaintext; clients without a certificate from the CA are refused.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Daemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { py } from '../nbd/py.js';
import { EVERY_COMMAND_SIZE, everyCommandScript, QEMU_IO_SEQUENCES } from '../nbd/every-command.js';
import { startTlsDaemon, rawTls, patternIntact, libnbdUri, qemuTlsArgs, type Credentials } from './tls-daemon.js';

const MiB = 1024 * 1024;

describe('NBD over TLS with X.509 certificates', () => {
  let keys: TlsKeys;
  let d: Daemon;
  let alice: Credentials;
  let work: string;

  before(async () => {
    if (!haveGnutlsTools()) return;
    keys = await makeTlsKeys();
    alice = { x509: { dir: keys.clientDir, withClientCert: true } };
    d = await startTlsDaemon(['--tls', 'require', '--tls-certificates', keys.serverDir, '--tls-verify-peer'], (dd) => rawTls(dd, alice));
    for (const v of ['s', 'n']) await d.createVolume(v, EVERY_COMMAND_SIZE);
    for (const v of ['q', 'copy']) await d.createVolume(v, 64 * MiB);
    work = mkdtempSync(join(tmpdir(), 'shoal-tls-x509-'));
  });
  after(async () => {
    await d?.dispose();
    keys?.dispose();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('nbdinfo over nbds:// and nbds+unix:// sees the exports, over TLS', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    for (const via of ['tcp', 'unix'] as const) {
      const text = await runOk('nbdinfo', [libnbdUri(d, 'v', alice, via)]);
      assert.match(text, /protocol: newstyle-fixed with TLS, using structured packets/, via);
      const list = JSON.parse(await runOk('nbdinfo', ['--list', '--json', libnbdUri(d, 'v', alice, via)]));
      const names = list.exports.map((e: any) => e['export-name']);
      for (const v of ['v', 's', 'n', 'q', 'copy']) assert.ok(names.includes(v), `${v} listed over ${via}`);
    }
    assert.match(d.log, /"tls":"require","tlsAuth":"x509","msg":"shoal ready"/);
  });

  it('nbdcopy writes and reads back over TCP and the Unix socket', async (t) => {
    if (!keys || !needTools(t, 'nbdcopy')) return;
    const src = join(work, 'src.img');
    writeFileSync(src, randomBytes(8 * MiB));
    for (const via of ['tcp', 'unix'] as const) {
      const back = join(work, `back-${via}.img`);
      await runOk('nbdcopy', ['--flush', src, libnbdUri(d, 'copy', alice, via)]);
      await runOk('nbdcopy', [libnbdUri(d, 'copy', alice, via), back]);
      const got = readFileSync(back);
      assert.ok(got.subarray(0, 8 * MiB).equals(readFileSync(src)), `round trip over ${via}`);
      assert.ok(got.subarray(8 * MiB).equals(Buffer.alloc(56 * MiB)), 'the rest is zeroes');
    }
  });

  for (const structured of [true, false]) {
    it(`every command, reply type and meta context over TLS, structured replies ${structured ? 'on' : 'off'}`, async (t) => {
      if (!keys || !needTools(t, 'nbdsh')) return;
      const vol = structured ? 's' : 'n';
      const snap = await d.api('POST', `/v1/volumes/${vol}/snapshots`, { name: 'ro' });
      assert.equal(snap.status, 201);
      const out = await py(libnbdUri(d, vol, alice), everyCommandScript(structured, libnbdUri(d, `${vol}@ro`, alice, 'unix')));
      assert.ok(['ok', 'ENOTSUP'].includes(JSON.parse(out).fast));
    });
  }

  it('qemu-io and qemu-img with tls-creds-x509, over TCP and the Unix socket', async (t) => {
    if (!keys || !needTools(t, 'qemu-io', 'qemu-img')) return;
    for (const seq of QEMU_IO_SEQUENCES) {
      const out = await runOk('qemu-io', [...qemuTlsArgs(d, 'q', alice), ...seq.flatMap((s) => ['-c', s])]);
      assert.doesNotMatch(out, /Pattern verification failed|error|failed/i, out);
    }
    // What was written over TCP reads back over the Unix socket.
    const unix = await runOk('qemu-io', [...qemuTlsArgs(d, 'q', alice, 'unix'), '-c', 'read -P 0x7e 8388608 12345', '-c', 'read -P 0x61 20971520 65536']);
    assert.doesNotMatch(unix, /Pattern verification failed|error|failed/i, unix);
    // Block status through qemu-img map, and a whole read through qemu-img convert.
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', ...qemuTlsArgs(d, 'q', alice)]));
    assert.ok(map.some((e: any) => e.data === true) && map.some((e: any) => e.zero === true), JSON.stringify(map));
    const out = join(work, 'q.raw');
    await runOk('qemu-img', ['convert', '-O', 'raw', ...qemuTlsArgs(d, 'q', alice, 'unix'), out]);
    const img = readFileSync(out);
    assert.equal(img.length, 64 * MiB);
    assert.ok(img.subarray(8388608, 8388608 + 12345).equals(Buffer.alloc(12345, 0x7e)));
  });

  it("fio's nbd engine over TLS (certificates from libnbd's default directory)", async (t) => {
    if (!keys || !needTools(t, 'fio', 'setpriv')) return;
    // fio passes its uri to nbd_connect_uri without allowing local files, so tls-certificates= is
    // refused; libnbd then reads $HOME/.pki/libnbd, for a user other than root.
    const refused = await run('fio', ['--name=t', '--ioengine=nbd', `--uri=${libnbdUri(d, 'copy', alice)}`, '--rw=read', '--bs=4k', '--size=1M']);
    assert.match(refused.stdout + refused.stderr, /local file access \(tls-certificates\) is not allowed/);
    const home = join(work, 'home');
    const pki = join(home, '.pki', 'libnbd');
    mkdirSync(pki, { recursive: true });
    for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) cpSync(join(keys.clientDir, f), join(pki, f));
    for (const p of [work, home, join(home, '.pki'), pki]) chmodSync(p, 0o755);
    for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) chmodSync(join(pki, f), 0o644);
    const asUser = process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];
    const job = ['--name=tls', '--ioengine=nbd', `--uri=nbds://127.0.0.1:${d.nbdPort}/copy`, '--rw=randwrite', '--bs=4k', '--iodepth=8', '--size=4M', '--verify=crc32c', '--do_verify=1', `--filename=${join(home, 'fio-state')}`, '--output-format=json'];
    const r = await runOk(asUser[0] ?? 'env', [...asUser.slice(1), 'env', `HOME=${home}`, 'fio', ...job], { cwd: home });
    const res = JSON.parse(r.slice(r.indexOf('{')));
    assert.equal(res.jobs[0].error, 0);
    assert.equal(res.jobs[0].write.io_bytes, 4 * MiB);
    assert.equal(res.jobs[0].read.io_bytes, 4 * MiB, 'everything written was read back and verified');
  });

  it('clients without a certificate from the CA are refused; the others go on and nothing changes', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    for (const [dir, why] of [
      [keys.anonymousDir, /peer did not return a certificate|certificate/],
      [keys.strangerDir, /client certificate refused: \w+/],
    ] as const) {
      const r = await run('nbdinfo', [libnbdUri(d, 'v', { x509: { dir, withClientCert: true } })]);
      assert.notEqual(r.status, 0, `refused: ${r.stdout}`);
      assert.match(r.stderr, /gnutls|TLS/i);
      await d.waitForLog(why);
      // A client with a good certificate is served meanwhile, and reads the volume unchanged.
      await patternIntact(d, alice);
    }
    // Without a client certificate at all (Node's client), the handshake is refused the same way.
    await assert.rejects(rawTls(d, { x509: { dir: keys.anonymousDir, withClientCert: false } }).then((c) => c.handshake('v', { greeted: true })));
    await patternIntact(d, alice);
  });
});
