// Durations as people type them in flags ("30s", "500ms", "2m"). A plain number is seconds.
import { ShoalError } from './errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i;

/** Milliseconds in `input`; throws ShoalError('invalid_request') with a sentence naming `what` otherwise. */
export function parseDuration(input: string, what = 'duration'): number {
  const m = DURATION_RE.exec(input.trim());
  if (!m) throw new ShoalError('invalid_request', `${what} "${input}" is not a duration: use a number with ms, s, m or h, e.g. "30s" (a plain number is seconds).`);
  const ms = Number(m[1]) * UNIT_MS[(m[2] ?? 's').toLowerCase()]!;
  if (!Number.isSafeInteger(Math.round(ms))) throw new ShoalError('invalid_request', `${what} "${input}" is too long.`);
  return Math.round(ms);
}
