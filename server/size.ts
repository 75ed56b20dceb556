// Byte sizes as people type them ("64M", "16T", "1.5GiB") and as they read them back.
// Shared by the REST API (volume sizes), the CLI and the daemon's config (--cache-size).
// Multiples are binary: K = 1024. A plain integer is a number of bytes.
import { ShoalError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
  P: 2 ** 50,
};

// digits, optional fraction, optional unit letter, optional "B" or "iB" (the "i" only after a unit).
const SIZE_RE = /^(\d+)(?:\.(\d+))?\s*(?:([KMGTP])(i?B)?|B)?$/i;

/** The same grammar as a JSON-schema pattern, so OpenAPI documents it and validation rejects garbage early. */
export const SIZE_PATTERN = '^[0-9]+(\\.[0-9]+)?\\s*([KMGTPkmgtp]([iI]?[bB])?|[bB])?$';

/**
 * Parses a size in bytes. Accepts a non-negative safe integer, or a string such as "512", "4K", "64MiB",
 * "1.5G". Throws ShoalError('invalid_size') with a sentence naming `what` otherwise. Zero is allowed here;
 * callers that need a positive size check it themselves.
 */
export function parseSize(input: string | number, what = 'size'): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) {
      throw new ShoalError('invalid_size', `${what} must be a whole, non-negative number of bytes, not ${input}.`);
    }
    return input;
  }
  if (typeof input !== 'string') {
    throw new ShoalError('invalid_size', `${what} must be a number of bytes or a string like "64M".`);
  }
  const m = SIZE_RE.exec(input.trim());
  if (!m) {
    throw new ShoalError('invalid_size', `${what} "${input}" is not a size: use bytes or a number with K, M, G, T or P (binary multiples), e.g. "64M".`);
  }
  const unit = UNITS[(m[3] ?? '').toUpperCase()]!;
  // Exact arithmetic on the fraction: "1.5K" is 1536 bytes, "0.1K" is not a whole number of bytes.
  const whole = BigInt(m[1]!);
  const frac = m[2] ?? '';
  const scale = 10n ** BigInt(frac.length);
  const numerator = (whole * scale + BigInt(frac || '0')) * BigInt(unit);
  if (numerator % scale !== 0n) {
    throw new ShoalError('invalid_size', `${what} "${input}" is not a whole number of bytes.`);
  }
  const bytes = numerator / scale;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ShoalError('invalid_size', `${what} "${input}" is too large (the limit is ${formatSize(Number.MAX_SAFE_INTEGER)}).`);
  }
  return Number(bytes);
}

/** Like parseSize, but zero is refused too. */
export function parsePositiveSize(input: string | number, what = 'size'): number {
  const n = parseSize(input, what);
  if (n === 0) throw new ShoalError('invalid_size', `${what} must be greater than zero.`);
  return n;
}

/** "16 GiB", "1.5 MiB", "512 B": at most one decimal, exact values stay exact ("64 KiB"). */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const sign = bytes < 0 ? '-' : '';
  let v = Math.abs(bytes);
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (v >= 1024 && i < names.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1).replace(/\.0$/, '');
  return `${sign}${text} ${names[i]}`;
}
