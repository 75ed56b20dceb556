// `shoal serve`: wires the layers together — volume store, NBD listeners, REST API — and runs
// until SIGTERM/SIGINT, then flushes everything and exits.
import pino from 'pino';
import { accessSync, constants, mkdirSync, statSync } from 'node:fs';
import { formatListenAddress, type Config } from './config.js';
import { lowerPoolPriority, POOL_NICE } from './pool-priority.js';
import { ShoalError } from './errors.js';
import { formatStoreUrl } from './store/s3/store-url.js';
import { FlushJournal } from './volume/flush-journal.js';
import { VolumeManager } from './volume/volume-manager.js';
import { LMDB_TXN_FAILED } from './meta/commit-pipeline.js';
import { MetaStore } from './meta/meta-store.js';
import { DEDUP_DATABASES, DedupIndex } from './dedup/dedup-index.js';
import { LocalChunkStore } from './store/local-chunk-store.js';
import { ChunkCache } from './cache/chunk-cache.js';
import { DEFAULT_CHUNK_SIZE } from './store/chunk-size.js';
import { native } from './native.js';
import { NbdServer } from './nbd/server.js';
import { loadTlsCredentials } from './nbd/tls-credentials.js';
import type { RequestLoad } from './nbd/transmission.js';
import { buildApi } from '../api/app.js';
import type { NbdEndpoints } from '../api/routes/system.js';
import { Metrics } from '../api/metrics.js';
import { inheritedSockets, serveInherited } from './socket-activation.js';
import { TokenStore } from '../api/auth/token-store.js';
import { readApiCertificates } from '../api/https-certificates.js';
import { openS3Layers, type S3LayersOptions } from './s3-layers.js';
import { claimDataDir } from './store/store-marker.js';
import { DataDirLock } from './data-dir-lock.js';

interface RunningDaemon {
  manager: VolumeManager;
  nbd: NbdServer;
  /** Re-reads what can change while the daemon runs (the API tokens file); SIGHUP calls it. */
  reload(): void;
  close(): Promise<void>;
}

async function startDaemon(config: Config): Promise<RunningDaemon> {
  const logger = pino({ level: config.logLevel, base: { pid: process.pid } });
  const nbdLogger = logger.child({ c: 'nbd' });
  // Read before anything is opened: bad LISTEN_* variables change nothing.
  const inherited = inheritedSockets();
  // Certificates, keys and the API's tokens are checked before the data directory is touched: a bad
  // file stops the start with a sentence.
  const tlsCredentials = config.tls.mode === 'off' ? null : loadTlsCredentials(config.tls, nbdLogger);
  const tokens = config.apiTokens ? TokenStore.open(config.apiTokens, logger.child({ c: 'api-tokens' })) : null;
  const https = config.apiTlsCertificates ? readApiCertificates(config.apiTlsCertificates) : null;
  prepareDataDir(config.dataDir);
  native(); // fail at start, with a sentence, if the addon is not built — not on the first write
  // Before the metadata is opened, held until it is closed (data-dir-lock.ts says why).
  const lock = DataDirLock.acquire(config.dataDir, 'daemon');
  try {
    return await startLocked(config, lock, { logger, nbdLogger, inherited, tlsCredentials, tokens, https });
  } catch (e) {
    lock.release();
    throw e;
  }
}

interface Prepared {
  logger: pino.Logger;
  nbdLogger: pino.Logger;
  inherited: ReturnType<typeof inheritedSockets>;
  tlsCredentials: ReturnType<typeof loadTlsCredentials> | null;
  tokens: TokenStore | null;
  https: ReturnType<typeof readApiCertificates> | null;
}

