// The REST API over HTTPS (--api-tls-certificates) with tokens, through real clients: curl, and the
// `shoal` CLI with --token-file / SHOAL_API_TOKEN and --cacert. A client that does not trust the
// certificate, has no token, or has a token file it must not use gets one sentence, and nothing
// changes on the daemon.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { hasTool, needTools, run } from '../helpers/tools.js';
import { makeTestPki, type TestPki } from '../helpers/certificates.js';

let d: Daemon | undefined;
let dir: string;
let pki: TestPki;
let otherCa: string;
let tokensFile: string;
let adminToken = '';
let adminTokenFile: string;

const shoal = (args: string[], env: Record<string, string> = {}) => run(process.execPath, [MAIN, '--api', d!.apiUrl, ...args], { env: { SHOAL_API_TOKEN: '', ...env } });

before(async () => {
  if (!hasTool('certtool') && process.env.CI !== 'true') return; // each test skips with the reason
  dir = mkdtempSync(join(tmpdir(), 'shoal-https-'));
  pki = await makeTestPki(dir);
  otherCa = (await makeTestPki(dir, 'other')).caCert;
  tokensFile = join(dir, 'api-tokens.json');
  const r = await run(process.execPath, [MAIN, 'token', 'create', 'admin', '--role', 'admin', '--tokens-file', tokensFile]);
  assert.equal(r.status, 0, r.stderr);
  adminToken = r.stdout.trim();
  adminTokenFile = join(dir, 'admin.token');
  writeFileSync(adminTokenFile, r.stdout, { mode: 0o600 });
  d = await startDaemon({ args: ['--api-tls-certificates', dir, '--api-tokens', tokensFile] });
});

after(async () => {
  await d?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the daemon serves https, and says so in its ready line', (t) => {
  if (!needTools(t, 'certtool')) return;
  assert.match(d!.apiUrl, /^https:\/\/127\.0\.0\.1:\d+$/);
});

test('curl: with the CA and a token it works; without the CA, with another CA, or over plain http it does not', async (t) => {
  if (!needTools(t, 'certtool', 'curl')) return;
  const auth = ['-H', `Authorization: Bearer ${adminToken}`];
  const ok = await run('curl', ['-sS', '--fail-with-body', '--cacert', pki.caCert, ...auth, '-XPOST', '-H', 'content-type: application/json', '-d', '{"name":"curl-vol","size":"1M"}', `${d!.apiUrl}/v1/volumes`]);
  assert.equal(ok.status, 0, ok.stderr + ok.stdout);
  assert.equal(JSON.parse(ok.stdout).name, 'curl-vol');
  const noToken = await run('curl', ['-sS', '--cacert', pki.caCert, '-w', '\n%{http_code}', `${d!.apiUrl}/v1/volumes`]);
  assert.match(noToken.stdout, /"code":"unauthorized".*\n401$/s);
  // curl exit 60: the peer's certificate cannot be verified.
  for (const ca of [[], ['--cacert', otherCa]]) {
    const r = await run('curl', ['-sS', ...ca, ...auth, `${d!.apiUrl}/v1/volumes`]);
    assert.equal(r.status, 60, `curl ${ca.join(' ')}: ${r.stderr}`);
  }
  const plain = await run('curl', ['-sS', ...auth, d!.apiUrl.replace('https:', 'http:') + '/v1/volumes']);
  assert.notEqual(plain.status, 0, 'plain HTTP to the HTTPS port gets nothing');
  const health = await run('curl', ['-sS', '--cacert', pki.caCert, `${d!.apiUrl}/healthz`]);
  assert.equal(health.stdout, '{"status":"ok"}');
});

test('the CLI with --token-file and --cacert, or SHOAL_API_TOKEN', async (t) => {
  if (!needTools(t, 'certtool')) return;
  let r = await shoal(['--token-file', adminTokenFile, '--cacert', pki.caCert, 'volume', 'create', 'cli-vol', '4M', '--tenant', 'acme']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /created volume cli-vol \(4 MiB, tenant acme, domain acme\)/);
  r = await shoal(['--cacert', pki.caCert, '--json', 'volume', 'list'], { SHOAL_API_TOKEN: adminToken });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).volumes.map((v: any) => [v.name, v.tenant]), [['cli-vol', 'acme'], ['curl-vol', null]]);
  // --token-file wins over SHOAL_API_TOKEN.
  r = await shoal(['--token-file', adminTokenFile, '--cacert', pki.caCert, 'volume', 'show', 'cli-vol'], { SHOAL_API_TOKEN: 'shoal_wrong' });
  assert.equal(r.status, 0, r.stderr);
});

test('the CLI refuses with one sentence, and nothing changes: untrusted certificate, no or bad token, token files it must not use', async (t) => {
  if (!needTools(t, 'certtool')) return;
  const listed = async () => (await shoal(['--token-file', adminTokenFile, '--cacert', pki.caCert, '--json', 'volume', 'list'])).stdout;
  const before = await listed();
  const file = (name: string, text: string, mode: number) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode });
    chmodSync(p, mode);
    return p;
  };
  const cases: [string[], Record<string, string>, RegExp][] = [
    [['--token-file', adminTokenFile], {}, /presented a certificate this client does not trust \(\w+\): give the CA that signed it with --cacert FILE/],
    [['--token-file', adminTokenFile, '--cacert', otherCa], {}, /does not trust/],
    [['--cacert', pki.caCert], {}, /this API needs a bearer token/],
    [['--cacert', pki.caCert], { SHOAL_API_TOKEN: 'shoal_wrong' }, /the bearer token is not valid/],
    [['--cacert', pki.caCert, '--token-file', file('open.token', adminToken, 0o644)], {}, /the token file .*open\.token is open to every user on this machine \(mode 0644\): .*chmod 600/],
    [['--cacert', pki.caCert, '--token-file', file('empty.token', '\n', 0o600)], {}, /empty\.token is empty/],
    [['--cacert', pki.caCert, '--token-file', tokensFile], {}, /looks like the daemon's tokens file \(--api-tokens\)/],
    [['--cacert', pki.caCert, '--token-file', join(dir, 'missing.token')], {}, /cannot read the token file .*missing\.token: ENOENT/],
    [['--token-file', adminTokenFile, '--cacert', adminTokenFile], {}, /holds no PEM certificate/],
    [['--token-file', adminTokenFile, '--cacert', pki.caCert, '--api', d!.apiUrl.replace('https:', 'http:')], {}, /--cacert applies to an https:\/\/ API/],
  ];
  for (const [flags, env, re] of cases) {
    const r = await shoal([...flags, 'volume', 'create', 'must-not-exist', '1M'], env);
    assert.equal(r.status, 1, `${flags.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^shoal: [^\n]+\n$/, 'one line');
    assert.match(r.stderr, re, flags.join(' '));
    assert.equal(r.stdout, '');
  }
  assert.equal(await listed(), before);
});
