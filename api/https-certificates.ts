// --api-tls-certificates DIR: the REST API's certificate and key, read and checked at start so a
// missing file or a key that does not match its certificate stops the daemon with a sentence
// instead of failing every connection later.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { ShoalError } from '../server/errors.js';

const API_CERT_FILE = 'server-cert.pem';
const API_KEY_FILE = 'server-key.pem';

export function readApiCertificates(dir: string): { cert: Buffer; key: Buffer } {
  const read = (file: string) => {
    try {
      return readFileSync(join(dir, file));
    } catch (e) {
      throw new ShoalError(
        'invalid_request',
        `cannot read ${join(dir, file)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): --api-tls-certificates names a directory holding ${API_CERT_FILE} and ${API_KEY_FILE}.`,
      );
    }
  };
  const cert = read(API_CERT_FILE);
  const key = read(API_KEY_FILE);
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    throw new ShoalError('invalid_request', `the API certificate and key in ${dir} cannot be used (${(e as Error).message}): ${API_CERT_FILE} and ${API_KEY_FILE} must be PEM and belong together.`);
  }
  return { cert, key };
}