async function startLocked(config: Config, lock: DataDirLock, p: Prepared): Promise<RunningDaemon> {
  const { logger, nbdLogger, inherited, tlsCredentials, tokens, https } = p;
  // Test-only: SHOAL_TEST_POOL_NICE (0 leaves the pool at the event loop's priority, for comparisons).
  lowerPoolPriority(Math.min(19, testMs('SHOAL_TEST_POOL_NICE', 'nice steps') ?? POOL_NICE), logger);
  const metrics = new Metrics({ dataDir: config.dataDir, onError: (e) => logger.warn({ err: e }, 'metrics: reading stats failed') });
  // The layers, bottom up: metadata and chunk store (local, or an S3 bucket with the local disk as a cache
  // tier: s3-layers.ts), shared cache, dedup, then volumes over them.
  let manager: VolumeManager | undefined;
  let requestLoad: RequestLoad | null = null; // the NBD server's, once it exists (the cache's prefault reads it)
  const s3 =
    config.store.kind === 's3'
      ? await openS3Layers(config.store, {
          dataDir: config.dataDir,
          chunkSize: config.chunkSize ?? DEFAULT_CHUNK_SIZE,
          logger: logger.child({ c: 's3' }),
          observer: metrics,
          onFenced: (err) => manager?.fence(err),
          test: testS3Hooks(),
        })
      : null;
  if (!s3) claimDataDir(config.dataDir, 'local'); // never an S3 store's local copy served as a local store
  const meta = s3?.meta ?? MetaStore.open(config.dataDir, { chunkSize: config.chunkSize ?? DEFAULT_CHUNK_SIZE, databases: [...DEDUP_DATABASES] });
  if (config.chunkSize && config.chunkSize !== meta.chunkSize)
    logger.warn(`the store in ${config.dataDir} was created with chunk size ${meta.chunkSize}; ignoring --chunk-size ${config.chunkSize}`);
  let dedup: DedupIndex | undefined;
  try {
    // Set before the volumes open: a roll-forward's commits are retried too.
    meta.pipeline.retried = (cause, attempt) => {
      metrics.commitRetried();
      logger.warn({ err: cause, attempt }, `LMDB failed a metadata commit (${cause.message.trim()}); nothing of it was written, and its records go into a new transaction`);
    };
    meta.pipeline.faultEvery = testMs('SHOAL_TEST_COMMIT_FAULT_EVERY', 'commits') ?? 0;
    const store = s3?.store ?? (await LocalChunkStore.open(config.dataDir, meta.chunkSize));
    const cache = new ChunkCache(config.cacheSize, meta.chunkSize, store);
    if (config.cachePrefault && !cache.prefault(() => requestLoad)) logger.warn('--cache-prefault on: this kernel cannot fault memory in ahead (MADV_POPULATE_WRITE needs Linux 5.14); the cache fills lazily');
    dedup = DedupIndex.open(meta, { fingerprintOverride: testFingerprintOverride() });
    manager = await VolumeManager.open(
      { meta, store, cache, dedup },
      {
        dedup: config.dedup,
        verifyDedup: config.dedupVerify,
        logger,
        dedupLogIdleMs: testMs('SHOAL_TEST_DEDUP_LOG_IDLE_MS'),
        dedupStaleMax: testMs('SHOAL_TEST_DEDUP_STALE_MAX', 'entries'),
        reclaimSliceMs: testMs('SHOAL_TEST_GC_SLICE_MS'),
        pauseAfterIntentMs: testMs('SHOAL_TEST_INTENT_PAUSE_MS'),
        tlsAdmins: config.tls.admins,
        // In flush mode a FLUSH waits for the bucket, at most --s3-timeout.
        flushTimeoutMs: config.store.kind === 's3' && config.store.sync === 'flush' ? config.store.timeoutMs : undefined,
        fsckPauseMs: testMs('SHOAL_TEST_FSCK_PAUSE_MS'),
        sharingRefreshMs: testMs('SHOAL_TEST_SHARING_REFRESH_MS'),
        commitIntervalMs: testMs('SHOAL_TEST_COMMIT_INTERVAL_MS'),
        commitBatch: testMs('SHOAL_TEST_COMMIT_BATCH', 'changes'),
        commitPauseMs: testMs('SHOAL_TEST_COMMIT_PAUSE_MS'),
        // A local store's FLUSH is one journal write; an S3 store's must reach the bucket (flush mode) or
        // its local packs, which its own commits track.
        flushJournal: s3 ? undefined : FlushJournal.open(config.dataDir),
      },
    );
    if (s3?.lease.fenced && config.store.kind === 's3') manager.fence(new ShoalError('store_fenced', `${formatStoreUrl(config.store)} was taken over while this daemon started.`));
  } catch (e) {
    s3?.stopBackground();
    dedup?.close(); // its filter fill runs in the background, and would read the closed store
    await meta.close().catch(() => {});
    await s3?.finish();
    throw e;
  }
  metrics.setControl(manager);
  meta.pipeline.timed = (seconds) => metrics.commitTimed(seconds);
  if (s3) metrics.setS3Backlog(() => s3.backlog());
  const nbd = new NbdServer({
    provider: manager.exports,
    observer: metrics,
    logger: nbdLogger,
    tls: { mode: config.tls.mode, credentials: tlsCredentials },
    maxConnections: config.maxConnections,
    handshakeTimeoutMs: testMs('SHOAL_TEST_HANDSHAKE_TIMEOUT_MS'),
  });
  requestLoad = nbd.load;
  // Filled in once the listeners are open.
  let nbdEndpoints: NbdEndpoints = { tcp: null, unix: null, tls: config.tls.mode };
  const api = await buildApi({ control: manager, metrics, logger: logger.child({ c: 'api' }), tokens, https, nbdEndpoints: () => nbdEndpoints });

  let nbdAddr: string | null;
  let nbdSocket: string | null;
  let apiAddr: string | null;
  try {
    // Sockets passed by systemd replace the listeners of their kind that the config names.
    ({ nbd: nbdAddr, nbdSocket, api: apiAddr } = await serveInherited(inherited, nbd, api));
    if (config.nbd && !nbdAddr) {
      const a = await listening('NBD', formatListenAddress(config.nbd), () => nbd.listenTcp(config.nbd!.host, config.nbd!.port));
      nbdAddr = `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
    }
    if (config.nbdSocket && !nbdSocket) nbdSocket = await listening('NBD', config.nbdSocket, () => nbd.listenUnix(config.nbdSocket!, config.nbdSocketMode));
    // Sockets passed by systemd may be several of a kind ("a, b"): a client needs one.
    nbdEndpoints = { ...nbdEndpoints, tcp: nbdAddr?.split(', ')[0] ?? null, unix: nbdSocket?.split(', ')[0] ?? null };
    if (!apiAddr) apiAddr = await listening('the REST API', formatListenAddress(config.api), () => api.listen({ host: config.api.host, port: config.api.port }));
    // `shoal fsck DATA_DIR` finds the daemon here and checks through the API.
    const firstApi = apiAddr.split(', ')[0]!;
    if (/^https?:\/\//.test(firstApi)) lock.noteApi(firstApi);
    tokens?.watch();
  } catch (e) {
    await nbd.close().catch(() => {});
    await api.close().catch(() => {});
    s3?.stopBackground();
    await manager.close().catch(() => {});
    await s3?.finish();
    throw e;
  }
  logger.info(
    {
      nbd: nbdAddr,
      nbdSocket,
      api: apiAddr,
      apiTokens: tokens ? tokens.path : null,
      dataDir: config.dataDir,
      store: config.store.kind === 's3' ? formatStoreUrl(config.store) : 'local',
      chunkSize: meta.chunkSize,
      cacheSize: config.cacheSize,
      tls: config.tls.mode,
      tlsAuth: tlsCredentials?.kind ?? null,
    },
    'shoal ready',
  );
  let closed: Promise<void> | null = null;
  return {
    manager,
    nbd,
    reload() {
      if (tokens) tokens.reload('SIGHUP');
      else logger.info('SIGHUP: nothing to reload (no --api-tokens)');
    },
    close() {
      closed ??= (async () => {
        tokens?.close();
        await api.close().catch((e) => logger.error({ err: e }, 'closing the API failed'));
        await nbd.close().catch((e) => logger.error({ err: e }, 'closing NBD failed'));
        s3?.stopBackground();
        await manager.close();
        await s3?.finish();
        lock.release();
        logger.info('shoal stopped');
      })();
      return closed;
    },
  };
}

/** Creates the data directory if needed; one sentence if it cannot be used (start-up errors print no stack). */
function prepareDataDir(dir: string): void {
  const unusable = (why: string, cause?: unknown) => new ShoalError('data_dir_unusable', `cannot use the data directory ${dir}: ${why}`, { cause });
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTDIR') throw unusable('it, or a part of its path, exists and is not a directory', e);
    if (code === 'EACCES' || code === 'EPERM') throw unusable('permission denied (the daemon runs as a user that may not create it)', e);
    if (code === 'EROFS') throw unusable('the filesystem is read-only', e);
    throw unusable((e as Error).message, e);
  }
  if (!statSync(dir).isDirectory()) throw unusable('it exists and is not a directory');
  try {
    accessSync(dir, constants.R_OK | constants.W_OK | constants.X_OK);
  } catch (e) {
    throw unusable('permission denied (the daemon must be able to read and write it)', e);
  }
}

/** Starts a listener; a taken or forbidden address is one sentence naming what wanted it. */
async function listening<T>(what: string, where: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new ShoalError('address_in_use', `cannot listen for ${what} on ${where}: the address is already in use (another Shoal or NBD server?)`, { cause: e });
    if (code === 'EACCES') throw new ShoalError('address_in_use', `cannot listen for ${what} on ${where}: permission denied`, { cause: e });
    if (code === 'EADDRNOTAVAIL') throw new ShoalError('address_in_use', `cannot listen for ${what} on ${where}: no interface of this machine has that address`, { cause: e });
    throw e;
  }
}

/**
 * SHOAL_TEST_WEAK_FINGERPRINT=1 replaces BLAKE3 by a deliberately colliding fingerprint
 * (first 4 bytes of the chunk) so a test can prove that a fingerprint match alone never maps
 * a write to different bytes (invariant 6). Refused unless NODE_ENV=test.
 */
function testFingerprintOverride(): ((chunk: Buffer) => Buffer) | undefined {
  if (process.env.SHOAL_TEST_WEAK_FINGERPRINT !== '1') return undefined;
  if (process.env.NODE_ENV !== 'test') throw new ShoalError('invalid_request', 'SHOAL_TEST_WEAK_FINGERPRINT is a test-only hook and needs NODE_ENV=test');
  return (chunk) => {
    const fp = Buffer.alloc(32);
    chunk.copy(fp, 0, 0, 4);
    return fp;
  };
}

/**
 * Test-only timing hooks, refused unless NODE_ENV=test:
 * SHOAL_TEST_DEDUP_LOG_IDLE_MS sets how long writes must pause before the dedup log goes into
 * the index, so a test can hold entries in the log across a crash; SHOAL_TEST_DEDUP_STALE_MAX sets the
 * stale index entries past which the sweep runs while writes go on; SHOAL_TEST_GC_SLICE_MS sets
 * the space-reclaim slice (0: every map leaf is released over several slices and commits), so a
 * test can crash the daemon with half-released leaves committed; SHOAL_TEST_FSCK_PAUSE_MS makes a
 * consistency check rest that long between its slices, so a test can watch its progress;
 * SHOAL_TEST_COMMIT_INTERVAL_MS sets how often changes are committed when nothing else commits them, so
 * a test can make acknowledged FLUSHes live only in the flush journal when it kills the daemon.
 */
function testMs(name: string, unit = 'milliseconds'): number | undefined {
  const v = process.env[name];
  if (v === undefined) return undefined;
  if (process.env.NODE_ENV !== 'test') throw new ShoalError('invalid_request', `${name} is a test-only hook and needs NODE_ENV=test`);
  const ms = Number(v);
  if (!Number.isInteger(ms) || ms < 0) throw new ShoalError('invalid_request', `${name} must be a whole number of ${unit}, not ${JSON.stringify(v)}`);
  return ms;
}

/**
 * Test-only S3 hooks, refused unless NODE_ENV=test: SHOAL_TEST_S3_PACK_BYTES seals packs smaller than 8 MiB
 * (a test fills several); SHOAL_TEST_S3_CHECKPOINT_DELTAS checkpoints the metadata after that many deltas;
 * SHOAL_TEST_S3_COMPACT_MS looks for packs to compact that often and deletes dropped ones that long after;
 * SHOAL_TEST_S3_COMPACT_PAUSE_MS holds a compaction between its copies and its commit, SHOAL_TEST_S3_UPLOAD_PAUSE_MS
 * each pack after its upload, SHOAL_TEST_S3_CHECKPOINT_PAUSE_MS a checkpoint before the head names it (a kill -9 there).
 */
function testS3Hooks(): S3LayersOptions['test'] {
  const compactMs = testMs('SHOAL_TEST_S3_COMPACT_MS');
  return {
    packBytes: testMs('SHOAL_TEST_S3_PACK_BYTES', 'bytes'),
    checkpointDeltas: testMs('SHOAL_TEST_S3_CHECKPOINT_DELTAS', 'deltas'),
    compactIntervalMs: compactMs,
    compactGraceMs: compactMs,
    compactPauseMs: testMs('SHOAL_TEST_S3_COMPACT_PAUSE_MS'),
    uploadPauseMs: testMs('SHOAL_TEST_S3_UPLOAD_PAUSE_MS'),
    checkpointPauseMs: testMs('SHOAL_TEST_S3_CHECKPOINT_PAUSE_MS'),
  };
}

/**
 * lmdb-js opens each event turn's batch with a write whose promise nobody holds. When a transaction
 * fails (a full disk), that promise is rejected unhandled, and Node ends the process: a full data
 * disk took the daemon down with every volume. The commit pipeline reports the failure through its
 * own promises (and stops taking changes), so these rejections are dropped; any other unhandled
 * rejection still ends the daemon, as Node's default does.
 */
function dropFailedTxnRejections(reason: unknown): void {
  if (reason instanceof Error && reason.message === LMDB_TXN_FAILED) {
    (reason as { commitError?: Promise<unknown> }).commitError?.catch?.(() => {});
    return;
  }
  throw reason;
}

export async function runDaemon(config: Config): Promise<void> {
  process.on('unhandledRejection', dropFailedTxnRejections);
  const d = await startDaemon(config);
  // SIGHUP re-reads the tokens file (it would otherwise end the process).
  const reload = () => d.reload();
  process.on('SIGHUP', reload);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  process.off('SIGHUP', reload);
  await d.close();
}
