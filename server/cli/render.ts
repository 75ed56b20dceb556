// Human output of the CLI: aligned tables and "key: value" blocks. --json bypasses all of this.
import { formatSize } from '../size.js';
import type { FsckReport, SnapshotInfo, Stats, VolumeInfo } from '../volume/control.js';

/** Left-aligned columns separated by two spaces; numbers are right-aligned. */
export function table(headers: string[], rows: string[][], numeric: boolean[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function keyValues(pairs: [string, string][]): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w)} ${v}`).join('\n') + '\n';
}

/** "incomplete": an import that did not finish created it. */
const state = (v: VolumeInfo) => (v.incomplete ? 'incomplete' : 'ready');

const origin = (v: VolumeInfo) => (v.origin ? (v.origin.snapshot ? `${v.origin.volume}@${v.origin.snapshot}` : v.origin.volume) : '-');

export function volumeTable(volumes: VolumeInfo[]): string {
  if (volumes.length === 0) return 'no volumes\n';
  return table(
    ['NAME', 'SIZE', 'MAPPED', 'EXCLUSIVE', 'SHARED', 'SNAPSHOTS', 'CLIENTS', 'ORIGIN', 'TENANT', 'STATE'],
    volumes.map((v) => [
      v.name,
      formatSize(v.size),
      formatSize(v.mappedBytes),
      formatSize(v.exclusiveBytes),
      formatSize(v.sharedBytes),
      String(v.snapshots),
      String(v.connections),
      origin(v),
      v.tenant ?? '-',
      state(v),
    ]),
    [false, true, true, true, true, true, true, false, false, false],
  );
}

export function volumeDetails(v: VolumeInfo): string {
  return keyValues([
    ['name', v.name],
    ['state', v.incomplete ? 'incomplete (an import did not finish: delete it, then import again)' : 'ready'],
    ['size', `${formatSize(v.size)} (${v.size} bytes)`],
    ['tenant', v.tenant ?? '-'],
    ['domain', v.domain],
    ['chunk size', formatSize(v.chunkSize)],
    ['created', v.createdAt],
    ['origin', origin(v)],
    ['snapshots', String(v.snapshots)],
    ['clients', String(v.connections)],
    ['mapped', formatSize(v.mappedBytes)],
    ['exclusive', formatSize(v.exclusiveBytes)],
    ['shared', formatSize(v.sharedBytes)],
  ]);
}

export function snapshotTable(volume: string, snaps: SnapshotInfo[]): string {
  if (snaps.length === 0) return `volume ${volume} has no snapshots\n`;
  return table(
    ['NAME', 'SIZE', 'CREATED', 'EXPORT'],
    snaps.map((s) => [s.name, formatSize(s.size), s.createdAt, s.exportName]),
    [false, true, false, false],
  );
}

const pct = (n: number, d: number) => (d > 0 ? `${((100 * n) / d).toFixed(1)}%` : '-');

export function statsText(s: Stats): string {
  const c = s.cache;
  return keyValues([
    ['volumes', String(s.volumes)],
    ['snapshots', String(s.snapshots)],
    ['logical', `${formatSize(s.logicalBytes)} (${s.logicalBytes} bytes)`],
    ['physical', `${formatSize(s.physicalBytes)} (${s.physicalBytes} bytes)`],
    ['dedup ratio', `${(s.dedupRatio ?? 1).toFixed(2)}x`],
    ['dedup hits', String(s.dedupHits)],
    ['chunks', `${s.chunks} of ${formatSize(s.chunkSize)}`],
    ['cache', `${formatSize(c.bytes)} of ${formatSize(c.capacityBytes)} in ${c.entries} chunks`],
    ['cache hits', `${c.hits} (${pct(c.hits, c.hits + c.misses)}), misses ${c.misses}, coalesced ${c.coalesced}, evictions ${c.evictions}`],
    ['cache sharing', `${(c.sharingFactor ?? 1).toFixed(2)} readers per cached chunk`],
    ['cache served', formatSize(c.servedBytes)],
  ]);
}

export function fsckText(r: FsckReport): string {
  const checked = `checked ${r.checkedVolumes} volumes, ${r.checkedSnapshots} snapshots, ${r.checkedNodes} map nodes, ${r.checkedChunks} chunks`;
  if (r.ok) return `fsck: no problems found (${checked})\n`;
  return r.errors.map((e) => `  ${e}`).join('\n') + `\nfsck: ${r.errors.length} problem${r.errors.length === 1 ? '' : 's'} found (${checked})\n`;
}
