// TypeBox schemas for every REST body, parameter and response. They validate input (fastify + ajv) and
// are the OpenAPI document at /docs. `title` marks fields whose validation errors get their own code
// (see error-reply.ts): names → invalid_name.
import { Type, type SchemaOptions, type Static, type TSchema } from '@sinclair/typebox';
import { SIZE_PATTERN } from '../server/size.js';
import { NAME_BODY, NAME_PATTERN, NAME_RULE } from '../server/volume/names.js';
import { DEFAULT_CHANGES_LIMIT, MAX_CHANGES_LIMIT } from '../server/volume/changes.js';

const name = (title: string, what = `A ${title}`) => Type.String({ pattern: NAME_PATTERN, title, description: `${what}: ${NAME_RULE}.` });
const VolumeName = name('volume name');
const SnapshotName = name('snapshot name');
const DomainName = name('domain name', 'Dedup domain (chunks are shared only within one; default: the tenant, or "default")');
const TenantName = name('tenant name', 'The tenant that owns the volume (a tenant-bound token sees only its own)');
const SourceRef = Type.String({
  pattern: `^${NAME_BODY}(@${NAME_BODY})?$`,
  title: 'source',
  description: 'The volume to read from, or VOLUME@SNAPSHOT for one of its snapshots.',
  examples: ['golden@v1'],
});

const Size = Type.Union(
  [
    Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: 'Bytes.' }),
    Type.String({ pattern: SIZE_PATTERN, description: 'Bytes, or a number with a K, M, G, T or P suffix (binary multiples).' }),
  ],
  { title: 'size', description: 'A positive size: bytes, or a string such as "64M" or "16T" (binary multiples).', examples: [17179869184, '16G'] },
);

/**
 * `schema`, or null: OpenAPI 3.0's `nullable`. The reply serializer writes it with a typeof test;
 * an anyOf with a null type made it compile an ajv validator on the route's first reply (~7 ms,
 * paid by the first `shoal import` on a fresh daemon).
 */
function Nullable<T extends TSchema>(schema: T, options: SchemaOptions = {}) {
  return Type.Unsafe<Static<T> | null>({ ...schema, ...options, nullable: true });
}

/** One of a few strings (`null` too if listed): an enum, serialized without a validator (as Nullable). */
function OneOf<const V extends ReadonlyArray<string | null>>(values: V, options: SchemaOptions = {}) {
  return Type.Unsafe<V[number]>({ type: 'string', enum: [...values], ...(values.includes(null) ? { nullable: true } : {}), ...options });
}

const Offset = (description: string) => Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description });

/** A yes/no in a query string (?force=true). */
const QueryFlag = (description: string) => Type.Unsafe<'true' | 'false' | '1' | '0'>({ type: 'string', enum: ['true', 'false', '1', '0'], description });
export const isYes = (v: string | undefined) => v === 'true' || v === '1';

const Force = QueryFlag('Disconnect NBD clients of the volume instead of refusing while they are connected.');

// --- parameters and querystrings --------------------------------------------------------------------

export const VolumeParams = Type.Object({ name: VolumeName });
export const SnapshotParams = Type.Object({ name: VolumeName, snap: SnapshotName });
export const ForceQuery = Type.Object({ force: Type.Optional(Force) });
export const DeleteVolumeQuery = Type.Object({
  force: Type.Optional(Force),
  recursive: Type.Optional(QueryFlag("Delete the volume's snapshots with it; without it, a volume that has snapshots is refused with 409 volume_has_dependents.")),
});

// Query strings arrive as text (no type coercion, see app.ts): numbers are digit strings here.
const Digits = (description: string) => Type.String({ pattern: '^[0-9]{1,16}$', description });
export const ChangesQuery = Type.Object(
  {
    since: Type.String({
      pattern: `^${NAME_BODY}(@${NAME_BODY})?$`,
      title: 'snapshot name',
      description: 'The older snapshot: SNAPSHOT of this volume, or ORIGIN@SNAPSHOT of a volume it was cloned from (taken no later than the clone).',
      examples: ['s1', 'golden@v1'],
    }),
    until: Type.Optional(name('snapshot name', 'A snapshot of this volume newer than `since` (without it, the volume as it is now)')),
    offset: Type.Optional(Digits('Byte offset to list from: 0 (the default), or the `next` of the previous page.')),
    limit: Type.Optional(Digits(`Extents per page, 1 to ${MAX_CHANGES_LIMIT} (default ${DEFAULT_CHANGES_LIMIT}).`)),
  },
  { additionalProperties: false },
);

// --- bodies ----------------------------------------------------------------------------------------

