// Prometheus metrics: NBD requests are counted by operation as they happen (the NbdObserver hooks);
// everything the volume layer already tracks (per-volume traffic, cache, dedup, space, background
// work) is read from VolumeControl at scrape time, so the hot path never pays for it. Names are the public contract in DESIGN.md: shoal_ prefix, base units, _total.
import { statfs } from 'node:fs/promises';
import type { StatsFs } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { OpHistogram } from './op-histogram.js';
import type { NbdObserver } from '../server/nbd/observer.js';
import type { Stats, VolumeActivity, VolumeControl, VolumeInfo } from '../server/volume/control.js';
import type { S3Observer, S3Op, S3Result } from '../server/store/s3/s3-stats.js';

/** The event-loop lag monitor's tick, in ms (see the constructor). */
const LAG_TICK_MS = 2;
const NBD_OPS = ['read', 'write', 'flush', 'trim', 'write_zeroes', 'cache', 'block_status'] as const;

/** Sub-millisecond buckets: a cached 4 KiB read answers in tens of microseconds. */
const DURATION_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** A metadata commit: ~1 ms for a few records on an idle SSD, tens of ms behind a dedup-index merge or a slow disk. */
const COMMIT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

/** An S3 request takes milliseconds on a LAN gateway, seconds for a 16 MiB pack over a WAN, 10 s when cut off. */
const S3_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export interface MetricsOptions {
  control?: VolumeControl;
  /** The data directory: its file system's size and free space are exported, for "disk nearly full" alerts. */
  dataDir?: string;
  /** Node process metrics (CPU, memory, event-loop lag, GC) as shoal_process_* / shoal_nodejs_*. Default true. */
  defaultMetrics?: boolean;
  /** Told when reading stats at scrape time fails (the scrape still answers, without those figures). */
  onError?: (err: unknown) => void;
}

/** One scrape's view of the volume layer, read once and shared by every collect() callback. */
interface Snapshot {
  stats: Stats;
  volumes: VolumeInfo[];
  activity: VolumeActivity[];
}

export class Metrics implements NbdObserver, S3Observer {
  readonly registry = new Registry();
  private control: VolumeControl | undefined;
  private readonly onError: (err: unknown) => void;

  private readonly connections: Gauge;
  private readonly duration: OpHistogram;

  private readonly reqCount = new Map<string, number>();
  private readonly errCount = new Map<string, number>();
  private readonly s3Count = new Map<string, { op: S3Op; result: S3Result; n: number }>();
  private readonly s3Duration: OpHistogram;
  private readonly commitDuration: Histogram;
  private commitRetries = 0;
  private s3Up = 0;
  private s3Down = 0;

  private pending: Snapshot | null | undefined; // undefined: not read in this scrape yet

