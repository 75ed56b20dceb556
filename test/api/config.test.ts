// Unit tests of `shoal serve` configuration and of the size parser shared by the API, CLI and config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadConfig, parseListenAddress } from '../../server/config.js';
import { formatSize, parsePositiveSize, parseSize } from '../../server/size.js';
import { ShoalError } from '../../server/errors.js';

const invalid = (code: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, code);
  if (re) assert.match(e.message, re);
  return true;
};

test('parseSize: bytes and binary suffixes', () => {
  assert.equal(parseSize('0'), 0);
  assert.equal(parseSize('512'), 512);
  assert.equal(parseSize(4096), 4096);
  assert.equal(parseSize('4K'), 4096);
  assert.equal(parseSize('4k'), 4096);
  assert.equal(parseSize('64M'), 64 * 2 ** 20);
  assert.equal(parseSize('64MiB'), 64 * 2 ** 20);
  assert.equal(parseSize('64MB'), 64 * 2 ** 20);
  assert.equal(parseSize('1G'), 2 ** 30);
  assert.equal(parseSize('16T'), 16 * 2 ** 40);
  assert.equal(parseSize('2P'), 2 * 2 ** 50);
  assert.equal(parseSize('1.5K'), 1536);
  assert.equal(parseSize('512B'), 512);
  assert.equal(parseSize(' 8 G '), 8 * 2 ** 30);
});

test('parseSize: garbage is invalid_size with a sentence', () => {
  for (const bad of ['', 'lots', '-1', '1X', '1.', '.5K', '0.1K', '1.5', '1e6', '0x10', 'K', '1 KiBB', '1iB', '10P0']) {
    assert.throws(() => parseSize(bad), invalid('invalid_size'), `"${bad}" should be refused`);
  }
  assert.throws(() => parseSize(-1), invalid('invalid_size'));
  assert.throws(() => parseSize(1.5), invalid('invalid_size'));
  assert.throws(() => parseSize(Number.NaN), invalid('invalid_size'));
  assert.throws(() => parseSize('9P'), invalid('invalid_size', /too large/));
  assert.throws(() => parseSize('nope', '--cache-size'), invalid('invalid_size', /^--cache-size "nope" is not a size/));
  assert.throws(() => parsePositiveSize('0'), invalid('invalid_size', /greater than zero/));
  assert.equal(parsePositiveSize('1'), 1);
});

test('formatSize', () => {
  assert.equal(formatSize(0), '0 B');
  assert.equal(formatSize(512), '512 B');
  assert.equal(formatSize(65536), '64 KiB');
  assert.equal(formatSize(1.5 * 2 ** 20), '1.5 MiB');
  assert.equal(formatSize(16 * 2 ** 40), '16 TiB');
});

test('parseListenAddress', () => {
  assert.deepEqual(parseListenAddress('127.0.0.1:0', 'x'), { host: '127.0.0.1', port: 0 });
  assert.deepEqual(parseListenAddress('[::1]:10809', 'x'), { host: '::1', port: 10809 });
  assert.deepEqual(parseListenAddress('localhost:80', 'x'), { host: 'localhost', port: 80 });
  for (const bad of [':10809', '10809', '127.0.0.1', '127.0.0.1:70000', '::1:10809', 'a:b', '127.0.0.1:-1']) {
    assert.throws(() => parseListenAddress(bad, '--nbd'), invalid('invalid_request', /--nbd/), bad);
  }
});

test('defaults', () => {
  const c = loadConfig([], {});
  assert.equal(c.dataDir, resolve('./shoal-data'));
  assert.deepEqual(c.nbd, { host: '127.0.0.1', port: 10809 });
  assert.equal(c.nbdSocket, join(resolve('./shoal-data'), 'nbd.sock'));
  assert.deepEqual(c.api, { host: '127.0.0.1', port: 10880 });
  assert.equal(c.cacheSize, 2 ** 30);
  assert.equal(c.cachePrefault, false);
  assert.equal(c.chunkSize, undefined);
  assert.equal(c.logLevel, 'info');
  assert.equal(c.configFile, null);
  assert.deepEqual(c.tls, { mode: 'off', certificates: null, psk: null, verifyPeer: false, admins: [] });
  assert.equal(c.insecure, false);
  assert.equal(c.maxConnections, 1024);
  assert.equal(c.nbdSocketMode, 0o660);
});

