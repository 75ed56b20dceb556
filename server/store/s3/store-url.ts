// `--store s3://BUCKET/PREFIX`: where a daemon keeps its packs and metadata. Everything the daemon
// writes lives under PREFIX/, so one bucket can hold many daemons' prefixes side by side.
import { ShoalError } from '../../errors.js';

export interface StoreLocation {
  bucket: string;
  /** "" (the bucket's root) or "a/b/" — always ends with "/" so keys are `${prefix}name`. */
  prefix: string;
}

// S3's bucket naming rules (the subset every S3-compatible store accepts): 3-63 of a-z 0-9 . -, starting
// and ending with a letter or digit, no "..", not shaped like an IP address.
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const SEGMENT_RE = /^[A-Za-z0-9._-]+$/;

export function parseStoreUrl(text: string, source: string): StoreLocation {
  const m = /^s3:\/\/([^/]*)(?:\/(.*))?$/.exec(text);
  if (!m) throw new ShoalError('invalid_request', `${source} "${text}" is not a store: use "local" or s3://BUCKET/PREFIX.`);
  const bucket = m[1]!;
  if (!BUCKET_RE.test(bucket) || bucket.includes('..') || /^\d+\.\d+\.\d+\.\d+$/.test(bucket)) {
    throw new ShoalError('invalid_request', `${source} "${text}": "${bucket}" is not a valid bucket name (3 to 63 lower-case letters, digits, dots and hyphens).`);
  }
  const path = (m[2] ?? '').replace(/\/+$/, '');
  if (path === '') return { bucket, prefix: '' };
  for (const seg of path.split('/')) {
    if (!SEGMENT_RE.test(seg) || seg === '.' || seg === '..') {
      throw new ShoalError('invalid_request', `${source} "${text}": the prefix may hold only letters, digits, ".", "_" and "-" between single slashes.`);
    }
  }
  return { bucket, prefix: path + '/' };
}

export function formatStoreUrl(loc: StoreLocation): string {
  return `s3://${loc.bucket}/${loc.prefix}`;
}