  constructor(opts: MetricsOptions = {}) {
    this.control = opts.control;
    this.onError = opts.onError ?? (() => {});
    const registers = [this.registry];
    // The event-loop lag figures (shoal_nodejs_eventloop_lag_*) come from a timer that records the
    // interval between its ticks, so a stall reads as itself plus up to one tick: at prom-client's
    // default tick of 10 ms, a 40 ms stall read as 42-52 ms (20 tries), at 2 ms as 40-43. A 2 ms tick
    // costs an idle daemon ~1% of a core against ~0.3% (measured), and under load nothing: the loop
    // looks at its timers on every turn anyway.
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'shoal_', eventLoopMonitoringPrecision: LAG_TICK_MS });

    this.connections = new Gauge({ name: 'shoal_nbd_connections', help: 'Open NBD connections.', registers });
    // Counted in plain maps on the hot path; prom-client sees the totals at scrape time (its
    // labelled inc() hashes the label object on every call).
    const totals = (m: Map<string, number>) =>
      function (this: Counter<'op'>) {
        this.reset();
        for (const [op, v] of m) this.inc({ op }, v);
      };
    new Counter({ name: 'shoal_nbd_requests_total', help: 'NBD requests completed, by operation.', labelNames: ['op'], registers, collect: totals(this.reqCount) });
    new Counter({ name: 'shoal_nbd_request_errors_total', help: 'NBD requests answered with an error, by operation.', labelNames: ['op'], registers, collect: totals(this.errCount) });
    this.duration = new OpHistogram('shoal_nbd_request_duration_seconds', 'Time from receiving an NBD request to sending its reply, by operation.', DURATION_BUCKETS, this.registry);
    for (const op of NBD_OPS) this.opChildren(op);

    const s3Count = this.s3Count;
    new Counter({
      name: 'shoal_s3_requests_total',
      help: 'HTTP requests to the object store, each retry counted, by operation and outcome (ok, not_found, precondition_failed, client_error, server_error, throttled, network_error, timeout).',
      labelNames: ['op', 'result'],
      registers,
      collect() {
        this.reset();
        for (const c of s3Count.values()) this.inc({ op: c.op, result: c.result }, c.n);
      },
    });
    this.s3Duration = new OpHistogram('shoal_s3_request_duration_seconds', 'Time of one HTTP request to the object store, by operation.', S3_DURATION_BUCKETS, this.registry);
    const bytes = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    bytes('shoal_s3_uploaded_bytes_total', 'Bytes of object bodies uploaded by successful requests.', () => this.s3Up);
    bytes('shoal_s3_downloaded_bytes_total', 'Bytes of object bodies downloaded by successful requests.', () => this.s3Down);

    // A few commits a second at most: prom-client's own histogram is cheap enough here.
    this.commitDuration = new Histogram({
      name: 'shoal_meta_commit_seconds',
      help: 'Time of each metadata commit, from taking its changes to their fsync (the chunk data synced first): what a snapshot, a clone or a FLUSH waiting for a commit waits on.',
      buckets: COMMIT_BUCKETS,
      registers,
    });

    const retries = () => this.commitRetries;
    new Counter({
      name: 'shoal_meta_commit_retries_total',
      help: "Metadata commits whose LMDB transaction failed with MDB_BAD_TXN (the bundled LMDB's free-list save) and was queued again: nothing of it was written. Any count is worth a look; a commit still failing after three tries closes the store.",
      registers,
      collect() {
        this.reset();
        this.inc(retries());
      },
    });

    this.defineScrapeMetrics(registers);
    if (opts.dataDir) this.defineDiskMetrics(opts.dataDir, registers);
  }

  /**
   * An S3 store's backlog (what the local disk holds that the bucket does not yet): the bytes, and how long
   * the oldest of it has waited (the upload lag; 0 when nothing waits).
   */
  setS3Backlog(read: () => { bytes: number; oldestSeconds: number }): void {
    const registers = [this.registry];
    new Gauge({
      name: 'shoal_s3_upload_backlog_bytes',
      help: 'Bytes written and committed on the local disk that are not in the object store yet (packs and metadata).',
      registers,
      collect() {
        this.set(read().bytes);
      },
    });
    new Gauge({
      name: 'shoal_s3_upload_lag_seconds',
      help: 'How long the oldest write not yet in the object store has waited (0 when the bucket holds everything).',
      registers,
      collect() {
        this.set(read().oldestSeconds);
      },
    });
  }

  /** Wires the volume layer after construction (the daemon builds Metrics before the volumes are open). */
  setControl(control: VolumeControl): void {
    this.control = control;
  }

  // --- NbdObserver -------------------------------------------------------------------------------

  connectionOpened(): void {
    this.connections.inc();
  }

  connectionClosed(): void {
    this.connections.dec();
  }

  request(op: string, _exportName: string, _bytes: number, seconds: number, ok: boolean): void {
    this.reqCount.set(op, (this.reqCount.get(op) ?? 0) + 1);
    this.duration.observe(op, seconds);
    if (!ok) this.errCount.set(op, (this.errCount.get(op) ?? 0) + 1);
  }

  // --- S3Observer ---------------------------------------------------------------------------------

  s3Request(op: S3Op, result: S3Result, seconds: number, bytesUp: number, bytesDown: number): void {
    const k = `${op} ${result}`;
    const c = this.s3Count.get(k);
    if (c) c.n++;
    else this.s3Count.set(k, { op, result, n: 1 });
    this.s3Duration.observe(op, seconds);
    this.s3Up += bytesUp;
    this.s3Down += bytesDown;
  }

  /** LMDB failed a commit's transaction with MDB_BAD_TXN, and its records went into a new one. */
  commitRetried(): void {
    this.commitRetries++;
  }

  /** One durable metadata commit took `seconds`. */
  commitTimed(seconds: number): void {
    this.commitDuration.observe(seconds);
  }

  // --- exposition ----------------------------------------------------------------------------------

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition. Reads stats() and the volume list once for the whole scrape. */
  async metrics(): Promise<string> {
    this.pending = undefined; // always fresh figures
    return this.registry.metrics();
  }

  private opChildren(op: string): void {
    // Series exist from the start, so dashboards see 0 rather than nothing.
    if (!this.reqCount.has(op)) this.reqCount.set(op, 0);
    if (!this.errCount.has(op)) this.errCount.set(op, 0);
    this.duration.series_(op);
  }

  private snapshot(): Snapshot | null {
    if (this.pending !== undefined) return this.pending;
    if (!this.control) return (this.pending = null);
    try {
      this.pending = { stats: this.control.stats(), volumes: this.control.listVolumes(), activity: this.control.activity() };
    } catch (e) {
      this.onError(e);
      this.pending = null;
    }
    // Forget it once this scrape's collect() calls are done, even if registry.metrics() was called directly.
    setImmediate(() => (this.pending = undefined));
    return this.pending;
  }

  private defineScrapeMetrics(registers: Registry[]): void {
    const snapshot = () => this.snapshot();
    // Counters whose running total lives in the volume layer: reset and set at scrape time, so the
    // exposition still says TYPE counter.
    const counter = (name: string, help: string, read: (s: Stats) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          const snap = snapshot();
          this.reset();
          if (snap) this.inc(Math.max(0, read(snap.stats) || 0));
        },
      });
    const gauge = (name: string, help: string, read: (s: Stats) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const snap = snapshot();
          this.reset();
          if (snap) this.set(read(snap.stats) || 0);
        },
      });
    // Per-volume series; reset first, so deleted volumes disappear. Counters (running totals kept
    // by the volume layer) are set by inc() from zero, so the exposition still says TYPE counter.
    const perVolumeSeries = <V extends { name: string }>(kind: 'gauge' | 'counter', name: string, help: string, read: (v: V) => number, list: (s: Snapshot) => V[]) => {
      const collect = function (this: Gauge<'volume'> | Counter<'volume'>) {
        const snap = snapshot();
        this.reset();
        if (!snap) return;
        for (const v of list(snap)) {
          const x = read(v) || 0;
          if (kind === 'gauge') (this as Gauge<'volume'>).labels(v.name).set(x);
          else (this as Counter<'volume'>).labels(v.name).inc(Math.max(0, x));
        }
      };
      const opts = { name, help, labelNames: ['volume'] as const, registers, collect };
      return kind === 'gauge' ? new Gauge(opts) : new Counter(opts);
    };
    const perVolume = (name: string, help: string, read: (v: VolumeInfo) => number) => perVolumeSeries('gauge', name, help, read, (s) => s.volumes);
    const perVolumeCounter = (name: string, help: string, read: (v: VolumeInfo) => number) => perVolumeSeries('counter', name, help, read, (s) => s.volumes);
    // NBD traffic per volume: running counts the volume layer keeps (requests accepted on the volume and its snapshots).
    const trafficCounter = (name: string, help: string, read: (v: VolumeActivity) => number) => perVolumeSeries('counter', name, help, read, (s) => s.activity);

    counter('shoal_cache_hits_total', 'Chunk cache lookups served from memory.', (s) => s.cache.hits);
    counter('shoal_cache_misses_total', 'Chunk cache lookups that read the chunk store.', (s) => s.cache.misses);
    counter('shoal_cache_evictions_total', 'Chunks evicted from the cache.', (s) => s.cache.evictions);
    counter('shoal_cache_coalesced_total', 'Cache misses that joined a read already in flight for the same chunk.', (s) => s.cache.coalesced);
    counter('shoal_cache_served_bytes_total', 'Bytes served from the chunk cache.', (s) => s.cache.servedBytes);
    gauge('shoal_cache_bytes', 'Bytes of chunk data held in the cache.', (s) => s.cache.bytes);
    gauge('shoal_cache_capacity_bytes', 'Byte budget of the chunk cache.', (s) => s.cache.capacityBytes);
    gauge('shoal_cache_entries', 'Chunks held in the cache.', (s) => s.cache.entries);
    gauge('shoal_cache_sharing_factor', 'Average number of volumes and snapshots reading each cached chunk.', (s) => s.cache.sharingFactor);
    gauge('shoal_logical_bytes', 'Bytes mapped by all live volumes and snapshots.', (s) => s.logicalBytes);
    gauge('shoal_physical_bytes', 'Bytes of stored chunks.', (s) => s.physicalBytes);
    gauge('shoal_dedup_ratio', 'Logical bytes per physical byte (1 when empty).', (s) => s.dedupRatio);
    counter('shoal_dedup_hits_total', 'Chunk writes that found identical data already stored.', (s) => s.dedupHits);
    gauge('shoal_dedup_log_entries', 'New fingerprints in the dedup log, not yet in the on-disk index.', (s) => s.dedupLogEntries);
    gauge('shoal_reclaim_pending_nodes', 'Map nodes (up to 256 chunk references each) of deleted volumes, snapshots and replaced subtrees not yet reclaimed.', (s) => s.reclaimPendingNodes);
    gauge('shoal_reclaim_pending_bytes', 'Estimate (an upper bound) of what background reclaim has left: chunk references under its queued nodes times the chunk size.', (s) => s.reclaim.pendingBytes);
    counter('shoal_reclaim_released_bytes_total', 'Chunk references released by background reclaim, times the chunk size.', (s) => s.reclaim.releasedBytes);
    counter('shoal_dedup_log_indexed_total', 'Dedup log entries taken into the on-disk fingerprint index.', (s) => s.dedupIndexing.indexedEntries);
    gauge('shoal_dedup_index_stale_entries', 'Fingerprint index entries left behind by freed chunks, not swept yet (an estimate, an upper bound).', (s) => s.dedupIndexing.staleEntries);
    counter('shoal_dedup_index_swept_total', 'Fingerprint index entries the background sweep looked at.', (s) => s.dedupIndexing.sweptEntries);
    counter('shoal_flush_journal_records_total', 'Flush journal records written: FLUSHes and FUA writes made durable without a metadata commit.', (s) => s.flushJournal?.records ?? 0);
    counter('shoal_flush_journal_commits_total', 'FLUSHes and FUA writes that committed the metadata instead of using the flush journal.', (s) => s.flushJournal?.commits ?? 0);
    gauge('shoal_fsck_running', '1 while a consistency check runs.', (s) => (s.fsck.running ? 1 : 0));
    const fsckItems = (name: string, help: string, read: (f: Stats['fsck']) => Record<'index_entries' | 'nodes' | 'chunks', number>) =>
      new Gauge({
        name,
        help,
        labelNames: ['kind'],
        registers,
        collect() {
          const snap = snapshot();
          this.reset();
          if (snap) for (const [kind, v] of Object.entries(read(snap.stats.fsck))) this.labels(kind).set(v);
        },
      });
    fsckItems('shoal_fsck_checked_items', 'Items the running (or last) consistency check has checked, by kind: index_entries, nodes (map nodes), chunks.', (f) => ({
      index_entries: f.checkedIndexEntries,
      nodes: f.checkedNodes,
      chunks: f.checkedChunks,
    }));
    fsckItems('shoal_fsck_items', 'Items the running (or last) consistency check has to check, by kind.', (f) => ({ index_entries: f.totalIndexEntries, nodes: f.totalNodes, chunks: f.totalChunks }));
    gauge('shoal_chunks', 'Stored chunks.', (s) => s.chunks);
    gauge('shoal_volumes', 'Volumes.', (s) => s.volumes);
    gauge('shoal_snapshots', 'Snapshots.', (s) => s.snapshots);
    perVolume('shoal_volume_size_bytes', 'Volume size.', (v) => v.size);
    perVolume('shoal_volume_exclusive_bytes', "Mapped bytes whose chunk only this volume references.", (v) => v.exclusiveBytes);
    perVolume('shoal_volume_shared_bytes', 'Mapped bytes whose chunk is shared with another volume, snapshot or duplicate.', (v) => v.sharedBytes);
    perVolumeCounter('shoal_volume_cache_loads_total', 'Chunks loaded from the chunk store for reads of the volume and its snapshots (misses and readahead): its share of the cache misses.', (v) => v.cacheLoads);
    perVolume('shoal_volume_connections', 'Open NBD connections to the volume and its snapshots.', (v) => v.connections);
    trafficCounter('shoal_volume_read_bytes_total', 'Bytes read over NBD, by volume (reads of its snapshots included).', (v) => v.readBytes);
    trafficCounter('shoal_volume_written_bytes_total', 'Bytes written over NBD with WRITE, by volume.', (v) => v.writtenBytes);
    trafficCounter('shoal_volume_read_requests_total', 'NBD READ requests, by volume (its snapshots included).', (v) => v.reads);
    trafficCounter('shoal_volume_write_requests_total', 'NBD WRITE requests, by volume.', (v) => v.writes);
  }

  /** A statfs per gauge and scrape (microseconds); a failure leaves the gauge out of that scrape. */
  private defineDiskMetrics(dataDir: string, registers: Registry[]): void {
    const onError = this.onError;
    const gauge = (name: string, help: string, pick: (st: StatsFs) => number) =>
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          this.reset();
          try {
            this.set(pick(await statfs(dataDir)));
          } catch (e) {
            onError(e);
          }
        },
      });
    gauge('shoal_data_dir_size_bytes', 'Size of the file system holding the data directory.', (st) => st.blocks * st.bsize);
    // bavail, not bfree: what the daemon (not root) may still allocate.
    gauge('shoal_data_dir_free_bytes', 'Bytes the daemon can still allocate on the file system holding the data directory.', (st) => st.bavail * st.bsize);
  }
}
