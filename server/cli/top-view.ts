// What `shoal top` draws: a header with the daemon-wide figures (cache, space, background work)
// and one row per volume with its request rates, busiest first. Pure: two samples in, lines out.
import { formatSize } from '../size.js';
import type { Stats, VolumeActivity } from '../volume/control.js';
import { ANSI, formatRate } from './terminal.js';
import { table } from './render.js';

export interface TopSample {
  at: number; // performance.now()
  stats: Stats;
  volumes: VolumeActivity[];
}

interface VolumeRates {
  name: string;
  connections: number;
  readIops: number;
  writeIops: number;
  readBps: number;
  writeBps: number;
}

/** Per-volume rates between two samples (a volume new in `now` counts from zero); busiest first. */
function volumeRates(prev: TopSample | null, now: TopSample): VolumeRates[] {
  const dt = prev ? (now.at - prev.at) / 1000 : 0;
  const before = new Map(prev?.volumes.map((v) => [v.name, v]));
  const rate = (a: number, b: number | undefined) => (dt > 0 ? Math.max(0, a - (b ?? 0)) / dt : 0);
  const rows = now.volumes.map((v) => {
    const p = before.get(v.name);
    return {
      name: v.name,
      connections: v.connections,
      readIops: rate(v.reads, p?.reads),
      writeIops: rate(v.writes, p?.writes),
      readBps: rate(v.readBytes, p?.readBytes),
      writeBps: rate(v.writtenBytes, p?.writtenBytes),
    };
  });
  const activity = (r: VolumeRates) => r.readIops + r.writeIops;
  return rows.sort((a, b) => activity(b) - activity(a) || b.readBps + b.writeBps - (a.readBps + a.writeBps) || b.connections - a.connections || a.name.localeCompare(b.name));
}

const pct = (n: number, d: number) => (d > 0 ? `${((100 * n) / d).toFixed(1)}%` : '-');
const MiBs = (bps: number) => (bps / 2 ** 20).toFixed(1);

/** The whole screen, at most `rows` lines of at most `cols` characters. */
export function topScreen(prev: TopSample | null, now: TopSample, o: { api: string; rows: number; cols: number; error?: string }): string[] {
  const s = now.stats;
  const c = s.cache;
  const dHits = prev ? c.hits - prev.stats.cache.hits : 0;
  const dMisses = prev ? c.misses - prev.stats.cache.misses : 0;
  const r = s.reclaim;
  const d = s.dedupIndexing;
  const f = s.fsck;
  const reclaim = r.pendingNodes > 0 || r.bytesPerSecond > 0 ? `${r.pendingNodes} nodes, <= ${formatSize(r.pendingBytes)} left, ${formatRate(r.bytesPerSecond)}` : 'idle';
  const indexing = d.logEntries > 0 ? `${d.logEntries} entries to index${d.entriesPerSecond > 0 ? `, ${d.entriesPerSecond}/s` : ''}` : 'empty';
  const fsckDone = f.checkedIndexEntries + f.checkedNodes + f.checkedChunks;
  const fsckAll = f.totalIndexEntries + f.totalNodes + f.totalChunks;
  const lines = [
    ANSI.bold(`shoal top  ${o.api}  ${new Date().toTimeString().slice(0, 8)}`) + '   (q quits)',
    `cache    hit ratio ${prev ? pct(dHits, dHits + dMisses) : '-'} now, ${pct(c.hits, c.hits + c.misses)} since start   ${formatSize(c.bytes)} of ${formatSize(c.capacityBytes)}   sharing ${(c.sharingFactor ?? 1).toFixed(2)}x`,
    `space    logical ${formatSize(s.logicalBytes)}   physical ${formatSize(s.physicalBytes)}   dedup ratio ${(s.dedupRatio ?? 1).toFixed(2)}x   ${s.volumes} volumes, ${s.snapshots} snapshots`,
    `reclaim  ${reclaim}   dedup log ${indexing}${f.running ? `   fsck ${f.phase} ${pct(fsckDone, fsckAll)}` : ''}`,
    o.error ? `error    ${o.error}` : '',
  ];
  const rates = volumeRates(prev, now);
  const room = Math.max(0, o.rows - lines.length - 2);
  const shown = rates.slice(0, room);
  const body = table(
    ['VOLUME', 'CONN', 'R IOPS', 'W IOPS', 'R MiB/s', 'W MiB/s'],
    shown.map((v) => [v.name, String(v.connections), ...(prev ? [v.readIops.toFixed(0), v.writeIops.toFixed(0), MiBs(v.readBps), MiBs(v.writeBps)] : ['-', '-', '-', '-'])]),
    [false, true, true, true, true, true],
  ).trimEnd();
  const [head, ...rows] = body.split('\n');
  lines.push(ANSI.inverse(head!.padEnd(Math.min(o.cols, Math.max(head!.length, 60)))), ...rows);
  if (rates.length > shown.length) lines.push(`… ${rates.length - shown.length} more volumes`);
  return lines.map((l) => truncate(l, o.cols));
}

/** Cuts a line to `cols` visible characters (escape codes take none). */
function truncate(line: string, cols: number): string {
  let visible = 0;
  let out = '';
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\x1b') {
      const end = line.indexOf('m', i);
      out += line.slice(i, end + 1);
      i = end;
      continue;
    }
    if (visible >= cols) continue;
    out += line[i];
    visible++;
  }
  return out;
}
