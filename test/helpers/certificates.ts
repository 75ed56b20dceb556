// A throwaway CA and a server certificate signed by it, made with certtool (gnutls-bin) for the test
// that needs them: nothing is committed, nothing outlives the test's temporary directory.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './tools.js';

async function certtool(args: string[]): Promise<void> {
  const r = await run('certtool', args);
  if (r.status !== 0) throw new Error(`certtool ${args.join(' ')} failed:\n${r.stderr}`);
}

export interface TestPki {
  caCert: string; // path of the CA's certificate (what a client trusts: curl --cacert, shoal --cacert)
  serverCert: string; // DIR/server-cert.pem
  serverKey: string; // DIR/server-key.pem
}

/**
 * Writes ca-cert.pem, ca-key.pem, server-cert.pem and server-key.pem into `dir`; the server certificate
 * is for 127.0.0.1 and localhost. `name` makes a second, unrelated CA in the same directory.
 */
export async function makeTestPki(dir: string, name = 'ca'): Promise<TestPki> {
  const p = (f: string) => join(dir, f);
  const caKey = p(`${name}-key.pem`);
  const caCert = p(`${name}-cert.pem`);
  writeFileSync(p(`${name}.info`), 'cn = Shoal test CA\nca\ncert_signing_key\nexpiration_days = 2\n');
  await certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', caKey]);
  await certtool(['--generate-self-signed', '--load-privkey', caKey, '--template', p(`${name}.info`), '--outfile', caCert]);
  const serverKey = p(name === 'ca' ? 'server-key.pem' : `${name}-server-key.pem`);
  const serverCert = p(name === 'ca' ? 'server-cert.pem' : `${name}-server-cert.pem`);
  writeFileSync(p(`${name}-server.info`), 'cn = 127.0.0.1\nip_address = 127.0.0.1\ndns_name = localhost\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 2\n');
  await certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', serverKey]);
  await certtool([
    '--generate-certificate',
    '--load-privkey', serverKey,
    '--load-ca-certificate', caCert,
    '--load-ca-privkey', caKey,
    '--template', p(`${name}-server.info`),
    '--outfile', serverCert,
  ]);
  return { caCert, serverCert, serverKey };
}