test('flags, both spellings; the socket follows the data directory', () => {
  const c = loadConfig(['--data-dir', '/srv/shoal', '--nbd=0.0.0.0:0', '--insecure', '--api', '[::1]:9000', '--cache-size', '256M', '--chunk-size=128K', '--log-level', 'debug'], {});
  assert.equal(c.dataDir, '/srv/shoal');
  assert.equal(c.nbdSocket, '/srv/shoal/nbd.sock');
  assert.deepEqual(c.nbd, { host: '0.0.0.0', port: 0 });
  assert.deepEqual(c.api, { host: '::1', port: 9000 });
  assert.equal(c.cacheSize, 256 * 2 ** 20);
  assert.equal(c.chunkSize, 128 * 1024);
  assert.equal(c.logLevel, 'debug');
  assert.equal(loadConfig(['--cache-prefault', 'on'], {}).cachePrefault, true);
  assert.equal(loadConfig([], { SHOAL_CACHE_PREFAULT: 'on' }).cachePrefault, true);
});

test('"none" disables an NBD listener, but not both', () => {
  assert.equal(loadConfig(['--nbd', 'none'], {}).nbd, null);
  assert.equal(loadConfig(['--nbd', ''], {}).nbd, null);
  assert.equal(loadConfig(['--nbd-socket', 'none'], {}).nbdSocket, null);
  assert.throws(() => loadConfig(['--nbd', 'none', '--nbd-socket', 'none'], {}), invalid('invalid_request', /enable at least one/));
  assert.throws(() => loadConfig(['--api', 'none'], {}), invalid('invalid_request', /cannot be disabled/));
});

test('environment variables', () => {
  const c = loadConfig([], {
    SHOAL_DATA_DIR: '/var/lib/shoal',
    SHOAL_NBD: '0.0.0.0:10809',
    SHOAL_NBD_SOCKET: '/run/shoal/nbd.sock',
    SHOAL_API: '0.0.0.0:10880',
    SHOAL_CACHE_SIZE: '4G',
    SHOAL_CHUNK_SIZE: '64K',
    SHOAL_LOG_LEVEL: 'warn',
    SHOAL_API_TOKENS: '/etc/shoal/api-tokens.json',
    SHOAL_API_TLS_CERTIFICATES: '/etc/shoal/api-tls',
    SHOAL_INSECURE: 'on',
  });
  assert.equal(c.dataDir, '/var/lib/shoal');
  assert.equal(c.apiTokens, '/etc/shoal/api-tokens.json');
  assert.equal(c.apiTlsCertificates, '/etc/shoal/api-tls');
  assert.equal(c.insecure, true);
  assert.deepEqual(c.nbd, { host: '0.0.0.0', port: 10809 });
  assert.equal(c.nbdSocket, '/run/shoal/nbd.sock');
  assert.deepEqual(c.api, { host: '0.0.0.0', port: 10880 });
  assert.equal(c.cacheSize, 4 * 2 ** 30);
  assert.equal(c.chunkSize, 65536);
  assert.equal(c.logLevel, 'warn');
  assert.equal(loadConfig([], { SHOAL_NBD: 'none' }).nbd, null);
});

test('precedence: flag > env > config file > default', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'shoal.json');
  writeFileSync(file, JSON.stringify({ dataDir: 'data', 'cache-size': '2G', api: '127.0.0.1:1', logLevel: 'error', nbd: null }));
  const fromFile = loadConfig(['--config', file], {});
  assert.equal(fromFile.configFile, file);
  assert.equal(fromFile.dataDir, join(dir, 'data'), 'relative paths in a config file are relative to the file');
  assert.equal(fromFile.cacheSize, 2 * 2 ** 30);
  assert.equal(fromFile.nbd, null);
  assert.equal(fromFile.logLevel, 'error');

  const envOverFile = loadConfig([], { SHOAL_CONFIG: file, SHOAL_CACHE_SIZE: '3G', SHOAL_API: '127.0.0.1:2' });
  assert.equal(envOverFile.cacheSize, 3 * 2 ** 30);
  assert.deepEqual(envOverFile.api, { host: '127.0.0.1', port: 2 });
  assert.equal(envOverFile.logLevel, 'error');

  const flagOverEnv = loadConfig(['--config', file, '--cache-size', '5G'], { SHOAL_CACHE_SIZE: '3G' });
  assert.equal(flagOverEnv.cacheSize, 5 * 2 ** 30);
  assert.equal(flagOverEnv.dataDir, join(dir, 'data'));
});

