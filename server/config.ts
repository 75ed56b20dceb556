// Settings for `shoal serve` (config-sources.ts reads them from flags, SHOAL_* variables and a
// JSON file). Every bad value is refused here with a sentence, before the daemon touches the data
// directory; so is a listener beyond loopback that nothing protects.
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { bad, isNone, onOff, readSettings, sizeOf, type Raw } from './config-sources.js';
import { tlsConfig, type TlsConfig } from './nbd/tls-config.js';
import { storeConfig, type StoreConfig } from './store/s3/s3-config.js';
import { CHUNK_SIZE_RULE, isValidChunkSize } from './store/chunk-size.js';

export { envName } from './config-sources.js';

export interface ListenAddress {
  host: string; // as given, without brackets ("::1", "0.0.0.0")
  port: number; // 0 = an ephemeral port
}

type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface Config {
  dataDir: string; // absolute
  nbd: ListenAddress | null; // TCP listener for NBD; null = disabled
  nbdSocket: string | null; // absolute Unix socket path for NBD; null = disabled
  api: ListenAddress; // REST + /metrics
  cacheSize: number; // bytes
  cachePrefault: boolean; // fault the cache's memory in at start, at idle priority
  chunkSize: number | undefined; // bytes; only used when creating a new store (undefined = the store's default)
  logLevel: LogLevel;
  dedup: boolean; // inline deduplication of written chunks (on by default)
  dedupVerify: boolean; // compare bytes on a fingerprint match (BLAKE3-256 alone is cryptographic)
  tls: TlsConfig; // NBD over TLS
  insecure: boolean; // allow listening beyond loopback without protection
  maxConnections: number; // NBD connections served at once
  nbdSocketMode: number; // permission bits of the NBD Unix socket
  apiTokens: string | null; // absolute path of the API tokens file; null: the API is open
  apiTlsCertificates: string | null; // absolute directory holding server-cert.pem and server-key.pem; null: plain HTTP
  store: StoreConfig;
  configFile: string | null; // absolute path of the config file read, if any
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const UNIX_PATH_MAX = 107; // sun_path is 108 bytes including the terminating NUL

const DEFAULTS = {
  dataDir: './shoal-data',
  nbd: '127.0.0.1:10809',
  api: '127.0.0.1:10880',
  cacheSize: '1G',
  logLevel: 'info',
  maxConnections: 1024,
  nbdSocketMode: 0o660,
} as const;

/** "host:port" or "[v6]:port". The host is required: an address to listen on is never guessed. */
export function parseListenAddress(text: string, source: string): ListenAddress {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:\s]+):(\d+)$/.exec(text);
  if (!m) bad(`${source} "${text}" is not a listen address: use HOST:PORT, e.g. 127.0.0.1:10809 or [::1]:10809.`);
  const port = Number(m[2]);
  if (!Number.isInteger(port) || port > 65535) bad(`${source} "${text}" has a port out of range (0 to 65535).`);
  return { host: m[1]!, port };
}

/** Formats an address for URLs and logs ("[::1]:10809"). */
export function formatListenAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Only addresses this machine alone can reach; a host name other than localhost is not trusted to be one. */
function isLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) !== 6) return false;
  // The URL parser writes IPv6 in canonical form: ::1, and IPv4-mapped 127/8 as ::ffff:7fXX:XXXX.
  const canonical = new URL(`http://[${host}]/`).hostname;
  return canonical === '[::1]' || canonical.startsWith('[::ffff:7f');
}

/** Octal permission bits, as chmod takes them ("0660", "660", "0o660"). */
function parseMode(raw: Raw): number {
  const m = /^(?:0o?)?([0-7]{3})$/i.exec(raw.value.trim());
  if (!m) bad(`${raw.source} "${raw.value}" must be octal permission bits such as 0660.`);
  return parseInt(m[1]!, 8);
}

