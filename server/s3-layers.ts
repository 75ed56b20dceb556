// `shoal serve --store s3://…`: opens the layers an S3 store needs below the volumes, in the order its
// safety rests on. The bucket (created if missing); the prefix's lease (a second daemon stops here, with a
// sentence naming the holder); the commit head, sealed with our epoch (a former holder's commits fail
// from now on); then the metadata: the data directory's copy if it continues the bucket's, else restored
// from the bucket (an empty or foreign data directory); then the pack store over it, the metadata's replica
// in the bucket (the commit pipeline's journal), and the compactor. Like daemon.ts, an entry point: the one
// place that joins server/meta and server/store/s3.
import { mkdirSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { ShoalError } from './errors.js';
import { DEDUP_DATABASES } from './dedup/dedup-index.js';
import { BucketReplica } from './meta/bucket-replica.js';
import { MetaStore } from './meta/meta-store.js';
import { parseState, type ReplicaState } from './meta/replica-format.js';
import { prepareMetadata } from './meta/replica-restore.js';
import { CommitHead } from './store/s3/commit-head.js';
import { PrefixLease, type LeaseLogger } from './store/s3/lease.js';
import { PackCompactor } from './store/s3/pack-compactor.js';
import { S3Bucket } from './store/s3/s3-bucket.js';
import { createS3Client } from './store/s3/s3-client.js';
import { MIN_LOCAL_CACHE_BYTES, type S3StoreConfig } from './store/s3/s3-config.js';
import { S3PackStore } from './store/s3/s3-pack-store.js';
import type { S3Observer } from './store/s3/s3-stats.js';
import { formatStoreUrl } from './store/s3/store-url.js';
import { claimDataDir } from './store/store-marker.js';

export interface S3LayersOptions {
  dataDir: string;
  /** --chunk-size, for a prefix that holds no metadata yet. */
  chunkSize: number;
  logger: LeaseLogger;
  observer: S3Observer;
  /** Told once when another daemon has taken the prefix over (the volumes stop taking writes). */
  onFenced: (err: ShoalError) => void;
  /** Test-only hooks (NODE_ENV=test): small packs, frequent checkpoints. */
  test?: { packBytes?: number; checkpointDeltas?: number; compactIntervalMs?: number; compactGraceMs?: number; compactPauseMs?: number; uploadPauseMs?: number; checkpointPauseMs?: number };
}

export interface S3Layers {
  meta: MetaStore;
  store: S3PackStore;
  replica: BucketReplica;
  lease: PrefixLease;
  compactor: PackCompactor;
  /** What is on the local disk and not yet in the bucket: bytes (packs and metadata) and the oldest's age. */
  backlog(): { bytes: number; oldestSeconds: number };
  /** Stops the background work that writes through the volumes' metadata (before the volumes close). */
  stopBackground(): void;
  /** After the volumes closed: releases the lease if the bucket holds everything, else lets it lapse. */
  finish(): Promise<void>;
}

/** How long a dropped pack's object outlives the commit that dropped it (reads that found it may be in flight). */
const DROP_GRACE_MS = 30_000;

export async function openS3Layers(cfg: S3StoreConfig, o: S3LayersOptions): Promise<S3Layers> {
  const url = formatStoreUrl(cfg);
  const log = o.logger;
  mkdirSync(o.dataDir, { recursive: true });
  claimDataDir(o.dataDir, url);
  const { client } = await createS3Client({ endpoint: cfg.endpoint, region: cfg.region });
  const bucket = new S3Bucket({ client, bucket: cfg.bucket, timeoutMs: cfg.timeoutMs, observer: o.observer });
  await bucket.ensureBucket();

  let fenced: ShoalError | null = null;
  const parts: { store?: S3PackStore; replica?: BucketReplica; compactor?: PackCompactor } = {};
  const lease = await PrefixLease.acquire({
    bucket,
    prefix: cfg.prefix,
    seconds: cfg.leaseSeconds,
    logger: log,
    onFenced: (err) => {
      fenced = err;
      parts.compactor?.stop();
      parts.store?.fence(err);
      parts.replica?.fence(err);
      o.onFenced(err);
    },
  });
  let meta: MetaStore | null = null;
  try {
    const head = await CommitHead.open<ReplicaState>(lease);
    const state = head.state === null ? null : parseState(head.state, bucket.url(`${cfg.prefix}head`));
    const s3Dir = join(o.dataDir, 's3');
    const resume = await prepareMetadata({ dataDir: o.dataDir, s3Dir, state, bucket, prefix: cfg.prefix, logger: log });
    meta = MetaStore.open(o.dataDir, { chunkSize: state?.chunkSize ?? o.chunkSize, databases: [...DEDUP_DATABASES] });
    if (state && state.chunkSize !== meta.chunkSize)
      throw new ShoalError('data_dir_unusable', `${url} holds chunks of ${state.chunkSize} bytes but the metadata in ${o.dataDir} says ${meta.chunkSize}: use another --data-dir.`);
    const store = (parts.store = S3PackStore.open({
      lease,
      dir: s3Dir,
      chunkSize: meta.chunkSize,
      records: meta.storeRecords,
      localCacheBytes: await localCacheBytes(cfg, o.dataDir),
      logger: log,
      packBytes: o.test?.packBytes,
      pauseAfterUploadMs: o.test?.uploadPauseMs,
      uploadDelayMs: cfg.sync === 'async' ? cfg.uploadDelayMs : 0,
    }));
    const replica = (parts.replica = BucketReplica.open(
      { meta, head, lease, store, dir: s3Dir, sync: cfg.sync, logger: log, checkpointDeltas: o.test?.checkpointDeltas, pauseAfterCheckpointMs: o.test?.checkpointPauseMs, closeTimeoutMs: cfg.timeoutMs },
      resume,
    ));
    const compactor = (parts.compactor = new PackCompactor(store, {
      lease,
      logger: log,
      compactBelow: cfg.compactBelow,
      published: () => replica.published(),
      graceMs: o.test?.compactGraceMs ?? DROP_GRACE_MS,
      intervalMs: o.test?.compactIntervalMs,
      pauseBeforeSwapMs: o.test?.compactPauseMs,
    }));
    compactor.start();
    if (resume.restored) log.info({ store: url }, `restored the volumes of ${url} into ${o.dataDir}`);
    // Objects a crash or a fenced writer left behind go once the bucket holds what this disk committed.
    void replica
      .sweep()
      .then(() => compactor.sweep())
      .catch((e: Error) => fenced || log.warn({ err: e }, `sweeping ${url} for objects no metadata names failed; the next start tries again`));
    return {
      meta,
      store,
      replica,
      lease,
      compactor,
      backlog() {
        const s = store.backlog();
        const r = replica.backlog();
        return { bytes: s.bytes + r.bytes, oldestSeconds: Math.max(s.oldestSeconds, r.oldestSeconds) };
      },
      stopBackground() {
        compactor.stop();
        store.expedite();
      },
      async finish() {
        if (fenced) return;
        if (replica.drainedAll) await lease.release().catch((e: Error) => log.warn({ err: e }, `releasing the lease on ${url} failed; it lapses in ${cfg.leaseSeconds} s`));
        else {
          lease.stop();
          log.warn({ backlog: replica.backlog() }, `stopping with commits not yet in ${url}: they stay in ${o.dataDir} and are uploaded by the next start on it; the lease lapses in ${cfg.leaseSeconds} s`);
        }
      },
    };
  } catch (e) {
    await parts.store?.close().catch(() => {});
    await meta?.close().catch(() => {});
    await lease.release().catch(() => {}); // nothing was committed under it
    throw e;
  }
}

/** --local-cache-size in bytes: as given, or the percentage of the data directory's free space now. */
async function localCacheBytes(cfg: S3StoreConfig, dataDir: string): Promise<number> {
  const size = cfg.localCacheSize;
  if ('bytes' in size) return size.bytes;
  const fs = await statfs(dataDir);
  return Math.max(MIN_LOCAL_CACHE_BYTES, Math.floor((fs.bavail * fs.bsize * size.percentOfFree) / 100));
}
