// The daemon refuses to start, with one sentence and a non-zero exit (no stack trace), before it
// touches its data directory: an open API on a non-loopback address, a tokens file it cannot trust
// or read, certificates that do not work.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { makeTestPki } from '../helpers/certificates.js';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'shoal-refusals-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const HASH = 'a'.repeat(64);

/** Starts `shoal serve` with these flags; it must exit at once with one sentence matching `re`, and create no data directory. */
async function refuses(flags: string[], re: RegExp): Promise<void> {
  const dataDir = join(dir, 'data-never-made');
  const r = await run(process.execPath, [MAIN, 'serve', '--data-dir', dataDir, '--nbd', '127.0.0.1:0', '--nbd-socket', 'none', '--api', '127.0.0.1:0', ...flags], { timeoutMs: 20_000 });
  assert.notEqual(r.status, 0, `${flags.join(' ')} should not start:\n${r.stdout}${r.stderr}`);
  assert.notEqual(r.status, null, `${flags.join(' ')} should exit by itself, not be killed`);
  assert.match(r.stderr, /^shoal: [^\n]+\n$/, `one sentence for ${flags.join(' ')}, got:\n${r.stderr}`);
  assert.match(r.stderr, re, flags.join(' '));
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.equal(existsSync(dataDir), false, 'the data directory is not touched');
}

function tokensFile(name: string, content: unknown, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  chmodSync(p, mode);
  return p;
}

test('an API on a non-loopback address needs --api-tokens or --insecure', async () => {
  // Ephemeral ports: the refusal comes before anything listens.
  await refuses(['--api', '0.0.0.0:0'], /the REST API would listen on 0\.0\.0\.0:0, which is not loopback, without authentication: give --api-tokens FILE .*or --insecure/);
  await refuses(['--api', '[::]:0'], /not loopback/);
});

test('a tokens file that is missing, writable by others, or malformed', async () => {
  const entry = { name: 'ci', role: 'operator', sha256: HASH };
  const cases: [string, RegExp][] = [
    [join(dir, 'nope.json'), /cannot read the API tokens file .*nope\.json: ENOENT/],
    [tokensFile('group-w.json', { version: 1, tokens: [] }, 0o660), /group-w\.json is writable by its group \(mode 0660\): whoever can write it can make themselves an admin; chmod 600/],
    [tokensFile('world-w.json', { version: 1, tokens: [] }, 0o646), /world-w\.json is writable by every user \(mode 0646\)/],
    [tokensFile('bad-json.json', '{"version": 1, "tokens": [}'), /bad-json\.json is not valid JSON/],
    [tokensFile('list.json', [entry]), /must hold a JSON object \{"version": 1, "tokens": \[\.\.\.\]\}/],
    [tokensFile('version.json', { version: 9, tokens: [] }), /has version 9; this Shoal reads version 1/],
    [tokensFile('no-list.json', { version: 1, tokens: {} }), /"tokens" is not a list/],
    [tokensFile('role.json', { version: 1, tokens: [{ ...entry, role: 'root' }] }), /token "ci" in the API tokens file .*role\.json has role "root"; use reader, operator, admin/],
    [tokensFile('dup.json', { version: 1, tokens: [entry, entry] }), /token "ci" in the API tokens file .*dup\.json appears twice/],
    [tokensFile('plain.json', { version: 1, tokens: [{ name: 'ci', role: 'admin', token: 'shoal_secret' }] }), /token 1 in the API tokens file .*plain\.json has an unknown field "token"/],
    [tokensFile('hash.json', { version: 1, tokens: [{ ...entry, sha256: 'abc' }] }), /has no valid "sha256" \(64 lower-case hex digits: the file keeps a hash, never the token\)/],
    [tokensFile('tenant.json', { version: 1, tokens: [{ ...entry, tenant: 'a/b' }] }), /has tenant "a\/b", which is not a valid tenant name/],
    [tokensFile('name.json', { version: 1, tokens: [{ ...entry, name: '' }] }), /token 1 in the API tokens file .*name\.json has no valid "name"/],
  ];
  for (const [file, re] of cases) await refuses(['--api-tokens', file], re);
});

test('certificates that are missing or do not belong together', async (t) => {
  if (!needTools(t, 'certtool')) return;
  await refuses(['--api-tls-certificates', join(dir, 'no-such-dir')], /cannot read .*no-such-dir\/server-cert\.pem \(ENOENT\): --api-tls-certificates names a directory holding server-cert\.pem and server-key\.pem/);
  const good = join(dir, 'pki');
  const other = join(dir, 'pki-other');
  for (const p of [good, other]) {
    mkdirSync(p);
    await makeTestPki(p);
  }
  // A key that is not the certificate's.
  writeFileSync(join(good, 'server-key.pem'), readFileSync(join(other, 'server-key.pem')));
  await refuses(['--api-tls-certificates', good], /the API certificate and key in .*pki cannot be used \(.*\): server-cert\.pem and server-key\.pem must be PEM and belong together/);
  writeFileSync(join(good, 'server-cert.pem'), 'not a certificate\n');
  await refuses(['--api-tls-certificates', good], /cannot be used/);
});

