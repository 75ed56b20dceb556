// What the CLI presents to a daemon that asks for it: the bearer token (--token-file FILE, else
// SHOAL_API_TOKEN) and the CA that signed an https API's certificate (--cacert FILE).
import { readFileSync, statSync } from 'node:fs';
import { CliError } from './api-client.js';

const errno = (e: unknown) => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

/** The token in a file, refused (as ssh refuses a private key) if other users may read it. */
function readTokenFile(path: string): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new CliError(`cannot read the token file ${path}: ${errno(e)}`);
  }
  if ((mode & 0o007) !== 0) {
    throw new CliError(`the token file ${path} is open to every user on this machine (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): anyone could use the token; chmod 600 ${path}`);
  }
  return tokenFrom(text, `the token file ${path}`);
}

function tokenFrom(text: string, where: string): string {
  const token = text.trim();
  if (token === '') throw new CliError(`${where} is empty: it should hold the token \`shoal token create\` printed`);
  if (token.startsWith('{')) throw new CliError(`${where} looks like the daemon's tokens file (--api-tokens), which holds only hashes: give a file holding one token, as \`shoal token create\` printed it`);
  if (/\s/.test(token)) throw new CliError(`${where} holds more than one word: it should hold one token, as \`shoal token create\` printed it`);
  return token;
}

/** --token-file wins over SHOAL_API_TOKEN; neither: no token (an open API). */
export function clientToken(tokenFile: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  if (tokenFile !== undefined) return readTokenFile(tokenFile);
  const fromEnv = env.SHOAL_API_TOKEN;
  return fromEnv === undefined || fromEnv === '' ? undefined : tokenFrom(fromEnv, 'SHOAL_API_TOKEN');
}

/** The PEM certificate(s) to trust for an https API with a private CA. */
export function readCaFile(path: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch (e) {
    throw new CliError(`cannot read the CA certificate file ${path}: ${errno(e)}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new CliError(`${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): --cacert takes the CA that signed the API's certificate`);
  return pem;
}