export const CreateVolumeBody = Type.Object(
  {
    name: VolumeName,
    size: Type.Optional(Size),
    domain: Type.Optional(DomainName),
    tenant: Type.Optional(TenantName),
    incomplete: Type.Optional(
      Type.Boolean({ description: 'Mark the new volume incomplete until `POST /v1/volumes/{name}/complete`: `shoal import` does, so an import that never finished shows as one.' }),
    ),
    from: Type.Optional(
      Type.Object(
        { volume: VolumeName, snapshot: Type.Optional(SnapshotName) },
        { additionalProperties: false, description: 'Create a writable clone of this volume (its current contents) or of one of its snapshots.' },
      ),
    ),
  },
  { additionalProperties: false, description: 'Either {name, size, domain?, tenant?, incomplete?} for an empty volume, or {name, from} for a clone (which takes its origin\'s tenant and domain).' },
);
export type CreateVolumeBody = Static<typeof CreateVolumeBody>;

export const ResizeBody = Type.Object(
  {
    size: Size,
    shrink: Type.Optional(Type.Boolean({ description: 'Required to make the volume smaller (data past the new end is discarded); without it a shrink is refused with 409 shrink_not_allowed.' })),
  },
  { additionalProperties: false },
);
export const CreateSnapshotBody = Type.Object({ name: SnapshotName }, { additionalProperties: false });
export const RollbackBody = Type.Object(
  { snapshot: SnapshotName, force: Type.Optional(Type.Boolean({ description: 'Disconnect NBD clients of the volume first.' })) },
  { additionalProperties: false },
);
export const RangeBody = Type.Object(
  {
    source: SourceRef,
    sourceOffset: Offset('Byte offset in the source.'),
    offset: Offset('Byte offset in this volume.'),
    length: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: 'Bytes.' }),
  },
  { additionalProperties: false },
);

// --- responses -------------------------------------------------------------------------------------

export const ErrorReply = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'A stable code, e.g. volume_not_found, invalid_name, volume_busy.' }),
      message: Type.String({ description: 'A sentence for people.' }),
    }),
  },
  { description: 'Every error has this shape.' },
);

export const VolumeInfo = Type.Object(
  {
    name: Type.String(),
    size: Type.Integer({ description: 'Bytes.' }),
    domain: Type.String(),
    tenant: Nullable(Type.String(), { description: 'The tenant that owns the volume; null: none.' }),
    chunkSize: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    origin: Nullable(Type.Object({ volume: Type.String(), snapshot: Type.Optional(Type.String()) }), {
      description: 'What a clone was made from; null otherwise.',
    }),
    snapshots: Type.Integer(),
    connections: Type.Integer({ description: 'Open NBD connections, including to its snapshots.' }),
    mappedBytes: Type.Integer({ description: 'Bytes that map to a stored chunk.' }),
    exclusiveBytes: Type.Integer({ description: 'Mapped bytes whose chunk nothing else references.' }),
    sharedBytes: Type.Integer({ description: 'Mapped bytes whose chunk is shared with another map or by dedup.' }),
    sharingAt: Nullable(Type.String({ format: 'date-time' }), {
      description: 'When exclusiveBytes and sharedBytes were counted: now for one volume, by a background walk (every 30 s or so) in a list and in the metrics; null before the first.',
    }),
    cacheLoads: Type.Integer({ description: 'Chunks its reads (its snapshots\' included, and their readahead) loaded from the chunk store: its cache misses.' }),
    incomplete: Type.Boolean({ description: 'Created by an import that has not finished (or was interrupted where it could not clean up).' }),
  },
  { additionalProperties: true },
);

export const SnapshotInfo = Type.Object(
  {
    name: Type.String(),
    volume: Type.String(),
    size: Type.Integer(),
    createdAt: Type.String({ format: 'date-time' }),
    exportName: Type.String({ description: 'The read-only NBD export: VOLUME@SNAPSHOT.' }),
  },
  { additionalProperties: true },
);

export const VolumeList = Type.Object({ volumes: Type.Array(VolumeInfo) });
export const SnapshotList = Type.Object({ snapshots: Type.Array(SnapshotInfo) });

export const ChangeList = Type.Object(
  {
    extents: Type.Array(
      Type.Object({ offset: Type.Integer({ description: 'Bytes.' }), length: Type.Integer({ description: 'Bytes.' }) }),
      { description: 'Byte ranges that may differ from `since`, in order, not touching one another. Everything else is equal.' },
    ),
    next: Type.Optional(Type.Integer({ description: 'Present when more extents follow: pass it as `offset` for the next page.' })),
  },
  { additionalProperties: false },
);

