// Builds the AWS SDK's S3 client from Shoal's settings. Credentials come from the SDK's standard chain
// (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared config files, instance roles).
import { S3Client } from '@aws-sdk/client-s3';

export interface S3ClientSettings {
  /** null = AWS S3 itself; a URL = an S3-compatible gateway (Ceph RGW, MinIO) at that address. */
  endpoint: string | null;
  /** null = the SDK's default chain (AWS_REGION, the shared config), or us-east-1 if that has none. */
  region: string | null;
  /** Tests pass the keys of the user they created; the daemon leaves this to the standard chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

const DEFAULT_REGION = 'us-east-1';

export async function createS3Client(settings: S3ClientSettings): Promise<{ client: S3Client; region: string }> {
  // The SDK prints a multi-line warning on stderr under Node 20 about its releases from 2027 on; Shoal
  // runs on Node 20 with the SDK version its lock file pins, and a refusal must stay one sentence.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const region = settings.region ?? (await defaultRegion());
  const client = new S3Client({
    region,
    ...(settings.endpoint
      ? {
          endpoint: settings.endpoint,
          // Gateways such as Ceph RGW serve buckets under a path, not as DNS names of their own.
          forcePathStyle: true,
        }
      : {}),
    // The SDK's default since 2025 adds CRC32 checksums to uploads, sending a stream body as
    // aws-chunked with a trailing checksum, which Ceph 16's RGW refuses (411 MissingContentLength).
    // Shoal sends Content-MD5 on uploads and checksums every chunk inside its packs instead.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // One attempt per send(): S3Bucket retries with its own deadline, jitter and counting.
    maxAttempts: 1,
    ...(settings.credentials ? { credentials: settings.credentials } : {}),
  });
  client.middlewareStack.add(
    (next) => async (args) => {
      const out = await next(args);
      const header = (out.response as { headers?: Record<string, string | undefined> }).headers?.date;
      const date = header ? new Date(header) : null;
      // Keyed by $metadata, which reaches the caller as it is (the output object may be copied on the way).
      if (date && !Number.isNaN(date.getTime()) && out.output?.$metadata) serverDates.set(out.output.$metadata, date);
      return out;
    },
    { step: 'finalizeRequest', name: 'shoalServerDate' },
  );
  // An upload's body is covered by its Content-MD5, which S3 checks (400 BadDigest) and the signature
  // covers: the SDK's own SHA-256 of the body for the signature is a second pass over every byte on the
  // event loop. Profiled writing 512 MiB to RGW: the two hashes were 23% of the daemon's main thread.
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string>; body?: unknown };
      if (req.headers && req.headers['content-md5'] && ArrayBuffer.isView(req.body)) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', priority: 'low', name: 'shoalUnsignedPayload' },
  );
  if (settings.endpoint) {
    // The SDK names the client's region as the LocationConstraint of every bucket it creates outside
    // us-east-1. A gateway's buckets live in its own zonegroup: RGW refuses an AWS region name there
    // (400 InvalidLocationConstraint), so --s3-region would make bucket creation fail.
    // Runs after the SDK's (priority low, same step) and takes back what it added.
    client.middlewareStack.add(
      (next) => async (args) => {
        const input = args.input as { CreateBucketConfiguration?: { LocationConstraint?: string } };
        if (input.CreateBucketConfiguration?.LocationConstraint === region) delete input.CreateBucketConfiguration;
        return next(args);
      },
      { step: 'initialize', priority: 'low', name: 'shoalNoLocationConstraint' },
    );
  }
  return { client, region };
}

// The gateway's Date header, kept per response: the lease judges expiry by the gateway's clock, and the
// SDK keeps no header it has no field for.
const serverDates = new WeakMap<object, Date>();

/** The Date header of the response `output` came from, if the client was made here. */
export function serverDateOf(output: { $metadata: object }): Date | null {
  return serverDates.get(output.$metadata) ?? null;
}

async function defaultRegion(): Promise<string> {
  // The SDK resolves its default chain lazily, inside a client: ask a throwaway one.
  const probe = new S3Client({});
  try {
    return await probe.config.region();
  } catch {
    return DEFAULT_REGION;
  } finally {
    probe.destroy();
  }
}
