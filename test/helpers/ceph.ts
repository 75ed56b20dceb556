// The single-node Ceph the S3 tests run against (scripts/ceph/cluster.sh): started on first use, then
// shared by every test file (each uses its own bucket). With CI=true a missing Ceph install fails the
// test instead of skipping it.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { ROOT } from './daemon.js';
import { hasTool, PATH_WITH_USR_BIN, runOk } from './tools.js';
import { createS3Client } from '../../server/store/s3/s3-client.js';
import { S3Bucket, type S3BucketOptions } from '../../server/store/s3/s3-bucket.js';

export interface CephS3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** The cluster's ceph.conf, for starting another radosgw on it. */
  cephConf: string;
}

export const CEPH_DIR = process.env.SHOAL_CEPH_DIR ?? '/tmp/shoal-ceph';
const SCRIPT = join(ROOT, 'scripts', 'ceph', 'cluster.sh');
const DAEMONS = ['ceph-mon', 'ceph-mgr', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph'];

let cluster: Promise<CephS3> | null = null;

/** The cluster's S3 endpoint and keys, starting it if it is not running; null (test skipped) without Ceph. */
export async function needCeph(t: TestContext): Promise<CephS3 | null> {
  const missing = DAEMONS.filter((d) => !hasTool(d));
  if (missing.length > 0) {
    const msg = `Ceph is not installed (missing ${missing.join(', ')})`;
    if (process.env.CI === 'true') throw new Error(`${msg} (CI=true: .ci/run installs ceph-mon ceph-mgr ceph-osd radosgw ceph-common)`);
    t.skip(msg);
    return null;
  }
  return startCeph();
}

/** The cluster's S3 endpoint and keys, started once per process (also for bench:s3). */
export function startCeph(): Promise<CephS3> {
  cluster ??= startCluster();
  return cluster;
}

async function startCluster(): Promise<CephS3> {
  // Idempotent and locked: a running cluster answers in milliseconds, a missing one is built in seconds.
  await runOk('bash', [SCRIPT, 'start', CEPH_DIR], { timeoutMs: 180_000 });
  const env = Object.fromEntries(
    readFileSync(join(CEPH_DIR, 's3.env'), 'utf8')
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  return { endpoint: env.S3_ENDPOINT!, accessKeyId: env.AWS_ACCESS_KEY_ID!, secretAccessKey: env.AWS_SECRET_ACCESS_KEY!, region: env.AWS_REGION!, cephConf: env.CEPH_CONF! };
}

/** A bucket name no other test uses. */
export function uniqueBucketName(label: string): string {
  return `shoal-${label}-${randomBytes(4).toString('hex')}`.toLowerCase();
}

/** An S3Bucket on the test cluster (or on `endpoint`, another gateway of it), its bucket created. */
export async function openTestBucket(ceph: CephS3, bucket: string, opts: Partial<S3BucketOptions> & { endpoint?: string } = {}): Promise<S3Bucket> {
  const { client } = await createS3Client({
    endpoint: opts.endpoint ?? ceph.endpoint,
    region: ceph.region,
    credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey },
  });
  const b = new S3Bucket({ client, bucket, timeoutMs: 30_000, ...opts });
  await b.ensureBucket();
  return b;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * A second radosgw on the same cluster, owned by one test: it can be stopped, frozen and restarted
 * without disturbing the shared gateway other test files use.
 */
export class PrivateGateway {
  private proc: ChildProcess | null = null;
  readonly endpoint: string;

  private constructor(
    private readonly ceph: CephS3,
    readonly port: number,
    private readonly name: string,
  ) {
    this.endpoint = `http://127.0.0.1:${port}`;
  }

  static async create(ceph: CephS3): Promise<PrivateGateway> {
    const port = await freePort();
    return new PrivateGateway(ceph, port, `client.rgw.test${port}`);
  }

  /** Starts it in the foreground (a child of the test) and waits until it answers HTTP. */
  async start(): Promise<void> {
    this.proc = spawn('radosgw', ['-f', '-c', this.ceph.cephConf, '-n', this.name, `--rgw_frontends=beast endpoint=127.0.0.1:${this.port}`], {
      env: { ...process.env, PATH: PATH_WITH_USR_BIN },
      stdio: 'ignore',
    });
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`radosgw ${this.name} exited with ${this.proc.exitCode}; see ${CEPH_DIR}/log/${this.name}.log`);
      if (await answers(this.endpoint)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`radosgw ${this.name} did not answer on ${this.endpoint} within 60 s`);
  }

  /** Kills it outright (SIGKILL): connections are refused until start() again. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGKILL');
    });
    this.proc = null;
  }

  /** Freezes it (SIGSTOP): connections are accepted by the kernel but never answered. */
  freeze(): void {
    this.proc?.kill('SIGSTOP');
  }

  thaw(): void {
    this.proc?.kill('SIGCONT');
  }
}

async function answers(endpoint: string): Promise<boolean> {
  try {
    await fetch(endpoint, { signal: AbortSignal.timeout(1000) });
    return true;
  } catch {
    return false;
  }
}
