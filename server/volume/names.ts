// The rules for names and sizes the volume layer accepts, in one place: the REST schemas
// (api/schemas.ts) build their patterns from these, so both refuse the same input.
import { ShoalError } from '../errors.js';

/** Volume, snapshot, domain and tenant names: no '@' (it separates VOLUME@SNAPSHOT) and no '/' (URL paths). */
export const NAME_BODY = '[A-Za-z0-9][A-Za-z0-9._-]{0,127}';
export const NAME_PATTERN = `^${NAME_BODY}$`;
export const NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit";
const NAME_RE = new RegExp(NAME_PATTERN);

/** Largest volume: chunk indices and byte offsets stay exact in doubles. */
const MAX_VOLUME_SIZE = 2 ** 52;

export function validName(kind: 'volume' | 'snapshot' | 'domain' | 'tenant', name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) throw new ShoalError('invalid_name', `${kind} name ${JSON.stringify(name)} is not valid: use ${NAME_RULE}`);
  return name;
}

export function validSize(size: unknown): number {
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) throw new ShoalError('invalid_size', `size ${JSON.stringify(size)} is not a positive whole number of bytes`);
  if (size % 512 !== 0) throw new ShoalError('invalid_size', `size ${size} is not a multiple of 512 bytes (one sector)`);
  if (size > MAX_VOLUME_SIZE) throw new ShoalError('invalid_size', `size ${size} is larger than the maximum of ${MAX_VOLUME_SIZE} bytes (4 PiB)`);
  return size;
}

/** The volume an export name belongs to: the name itself, or VOLUME of VOLUME@SNAPSHOT. */
export function volumeOfExport(exportName: string): string {
  const at = exportName.indexOf('@');
  return at < 0 ? exportName : exportName.slice(0, at);
}
