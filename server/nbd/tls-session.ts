// The server side of NBD_OPT_STARTTLS once the ACK is written: the plain socket is wrapped in a
// TLSSocket on the same file descriptor, and the handshake either authenticates the client
// (resolving with who it is) or fails with a sentence for the log.
import tls from 'node:tls';
import type { Socket } from 'node:net';
import type { NbdSession } from '../volume/export-port.js';
import type { TlsCredentials } from './tls-credentials.js';

export class TlsHandshakeError extends Error {
  override name = 'TlsHandshakeError';
}

export interface TlsUpgrade {
  /** The encrypted stream; from now on every byte goes through it. */
  sock: tls.TLSSocket;
  /** Resolves once the handshake is done and the client is accepted. */
  ready: Promise<NbdSession>;
}

/**
 * Wraps `raw` (paused by the caller, with nothing of the client's still to be read in plaintext).
 * Bytes the socket has buffered but not delivered go to the TLS layer, never to the NBD parser.
 */
export function upgradeToTls(raw: Socket, creds: TlsCredentials): TlsUpgrade {
  let pskIdentity: string | null = null;
  let refusedIdentity: string | null = null;
  const x509Verify = creds.kind === 'x509' && creds.verifyPeer;
  const sock = new tls.TLSSocket(raw, {
    isServer: true,
    secureContext: creds.secureContext,
    requestCert: x509Verify,
    rejectUnauthorized: x509Verify,
    ...(creds.pskKey
      ? {
          pskCallback: (_s: tls.TLSSocket, identity: string) => {
            const key = creds.pskKey!(identity);
            if (key) pskIdentity = identity;
            else refusedIdentity = identity;
            return key;
          },
        }
      : {}),
  });
  const ready = new Promise<NbdSession>((resolve, reject) => {
    const onError = (e: Error) => {
      // OpenSSL errors carry a short `reason` ("no shared cipher"); the message is a long code path.
      const why = refusedIdentity !== null ? `no key for PSK identity ${JSON.stringify(refusedIdentity)}` : ((e as { reason?: string }).reason ?? e.message);
      reject(new TlsHandshakeError(`TLS handshake failed: ${why}`));
    };
    const onClose = () => reject(new TlsHandshakeError('the client closed the connection during the TLS handshake'));
    sock.once('error', onError);
    sock.once('close', onClose);
    sock.once('secure', () => {
      sock.off('error', onError);
      sock.off('close', onClose);
      if (creds.kind === 'psk') {
        resolve({ tls: true, identity: pskIdentity });
        return;
      }
      if (!x509Verify) {
        resolve({ tls: true, identity: null });
        return;
      }
      // OpenSSL lets the handshake finish whatever the chain's verdict, and Node applies
      // rejectUnauthorized only to sockets a tls.Server accepted: ask for the verdict the way
      // tls.Server does (its onServerSocketSecure), through the socket's OpenSSL handle.
      const verifyError = (sock as unknown as { ssl: { verifyError(): (Error & { code?: string }) | null } }).ssl.verifyError();
      if (verifyError) {
        reject(new TlsHandshakeError(`client certificate refused: ${verifyError.code ?? verifyError.message}`));
        return;
      }
      const cn = sock.getPeerCertificate().subject?.CN;
      resolve({ tls: true, identity: typeof cn === 'string' && cn !== '' ? cn : null });
    });
  });
  return { sock, ready };
}
