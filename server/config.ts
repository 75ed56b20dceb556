// Settings for `shoal serve`. Each comes from, in order of precedence: a command-line flag, an environment
// variable SHOAL_<NAME>, a JSON config file (--config / SHOAL_CONFIG), then the default.
// Every bad value is refused here with a sentence, before the daemon touches the data directory.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { ShoalError } from './errors.js';
import { parseSize } from './size.js';
import type { TlsMode } from './nbd/handshake.js';

export interface ListenAddress {
  host: string; // as given, without brackets ("::1", "0.0.0.0")
  port: number; // 0 = an ephemeral port
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** NBD over TLS (nbdkit's flags): with mode on/require exactly one of certificates/psk is set. */
export interface TlsConfig {
  mode: TlsMode;
  certificates: string | null; // absolute directory with ca-cert.pem, server-cert.pem, server-key.pem
  psk: string | null; // absolute path of a psktool file
  verifyPeer: boolean; // X.509: require a client certificate signed by ca-cert.pem
  admins: string[]; // TLS identities (PSK identity or certificate CN) that see every tenant's volumes
}

export interface Config {
  dataDir: string; // absolute
  nbd: ListenAddress | null; // TCP listener for NBD; null = disabled
  nbdSocket: string | null; // absolute Unix socket path for NBD; null = disabled
  api: ListenAddress; // REST + /metrics
  cacheSize: number; // bytes
  chunkSize: number | undefined; // bytes; only used when creating a new store (undefined = the store's default)
  logLevel: LogLevel;
  dedup: boolean; // inline deduplication of written chunks (on by default)
  dedupVerify: boolean; // compare bytes on a fingerprint match (BLAKE3-256 alone is cryptographic)
  tls: TlsConfig;
  insecure: boolean; // allow listening beyond loopback without protection
  maxConnections: number; // NBD connections served at once
  nbdSocketMode: number; // permission bits of the NBD Unix socket
  configFile: string | null; // absolute path of the config file read, if any
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const UNIX_PATH_MAX = 107; // sun_path is 108 bytes including the terminating NUL

export const DEFAULTS = {
  dataDir: './shoal-data',
  nbd: '127.0.0.1:10809',
  api: '127.0.0.1:10880',
  cacheSize: '1G',
  logLevel: 'info',
} as const;

// flag name → config key. The env name is SHOAL_ + the flag upper-cased with '_' for '-'.
const SETTINGS = {
  'data-dir': 'dataDir',
  nbd: 'nbd',
  'nbd-socket': 'nbdSocket',
  api: 'api',
  'cache-size': 'cacheSize',
  'chunk-size': 'chunkSize',
  'log-level': 'logLevel',
  dedup: 'dedup',
  'dedup-verify': 'dedupVerify',
  tls: 'tls',
  'tls-certificates': 'tlsCertificates',
  'tls-psk': 'tlsPsk',
  'tls-verify-peer': 'tlsVerifyPeer',
  'tls-admins': 'tlsAdmins',
  insecure: 'insecure',
  'max-connections': 'maxConnections',
  'nbd-socket-mode': 'nbdSocketMode',
  config: 'config',
} as const;
type Flag = keyof typeof SETTINGS;
type Key = (typeof SETTINGS)[Flag];
/** Switches that mean "on" when given alone (`--insecure`); `--insecure=off` still works. */
const SWITCHES: ReadonlySet<Flag> = new Set(['tls-verify-peer', 'insecure']);
const BOOLEAN_KEYS: ReadonlySet<Key> = new Set(['dedup', 'dedupVerify', 'tlsVerifyPeer', 'insecure']);

/** Where a raw value came from: sentences name it, and relative paths resolve against its base. */
interface Raw {
  value: string;
  source: string; // "--data-dir", "SHOAL_DATA_DIR", "config file /etc/shoal.json"
  base: string; // directory relative paths resolve against
}

function onOff(raw: Raw | undefined, dflt: boolean): boolean {
  if (!raw) return dflt;
  const v = raw.value.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  bad(`${raw.source} "${raw.value}" must be on or off.`);
}

function bad(message: string): never {
  throw new ShoalError('invalid_request', message);
}

export function envName(flag: Flag): string {
  return 'SHOAL_' + flag.toUpperCase().replace(/-/g, '_');
}

function isFlag(name: string): name is Flag {
  return Object.hasOwn(SETTINGS, name);
}

function parseArgv(argv: string[]): Partial<Record<Key, Raw>> {
  const out: Partial<Record<Key, Raw>> = {};
  const cwd = process.cwd();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) bad(`unexpected argument "${arg}": \`shoal serve\` takes only --flags (see \`shoal help\`).`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (!isFlag(name)) bad(`unknown flag "--${name}" for \`shoal serve\`; known flags: ${Object.keys(SETTINGS).map((f) => '--' + f).join(', ')}.`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (SWITCHES.has(name)) value = 'on';
    else {
      if (i + 1 >= argv.length) bad(`flag --${name} needs a value.`);
      value = argv[++i]!;
    }
    out[SETTINGS[name]] = { value, source: `--${name}`, base: cwd };
  }
  return out;
}

function parseEnv(env: NodeJS.ProcessEnv): Partial<Record<Key, Raw>> {
  const out: Partial<Record<Key, Raw>> = {};
  const cwd = process.cwd();
  for (const flag of Object.keys(SETTINGS) as Flag[]) {
    const v = env[envName(flag)];
    // An empty variable counts as set only where empty means something ("none"); elsewhere it is ignored.
    if (v === undefined || (v === '' && flag !== 'nbd' && flag !== 'nbd-socket')) continue;
    out[SETTINGS[flag]] = { value: v, source: envName(flag), base: cwd };
  }
  return out;
}

function readConfigFile(path: string): Partial<Record<Key, Raw>> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    bad(`cannot read the config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}.`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    bad(`the config file ${path} is not valid JSON: ${(e as Error).message}.`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad(`the config file ${path} must hold a JSON object.`);
  const out: Partial<Record<Key, Raw>> = {};
  const keys = new Set<string>(Object.values(SETTINGS));
  const source = `config file ${path}`;
  // Relative paths in a config file are relative to the file, so it means the same wherever shoal starts.
  const base = dirname(path);
  for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
    const key = isFlag(k) ? SETTINGS[k] : keys.has(k) ? (k as Key) : null;
    if (!key || key === 'config') bad(`unknown setting "${k}" in ${source}; known settings: ${[...keys].filter((x) => x !== 'config').join(', ')}.`);
    if (typeof v === 'boolean' && BOOLEAN_KEYS.has(key)) {
      out[key] = { value: v ? 'on' : 'off', source, base };
      continue;
    }
    if (v === null || v === false) {
      out[key] = { value: 'none', source, base };
      continue;
    }
    if (typeof v !== 'string' && typeof v !== 'number') bad(`setting "${k}" in ${source} must be a string or a number.`);
    out[key] = { value: String(v), source, base };
  }
  return out;
}

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

const isNone = (v: string) => v === '' || v.toLowerCase() === 'none';

/** Builds the configuration of `shoal serve` from its arguments (without "serve") and the environment. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config {
  const flags = parseArgv(argv);
  const envs = parseEnv(env);
  const configRaw = flags.config ?? envs.config;
  const configFile = configRaw ? resolve(configRaw.base, configRaw.value) : null;
  const file = configFile ? readConfigFile(configFile) : {};
  const pick = (k: Key): Raw | undefined => flags[k] ?? envs[k] ?? file[k];

  const dataDirRaw = pick('dataDir');
  const dataDir = resolve(dataDirRaw?.base ?? process.cwd(), dataDirRaw?.value ?? DEFAULTS.dataDir);
  if (dataDirRaw && dataDirRaw.value === '') bad(`${dataDirRaw.source} must not be empty.`);

  const nbdRaw = pick('nbd');
  const nbd = nbdRaw ? (isNone(nbdRaw.value) ? null : parseListenAddress(nbdRaw.value, nbdRaw.source)) : parseListenAddress(DEFAULTS.nbd, 'default');

  const sockRaw = pick('nbdSocket');
  const nbdSocket = sockRaw ? (isNone(sockRaw.value) ? null : resolve(sockRaw.base, sockRaw.value)) : resolve(dataDir, 'nbd.sock');
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
  let chunkSize: number | undefined;
  if (chunkRaw) {
    chunkSize = sizeOf(chunkRaw.value, chunkRaw.source);
    // Chunks tile NBD block sizes and the cache arena: powers of two from 4 KiB to 1 MiB.
    if (chunkSize < 4096 || chunkSize > 2 ** 20 || (chunkSize & (chunkSize - 1)) !== 0) {
      bad(`${chunkRaw.source} "${chunkRaw.value}" must be a power of two from 4K to 1M.`);
    }
  }

  const levelRaw = pick('logLevel');
  const logLevel = (levelRaw?.value ?? DEFAULTS.logLevel).toLowerCase() as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) bad(`${levelRaw?.source ?? 'log level'} "${levelRaw?.value}" is not a log level; use one of ${LOG_LEVELS.join(', ')}.`);

  const dedup = onOff(pick('dedup'), true);
  const dedupVerify = onOff(pick('dedupVerify'), false);
  const tls = tlsConfig(pick);
  const insecure = onOff(pick('insecure'), false);
  if (nbd && !isLoopback(nbd.host) && tls.mode !== 'require' && !insecure) {
    bad(
      `NBD would listen on ${formatListenAddress(nbd)}, which is not a loopback address, without --tls require: anyone who can reach it could read and write every volume, so add --tls require (with --tls-certificates or --tls-psk), or --insecure to accept that.`,
    );
  }

  const maxRaw = pick('maxConnections');
  const maxConnections = maxRaw ? Number(maxRaw.value) : 1024;
  if (maxRaw && (!/^\d+$/.test(maxRaw.value.trim()) || maxConnections < 1 || maxConnections > 1_000_000)) {
    bad(`${maxRaw.source} "${maxRaw.value}" must be a whole number of connections from 1 to 1000000.`);
  }

  const modeRaw = pick('nbdSocketMode');
  const nbdSocketMode = modeRaw ? parseMode(modeRaw) : 0o660;

  return { dataDir, nbd, nbdSocket, api, cacheSize, chunkSize, logLevel, dedup, dedupVerify, tls, insecure, maxConnections, nbdSocketMode, configFile };
}

function tlsConfig(pick: (k: Key) => Raw | undefined): TlsConfig {
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

/** Octal permission bits, as chmod takes them ("0660", "660", "0o660"). */
function parseMode(raw: Raw): number {
  const m = /^(?:0o?)?([0-7]{3})$/i.exec(raw.value.trim());
  if (!m) bad(`${raw.source} "${raw.value}" must be octal permission bits such as 0660.`);
  return parseInt(m[1]!, 8);
}

/** Only addresses this machine alone can reach; a host name other than localhost is not trusted to be one. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) !== 6) return false;
  // The URL parser writes IPv6 in canonical form: ::1, and IPv4-mapped 127/8 as ::ffff:7fXX:XXXX.
  const canonical = new URL(`http://[${host}]/`).hostname;
  return canonical === '[::1]' || canonical.startsWith('[::ffff:7f');
}

function sizeOf(value: string, source: string): number {
  try {
    return parseSize(value, source);
  } catch (e) {
    bad((e as Error).message);
  }
}
