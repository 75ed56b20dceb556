// Where `shoal serve` settings come from, in order of precedence: a command-line flag (Node's
// util.parseArgs), an environment variable SHOAL_<FLAG>, a JSON config file (--config / SHOAL_CONFIG,
// checked against a TypeBox schema), then the default. Each raw value keeps where it came from, so
// a refusal names it, and relative paths resolve against the file they were written in.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Type, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { ShoalError } from './errors.js';
import { parseSize } from './size.js';

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
  'cache-prefault': 'cachePrefault',
  tls: 'tls',
  'tls-certificates': 'tlsCertificates',
  'tls-psk': 'tlsPsk',
  'tls-verify-peer': 'tlsVerifyPeer',
  'tls-admins': 'tlsAdmins',
  insecure: 'insecure',
  'max-connections': 'maxConnections',
  'nbd-socket-mode': 'nbdSocketMode',
  'api-tokens': 'apiTokens',
  'api-tls-certificates': 'apiTlsCertificates',
  store: 'store',
  's3-endpoint': 's3Endpoint',
  's3-region': 's3Region',
  's3-sync': 's3Sync',
  'local-cache-size': 'localCacheSize',
  'lease-seconds': 'leaseSeconds',
  's3-timeout': 's3Timeout',
  's3-compact-below': 's3CompactBelow',
  's3-upload-delay': 's3UploadDelay',
  config: 'config',
} as const;
export type Flag = keyof typeof SETTINGS;
type Key = (typeof SETTINGS)[Flag];

/** Switches: given alone they mean "on" (`--insecure`); `--insecure=off` still works. */
const SWITCHES: ReadonlySet<Flag> = new Set(['tls-verify-peer', 'insecure']);
/** Settings a config file may give as JSON booleans. */
const BOOLEAN_KEYS: ReadonlySet<Key> = new Set(['dedup', 'dedupVerify', 'cachePrefault', 'tlsVerifyPeer', 'insecure']);

/** Where a raw value came from: sentences name it, and relative paths resolve against its base. */
export interface Raw {
  value: string;
  source: string; // "--data-dir", "SHOAL_DATA_DIR", "config file /etc/shoal.json"
  base: string; // directory relative paths resolve against
}
export type Pick = (k: Key) => Raw | undefined;

export function bad(message: string): never {
  throw new ShoalError('invalid_request', message);
}

export function envName(flag: Flag): string {
  return 'SHOAL_' + flag.toUpperCase().replace(/-/g, '_');
}

export function onOff(raw: Raw | undefined, dflt: boolean): boolean {
  if (!raw) return dflt;
  const v = raw.value.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  bad(`${raw.source} "${raw.value}" must be on or off.`);
}

export function sizeOf(value: string, source: string): number {
  try {
    return parseSize(value, source);
  } catch (e) {
    bad((e as Error).message);
  }
}

export const isNone = (v: string): boolean => v === '' || v.toLowerCase() === 'none';

const flags = Object.keys(SETTINGS) as Flag[];

function fromArgv(argv: string[]): Partial<Record<Key, Raw>> {
  // Every setting is a string option; a switch given alone becomes "--switch=on" first, so that it
  // never takes the next argument as its value and "--switch=off" stays possible.
  const args = argv.map((a) => (a.startsWith('--') && SWITCHES.has(a.slice(2) as Flag) ? `${a}=on` : a));
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseArgs({ args, options: Object.fromEntries(flags.map((f) => [f, { type: 'string' as const }])), strict: true, allowPositionals: false }));
  } catch (e) {
    const err = e as Error & { code?: string };
    const name = /'(--?[^' ]+)/.exec(err.message)?.[1];
    if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') bad(`unknown flag "${name}" for \`shoal serve\`; known flags: ${flags.map((f) => '--' + f).join(', ')}.`);
    if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') bad(`unexpected argument "${/'([^']*)'/.exec(err.message)?.[1]}": \`shoal serve\` takes only --flags (see \`shoal help\`).`);
    if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') bad(`flag ${name?.split(' ')[0] ?? ''} needs a value.`);
    bad(`the command line is not valid: ${err.message}`);
  }
  const out: Partial<Record<Key, Raw>> = {};
  const cwd = process.cwd();
  for (const f of flags) {
    const v = values[f];
    if (v !== undefined) out[SETTINGS[f]] = { value: v, source: `--${f}`, base: cwd };
  }
  return out;
}

function fromEnv(env: NodeJS.ProcessEnv): Partial<Record<Key, Raw>> {
  const out: Partial<Record<Key, Raw>> = {};
  const cwd = process.cwd();
  for (const flag of flags) {
    const v = env[envName(flag)];
    // An empty variable counts as set only where empty means something ("none"); elsewhere it is ignored.
    if (v === undefined || (v === '' && flag !== 'nbd' && flag !== 'nbd-socket')) continue;
    out[SETTINGS[flag]] = { value: v, source: envName(flag), base: cwd };
  }
  return out;
}

/** A config file: one JSON object whose keys are settings (flag or camelCase names). */
const scalar = Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]);
const FILE_SCHEMA: TSchema = Type.Record(Type.String(), scalar);

function fromFile(path: string): Partial<Record<Key, Raw>> {
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
  const source = `config file ${path}`;
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad(`the config file ${path} must hold a JSON object.`);
  const wrong = Value.Errors(FILE_SCHEMA, json).First();
  if (wrong) bad(`setting "${wrong.path.slice(1)}" in ${source} must be a string, a number, a boolean or null.`);
  const keys = new Set<string>(Object.values(SETTINGS).filter((k) => k !== 'config'));
  const out: Partial<Record<Key, Raw>> = {};
  // Relative paths in a config file are relative to the file, so it means the same wherever shoal starts.
  const base = dirname(path);
  for (const [k, v] of Object.entries(json as Record<string, string | number | boolean | null>)) {
    const key = Object.hasOwn(SETTINGS, k) ? SETTINGS[k as Flag] : keys.has(k) ? (k as Key) : null;
    if (!key || key === 'config') bad(`unknown setting "${k}" in ${source}; known settings: ${[...keys].join(', ')}.`);
    if (typeof v === 'boolean' && BOOLEAN_KEYS.has(key)) out[key] = { value: v ? 'on' : 'off', source, base };
    else if (v === null || v === false) out[key] = { value: 'none', source, base };
    else if (v === true) bad(`setting "${k}" in ${source} takes a value, not true.`);
    else out[key] = { value: String(v), source, base };
  }
  return out;
}

/** Reads the three sources; `pick` gives each setting's raw value from the one that wins. */
export function readSettings(argv: string[], env: NodeJS.ProcessEnv): { pick: Pick; configFile: string | null } {
  const fromFlags = fromArgv(argv);
  const fromVars = fromEnv(env);
  const configRaw = fromFlags.config ?? fromVars.config;
  const configFile = configRaw ? resolve(configRaw.base, configRaw.value) : null;
  const fromConfig = configFile ? fromFile(configFile) : {};
  return { pick: (k) => fromFlags[k] ?? fromVars[k] ?? fromConfig[k], configFile };
}
