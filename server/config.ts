// Settings for `shoal serve`. Each comes from, in order of precedence: a command-line flag, an environment
// variable SHOAL_<NAME>, a JSON config file (--config / SHOAL_CONFIG), then the default.
// Every bad value is refused here with a sentence, before the daemon touches the data directory.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { ShoalError } from './errors.js';
import { parseSize } from './size.js';
import { parseDuration } from './duration.js';
import { parseStoreUrl, type StoreLocation } from './store/s3/store-url.js';

export interface ListenAddress {
  host: string; // as given, without brackets ("::1", "0.0.0.0")
  port: number; // 0 = an ephemeral port
}

/** Where chunks and metadata live: the data directory alone (the default), or an S3 prefix with local caches. */
export type StoreConfig = { kind: 'local' } | S3StoreConfig;

export interface S3StoreConfig extends StoreLocation {
  kind: 's3';
  endpoint: string | null; // null = AWS S3 itself (virtual-hosted style); a URL = path-style requests to it
  region: string | null; // null = the AWS SDK's default chain (AWS_REGION, shared config), else us-east-1
  sync: 'flush' | 'async'; // flush: a FLUSH waits for the upload; async: for the local disk only
  localCacheSize: number; // bytes of the on-disk cache tier
  leaseSeconds: number; // a dead holder's lease lapses after this long
  timeoutMs: number; // how long one S3 operation may take, retries included
  compactBelow: number; // a pack whose live fraction falls below this is rewritten
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

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
  apiTokens: string | null; // absolute path of the API tokens file; null: the API is open
  apiTlsCertificates: string | null; // absolute directory holding server-cert.pem and server-key.pem; null: plain HTTP
  insecure: boolean; // allow an open API on a non-loopback address
  store: StoreConfig;
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
  s3Sync: 'flush',
  localCacheSize: '10G',
  leaseSeconds: 30,
  s3Timeout: '30s',
  s3CompactBelow: 0.5,
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
  'api-tokens': 'apiTokens',
  'api-tls-certificates': 'apiTlsCertificates',
  insecure: 'insecure',
  store: 'store',
  's3-endpoint': 's3Endpoint',
  's3-region': 's3Region',
  's3-sync': 's3Sync',
  'local-cache-size': 'localCacheSize',
  'lease-seconds': 'leaseSeconds',
  's3-timeout': 's3Timeout',
  's3-compact-below': 's3CompactBelow',
  config: 'config',
} as const;
/** Flags that take no value on the command line (`--insecure`); `--insecure=off` still works. */
const SWITCHES: ReadonlySet<string> = new Set(['insecure']);
type Flag = keyof typeof SETTINGS;
type Key = (typeof SETTINGS)[Flag];

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
    if (typeof v === 'boolean' && (key === 'dedup' || key === 'dedupVerify' || key === 'insecure')) {
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

/** Only this machine can reach it: "localhost", 127.0.0.0/8, ::1 (or ::ffff:127.x.y.z). */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  if (isIP(v4) === 4) return v4.startsWith('127.');
  return isIP(h) === 6 && /^(0{0,4}:){7}0{0,3}1$|^::1$/.test(h);
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

  const path = (raw: Raw | undefined) => (raw && !isNone(raw.value) ? resolve(raw.base, raw.value) : null);
  const apiTokens = path(pick('apiTokens'));
  const apiTlsCertificates = path(pick('apiTlsCertificates'));
  const insecure = onOff(pick('insecure'), false);
  // Safe by default: an API that anyone on the network can reach must ask for tokens, unless told not to.
  if (!isLoopbackHost(api.host) && !apiTokens && !insecure) {
    bad(
      `the REST API would listen on ${formatListenAddress(api)}, which is not loopback, without authentication: give --api-tokens FILE (see \`shoal token create\`), or --insecure to serve it open anyway.`,
    );
  }
  const store = storeConfig(pick);
  return { dataDir, nbd, nbdSocket, api, cacheSize, chunkSize, logLevel, dedup, dedupVerify, apiTokens, apiTlsCertificates, insecure, store, configFile };
}

const S3_ONLY = ['s3Endpoint', 's3Region', 's3Sync', 'localCacheSize', 'leaseSeconds', 's3Timeout', 's3CompactBelow'] as const;

function storeConfig(pick: (k: Key) => Raw | undefined): StoreConfig {
  const storeRaw = pick('store');
  if (!storeRaw || storeRaw.value.toLowerCase() === 'local') {
    // An S3 setting without an S3 store is a mistake that would otherwise go unnoticed.
    for (const k of S3_ONLY) {
      const raw = pick(k);
      if (raw) bad(`${raw.source} applies only to an S3 store (--store s3://BUCKET/PREFIX).`);
    }
    return { kind: 'local' };
  }
  const location = parseStoreUrl(storeRaw.value, storeRaw.source);

  const endpointRaw = pick('s3Endpoint');
  let endpoint: string | null = null;
  if (endpointRaw) {
    let url: URL | null = null;
    try {
      url = new URL(endpointRaw.value);
    } catch {
      // refused below
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.search || url.hash || url.username) {
      bad(`${endpointRaw.source} "${endpointRaw.value}" is not an S3 endpoint: use http(s)://HOST[:PORT], e.g. http://127.0.0.1:7480.`);
    }
    endpoint = url.href.replace(/\/$/, '');
  }

  const regionRaw = pick('s3Region');
  if (regionRaw && !/^[a-z0-9-]{1,64}$/i.test(regionRaw.value)) bad(`${regionRaw.source} "${regionRaw.value}" is not a region name (letters, digits and hyphens, e.g. us-east-1).`);

  const syncRaw = pick('s3Sync');
  const sync = (syncRaw?.value ?? DEFAULTS.s3Sync).toLowerCase();
  if (sync !== 'flush' && sync !== 'async') bad(`${syncRaw!.source} "${syncRaw!.value}" must be flush or async.`);

  const cacheRaw = pick('localCacheSize');
  const localCacheSize = sizeOf(cacheRaw?.value ?? DEFAULTS.localCacheSize, cacheRaw?.source ?? 'default local cache size');

  const leaseRaw = pick('leaseSeconds');
  const leaseSeconds = Number(leaseRaw?.value ?? DEFAULTS.leaseSeconds);
  // Renewed every third of its length: under 3 s a renewal would have under a second to get through.
  if (!Number.isInteger(leaseSeconds) || leaseSeconds < 3 || leaseSeconds > 3600) bad(`${leaseRaw!.source} "${leaseRaw!.value}" must be a whole number of seconds from 3 to 3600.`);

  const timeoutRaw = pick('s3Timeout');
  const timeoutMs = parseDuration(timeoutRaw?.value ?? DEFAULTS.s3Timeout, timeoutRaw?.source ?? 'default S3 timeout');
  if (timeoutMs < 1000) bad(`${timeoutRaw!.source} "${timeoutRaw!.value}" is too short: an S3 operation needs at least 1s.`);

  const compactRaw = pick('s3CompactBelow');
  const compactBelow = Number(compactRaw?.value ?? DEFAULTS.s3CompactBelow);
  if (!(compactBelow >= 0 && compactBelow <= 1) || compactRaw?.value.trim() === '') bad(`${compactRaw!.source} "${compactRaw!.value}" must be a fraction from 0 (never compact) to 1.`);

  return { kind: 's3', ...location, endpoint, region: regionRaw?.value ?? null, sync, localCacheSize, leaseSeconds, timeoutMs, compactBelow };
}

function sizeOf(value: string, source: string): number {
  try {
    return parseSize(value, source);
  } catch (e) {
    bad((e as Error).message);
  }
}
