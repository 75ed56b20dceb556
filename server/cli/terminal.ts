// What the CLI's live views (progress bars, `shoal top`) need of a terminal: whether there is one,
// its width, plain ANSI escape codes (no curses), and figures formatted to a fixed width.
import { formatSize } from '../size.js';

/** Where a live view draws: process.stderr or process.stdout, or a test's capture. */
export interface TermOut {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export const ANSI = {
  clearLine: '\r\x1b[2K',
  home: '\x1b[H',
  clearScreen: '\x1b[2J',
  clearBelow: '\x1b[J',
  hideCursor: '\x1b[?25l',
  showCursor: '\x1b[?25h',
  altScreen: '\x1b[?1049h',
  mainScreen: '\x1b[?1049l',
  bold: (s: string) => `\x1b[1m${s}\x1b[22m`,
  inverse: (s: string) => `\x1b[7m${s}\x1b[27m`,
};

/** "312 MiB/s". */
export const formatRate = (bytesPerSecond: number) => `${formatSize(Math.round(bytesPerSecond))}/s`;

/** "0:42", "12:05", "3:02:11". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** A bar of `width` cells, `fraction` of them filled. */
export function bar(fraction: number, width: number): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.floor(f * width);
  return '#'.repeat(full) + '-'.repeat(width - full);
}
