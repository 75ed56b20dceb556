// The S3 store's settings (--store s3://BUCKET/PREFIX and the --s3-* flags), checked before
// anything is opened; without --store s3://… the local store is used and an S3 flag is refused.
import { bad, sizeOf, type Pick } from '../../config-sources.js';
import { parseDuration } from '../../duration.js';
import { parseStoreUrl, type StoreLocation } from './store-url.js';

/** Where chunks and metadata live: the data directory alone (the default), or an S3 prefix with local caches. */
export type StoreConfig = { kind: 'local' } | S3StoreConfig;

export interface S3StoreConfig extends StoreLocation {
  kind: 's3';
  endpoint: string | null; // null = AWS S3 itself (virtual-hosted style); a URL = path-style requests to it
  region: string | null; // null = the AWS SDK's default chain (AWS_REGION, shared config), else us-east-1
  sync: 'flush' | 'async'; // flush: a FLUSH waits for the upload; async: for the local disk only
  localCacheSize: LocalCacheSize; // the on-disk cache tier's bound
  leaseSeconds: number; // a dead holder's lease lapses after this long
  timeoutMs: number; // how long one S3 operation may take, retries included
  compactBelow: number; // a pack whose live fraction falls below this is rewritten
  uploadDelayMs: number; // async mode: how long a sealed pack waits before its upload
}

/** Bytes, or a percentage of the space free on the data directory's file system when the daemon starts. */
type LocalCacheSize = { bytes: number } | { percentOfFree: number };

const DEFAULTS = { s3Sync: 'flush', localCacheSize: '10%', leaseSeconds: 30, s3Timeout: '30s', s3CompactBelow: 0.5, s3UploadDelay: '5s' } as const;

/** The tier must hold at least the open pack and one being uploaded. */
export const MIN_LOCAL_CACHE_BYTES = 64 * 2 ** 20;

const S3_ONLY = ['s3Endpoint', 's3Region', 's3Sync', 'localCacheSize', 'leaseSeconds', 's3Timeout', 's3CompactBelow', 's3UploadDelay'] as const;

export function storeConfig(pick: Pick): StoreConfig {
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
  const cacheText = (cacheRaw?.value ?? DEFAULTS.localCacheSize).trim();
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(cacheText);
  let localCacheSize: LocalCacheSize;
  if (percent) {
    const p = Number(percent[1]);
    if (!(p > 0 && p <= 100)) bad(`${cacheRaw!.source} "${cacheRaw!.value}" must be a percentage above 0 and at most 100 (of the data directory's free space).`);
    localCacheSize = { percentOfFree: p };
  } else {
    localCacheSize = { bytes: sizeOf(cacheText, cacheRaw!.source) };
    if (localCacheSize.bytes < MIN_LOCAL_CACHE_BYTES) bad(`${cacheRaw!.source} "${cacheRaw!.value}" is too small: the local tier needs at least 64M (the pack being filled and one being uploaded).`);
  }

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

  const delayRaw = pick('s3UploadDelay');
  if (delayRaw && sync !== 'async') bad(`${delayRaw.source} applies only to --s3-sync async: in flush mode a FLUSH waits for the upload.`);
  const uploadDelayMs = parseDuration(delayRaw?.value ?? DEFAULTS.s3UploadDelay, delayRaw?.source ?? 'default S3 upload delay');
  if (uploadDelayMs > 600_000) bad(`${delayRaw!.source} "${delayRaw!.value}" is too long: the bucket may trail the local disk by at most 10m.`);

  return { kind: 's3', ...location, endpoint, region: regionRaw?.value ?? null, sync, localCacheSize, leaseSeconds, timeoutMs, compactBelow, uploadDelayMs };
}

