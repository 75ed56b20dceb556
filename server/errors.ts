// Every error Shoal reports to a user has a stable code from this registry.
// REST turns it into {error: {code, message}} with `status`; NBD into the errno `nbd`;
// the CLI into a sentence and a non-zero exit.

export type NbdErrno = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

export const ErrorCodes = {
  invalid_request: { status: 400, nbd: 'EINVAL' },
  invalid_json: { status: 400, nbd: 'EINVAL' }, // a REST body that is not JSON
  body_too_large: { status: 413, nbd: 'EINVAL' }, // a REST body over the limit
  unsupported_media_type: { status: 415, nbd: 'EINVAL' }, // a REST body that is not application/json
  not_found: { status: 404, nbd: 'EINVAL' }, // no such REST route
  invalid_name: { status: 400, nbd: 'EINVAL' },
  invalid_size: { status: 400, nbd: 'EINVAL' },
  invalid_range: { status: 400, nbd: 'EINVAL' },
  out_of_range: { status: 400, nbd: 'EINVAL' },
  unauthorized: { status: 401, nbd: 'EPERM' }, // no credentials, or credentials that are not valid
  forbidden: { status: 403, nbd: 'EPERM' }, // valid credentials whose role or tenant may not do this
  invalid_snapshot_range: { status: 400, nbd: 'EINVAL' },
  volume_not_found: { status: 404, nbd: 'EINVAL' },
  snapshot_not_found: { status: 404, nbd: 'EINVAL' },
  volume_exists: { status: 409, nbd: 'EINVAL' },
  snapshot_exists: { status: 409, nbd: 'EINVAL' },
  volume_busy: { status: 409, nbd: 'EINVAL' },
  volume_has_dependents: { status: 409, nbd: 'EINVAL' },
  domain_mismatch: { status: 409, nbd: 'EINVAL' },
  shrink_not_allowed: { status: 409, nbd: 'EINVAL' },
  read_only: { status: 409, nbd: 'EPERM' },
  volume_deleted: { status: 410, nbd: 'ESHUTDOWN' },
  no_space: { status: 507, nbd: 'ENOSPC' },
  not_supported: { status: 501, nbd: 'ENOTSUP' },
  shutting_down: { status: 503, nbd: 'ESHUTDOWN' },
  io_error: { status: 500, nbd: 'EIO' },
  corrupt_metadata: { status: 500, nbd: 'EIO' },
  data_dir_unusable: { status: 500, nbd: 'EIO' }, // at start: the data directory cannot be created or opened
  address_in_use: { status: 500, nbd: 'EIO' }, // at start: a listen address or socket path is taken
  data_dir_in_use: { status: 500, nbd: 'EIO' }, // at start: another daemon, or an offline fsck, holds the data directory
  internal: { status: 500, nbd: 'EIO' },
  // Object storage (server/store/s3/). A conditional write lost its race: callers of the lease and the
  // commit head turn it into store_fenced or a retry; it reaches a client only as EIO.
  s3_precondition_failed: { status: 409, nbd: 'EIO' },
  s3_timeout: { status: 504, nbd: 'EIO' }, // no answer within --s3-timeout, retries included
  s3_error: { status: 502, nbd: 'EIO' }, // S3 refused the request (access denied, no such bucket…)
  store_lease_held: { status: 409, nbd: 'EIO' }, // another daemon holds the prefix's lease
  store_fenced: { status: 503, nbd: 'ESHUTDOWN' }, // another daemon took the prefix over: no more writes
  corrupt_pack: { status: 500, nbd: 'EIO' }, // a pack object whose bytes do not check out
} as const satisfies Record<string, { status: number; nbd: NbdErrno }>;

export type ErrorCode = keyof typeof ErrorCodes;

export class ShoalError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ShoalError';
    this.code = code;
  }
  get status(): number {
    return ErrorCodes[this.code].status;
  }
  get nbdErrno(): NbdErrno {
    return ErrorCodes[this.code].nbd;
  }
}

export function isShoalError(e: unknown): e is ShoalError {
  return e instanceof ShoalError;
}

/**
 * A failed disk write's code: no_space when the disk is full (ENOSPC; lmdb-js passes some of its
 * failures on as a message only), else io_error.
 */
export function diskErrorCode(err: unknown): 'no_space' | 'io_error' {
  const full = (err as NodeJS.ErrnoException | null)?.code === 'ENOSPC' || /no space left on device/i.test(String((err as Error | null)?.message));
  return full ? 'no_space' : 'io_error';
}

/** The errno an NBD reply should carry for any thrown value. */
export function nbdErrnoOf(e: unknown): NbdErrno {
  return isShoalError(e) ? e.nbdErrno : 'EIO';
}