test('config file errors are sentences', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  assert.throws(() => loadConfig(['--config', join(dir, 'missing.json')], {}), invalid('invalid_request', /cannot read the config file .*ENOENT/));
  assert.throws(() => loadConfig(['--config', write('bad.json', '{nope')], {}), invalid('invalid_request', /not valid JSON/));
  assert.throws(() => loadConfig(['--config', write('arr.json', '[]')], {}), invalid('invalid_request', /JSON object/));
  assert.throws(() => loadConfig(['--config', write('unk.json', '{"colour":"blue"}')], {}), invalid('invalid_request', /unknown setting "colour"/));
  assert.throws(() => loadConfig(['--config', write('obj.json', '{"api":{"host":"x"}}')], {}), invalid('invalid_request', /must be a string, a number, a boolean or null/));
  assert.throws(() => loadConfig(['--config', write('size.json', '{"cacheSize":"big"}')], {}), invalid('invalid_request', /config file .* "big" is not a size/));
});

test('bad flags and values are refused with a sentence naming them', () => {
  const cases: [string[], RegExp][] = [
    [['--bogus', '1'], /unknown flag "--bogus"/],
    [['stray'], /unexpected argument "stray"/],
    [['--data-dir'], /--data-dir needs a value/],
    [['--data-dir', ''], /--data-dir must not be empty/],
    [['--nbd', '10809'], /--nbd "10809" is not a listen address/],
    [['--api', 'localhost'], /--api "localhost" is not a listen address/],
    [['--cache-size', 'lots'], /--cache-size "lots" is not a size/],
    [['--cache-size', '-1G'], /--cache-size/],
    [['--chunk-size', '3000'], /power of two/],
    [['--chunk-size', '1K'], /power of two/],
    [['--chunk-size', '1G'], /power of two/],
    [['--log-level', 'loud'], /not a log level/],
    [['--nbd-socket', '/' + 'x'.repeat(120)], /too long/],
  ];
  for (const [argv, re] of cases) assert.throws(() => loadConfig(argv, {}), invalid('invalid_request', re), argv.join(' '));
  assert.throws(() => loadConfig([], { SHOAL_CACHE_SIZE: 'huge' }), invalid('invalid_request', /SHOAL_CACHE_SIZE "huge"/));
});

test('an API reachable beyond this machine needs --api-tokens, or --insecure', () => {
  for (const api of ['0.0.0.0:10880', '192.168.1.10:10880', '[::]:10880', '[2001:db8::1]:10880', 'shoal.example:10880']) {
    assert.throws(() => loadConfig(['--api', api], {}), invalid('invalid_request', /not loopback, without authentication: give --api-tokens FILE .*or --insecure/), api);
    assert.equal(loadConfig(['--api', api, '--api-tokens', '/etc/shoal/tokens.json'], {}).apiTokens, '/etc/shoal/tokens.json');
    // --insecure takes no value; the flag after it is still a flag.
    const open = loadConfig(['--api', api, '--insecure', '--log-level', 'warn'], {});
    assert.equal(open.insecure, true);
    assert.equal(open.logLevel, 'warn');
    assert.equal(loadConfig(['--api', api], { SHOAL_INSECURE: '1' }).insecure, true);
  }
  assert.throws(() => loadConfig(['--api', '0.0.0.0:1', '--insecure=off'], {}), invalid('invalid_request', /not loopback/));
  for (const api of ['127.0.0.1:10880', '127.1.2.3:1', '[::1]:10880', 'localhost:10880', '[::ffff:127.0.0.1]:1']) {
    assert.equal(loadConfig(['--api', api], {}).insecure, false, api);
  }
});

