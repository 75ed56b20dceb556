// The metadata store (DESIGN.md "metadata" row): one LMDB environment holding the map nodes and
// their refcounts, the chunk records, the free-slot list, the volume records and the intent
// records, each kept by its own part, all committed together by the commit pipeline. Other
// layers (dedup) keep their own records in the same environment and join the same commits.
//
// It knows no bytes of data: chunk data is written by the chunk store, and made durable by the
// pipeline's syncData hook before any commit that references it.
import { open, type Database, type DatabaseOptions, type Key, type RootDatabase } from 'lmdb';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../errors.js';
import { ChunkRecords } from './chunk-records.js';
import { CommitPipeline } from './commit-pipeline.js';
import { IntentRecords } from './intent-records.js';
import { NodeStore } from './node-store.js';
import { SlotAllocator } from './slot-allocator.js';
import { StoreRecords } from './store-records.js';
import { loadSuperblock, META_VERSION, type Superblock } from './superblock.js';
import { VolumeRecords } from './volume-records.js';

/** The LMDB environment's file in a data directory. */
export const META_FILE = 'meta.lmdb';

/** Opens an LMDB environment as the metadata uses it (also a restore's, before it becomes the metadata). */
export function openMetaEnv(path: string): RootDatabase {
  return open({
    path,
    maxDbs: 16,
    // A commit resolves only once its transaction is fsynced: the FLUSH reply depends on it.
    overlappingSync: false,
    noSync: false,
    mapSize: 2 ** 40,
    pageSize: 4096,
  });
}

/** The metadata's own named databases. */
const META_DATABASES: Array<DatabaseOptions & { name: string }> = [
  { name: 'main', encoding: 'msgpack' },
  { name: 'chunks', encoding: 'binary' },
  { name: 'nodes', encoding: 'binary' },
  { name: 'node-refs', encoding: 'msgpack' },
  { name: 'free-slots', encoding: 'msgpack' },
  { name: 'store-records', encoding: 'binary' },
];

export class MetaStore {
  readonly pipeline: CommitPipeline;
  readonly nodes: NodeStore;
  readonly chunks: ChunkRecords;
  readonly slots: SlotAllocator;
  readonly volumes: VolumeRecords;
  readonly intents: IntentRecords;
  /** The chunk store's own records (an object store's chunk places); unused by the local store. */
  readonly storeRecords: StoreRecords;
  private readonly slotReusedListeners: Array<(slot: number) => void> = [];
  /** How each database is encoded, by name: a replica of the commits replays them the same way. */
  readonly encodings = new Map<string, { encoding?: string; keyEncoding?: string }>();
  /** The `main` database (superblock, volume and intent records, and small records of other parts). */
  readonly main: Database;

  private constructor(
    readonly dir: string,
    private readonly env: RootDatabase,
    private readonly sb: Superblock,
    private readonly dbs: Map<string, Database>,
    options: Array<DatabaseOptions & { name: string }>,
    writable: boolean,
  ) {
    for (const o of options) this.noteEncoding(o);
    const db = <V, K extends Key>(name: string) => dbs.get(name) as unknown as Database<V, K>; // opened by open(), by name
    const main = db<unknown, Key>('main');
    this.main = main;
    this.pipeline = new CommitPipeline(main, () => sb);
    // A store of an older version is upgraded by a daemon (not by a check that must change nothing): the
    // superblock says so in the transaction that rewrites its free list, or alone if there is none.
    const upgrade = () => {
      sb.version = META_VERSION;
      main.putSync('superblock', sb);
    };
    this.nodes = new NodeStore(db('nodes'), db('node-refs'), sb, this.pipeline);
    this.chunks = new ChunkRecords(db('chunks'), sb, this.pipeline);
    this.slots = new SlotAllocator(
      db('free-slots'),
      sb,
      this.pipeline,
      (s) => {
        for (const fn of this.slotReusedListeners) fn(s);
      },
      writable && upgrade,
    );
    if (writable && sb.version !== META_VERSION) main.transactionSync(upgrade);
    this.volumes = new VolumeRecords(main, this.pipeline);
    this.intents = new IntentRecords(main, sb, this.pipeline);
    this.storeRecords = new StoreRecords(db('store-records'));
    this.pipeline.add(this.nodes);
    this.pipeline.add(this.chunks);
    this.pipeline.add(this.slots);
    this.pipeline.add(this.volumes);
    this.pipeline.add(this.intents);
    this.pipeline.add(this.storeRecords);
    this.chunks.onFreed((slot) => this.slots.free(slot));
  }

