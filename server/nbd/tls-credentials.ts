// TLS credentials for NBD_OPT_STARTTLS, loaded the way nbdkit and QEMU lay them out:
// X.509 from a directory holding ca-cert.pem, server-cert.pem and server-key.pem (ca-crl.pem if
// present), or pre-shared keys from a file in psktool's format (`identity:hexkey` lines).
//
// PSK works over TLS 1.3 and, for clients that stop at 1.2, over the (EC)DHE-PSK and PSK suites
// nbdkit offers GnuTLS clients; Node's default cipher list excludes PSK, so it is listed here.
// The PSK file is read again when it changes (as GnuTLS does for nbdkit), so identities can be
// added or removed without a restart; a file that becomes unreadable or malformed refuses every
// PSK client until it is fixed, rather than keep keys the operator meant to remove.
import tls from 'node:tls';
import { readFileSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../errors.js';
import type { Logger } from './handshake.js';

export interface TlsFiles {
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem (X.509); null with PSK. */
  certificates: string | null;
  /** psktool file; null with X.509. */
  psk: string | null;
  /** X.509: require a client certificate signed by ca-cert.pem. */
  verifyPeer: boolean;
}

/** What a connection needs to run a server-side TLS handshake. */
export interface TlsCredentials {
  readonly kind: 'x509' | 'psk';
  readonly verifyPeer: boolean;
  readonly secureContext: tls.SecureContext;
  /** PSK only: the key of an identity, or null to refuse it. */
  pskKey?(identity: string): Buffer | null;
}

const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305',
].join(':');
/** OpenSSL refuses longer identities and keys. */
const MAX_PSK_IDENTITY = 128;
const MAX_PSK_KEY = 256;

function bad(message: string): never {
  throw new ShoalError('invalid_request', message);
}

function readFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    bad(`cannot read ${what} ${path}: ${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)}.`);
  }
}

/** Loads and checks the credentials; every problem is a ShoalError with one sentence naming the file. */
export function loadTlsCredentials(files: TlsFiles, log?: Logger): TlsCredentials {
  if (files.psk) return new PskCredentials(files.psk, files.verifyPeer, log);
  if (files.certificates) return x509Credentials(files.certificates, files.verifyPeer);
  bad('TLS needs --tls-certificates DIR or --tls-psk FILE.');
}

function x509Credentials(dir: string, verifyPeer: boolean): TlsCredentials {
  const ca = readFile(join(dir, 'ca-cert.pem'), 'the CA certificate');
  const cert = readFile(join(dir, 'server-cert.pem'), 'the server certificate');
  const key = readFile(join(dir, 'server-key.pem'), 'the server key');
  let crl: Buffer | undefined;
  try {
    crl = readFileSync(join(dir, 'ca-crl.pem'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') bad(`cannot read the revocation list ${join(dir, 'ca-crl.pem')}: ${(e as NodeJS.ErrnoException).code}.`);
  }
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({ ca, cert, key, crl, minVersion: 'TLSv1.2' });
  } catch (e) {
    bad(`the certificates in ${dir} cannot be used (${(e as Error).message.replace(/\.$/, '')}): server-cert.pem and server-key.pem must be a PEM certificate and its unencrypted key, ca-cert.pem a PEM CA certificate.`);
  }
  return { kind: 'x509', verifyPeer, secureContext };
}

/** Parses psktool's format; throws a sentence naming the first bad line. */
function parsePskFile(text: string, path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `${path} line ${i + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) bad(`${where} is not "identity:hexkey" (psktool's format).`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused here
    if (Buffer.byteLength(identity) > MAX_PSK_IDENTITY || /[\x00-\x1f\x7f]/.test(identity)) {
      bad(`${where}: the identity must be printable and at most ${MAX_PSK_IDENTITY} bytes.`);
    }
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 > MAX_PSK_KEY) {
      bad(`${where}: the key must be an even number of hex digits (at most ${MAX_PSK_KEY} bytes), as psktool writes it.`);
    }
    if (keys.has(identity)) bad(`${where}: identity "${identity}" appears twice.`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) bad(`${path} holds no keys: add "identity:hexkey" lines with psktool -u IDENTITY -p ${path}.`);
  return keys;
}

class PskCredentials implements TlsCredentials {
  readonly kind = 'psk';
  readonly secureContext: tls.SecureContext;
  private keys: Map<string, Buffer> | null;
  /** The file's stat when last read; null while it is missing. */
  private seen: Stats | null;

  constructor(
    private readonly path: string,
    readonly verifyPeer: boolean,
    private readonly log?: Logger,
  ) {
    this.keys = parsePskFile(readFile(path, 'the PSK file').toString('utf8'), path);
    this.seen = statSync(path);
    // No certificate: a client that does not offer a known identity fails the handshake.
    this.secureContext = tls.createSecureContext({ ciphers: PSK_CIPHERS, dhparam: 'auto', minVersion: 'TLSv1.2' });
  }

  pskKey(identity: string): Buffer | null {
    this.reloadIfChanged();
    return this.keys?.get(identity) ?? null;
  }

  private reloadIfChanged(): void {
    let st: Stats;
    try {
      st = statSync(this.path);
    } catch (e) {
      if (this.seen) this.log?.error({ path: this.path, err: e }, 'nbd: the PSK file is gone; refusing PSK clients until it is back');
      this.seen = null;
      this.keys = null;
      return;
    }
    const s = this.seen;
    if (s && st.mtimeMs === s.mtimeMs && st.size === s.size && st.ino === s.ino && st.ctimeMs === s.ctimeMs) return;
    this.seen = st;
    try {
      this.keys = parsePskFile(readFile(this.path, 'the PSK file').toString('utf8'), this.path);
      this.log?.info({ path: this.path, identities: this.keys.size }, 'nbd: PSK file reloaded');
    } catch (e) {
      this.keys = null;
      this.log?.error({ path: this.path, reason: (e as Error).message }, 'nbd: the PSK file changed and cannot be used; refusing PSK clients until it is fixed');
    }
  }
}