test('TLS settings: nbdkit\'s flags, switches without a value, paths resolved', () => {
  const x = loadConfig(['--tls', 'require', '--tls-certificates', 'pki', '--tls-verify-peer', '--tls-admins', 'ops, root'], {});
  assert.deepEqual(x.tls, { mode: 'require', certificates: resolve('pki'), psk: null, verifyPeer: true, admins: ['ops', 'root'] });
  const p = loadConfig([], { SHOAL_TLS: 'on', SHOAL_TLS_PSK: '/etc/shoal/keys.psk', SHOAL_TLS_VERIFY_PEER: 'off' });
  assert.deepEqual(p.tls, { mode: 'on', certificates: null, psk: '/etc/shoal/keys.psk', verifyPeer: false, admins: [] });
  assert.equal(loadConfig(['--tls=yes', '--tls-psk=k'], {}).tls.mode, 'on');
  assert.equal(loadConfig(['--tls', 'false'], {}).tls.mode, 'off');
  // A switch never swallows the next argument.
  const s = loadConfig(['--insecure', '--nbd', '0.0.0.0:0', '--tls-verify-peer=false', '--tls=on', '--tls-certificates=/pki'], {});
  assert.equal(s.insecure, true);
  assert.equal(s.tls.verifyPeer, false);
});

test('NBD beyond loopback needs --tls require or --insecure', () => {
  for (const nbd of ['0.0.0.0:10809', '[::]:10809', '10.1.2.3:10809', 'nbd.example.com:10809']) {
    assert.throws(() => loadConfig(['--nbd', nbd], {}), invalid('invalid_request', /not a loopback address, without --tls require.*--insecure/), nbd);
    assert.throws(() => loadConfig(['--nbd', nbd, '--tls', 'on', '--tls-psk', 'k'], {}), invalid('invalid_request', /without --tls require/), nbd);
    assert.ok(loadConfig(['--nbd', nbd, '--tls', 'require', '--tls-psk', 'k'], {}).nbd);
    assert.ok(loadConfig(['--nbd', nbd, '--insecure'], {}).nbd);
  }
  for (const nbd of ['127.0.0.1:0', '127.9.9.9:1', '[::1]:0', 'localhost:0', '[::ffff:127.0.0.1]:0']) assert.ok(loadConfig(['--nbd', nbd], {}).nbd, nbd);
});

test('connection limit and socket mode', () => {
  assert.equal(loadConfig(['--max-connections', '5'], {}).maxConnections, 5);
  assert.equal(loadConfig(['--nbd-socket-mode', '0600'], {}).nbdSocketMode, 0o600);
  assert.equal(loadConfig([], { SHOAL_NBD_SOCKET_MODE: '666' }).nbdSocketMode, 0o666);
  assert.equal(loadConfig(['--nbd-socket-mode=0o640'], {}).nbdSocketMode, 0o640);
});

test('bad TLS, limit and mode settings are refused with a sentence', () => {
  const cases: [string[], RegExp][] = [
    [['--tls', 'maybe'], /--tls "maybe" must be off, on or require/],
    [['--tls', 'on'], /--tls on needs credentials: --tls-certificates DIR .* or --tls-psk FILE/],
    [['--tls', 'require', '--tls-psk', 'a', '--tls-certificates', 'b'], /--tls-certificates and --tls-psk are both set/],
    [['--tls-psk', 'keys'], /--tls-psk has no effect while --tls is off/],
    [['--tls-certificates', '/pki'], /--tls-certificates has no effect while --tls is off/],
    [['--tls-verify-peer'], /--tls-verify-peer has no effect while --tls is off/],
    [['--tls-admins', 'root'], /--tls-admins has no effect while --tls is off/],
    [['--tls', 'on', '--tls-psk', 'k', '--tls-admins', 'a,,b'], /--tls-admins "a,,b" must be a comma-separated list/],
    [['--tls', 'on', '--tls-psk', ''], /--tls-psk must not be empty/],
    [['--tls-verify-peer=perhaps'], /--tls-verify-peer "perhaps" must be on or off/],
    [['--cache-prefault', 'always'], /--cache-prefault "always" must be on or off/],
    [['--max-connections', '0'], /--max-connections "0" must be a whole number of connections from 1/],
    [['--max-connections', 'many'], /--max-connections "many"/],
    [['--max-connections', '1.5'], /--max-connections "1.5"/],
    [['--nbd-socket-mode', '999'], /--nbd-socket-mode "999" must be octal permission bits/],
    [['--nbd-socket-mode', 'rw-rw----'], /--nbd-socket-mode/],
    [['--nbd-socket-mode', '07777'], /--nbd-socket-mode/],
  ];
  for (const [argv, re] of cases) assert.throws(() => loadConfig(argv, {}), invalid('invalid_request', re), argv.join(' '));
});
