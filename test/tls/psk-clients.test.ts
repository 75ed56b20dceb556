// NBD over TLS with pre-shared keys (--tls on --tls-psk FILE, psktool's format): libnbd tools and
// QEMU (both GnuTLS) connect with an identity and key; a wrong key or an unknown identity is
// refused; with --tls on plaintext clients are still served; the key file is re-read when it
// changes, so identities come and go without a restart.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Daemon } from '../helpers/daemon.js';
import { hasTool, needTools, run, runOk } from '../helpers/tools.js';
import { addPskIdentity, haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { startTlsDaemon, rawTls, patternIntact, libnbdUri, qemuTlsArgs, type Credentials, PATTERN } from './tls-daemon.js';

describe('NBD over TLS with pre-shared keys', () => {
  let keys: TlsKeys;
  let d: Daemon;
  let alice: Credentials;
  let bob: Credentials;

  before(async () => {
    if (!haveGnutlsTools()) return;
    keys = await makeTlsKeys();
    alice = { psk: { file: keys.psk, identity: 'alice' } };
    bob = { psk: { file: keys.psk, identity: 'bob' } };
    d = await startTlsDaemon(['--tls', 'on', '--tls-psk', keys.psk], (dd) => rawTls(dd, alice));
    await d.createVolume('copy', 16 * 1024 * 1024);
  });
  after(async () => {
    await d?.dispose();
    keys?.dispose();
  });

  it('nbdinfo and nbdcopy with tls-psk-file= over nbds:// and nbds+unix://', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo', 'nbdcopy')) return;
    for (const via of ['tcp', 'unix'] as const) {
      assert.match(await runOk('nbdinfo', [libnbdUri(d, 'v', alice, via)]), /protocol: newstyle-fixed with TLS/, via);
      const data = randomBytes(3 * 1024 * 1024);
      const src = join(keys.root, `src-${via}`);
      const back = join(keys.root, `back-${via}`);
      writeFileSync(src, data);
      await runOk('nbdcopy', ['--flush', src, libnbdUri(d, 'copy', bob, via)]);
      await runOk('nbdcopy', [libnbdUri(d, 'copy', alice, via), back]);
      assert.ok(readFileSync(back).subarray(0, data.length).equals(data), `round trip over ${via}`);
    }
  });

  it('--tls on also serves plaintext clients', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    assert.match(await runOk('nbdinfo', [d.uri('v')]), /protocol: newstyle-fixed without TLS/);
    const out = join(keys.root, 'plain.img');
    await runOk('nbdcopy', [d.uri('v'), out]);
    assert.ok(readFileSync(out).subarray(0, PATTERN.length).equals(PATTERN));
  });

  it('qemu-io and qemu-img with tls-creds-psk, over TCP and the Unix socket', async (t) => {
    if (!keys || !needTools(t, 'qemu-io', 'qemu-img')) return;
    const tcp = await runOk('qemu-io', [...qemuTlsArgs(d, 'copy', bob), '-c', 'write -P 0x3c 8388608 65536', '-c', 'flush', '-c', 'read -P 0x3c 8388608 65536']);
    assert.doesNotMatch(tcp, /Pattern verification failed|error|failed/i, tcp);
    const unix = await runOk('qemu-io', [...qemuTlsArgs(d, 'copy', alice, 'unix'), '-c', 'read -P 0x3c 8388608 65536']);
    assert.doesNotMatch(unix, /Pattern verification failed|error|failed/i, unix);
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', ...qemuTlsArgs(d, 'copy', alice)]));
    assert.equal(info['virtual-size'], 16 * 1024 * 1024);
  });

  it('a wrong key or an unknown identity is refused; others are served and nothing changes', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    const wrong: Credentials = { psk: { file: join(keys.wrongPskDir, 'keys.psk'), identity: 'alice' } };
    const unknown: Credentials = { psk: { file: join(keys.unknownPskDir, 'keys.psk'), identity: 'mallory' } };
    for (const [creds, logged] of [
      [wrong, /"reason":"TLS handshake failed: [^"]+","msg":"nbd: handshake failed, closing"/],
      [unknown, /"reason":"TLS handshake failed: no key for PSK identity \\"mallory\\"","msg":"nbd: handshake failed, closing"/],
    ] as const) {
      const r = await run('nbdinfo', [libnbdUri(d, 'v', creds)]);
      assert.notEqual(r.status, 0, r.stdout);
      assert.match(r.stderr, /gnutls|TLS/i);
      await d.waitForLog(logged);
      await assert.rejects(rawTls(d, creds), 'Node client refused too');
      await patternIntact(d, alice);
    }
    if (hasTool('qemu-io')) {
      const r = await run('qemu-io', [...qemuTlsArgs(d, 'v', unknown), '-c', 'read 0 512']);
      assert.notEqual(r.status, 0);
    }
  });

  it('the key file is re-read when it changes: identities come and go without a restart', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    const carol: Credentials = { psk: { file: keys.psk, identity: 'carol' } };
    const original = readFileSync(keys.psk, 'utf8');
    try {
      assert.notEqual((await run('nbdinfo', [libnbdUri(d, 'v', carol)])).status, 0, 'carol unknown at first');
      await addPskIdentity(keys.psk, 'carol');
      assert.match(await runOk('nbdinfo', [libnbdUri(d, 'v', carol)]), /with TLS/);
      await d.waitForLog(/"identities":3,"msg":"nbd: PSK file reloaded"/);

      // Removing a line revokes it (for new connections).
      replaceFile(keys.psk, original);
      assert.notEqual((await run('nbdinfo', [libnbdUri(d, 'v', carol)])).status, 0, 'carol removed');
      assert.match(await runOk('nbdinfo', [libnbdUri(d, 'v', alice)]), /with TLS/);

      // A broken file refuses every PSK client (rather than keep keys meant to be removed) and says so.
      replaceFile(keys.psk, original + 'a line without the separator\n');
      assert.notEqual((await run('nbdinfo', [libnbdUri(d, 'v', alice)])).status, 0, 'refused while the file is broken');
      await d.waitForLog(/line 3 is not \\"identity:hexkey\\".*"msg":"nbd: the PSK file changed and cannot be used; refusing PSK clients until it is fixed"/);
      assert.match(await runOk('nbdinfo', [d.uri('v')]), /without TLS/, 'plaintext (--tls on) unaffected');
    } finally {
      replaceFile(keys.psk, original);
    }
    assert.match(await runOk('nbdinfo', [libnbdUri(d, 'v', alice)]), /with TLS/, 'fixed file: served again');
    await patternIntact(d, alice);
  });
});

/** Replaces the file at once (rename), as an editor or config manager does. */
function replaceFile(path: string, text: string): void {
  writeFileSync(path + '.new', text);
  renameSync(path + '.new', path);
}