export const ReflinkResult = Type.Object({ sharedBytes: Type.Integer(), copiedBytes: Type.Integer() }, { additionalProperties: true });
export const DedupeResult = Type.Object(
  { sharedBytes: Type.Integer(), differentBytes: Type.Integer({ description: 'Bytes left alone because they differ.' }) },
  { additionalProperties: true },
);

export const Stats = Type.Object(
  {
    logicalBytes: Type.Number(),
    physicalBytes: Type.Number(),
    dedupRatio: Type.Number(),
    chunkSize: Type.Number(),
    chunks: Type.Number(),
    volumes: Type.Number(),
    snapshots: Type.Number(),
    dedupHits: Type.Number(),
    dedupLogEntries: Type.Integer({ description: 'Fingerprints of new chunks in the dedup log, not yet in the on-disk index (taken in while writes pause).' }),
    reclaimPendingNodes: Type.Integer({
      description: 'Map nodes (each up to 256 chunk references) of deleted volumes and snapshots and of replaced map subtrees that background reclaim has not released yet.',
    }),
    reclaim: Type.Object(
      {
        pendingNodes: Type.Integer({ description: 'As reclaimPendingNodes.' }),
        pendingBytes: Type.Number({
          description:
            'Estimate, an upper bound: the chunk references under the queued nodes (counted when a map or subtree is let go, less those released since) times the chunk size. Subtrees still shared elsewhere are found only as reclaim reaches them; 0 once the queue is empty.',
        }),
        releasedBytes: Type.Number({ description: 'Chunk references released since the daemon started, times the chunk size (a reference to a chunk still shared frees no space).' }),
        bytesPerSecond: Type.Number({ description: 'releasedBytes per second over the last 10 s.' }),
      },
      { additionalProperties: true, description: 'Background reclaim of deleted volumes, snapshots and replaced subtrees.' },
    ),
    dedupIndexing: Type.Object(
      {
        logEntries: Type.Integer({ description: 'As dedupLogEntries.' }),
        indexedEntries: Type.Number({ description: 'Log entries taken into the on-disk index since the daemon started.' }),
        entriesPerSecond: Type.Number({ description: 'indexedEntries per second over the last 10 s.' }),
        staleEntries: Type.Integer({
          description:
            'Index entries left behind by freed chunks, not swept yet: an estimate, an upper bound. Every index hit is checked against the chunk it names, so they cost only space; a background sweep removes them once 4,096 have gathered and writes pause (at once past 524,288).',
        }),
        sweptEntries: Type.Number({ description: 'Index entries the sweep has looked at since the daemon started.' }),
        freedKeys: Type.Integer({
          description: "Freed chunks' keys held in memory (at most 262,143), so that their bytes written again skip the stale index entries.",
        }),
      },
      { additionalProperties: true, description: 'Moving the dedup log into the fingerprint index (runs once writes pause).' },
    ),
    metadataCommits: Type.Object(
      {
        pendingChanges: Type.Number({ description: 'Metadata changes made since the last commit began.' }),
        largestChanges: Type.Number({
          description: 'The most changes one commit has taken since the daemon started. A commit queues its changes in one synchronous stretch; past a batch (32,768 changes, fewer while several volumes are busy) waiting behind a slow commit (four batches for a volume busy alone), writes wait for it.',
        }),
        longestStretchMs: Type.Number({ description: "The longest synchronous stretch of a commit since the daemon started, in ms: queueing its records, in which no request is served. While several volumes are busy the commit batch shrinks to keep it near 20 ms." }),
      },
      { additionalProperties: true },
    ),
    flushJournal: Nullable(
      Type.Object(
        {
          records: Type.Number({ description: 'Journal records written since the daemon started: FLUSHes (and FUA writes) made durable by one synchronous write each, several arriving together sharing one.' }),
          commits: Type.Number({ description: 'FLUSHes that committed the metadata instead: a write over 1 MiB, over 32 MiB of writes waiting, or a full journal.' }),
          replayed: Type.Number({ description: 'Operations replayed from the journal at start (acknowledged by a FLUSH, not yet committed when the daemon stopped).' }),
          onArrival: Type.Number({ description: 'Writes journaled as they arrived, while being applied: FUA writes, and writes on a volume flushed in the last 10 ms (a database syncing every write), whose FLUSH then finds its record written or on its way.' }),
          direct: Type.Boolean({ description: 'Records are written with O_DIRECT, each as its own 512-byte sectors (false where the filesystem refuses O_DIRECT, as tmpfs does, or the disk has larger sectors: then through the page cache).' }),
        },
        { additionalProperties: true },
      ),
      { description: 'The flush journal (local store); null for an S3 store, whose FLUSH commits.' },
    ),
    fsck: Type.Object(
      {
        running: Type.Boolean(),
        phase: OneOf(['index', 'maps', 'chunks', 'store', null], {
          description: 'What the running check is at: the dedup index, the maps (nodes), the chunk records, the chunk store; null when none runs.',
        }),
        checkedIndexEntries: Type.Number(),
        totalIndexEntries: Type.Number(),
        checkedNodes: Type.Number(),
        totalNodes: Type.Number({ description: 'Map nodes stored when the check began.' }),
        checkedChunks: Type.Number(),
        totalChunks: Type.Number({ description: 'Live chunks when the check began.' }),
        startedAt: Nullable(Type.String({ format: 'date-time' })),
        lastOk: Nullable(Type.Boolean(), { description: 'The last finished check found no problem; null: none has run.' }),
      },
      { additionalProperties: true, description: 'The consistency check running (POST /v1/fsck), or the figures of the last one.' },
    ),
    cache: Type.Object(
      {
        capacityBytes: Type.Number(),
        bytes: Type.Number(),
        entries: Type.Number(),
        hits: Type.Number(),
        misses: Type.Number(),
        evictions: Type.Number(),
        coalesced: Type.Number(),
        sharingFactor: Type.Number({ description: 'Average number of volumes/snapshots reading each cached chunk.' }),
        servedBytes: Type.Number(),
        prefaultedBytes: Type.Number({ description: 'Bytes of the cache\'s memory faulted in at start so far (--cache-prefault on); 0 without it.' }),
      },
      { additionalProperties: true },
    ),
    store: Type.Object(
      {
        kind: Type.String({ description: 'The chunk store: local.' }),
        reads: Type.Number({ description: 'Read requests made to the medium.' }),
        readBytes: Type.Number(),
        direct: Type.Boolean({ description: 'Reads bypass the page cache (O_DIRECT).' }),
        syncs: Type.Optional(Type.Number({ description: 'fdatasyncs of the chunk file begun (a metadata commit makes the chunks it names durable first).' })),
        directWrites: Type.Optional(Type.Number({ description: 'Runs of chunks written past the page cache (O_DIRECT): runs over 128 KiB inside the chunk file, where the filesystem allows it.' })),
        stagedWrites: Type.Optional(Type.Number({ description: 'Writes of up to 128 KiB inside the chunk file held in memory and written past the page cache in batches, before the next sync, where the filesystem allows O_DIRECT.' })),
      },
      { additionalProperties: true },
    ),
  },
  { additionalProperties: true },
);