/** Builds the configuration of `shoal serve` from its arguments (without "serve") and the environment. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config {
  const { pick, configFile } = readSettings(argv, env);
  const path = (raw: Raw | undefined) => (raw && !isNone(raw.value) ? resolve(raw.base, raw.value) : null);

  const dataDirRaw = pick('dataDir');
  if (dataDirRaw && dataDirRaw.value === '') bad(`${dataDirRaw.source} must not be empty.`);
  const dataDir = resolve(dataDirRaw?.base ?? process.cwd(), dataDirRaw?.value ?? DEFAULTS.dataDir);

  const nbdRaw = pick('nbd');
  const nbd = nbdRaw ? (isNone(nbdRaw.value) ? null : parseListenAddress(nbdRaw.value, nbdRaw.source)) : parseListenAddress(DEFAULTS.nbd, 'default');

  const sockRaw = pick('nbdSocket');
  const nbdSocket = sockRaw ? path(sockRaw) : resolve(dataDir, 'nbd.sock');
  if (nbdSocket && Buffer.byteLength(nbdSocket) > UNIX_PATH_MAX) {
    bad(`the NBD socket path ${nbdSocket} is too long (${Buffer.byteLength(nbdSocket)} bytes; Unix sockets allow ${UNIX_PATH_MAX}): choose a shorter --nbd-socket.`);
  }
  if (!nbd && !nbdSocket) bad('both NBD listeners are disabled (--nbd and --nbd-socket are "none"): enable at least one.');

  const apiRaw = pick('api');
  if (apiRaw && isNone(apiRaw.value)) bad(`${apiRaw.source}: the REST API cannot be disabled.`);
  const api = parseListenAddress(apiRaw?.value ?? DEFAULTS.api, apiRaw?.source ?? 'default');

  const cacheRaw = pick('cacheSize');
  const cacheSize = sizeOf(cacheRaw?.value ?? DEFAULTS.cacheSize, cacheRaw?.source ?? 'default cache size');

  const chunkRaw = pick('chunkSize');
  const chunkSize = chunkRaw ? sizeOf(chunkRaw.value, chunkRaw.source) : undefined;
  if (chunkRaw && !isValidChunkSize(chunkSize!)) bad(`${chunkRaw.source} "${chunkRaw.value}" must be ${CHUNK_SIZE_RULE}.`);

  const levelRaw = pick('logLevel');
  const logLevel = (levelRaw?.value ?? DEFAULTS.logLevel).toLowerCase() as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) bad(`${levelRaw?.source ?? 'log level'} "${levelRaw?.value}" is not a log level; use one of ${LOG_LEVELS.join(', ')}.`);

  const dedup = onOff(pick('dedup'), true);
  const dedupVerify = onOff(pick('dedupVerify'), false);

  // Safe by default: what anyone on the network can reach must be protected, unless told not to.
  const tls = tlsConfig(pick);
  const insecure = onOff(pick('insecure'), false);
  if (nbd && !isLoopback(nbd.host) && tls.mode !== 'require' && !insecure) {
    bad(
      `NBD would listen on ${formatListenAddress(nbd)}, which is not a loopback address, without --tls require: anyone who can reach it could read and write every volume, so add --tls require (with --tls-certificates or --tls-psk), or --insecure to accept that.`,
    );
  }
  const apiTokens = path(pick('apiTokens'));
  const apiTlsCertificates = path(pick('apiTlsCertificates'));
  if (!isLoopback(api.host) && !apiTokens && !insecure) {
    bad(`the REST API would listen on ${formatListenAddress(api)}, which is not loopback, without authentication: give --api-tokens FILE (see \`shoal token create\`), or --insecure to serve it open anyway.`);
  }

  const maxRaw = pick('maxConnections');
  const maxConnections = maxRaw ? Number(maxRaw.value) : DEFAULTS.maxConnections;
  if (maxRaw && (!/^\d+$/.test(maxRaw.value.trim()) || maxConnections < 1 || maxConnections > 1_000_000)) {
    bad(`${maxRaw.source} "${maxRaw.value}" must be a whole number of connections from 1 to 1000000.`);
  }
  const modeRaw = pick('nbdSocketMode');
  const nbdSocketMode = modeRaw ? parseMode(modeRaw) : DEFAULTS.nbdSocketMode;

  const store = storeConfig(pick);
  // On by default for an S3 store: after a restore or a takeover every read is a miss fetched from the
  // bucket, and on a VM the first touch of each new page of the arena cost 1.5-4 s of CPU per GiB on
  // that path (a cold read at 0.75× plain GETs, 1.01× with it; README, "The S3 store"). The local store
  // keeps its lazy arena: nothing changes for it without --store.
  const cachePrefault = onOff(pick('cachePrefault'), store.kind === 's3');
  return { dataDir, nbd, nbdSocket, api, cacheSize, cachePrefault, chunkSize, logLevel, dedup, dedupVerify, tls, insecure, maxConnections, nbdSocketMode, apiTokens, apiTlsCertificates, store, configFile };
}
