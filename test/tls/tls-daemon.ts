// A daemon serving NBD over TLS for the tests in this folder, and a raw client that speaks
// STARTTLS itself (Node's tls.connect over the same socket) for what real clients never send.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import type { TlsKeys } from '../helpers/tls-keys.js';
import { Raw, OPT, REP, CMD } from '../nbd/raw.js';

/**
 * The daemon with these extra flags, a 2 s handshake timeout, and volume `v` holding PATTERN. The
 * test identities alice, bob and carol are --tls-admins (they test the transport, and see every volume);
 * test/tls/tenant-exports.test.ts is where identities are tenants.
 */
export async function startTlsDaemon(args: string[], client: (d: Daemon) => Promise<Raw>): Promise<Daemon> {
  const d = await startDaemon({ args: [...args, '--tls-admins', 'alice,bob,carol'], env: { NODE_ENV: 'test', SHOAL_TEST_HANDSHAKE_TIMEOUT_MS: '2000' } });
  await d.createVolume('v', VOLUME_SIZE);
  const c = await client(d);
  await c.handshake('v', { greeted: true });
  c.request(CMD.WRITE, 1n, 0, PATTERN.length, 1, PATTERN);
  assert.equal((await c.simpleReply()).error, 0);
  c.request(CMD.DISC, 2n, 0, 0);
  assert.ok(await c.waitClosed());
  return d;
}

export const VOLUME_SIZE = 16 * 1024 * 1024;
export const PATTERN = Buffer.alloc(256 * 1024);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i * 13 + 5) & 0xff;

/** The key psktool wrote for `identity` in `file`. */
export function pskKey(file: string, identity: string): Buffer {
  const line = readFileSync(file, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(identity + ':'));
  if (!line) throw new Error(`no ${identity} in ${file}`);
  return Buffer.from(line.slice(identity.length + 1), 'hex');
}

export type Credentials = { psk: { file: string; identity: string } } | { x509: { dir: string; withClientCert: boolean } };

/** Greets, sends STARTTLS, and completes the TLS handshake; the raw client then talks over TLS. */
export async function rawTls(d: Daemon, creds: Credentials, via: 'tcp' | 'unix' = 'tcp'): Promise<Raw> {
  const c = via === 'tcp' ? await Raw.connect(d.nbdPort) : await Raw.connectUnix(d.nbdSocket);
  await c.greet(3);
  c.sendOption(OPT.STARTTLS);
  const ack = await c.optionReply();
  assert.equal(ack.type, REP.ACK, `STARTTLS: 0x${ack.type.toString(16)} ${ack.data}`);
  await c.startTls(tlsOptions(creds));
  return c;
}

export function tlsOptions(creds: Credentials) {
  if ('psk' in creds) {
    const key = pskKey(creds.psk.file, creds.psk.identity);
    return { pskCallback: () => ({ identity: creds.psk.identity, psk: key }), checkServerIdentity: () => undefined };
  }
  const dir = creds.x509.dir;
  return {
    ca: readFileSync(join(dir, 'ca-cert.pem')),
    servername: 'localhost',
    ...(creds.x509.withClientCert ? { cert: readFileSync(join(dir, 'client-cert.pem')), key: readFileSync(join(dir, 'client-key.pem')) } : {}),
  };
}

/** A well-behaved client over TLS still reads PATTERN, then zeroes: nothing changed the volume. */
export async function patternIntact(d: Daemon, creds: Credentials): Promise<void> {
  const c = await rawTls(d, creds);
  try {
    await c.handshake('v', { greeted: true });
    c.request(CMD.READ, 7n, 0, PATTERN.length + 4096);
    const r = await c.simpleReply(PATTERN.length + 4096);
    assert.equal(r.error, 0);
    assert.ok(r.data.subarray(0, PATTERN.length).equals(PATTERN), 'pattern intact');
    assert.ok(r.data.subarray(PATTERN.length).equals(Buffer.alloc(4096)), 'nothing written after it');
  } finally {
    c.destroy();
  }
}

export type { TlsKeys };

/** An nbds:// (TCP) or nbds+unix:// URI for libnbd tools, with the credentials as query parameters. */
export function libnbdUri(d: Daemon, exportName: string, creds: Credentials, via: 'tcp' | 'unix' = 'tcp'): string {
  const params = 'psk' in creds ? `tls-psk-file=${creds.psk.file}` : `tls-certificates=${creds.x509.dir}`;
  const user = 'psk' in creds ? `${creds.psk.identity}@` : '';
  const name = encodeURIComponent(exportName);
  return via === 'tcp' ? `nbds://${user}127.0.0.1:${d.nbdPort}/${name}?${params}` : `nbds+unix://${user}/${name}?socket=${d.nbdSocket}&${params}`;
}

/** qemu-img/qemu-io arguments opening an export over TLS: --object tls-creds-* and --image-opts. */
export function qemuTlsArgs(d: Daemon, exportName: string, creds: Credentials, via: 'tcp' | 'unix' = 'tcp'): string[] {
  const object = 'psk' in creds ? `tls-creds-psk,id=tls0,endpoint=client,dir=${dirname(creds.psk.file)},username=${creds.psk.identity}` : `tls-creds-x509,id=tls0,endpoint=client,dir=${creds.x509.dir}`;
  // Over a Unix socket there is no host name to check the server certificate against: name it.
  const server = via === 'tcp' ? `host=127.0.0.1,port=${d.nbdPort}` : `server.type=unix,server.path=${d.nbdSocket},tls-hostname=localhost`;
  return ['--object', object, '--image-opts', `driver=nbd,${server},export=${exportName},tls-creds=tls0`];
}