export const FsckReport = Type.Object(
  {
    ok: Type.Boolean(),
    checkedVolumes: Type.Integer(),
    checkedSnapshots: Type.Integer(),
    checkedNodes: Type.Integer(),
    checkedChunks: Type.Integer(),
    errors: Type.Array(Type.String(), { description: 'One sentence per problem.' }),
  },
  { additionalProperties: true },
);

export const Health = Type.Object({ status: Type.Literal('ok') });

export const ActivityList = Type.Object({
  volumes: Type.Array(
    Type.Object(
      {
        name: Type.String(),
        tenant: Nullable(Type.String()),
        connections: Type.Integer({ description: 'Open NBD connections, including to its snapshots.' }),
        reads: Type.Number({ description: 'NBD READ requests accepted since the daemon started (its snapshots included).' }),
        writes: Type.Number({ description: 'NBD WRITE requests accepted since the daemon started.' }),
        readBytes: Type.Number(),
        writtenBytes: Type.Number(),
      },
      { additionalProperties: true },
    ),
  ),
});

export const Endpoints = Type.Object({
  nbd: Type.Object(
    {
      tcp: Nullable(Type.String(), { description: 'HOST:PORT the daemon serves NBD on (null: none); a wildcard host means the API\'s host.' }),
      unix: Nullable(Type.String(), { description: 'The Unix socket it serves NBD on (null: none).' }),
      tls: OneOf(['off', 'on', 'require'], { description: 'NBD over TLS (STARTTLS): off, offered (on), or required.' }),
    },
    { additionalProperties: true },
  ),
});

/** Every route documents the error shape for 4xx and 5xx. */
export function withErrors<T extends Record<number, TSchema>>(ok: T): T & { '4xx': typeof ErrorReply; '5xx': typeof ErrorReply } {
  return { ...ok, '4xx': ErrorReply, '5xx': ErrorReply };
}