  /** Opens (or creates, with `chunkSize`) the metadata in `dir`. */
  /**
   * `databases`: the named databases of the layers above (dedup's), opened here with the
   * metadata's own before anything is read. lmdb-js ends its read snapshot whenever a database is
   * opened, so a reader that opened one after loading the superblock would see that superblock
   * beside the records of a later commit (the offline fsck beside a committing daemon did).
   */
  static open(dir: string, opts: { chunkSize: number; create?: boolean; databases?: Array<DatabaseOptions & { name: string }> }): MetaStore {
    const create = opts.create ?? true;
    if (create) mkdirSync(dir, { recursive: true });
    let env: RootDatabase;
    try {
      env = openMetaEnv(join(dir, META_FILE));
    } catch (e) {
      throw new ShoalError('corrupt_metadata', `cannot open the metadata in ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const options = [...META_DATABASES, ...(opts.databases ?? [])];
    const dbs = new Map<string, Database>();
    for (const o of options) dbs.set(o.name, env.openDB(o));
    const main = dbs.get('main')!;
    const chunks = dbs.get('chunks')!;
    const hasRecords = () => [...main.getKeys({ limit: 1 })].length > 0 || [...chunks.getKeys({ limit: 1 })].length > 0;
    try {
      const sb = loadSuperblock(main, dir, opts.chunkSize, create, hasRecords);
      return new MetaStore(dir, env, sb, dbs, options, create);
    } catch (e) {
      void env.close();
      throw e;
    }
  }

  /** A named database in the same environment, for a layer that keeps records of its own (dedup). */
  openDb<V, K extends string | number | Buffer>(options: DatabaseOptions & { name: string }): Database<V, K> {
    const opened = this.dbs.get(options.name);
    if (opened) return opened as unknown as Database<V, K>;
    const d = this.env.openDB<V, K>(options);
    this.dbs.set(options.name, d as unknown as Database);
    this.noteEncoding(options);
    return d;
  }

  private noteEncoding(o: DatabaseOptions & { name: string }): void {
    this.encodings.set(o.name, { encoding: o.encoding, ...(o.keyEncoding ? { keyEncoding: o.keyEncoding } : {}) });
  }

  /** A consistent copy of the whole environment at `path` (LMDB's compacting copy, taken in a read transaction). */
  backup(path: string): Promise<void> {
    return this.env.backup(path, true);
  }

  /**
   * The superblock, for a layer above whose counters live in it (dedup: its hit count and log
   * sequence). Its fields are each owned by one part; change only your own, then call
   * pipeline.changed().
   */
  get superblock(): Superblock {
    return this.sb;
  }

  get chunkSize(): number {
    return this.sb.chunkSize;
  }

  /** Chunks with at least one reference. */
  get liveChunks(): number {
    return this.sb.liveChunks;
  }

  /** Highest slot ever handed out, plus one. */
  get slotLimit(): number {
    return this.sb.nextSlot;
  }

  /** Calls `fn` whenever a free slot is handed out again (caches keyed by slot must forget it). */
  onSlotReused(fn: (slot: number) => void): void {
    this.slotReusedListeners.push(fn);
  }

  /** The id of a dedup domain by name; with `create`, a new domain gets the next id. */
  domainId(name: string, create: boolean): number | undefined {
    let id = this.sb.domains[name];
    if (id === undefined && create) {
      id = Math.max(0, ...Object.values(this.sb.domains)) + 1;
      this.sb.domains[name] = id;
      this.pipeline.changed();
    }
    return id;
  }

  /** Makes everything done so far durable (see CommitPipeline.commit). */
  commit(): Promise<void> {
    return this.pipeline.commit();
  }

  get pendingChanges(): number {
    return this.pipeline.pendingChanges;
  }

  get isClosed(): boolean {
    return this.pipeline.isClosed;
  }

  /** Closes the environment without committing (a read-only check). */
  async discard(): Promise<void> {
    this.pipeline.close();
    await this.env.close();
  }

  /** Commits what is pending (and lets the journal, if any, finish with it), then closes the environment. */
  async close(): Promise<void> {
    if (!this.pipeline.isClosed) {
      await this.commit().catch(() => {});
      this.pipeline.close();
    }
    await this.pipeline.journal?.close?.();
    await this.env.close();
  }
}
