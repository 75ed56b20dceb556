// Certificates and pre-shared keys made for one test run with GnuTLS's own tools (certtool,
// psktool from gnutls-bin), laid out the way nbdkit, QEMU and libnbd look for them.
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasTool, runOk } from './tools.js';

export interface TlsKeys {
  root: string;
  /** --tls-certificates for the daemon: ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
  /** libnbd tls-certificates= / QEMU tls-creds-x509 dir: ca-cert.pem, client-cert.pem (CN "alice"), client-key.pem. */
  clientDir: string;
  /** Trusts the server's CA, but its client certificate (CN "mallory") is signed by another CA of the same name. */
  strangerDir: string;
  /** Trusts the server's CA, holds no client certificate. */
  anonymousDir: string;
  /** --tls-psk for the daemon (identities alice and bob); also the libnbd tls-psk-file=. */
  psk: string;
  /** Directory holding keys.psk (what QEMU's tls-creds-psk wants). */
  pskDir: string;
  /** alice with a key the server does not have. */
  wrongPskDir: string;
  /** An identity the server does not know (mallory). */
  unknownPskDir: string;
  dispose(): void;
}

async function certtool(args: string[]): Promise<void> {
  await runOk('certtool', args);
}

async function makeKey(path: string): Promise<void> {
  // ECDSA: generated in milliseconds, and every client here (GnuTLS) and OpenSSL speak it.
  await certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', path]);
}

async function makeCa(dir: string, cn: string): Promise<void> {
  await makeKey(join(dir, 'ca-key.pem'));
  writeFileSync(join(dir, 'ca.info'), `cn = ${cn}\nca\ncert_signing_key\nexpiration_days = 30\n`);
  await certtool(['--generate-self-signed', '--load-privkey', join(dir, 'ca-key.pem'), '--template', join(dir, 'ca.info'), '--outfile', join(dir, 'ca-cert.pem')]);
}

async function issue(caDir: string, out: string, name: 'server' | 'client', template: string): Promise<void> {
  await makeKey(join(out, `${name}-key.pem`));
  writeFileSync(join(out, `${name}.info`), template);
  await certtool([
    '--generate-certificate',
    '--load-ca-certificate', join(caDir, 'ca-cert.pem'),
    '--load-ca-privkey', join(caDir, 'ca-key.pem'),
    '--load-privkey', join(out, `${name}-key.pem`),
    '--template', join(out, `${name}.info`),
    '--outfile', join(out, `${name}-cert.pem`),
  ]);
}

async function psktool(dir: string, identity: string): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'keys.psk');
  await runOk('psktool', ['-u', identity, '-p', file]);
  return file;
}

/** Appends a fresh key for `identity` to a psktool file and returns the file's text. */
export async function addPskIdentity(file: string, identity: string): Promise<string> {
  await runOk('psktool', ['-u', identity, '-p', file]);
  return readFileSync(file, 'utf8');
}

/**
 * For a suite's before(): true when certtool and psktool are installed; without them the
 * suite's tests skip, or (CI=true) this throws so the run fails.
 */
export function haveGnutlsTools(): boolean {
  const missing = ['certtool', 'psktool'].filter((t) => !hasTool(t));
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') throw new Error(`missing ${missing.join(', ')} (CI=true: install gnutls-bin in .ci/run)`);
  return false;
}

export async function makeTlsKeys(): Promise<TlsKeys> {
  const root = mkdtempSync(join(tmpdir(), 'shoal-tls-'));
  const d = (name: string) => {
    const p = join(root, name);
    mkdirSync(p, { recursive: true });
    return p;
  };
  const ca = d('ca');
  const otherCa = d('other-ca');
  await makeCa(ca, 'Shoal test CA');
  // An impostor CA with the same name: clients offer its certificates, so the signature check is what refuses them.
  await makeCa(otherCa, 'Shoal test CA');

  const serverDir = d('server');
  await issue(ca, serverDir, 'server', 'organization = Shoal tests\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n');
  const clientDir = d('client');
  await issue(ca, clientDir, 'client', 'cn = alice\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n');
  const strangerDir = d('stranger');
  await issue(otherCa, strangerDir, 'client', 'cn = mallory\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n');
  const anonymousDir = d('anonymous');
  for (const dir of [serverDir, clientDir, strangerDir, anonymousDir]) writeFileSync(join(dir, 'ca-cert.pem'), readFileSync(join(ca, 'ca-cert.pem')));

  const pskDir = d('psk');
  const psk = await psktool(pskDir, 'alice');
  await addPskIdentity(psk, 'bob');
  const wrongPskDir = d('psk-wrong');
  await psktool(wrongPskDir, 'alice');
  const unknownPskDir = d('psk-unknown');
  await psktool(unknownPskDir, 'mallory');

  return { root, serverDir, clientDir, strangerDir, anonymousDir, psk, pskDir, wrongPskDir, unknownPskDir, dispose: () => rmSync(root, { recursive: true, force: true }) };
}
