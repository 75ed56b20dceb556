// The NBD engine's TLS settings (--tls, --tls-certificates, --tls-psk, --tls-verify-peer,
// --tls-admins), with nbdkit's names and values, checked before anything is opened.
import { resolve } from 'node:path';
import { bad, onOff, type Pick } from '../config-sources.js';
import type { TlsMode } from './handshake.js';

export interface TlsConfig {
  mode: TlsMode;
  certificates: string | null; // absolute directory with ca-cert.pem, server-cert.pem, server-key.pem
  psk: string | null; // absolute path of a psktool file
  verifyPeer: boolean; // X.509: require a client certificate signed by ca-cert.pem
  admins: string[]; // TLS identities (PSK identity or certificate CN) that see every tenant's volumes
}

export function tlsConfig(pick: Pick): TlsConfig {
  const modeRaw = pick('tls');
  let mode: TlsMode = 'off';
  if (modeRaw) {
    // nbdkit's values: off, on, require (booleans spelled any usual way for the first two).
    const v = modeRaw.value.toLowerCase();
    if (v === 'require') mode = 'require';
    else if (['on', 'true', 'yes', '1'].includes(v)) mode = 'on';
    else if (!['off', 'false', 'no', '0'].includes(v)) bad(`${modeRaw.source} "${modeRaw.value}" must be off, on or require.`);
  }
  const certRaw = pick('tlsCertificates');
  const pskRaw = pick('tlsPsk');
  const verifyRaw = pick('tlsVerifyPeer');
  const adminsRaw = pick('tlsAdmins');
  const certificates = certRaw ? resolve(certRaw.base, certRaw.value) : null;
  const psk = pskRaw ? resolve(pskRaw.base, pskRaw.value) : null;
  const verifyPeer = onOff(verifyRaw, false);
  const admins = adminsRaw ? adminsRaw.value.split(',').map((a) => a.trim()) : [];
  if (certRaw?.value === '' || pskRaw?.value === '') bad(`${(certRaw?.value === '' ? certRaw : pskRaw)!.source} must not be empty.`);
  if (admins.some((a) => a === '')) bad(`${adminsRaw!.source} "${adminsRaw!.value}" must be a comma-separated list of TLS identities, none empty.`);
  if (mode === 'off') {
    const given = [certRaw, pskRaw, verifyPeer ? verifyRaw : undefined, adminsRaw].find((r) => r !== undefined);
    if (given) bad(`${given.source} has no effect while --tls is off: add --tls on or --tls require.`);
  } else {
    if (!certificates && !psk) bad(`--tls ${mode} needs credentials: --tls-certificates DIR (ca-cert.pem, server-cert.pem, server-key.pem) or --tls-psk FILE (psktool's format).`);
    if (certificates && psk) bad(`${certRaw!.source} and ${pskRaw!.source} are both set: choose X.509 certificates or pre-shared keys.`);
  }
  return { mode, certificates, psk, verifyPeer, admins };
}

