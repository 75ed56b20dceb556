// Which of the daemon's NBD endpoints this client uses (GET /v1/endpoints says where it listens),
// and with what TLS credentials. The Unix socket when the daemon is on this machine and the
// socket may be opened (no TCP overhead); else the TCP address, with a wildcard listen address
// replaced by the host the API was reached at.
import { accessSync, constants, readFileSync } from 'node:fs';
import { CliError } from '../api-client.js';
import type { NbdEndpoints } from '../../../api/routes/system.js';
import type { ClientTls, NbdTarget } from './client-handshake.js';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|\[::1\]|localhost)$/i;
const WILDCARD = new Set(['0.0.0.0', '::', '[::]', '']);

/** psktool's file: "identity:hexkey" lines; the first is used. */
export function readPskFile(path: string): { identity: string; key: Buffer } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new CliError(`cannot read the PSK file ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const line = text.split('\n').find((l) => l.trim() !== '');
  const m = line ? /^([^:\s]+):([0-9a-fA-F]+)$/.exec(line.trim()) : null;
  if (!m || m[2]!.length % 2 !== 0) throw new CliError(`${path} is not a PSK file: its first line should be IDENTITY:HEXKEY, as psktool writes it`);
  return { identity: m[1]!, key: Buffer.from(m[2]!, 'hex') };
}

function splitHostPort(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(addr);
  if (!m) throw new CliError(`the daemon reported an NBD address this client cannot read: ${JSON.stringify(addr)}`);
  return { host: m[1]!, port: Number(m[2]) };
}

export function chooseTarget(ep: NbdEndpoints, apiBaseUrl: string, exportName: string, creds: ClientTls): NbdTarget {
  const apiHost = new URL(apiBaseUrl).hostname;
  const useTls = ep.tls === 'require' || (ep.tls === 'on' && (creds.ca !== undefined || creds.psk !== undefined));
  const tls = useTls ? creds : null;
  if (ep.unix && LOOPBACK.test(apiHost)) {
    try {
      accessSync(ep.unix, constants.R_OK | constants.W_OK);
      return { address: { path: ep.unix }, exportName, tls };
    } catch {
      /* not this user's to open, or another machine's path: try TCP */
    }
  }
  if (ep.tcp) {
    const { host, port } = splitHostPort(ep.tcp);
    return { address: { host: WILDCARD.has(host) ? apiHost.replace(/^\[|\]$/g, '') : host, port }, exportName, tls };
  }
  if (ep.unix) throw new CliError(`the daemon serves NBD only on the Unix socket ${ep.unix}, which this user cannot open${LOOPBACK.test(apiHost) ? '' : ' (and the API is on another machine)'}`);
  throw new CliError('the daemon serves NBD on no address (--nbd none and --nbd-socket none)');
}
