// Strings on the wire (doc/proto.md "Conventions"): UTF-8, no NUL, at most 4096 bytes.
import * as C from './constants.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes a protocol string; null if it is not valid UTF-8, contains NUL or is too long. */
export function decodeString(b: Buffer): string | null {
  if (b.length > C.MAX_STRING || b.includes(0)) return null;
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}
