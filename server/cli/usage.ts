// The help text: one place, so `shoal help` and usage errors agree.

export const USAGE = `Usage: shoal <command> [options]

Daemon:
  shoal serve [--data-dir DIR] [--nbd HOST:PORT|none] [--nbd-socket PATH|none]
              [--api HOST:PORT] [--cache-size SIZE] [--cache-prefault on|off] [--chunk-size SIZE]
              [--dedup on|off] [--dedup-verify on|off] [--log-level LEVEL] [--config FILE]
              [--tls off|on|require] [--tls-certificates DIR | --tls-psk FILE]
              [--tls-verify-peer] [--tls-admins ID,...] [--insecure]
              [--max-connections N] [--nbd-socket-mode MODE]
              [--api-tokens FILE] [--api-tls-certificates DIR]
              [--store local|s3://BUCKET/PREFIX] [--s3-endpoint URL] [--s3-region R]
              [--s3-sync flush|async] [--local-cache-size SIZE|N%] [--lease-seconds N]
              [--s3-timeout DURATION] [--s3-compact-below FRACTION]
              [--s3-upload-delay DURATION]
      Run the daemon. Every flag can also be set as SHOAL_<FLAG> (SHOAL_DATA_DIR, …)
      or in a JSON config file.
      --cache-prefault on|off    fault the RAM cache's memory in at start, at idle priority
                                 (default on with an S3 store, off with the local one): RSS is
                                 the full --cache-size within seconds, and the first fill of
                                 the cache does not pay for its pages
      --tls on|require           NBD over TLS (NBD_OPT_STARTTLS); require refuses plaintext
      --tls-certificates DIR     X.509: DIR/ca-cert.pem, server-cert.pem, server-key.pem
      --tls-psk FILE             pre-shared keys, psktool's identity:hexkey lines
      --tls-verify-peer          X.509: require a client certificate signed by ca-cert.pem
      --tls-admins ID,...        TLS identities (PSK identity, certificate CN) that see all volumes
      --insecure                 allow NBD without --tls require, or the API without
                                 --api-tokens, on a non-loopback address
      --max-connections N        NBD connections at once (default 1024); more are refused
      --nbd-socket-mode MODE     permission bits of the NBD Unix socket (default 0660)
      --api-tokens FILE          API clients need a bearer token (see \`shoal token\`)
      --api-tls-certificates DIR serve the API over HTTPS (DIR/server-cert.pem, server-key.pem)
      --store s3://BUCKET/PREFIX keep chunks and metadata in an S3 bucket (AWS credentials from
                                 the environment); the data directory becomes a cache
      --s3-sync flush|async      flush: a FLUSH waits for the bucket; async: for the local disk
      --s3-upload-delay DURATION async: a full pack waits this long before its upload (5s)

Volumes:
  shoal volume create NAME SIZE [--tenant T] [--domain DOMAIN]
                                     SIZE in bytes or with K/M/G/T (binary); the dedup
                                     domain defaults to the tenant (or "default")
  shoal volume list
  shoal volume show NAME
  shoal volume resize NAME SIZE [--shrink]          --shrink: needed to make it smaller
  shoal volume delete NAME [--force] [--recursive]  --force disconnects NBD clients;
                                     --recursive: needed if it has snapshots (they go too)
  shoal clone NEW VOLUME[@SNAPSHOT]                 writable clone, shares every chunk

Snapshots:
  shoal snapshot create VOLUME SNAPSHOT             exported read-only as VOLUME@SNAPSHOT
  shoal snapshot list VOLUME
  shoal snapshot delete VOLUME SNAPSHOT [--force]
  shoal rollback VOLUME SNAPSHOT [--force]
  shoal changes VOLUME[@SNAPSHOT] --since SNAPSHOT  byte ranges that may differ from the older
      snapshot (SNAPSHOT, or ORIGIN@SNAPSHOT of the volume it was cloned from): what an
      incremental backup copies

Ranges:
  shoal reflink DEST SOURCE[@SNAPSHOT] --offset N --source-offset N --length N
      share a range of SOURCE into DEST (like FICLONERANGE)
  shoal dedupe DEST SOURCE[@SNAPSHOT] --offset N --source-offset N --length N
      share it only where the bytes are already equal (like FIDEDUPERANGE)

Images:
  shoal import NAME FILE [--size SIZE] [--tenant T] [--format raw|qcow2|vmdk|vhdx]
      create volume NAME holding a disk image: raw images directly (all-zero blocks
      are neither sent nor stored), qcow2/vmdk/vhdx through qemu-img (qemu-utils);
      the format is detected unless --format says it; --size: a bigger volume
  shoal export VOLUME[@SNAPSHOT] FILE [--format raw|qcow2|vmdk|vhdx] [--force]
      write a volume or snapshot to an image file (the format from --format, else
      FILE's extension, else raw); holes stay holes; --force replaces FILE
      Both find the daemon's NBD endpoint through the API and show progress (a bar on
      a terminal, JSON lines elsewhere). NBD over TLS: --cacert FILE (X.509) or
      --tls-psk FILE (psktool's file, its first identity). Ctrl-C deletes the half
      imported volume (or leaves it marked incomplete if the daemon is gone) and
      removes the half written file. Exit codes: 0 done, 1 failed, 130 interrupted.

Status:
  shoal stats
  shoal top                  a live view, refreshed every second: per-volume IOPS,
                             MiB/s and connections, cache, dedup, reclaim (q quits)
  shoal fsck [DATA_DIR]      without DATA_DIR: check the running daemon;
                             with it: check a data directory offline (daemon stopped);
                             on a terminal, a progress line while it runs
  shoal help

API tokens (edit the daemon's --api-tokens file; no daemon needed):
  shoal token create NAME --role admin|operator|reader [--tenant T] --tokens-file FILE
      prints the new token once (the file keeps only its hash)
  shoal token list --tokens-file FILE
  shoal token revoke NAME --tokens-file FILE
      --tokens-file defaults to SHOAL_API_TOKENS; a running daemon re-reads the file

Options for client commands:
  --api URL          the daemon's REST API (default http://127.0.0.1:10880, or SHOAL_API)
  --token-file FILE  send the token in FILE (mode 600); else SHOAL_API_TOKEN, if set
  --cacert FILE      trust this CA for an https:// API (a private CA), and for NBD
                     over TLS in import and export
  --json             print the API's JSON instead of text
`;
