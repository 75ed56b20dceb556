// `shoal serve`: wires the layers together — volume store, NBD listeners, REST API — and runs
// until SIGTERM/SIGINT, then flushes everything and exits.
import pino from 'pino';
import { mkdirSync } from 'node:fs';
import type { Config } from './config.js';
import { VolumeManager } from './volume/volume-manager.js';
import { NbdServer } from './nbd/server.js';
import { loadTlsCredentials } from './nbd/tls-credentials.js';
import { buildApi } from '../api/app.js';
import { Metrics } from '../api/metrics.js';

export interface RunningDaemon {
  manager: VolumeManager;
  nbd: NbdServer;
  close(): Promise<void>;
}

export async function startDaemon(config: Config): Promise<RunningDaemon> {
  const logger = pino({ level: config.logLevel, base: { pid: process.pid } });
  const nbdLogger = logger.child({ c: 'nbd' });
  // Bad certificates or keys stop the daemon before it touches the data directory.
  const tlsCredentials = config.tls.mode === 'off' ? null : loadTlsCredentials(config.tls, nbdLogger);
  mkdirSync(config.dataDir, { recursive: true });
  const manager = await VolumeManager.open({
    dataDir: config.dataDir,
    cacheSize: config.cacheSize,
    chunkSize: config.chunkSize,
    dedup: config.dedup,
    verifyDedup: config.dedupVerify,
    logger,
    fingerprintOverride: testFingerprintOverride(),
    dedupLogIdleMs: testMs('SHOAL_TEST_DEDUP_LOG_IDLE_MS'),
    gcSliceMs: testMs('SHOAL_TEST_GC_SLICE_MS'),
  });
  const metrics = new Metrics({ control: manager, onError: (e) => logger.warn({ err: e }, 'metrics: reading stats failed') });
  const nbd = new NbdServer({
    provider: manager,
    observer: metrics,
    logger: nbdLogger,
    tls: { mode: config.tls.mode, credentials: tlsCredentials },
    maxConnections: config.maxConnections,
    handshakeTimeoutMs: testMs('SHOAL_TEST_HANDSHAKE_TIMEOUT_MS'),
  });
  const api = await buildApi({ control: manager, metrics, logger: logger.child({ c: 'api' }) });

  let nbdAddr: string | null = null;
  let apiAddr = '';
  try {
    if (config.nbd) {
      const a = await nbd.listenTcp(config.nbd.host, config.nbd.port);
      nbdAddr = `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
    }
    if (config.nbdSocket) await nbd.listenUnix(config.nbdSocket, config.nbdSocketMode);
    apiAddr = await api.listen({ host: config.api.host, port: config.api.port });
  } catch (e) {
    await nbd.close().catch(() => {});
    await api.close().catch(() => {});
    await manager.close().catch(() => {});
    throw e;
  }
  logger.info(
    { nbd: nbdAddr, nbdSocket: config.nbdSocket, api: apiAddr, dataDir: config.dataDir, chunkSize: manager.meta.chunkSize, cacheSize: config.cacheSize, tls: config.tls.mode, tlsAuth: tlsCredentials?.kind ?? null },
    'shoal ready',
  );
  let closed: Promise<void> | null = null;
  return {
    manager,
    nbd,
    close() {
      closed ??= (async () => {
        await api.close().catch((e) => logger.error({ err: e }, 'closing the API failed'));
        await nbd.close().catch((e) => logger.error({ err: e }, 'closing NBD failed'));
        await manager.close();
        logger.info('shoal stopped');
      })();
      return closed;
    },
  };
}

/**
 * SHOAL_TEST_WEAK_FINGERPRINT=1 replaces BLAKE3 by a deliberately colliding fingerprint
 * (first 4 bytes of the chunk) so a test can prove that a fingerprint match alone never maps
 * a write to different bytes (invariant 6). Refused unless NODE_ENV=test.
 */
function testFingerprintOverride(): ((chunk: Buffer) => Buffer) | undefined {
  if (process.env.SHOAL_TEST_WEAK_FINGERPRINT !== '1') return undefined;
  if (process.env.NODE_ENV !== 'test') throw new Error('SHOAL_TEST_WEAK_FINGERPRINT is a test-only hook and needs NODE_ENV=test');
  return (chunk) => {
    const fp = Buffer.alloc(32);
    chunk.copy(fp, 0, 0, 4);
    return fp;
  };
}

/**
 * Test-only timing hooks, refused unless NODE_ENV=test:
 * SHOAL_TEST_DEDUP_LOG_IDLE_MS sets how long writes must pause before the dedup log goes into
 * the index, so a test can hold entries in the log across a crash; SHOAL_TEST_GC_SLICE_MS sets
 * the space-reclaim slice (0: every map leaf is released over several slices and commits), so a
 * test can crash the daemon with half-released leaves committed; SHOAL_TEST_HANDSHAKE_TIMEOUT_MS
 * shortens the NBD handshake timeout (30 s) so a test can watch a stalled client be dropped.
 */
function testMs(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined) return undefined;
  if (process.env.NODE_ENV !== 'test') throw new Error(`${name} is a test-only hook and needs NODE_ENV=test`);
  const ms = Number(v);
  if (!Number.isInteger(ms) || ms < 0) throw new Error(`${name} must be a whole number of milliseconds, not ${JSON.stringify(v)}`);
  return ms;
}

export async function runDaemon(config: Config): Promise<void> {
  const d = await startDaemon(config);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  await d.close();
}
