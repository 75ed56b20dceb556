// The help text: one place, so `shoal help` and usage errors agree.

export const USAGE = `Usage: shoal <command> [options]

Daemon:
  shoal serve [--data-dir DIR] [--nbd HOST:PORT|none] [--nbd-socket PATH|none]
              [--api HOST:PORT] [--cache-size SIZE] [--chunk-size SIZE]
              [--dedup on|off] [--dedup-verify on|off] [--log-level LEVEL] [--config FILE]
      Run the daemon. Every flag can also be set as SHOAL_<FLAG> (SHOAL_DATA_DIR, …)
      or in a JSON config file.

Volumes:
  shoal volume create NAME SIZE [--domain DOMAIN]   SIZE in bytes or with K/M/G/T (binary)
  shoal volume list
  shoal volume show NAME
  shoal volume resize NAME SIZE
  shoal volume delete NAME [--force]                --force disconnects NBD clients
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

Status:
  shoal stats
  shoal fsck [DATA_DIR]      without DATA_DIR: check the running daemon;
                             with it: check a data directory offline (daemon stopped)
  shoal help

Options for client commands:
  --api URL    the daemon's REST API (default http://127.0.0.1:10880, or SHOAL_API)
  --json       print the API's JSON instead of text
`;
