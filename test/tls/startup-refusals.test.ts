// `shoal serve` refuses to start, with one sentence and a non-zero exit (no stack trace) and before
// it creates the data directory, when NBD would be reachable beyond this machine in plaintext, or
// when the TLS certificates or keys it is given cannot be used.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN } from '../helpers/daemon.js';
import { run } from '../helpers/tools.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';

describe('shoal serve refuses unsafe or unusable network settings', () => {
  let keys: TlsKeys | undefined;
  let scratch: string;
  before(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'shoal-refusals-'));
    if (haveGnutlsTools()) keys = await makeTlsKeys();
  });
  after(() => {
    rmSync(scratch, { recursive: true, force: true });
    keys?.dispose();
  });

  /** Runs `shoal serve` expecting a refusal; returns its one line of stderr. */
  async function refused(args: string[], beforeDataDir = true): Promise<string> {
    const dataDir = join(scratch, `data-${Math.random().toString(36).slice(2)}`);
    const r = await run(process.execPath, [MAIN, 'serve', '--data-dir', dataDir, '--nbd-socket', 'none', '--api', '127.0.0.1:0', ...args], { timeoutMs: 30_000 });
    assert.notEqual(r.status, 0, `should not start: ${r.stdout}`);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `one sentence, no stack trace:\n${r.stderr}`);
    assert.match(lines[0]!, /^shoal: \S/);
    if (beforeDataDir) assert.ok(!existsSync(dataDir), 'the data directory was not created');
    return lines[0]!;
  }

  it('NBD on a non-loopback address without --tls require', async () => {
    for (const nbd of ['0.0.0.0:0', '[::]:0']) {
      const line = await refused(['--nbd', nbd]);
      assert.match(line, /NBD would listen on .*, which is not a loopback address, without --tls require: .* add --tls require \(with --tls-certificates or --tls-psk\), or --insecure/);
    }
    assert.match(await refused(['--nbd', '0.0.0.0:0', '--tls', 'on', '--tls-psk', '/nonexistent']), /without --tls require/);
  });

  it('--insecure lets it past that check (here to an address this machine does not have)', async () => {
    // 192.0.2.1 is TEST-NET-1: binding fails, so nothing listens beyond loopback, but the refusal is the bind's.
    const line = await refused(['--nbd', '192.0.2.1:0', '--insecure'], false);
    assert.doesNotMatch(line, /loopback/);
    assert.match(line, /EADDRNOTAVAIL|address not available|no interface of this machine has that address/i);
  });

  it('certificates that are missing or do not fit', async (t) => {
    if (!keys) return t.skip('no GnuTLS tools');
    const missingKey = join(scratch, 'no-key');
    cpSync(keys.serverDir, missingKey, { recursive: true });
    rmSync(join(missingKey, 'server-key.pem'));
    assert.match(await refused(['--tls', 'require', '--tls-certificates', missingKey]), /cannot read the server key .*server-key\.pem: no such file/);

    const noCa = join(scratch, 'no-ca');
    cpSync(keys.serverDir, noCa, { recursive: true });
    rmSync(join(noCa, 'ca-cert.pem'));
    assert.match(await refused(['--tls', 'require', '--tls-certificates', noCa]), /cannot read the CA certificate .*ca-cert\.pem/);

    const mismatch = join(scratch, 'mismatch');
    cpSync(keys.serverDir, mismatch, { recursive: true });
    cpSync(join(keys.clientDir, 'client-key.pem'), join(mismatch, 'server-key.pem'));
    assert.match(await refused(['--tls', 'require', '--tls-certificates', mismatch]), /the certificates in .*mismatch cannot be used \(.*\): server-cert\.pem and server-key\.pem must be/);

    const garbage = join(scratch, 'garbage');
    cpSync(keys.serverDir, garbage, { recursive: true });
    writeFileSync(join(garbage, 'server-cert.pem'), 'not a certificate\n');
    assert.match(await refused(['--tls', 'require', '--tls-certificates', garbage]), /cannot be used/);
  });

  it('PSK files that are missing, unreadable or malformed', async () => {
    const file = (name: string, text: string) => {
      const p = join(scratch, name);
      writeFileSync(p, text);
      return p;
    };
    const good = 'alice:' + 'ab'.repeat(32) + '\n';
    const cases: [string, RegExp][] = [
      [join(scratch, 'absent.psk'), /cannot read the PSK file .*absent\.psk: no such file/],
      [scratch, /cannot read the PSK file .*: EISDIR/],
      [file('empty.psk', '\n\n'), /empty\.psk holds no keys: add "identity:hexkey" lines with psktool/],
      [file('nocolon.psk', good + 'bob\n'), /nocolon\.psk line 2 is not "identity:hexkey" \(psktool's format\)/],
      [file('oddhex.psk', 'alice:abc\n'), /oddhex\.psk line 1: the key must be an even number of hex digits/],
      [file('nothex.psk', 'alice:zz\n'), /nothex\.psk line 1: the key must be/],
      [file('twice.psk', good + good), /twice\.psk line 2: identity "alice" appears twice/],
      [file('noname.psk', ':abcd\n'), /noname\.psk line 1 is not "identity:hexkey"/],
    ];
    for (const [path, re] of cases) assert.match(await refused(['--tls', 'require', '--tls-psk', path]), re, path);
  });

  it('inconsistent TLS flags', async () => {
    assert.match(await refused(['--tls', 'require']), /--tls require needs credentials/);
    assert.match(await refused(['--tls-psk', '/etc/keys.psk']), /--tls-psk has no effect while --tls is off/);
    assert.match(await refused(['--tls', 'sometimes']), /--tls "sometimes" must be off, on or require/);
  });
});
