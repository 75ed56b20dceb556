// Cached reads over TLS: the zero-copy views of the cache arena are held until the TLS socket has
// taken the bytes, not just until write() was called, and released when the client goes away; under
// cache pressure (frames reused all the time) every byte read over TLS is still right.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Daemon } from '../helpers/daemon.js';
import { needTools, runOk } from '../helpers/tools.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { CMD } from '../nbd/raw.js';
import { startTlsDaemon, rawTls, libnbdUri, type Credentials } from './tls-daemon.js';

const MiB = 1024 * 1024;

describe('cache views over TLS', () => {
  let keys: TlsKeys;
  let d: Daemon;
  let alice: Credentials;
  const data = randomBytes(48 * MiB);

  before(async () => {
    if (!haveGnutlsTools()) return;
    keys = await makeTlsKeys();
    alice = { psk: { file: keys.psk, identity: 'alice' } };
    // A cache smaller than the volume: frames are evicted and reused while replies are in flight.
    d = await startTlsDaemon(['--tls', 'require', '--tls-psk', keys.psk, '--cache-size', '16M'], (dd) => rawTls(dd, alice));
    await d.createVolume('big', data.length);
  });
  after(async () => {
    await d?.dispose();
    keys?.dispose();
  });

  const pinned = async () => (await d.api('GET', '/v1/stats')).body.cache.pinned as number;

  it('every byte is right under cache pressure, with several TLS connections, and nothing stays pinned', async (t) => {
    if (!keys || !needTools(t, 'nbdcopy')) return;
    const src = join(keys.root, 'big.src');
    writeFileSync(src, data);
    await runOk('nbdcopy', ['--flush', src, libnbdUri(d, 'big', alice)]);
    for (let i = 0; i < 3; i++) {
      const back = join(keys.root, `big.back${i}`);
      await runOk('nbdcopy', ['--connections=4', '--requests=16', libnbdUri(d, 'big', alice), back]);
      assert.ok(readFileSync(back).equals(data), `pass ${i}: read back over TLS equals what was written`);
    }
    assert.equal(await pinned(), 0);
  });

  it('a TLS client that stops reading holds its views until it goes away', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    // Warm the first 8 MiB (twice: the second read promotes chunks in the cache).
    const warm = await rawTls(d, alice);
    await warm.handshake('big', { greeted: true });
    for (let pass = 0; pass < 2; pass++) {
      for (let off = 0; off < 8 * MiB; off += MiB) {
        warm.request(CMD.READ, BigInt(off), off, MiB);
        const r = await warm.simpleReply(MiB);
        assert.ok(r.data.equals(data.subarray(off, off + MiB)));
      }
    }
    warm.destroy();
    await waitFor(async () => (await pinned()) === 0, 'views of a finished client released');

    const slow = await rawTls(d, alice);
    await slow.handshake('big', { greeted: true });
    slow.sock.pause(); // reads nothing from now on
    for (let i = 0; i < 64; i++) slow.request(CMD.READ, BigInt(i), (i % 8) * MiB, MiB);
    await waitFor(async () => (await pinned()) > 0, 'replies queued for a client that does not read keep their cache views');
    const held = await pinned();
    await new Promise((r) => setTimeout(r, 300));
    assert.ok((await pinned()) >= Math.min(held, 1), 'still held while unsent');
    slow.destroy();
    await waitFor(async () => (await pinned()) === 0, 'released once the client is gone');
  });
});

async function waitFor(cond: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
