// The checks of a reflink or dedupe request (REST POST /v1/volumes/{name}/reflink|dedupe) before
// anything changes: whole byte counts, both ranges inside their maps, one dedup domain, and each
// operation's own rule.
import { ShoalError } from '../errors.js';
import type { RootRecord } from '../meta/volume-records.js';
import type { RangeRequest } from './control.js';
import type { VolumeState } from './volume-state.js';

/** `srcSt` owns `src` (the volume itself or one of its snapshots). */
export function checkRangeRequest(op: 'reflink' | 'dedupe', req: RangeRequest, dst: VolumeState, srcSt: VolumeState, src: RootRecord, chunkSize: number): void {
  for (const k of ['sourceOffset', 'offset', 'length'] as const) {
    const v: unknown = req[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ShoalError('invalid_range', `${k} must be a whole number of bytes ≥ 0 (got ${JSON.stringify(v)})`);
  }
  if (req.length === 0) throw new ShoalError('invalid_range', 'length must be greater than 0');
  if (req.sourceOffset + req.length > src.size) throw new ShoalError('invalid_range', `the source range ${req.sourceOffset}+${req.length} goes past the end of ${req.source} (size ${src.size})`);
  if (req.offset + req.length > dst.record.size) throw new ShoalError('invalid_range', `the destination range ${req.offset}+${req.length} goes past the end of ${dst.name} (size ${dst.record.size})`);
  if (srcSt.record.domain !== dst.record.domain)
    throw new ShoalError('domain_mismatch', `${req.source} is in dedup domain ${srcSt.record.domain} and ${dst.name} in ${dst.record.domain}: chunks are shared only inside a domain`);
  if (op === 'reflink' && src === dst.record && req.offset < req.sourceOffset + req.length && req.sourceOffset < req.offset + req.length)
    throw new ShoalError('invalid_range', 'source and destination ranges overlap within one volume');
  if (op === 'dedupe' && (req.sourceOffset % chunkSize !== 0 || req.offset % chunkSize !== 0))
    throw new ShoalError('invalid_range', `dedupe shares whole chunks: sourceOffset and offset must be multiples of the chunk size (${chunkSize})`);
}
