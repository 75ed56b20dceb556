// The API tokens file (`--api-tokens FILE`): its format, its checks, and the changes `shoal token`
// makes to it. It keeps a SHA-256 of each token, never the token: a token is 256 random bits, so a
// fast hash is as good as a slow one, and a stolen file lets no one in.
//
//   {"version": 1, "tokens": [{"name": "ci", "role": "operator", "tenant": "a", "sha256": "<64 hex>", "createdAt": "…"}]}
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ShoalError } from '../../server/errors.js';
import { NAME_PATTERN, NAME_RULE } from '../../server/volume/names.js';
import { ROLES, type Role } from './roles.js';

const TOKEN_FILE_VERSION = 1;
const NAME_RE = new RegExp(NAME_PATTERN);
const HASH_RE = /^[0-9a-f]{64}$/;
/** Tokens start with this, so secret scanners and people can tell one when they see it. */
const TOKEN_PREFIX = 'shoal_';

export interface TokenEntry {
  name: string;
  role: Role;
  tenant?: string;
  sha256: string; // hex SHA-256 of the whole token
  createdAt: string;
}

function bad(message: string): never {
  throw new ShoalError('invalid_request', message);
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** A new token: the prefix and 256 random bits. */
function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

function errnoOf(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/**
 * Refuses a file that others may write: whoever can write it can give themselves an admin token.
 * (Reading it is harmless: it holds only hashes.)
 */
function checkMode(path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (e) {
    bad(`cannot read the API tokens file ${path}: ${errnoOf(e)}.`);
  }
  if ((mode & 0o022) !== 0) {
    bad(`the API tokens file ${path} is writable by ${mode & 0o002 ? 'every user' : 'its group'} (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): whoever can write it can make themselves an admin; chmod 600 ${path}.`);
  }
}

/** Parses and checks the file's text; every problem is one sentence naming the file (and the entry). */
function parseTokenFile(text: string, path: string): TokenEntry[] {
  // An empty file is a valid start: `touch FILE`, then `shoal token create`.
  if (text.trim() === '') return [];
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    bad(`the API tokens file ${path} is not valid JSON (${(e as Error).message}); \`shoal token create\` writes it.`);
  }
  const shape = `{"version": ${TOKEN_FILE_VERSION}, "tokens": [...]}`;
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad(`the API tokens file ${path} must hold a JSON object ${shape}.`);
  const obj = json as Record<string, unknown>;
  if (obj.version !== TOKEN_FILE_VERSION) bad(`the API tokens file ${path} has version ${JSON.stringify(obj.version)}; this Shoal reads version ${TOKEN_FILE_VERSION}.`);
  if (!Array.isArray(obj.tokens)) bad(`the API tokens file ${path} must hold ${shape}: "tokens" is not a list.`);
  const seen = new Set<string>();
  return obj.tokens.map((raw, i) => {
    const where = `token ${i + 1} in the API tokens file ${path}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad(`${where} is not a JSON object.`);
    const t = raw as Record<string, unknown>;
    for (const k of Object.keys(t)) if (!['name', 'role', 'tenant', 'sha256', 'createdAt'].includes(k)) bad(`${where} has an unknown field "${k}".`);
    if (typeof t.name !== 'string' || !NAME_RE.test(t.name)) bad(`${where} has no valid "name" (${NAME_RULE}).`);
    const named = `token "${t.name}" in the API tokens file ${path}`;
    if (seen.has(t.name)) bad(`${named} appears twice; token names are unique.`);
    seen.add(t.name);
    if (typeof t.role !== 'string' || !(ROLES as readonly string[]).includes(t.role)) bad(`${named} has role ${JSON.stringify(t.role)}; use ${ROLES.join(', ')}.`);
    if (t.tenant !== undefined && (typeof t.tenant !== 'string' || !NAME_RE.test(t.tenant))) bad(`${named} has tenant ${JSON.stringify(t.tenant)}, which is not a valid tenant name (${NAME_RULE}).`);
    if (typeof t.sha256 !== 'string' || !HASH_RE.test(t.sha256)) bad(`${named} has no valid "sha256" (64 lower-case hex digits: the file keeps a hash, never the token).`);
    if (t.createdAt !== undefined && typeof t.createdAt !== 'string') bad(`${named} has a "createdAt" that is not a string.`);
    return {
      name: t.name,
      role: t.role as Role,
      ...(t.tenant !== undefined ? { tenant: t.tenant as string } : {}),
      sha256: t.sha256,
      createdAt: (t.createdAt as string | undefined) ?? '',
    };
  });
}

/** Reads and checks the file (mode, then content). */
export function readTokenFile(path: string): TokenEntry[] {
  checkMode(path);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    bad(`cannot read the API tokens file ${path}: ${errnoOf(e)}.`);
  }
  return parseTokenFile(text, path);
}

/** Like readTokenFile, but a file that does not exist yet holds no tokens (`shoal token create` makes it). */
function readOrEmpty(path: string): { entries: TokenEntry[]; mode: number | null } {
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], mode: null };
    bad(`cannot read the API tokens file ${path}: ${errnoOf(e)}.`);
  }
  return { entries: readTokenFile(path), mode };
}

/**
 * Replaces the file in one rename, so the daemon (which re-reads it when it changes) never sees half
 * of it. A new file is 0600; an existing one keeps its mode.
 */
function writeTokenFile(path: string, entries: TokenEntry[], mode: number | null): void {
  const text = JSON.stringify({ version: TOKEN_FILE_VERSION, tokens: entries }, null, 2) + '\n';
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (mode !== null) chmodSync(tmp, mode);
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* never made */
    }
    if (e instanceof ShoalError) throw e;
    bad(`cannot write the API tokens file ${path}: ${errnoOf(e)}.`);
  }
}

/** Adds a token; returns the token itself, which exists nowhere else afterwards. */
export function createToken(path: string, req: { name: string; role: string; tenant?: string }): { entry: TokenEntry; token: string } {
  if (!NAME_RE.test(req.name)) bad(`"${req.name}" is not a valid token name: use ${NAME_RULE}.`);
  if (!(ROLES as readonly string[]).includes(req.role)) bad(`role "${req.role}" is not a role: use ${ROLES.join(', ')}.`);
  if (req.tenant !== undefined && !NAME_RE.test(req.tenant)) bad(`"${req.tenant}" is not a valid tenant name: use ${NAME_RULE}.`);
  const { entries, mode } = readOrEmpty(path);
  if (entries.some((e) => e.name === req.name)) bad(`the API tokens file ${path} already has a token named "${req.name}"; revoke it first, or choose another name.`);
  const token = newToken();
  const entry: TokenEntry = {
    name: req.name,
    role: req.role as Role,
    ...(req.tenant !== undefined ? { tenant: req.tenant } : {}),
    sha256: hashToken(token),
    createdAt: new Date().toISOString(),
  };
  writeTokenFile(path, [...entries, entry], mode);
  return { entry, token };
}

export function listTokens(path: string): TokenEntry[] {
  return readTokenFile(path);
}

/** Removes a token by name; the daemon stops accepting it once it has re-read the file. */
export function revokeToken(path: string, name: string): TokenEntry {
  const entries = readTokenFile(path);
  const gone = entries.find((e) => e.name === name);
  if (!gone) bad(`the API tokens file ${path} has no token named "${name}".`);
  writeTokenFile(path, entries.filter((e) => e !== gone), statSync(path).mode & 0o777);
  return gone;
}
