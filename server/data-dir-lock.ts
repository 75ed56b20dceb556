// One process at a time in a data directory: the daemon, or an offline `shoal fsck`. Two daemons on
// one directory would both write its metadata; and lmdb-js (3.5) breaks a writing process when
// another process opens and closes the same environment beside it: the writer's commits then fail
// with MDB_BAD_TXN, or it reads a snapshot older than its own last commit (a test here saw both,
// and an offline check beside a daemon left map nodes and refcounts missing from the daemon's
// metadata). So whoever opens the metadata holds DATA_DIR/shoal.lock, an flock the kernel drops when
// its holder exits or is killed; the file says who holds it, so the next one can say so (and `shoal
// fsck DATA_DIR` can check a running daemon through its API instead).
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from './errors.js';
import { native } from './native.js';

const LOCK_FILE = 'shoal.lock';

/** Who holds a data directory: its pid, what it is, and (a daemon, once listening) its API's base URL. */
export interface LockHolder {
  pid: number;
  holder: 'daemon' | 'fsck';
  api?: string;
}

/** The data directory is held by another process: `holder` says which, when it could be read. */
export class DataDirInUse extends ShoalError {
  constructor(
    readonly dir: string,
    readonly holder: LockHolder | null,
  ) {
    const who = holder ? (holder.holder === 'daemon' ? `a Shoal daemon (pid ${holder.pid})` : `shoal fsck (pid ${holder.pid})`) : 'another Shoal process';
    super('data_dir_in_use', `the data directory ${dir} is in use by ${who}`);
  }
}

export class DataDirLock {
  private constructor(
    private fd: number | null,
    private info: LockHolder,
  ) {}

  /** Takes the lock, or throws DataDirInUse naming the holder. The directory must exist. */
  static acquire(dir: string, holder: LockHolder['holder']): DataDirLock {
    const path = join(dir, LOCK_FILE);
    const fd = openSync(path, 'a+', 0o644); // never truncated before the lock is ours
    let taken = false;
    try {
      taken = native().tryLock(fd);
    } finally {
      if (!taken) closeSync(fd);
    }
    if (!taken) throw new DataDirInUse(dir, readHolder(path));
    const lock = new DataDirLock(fd, { pid: process.pid, holder });
    lock.write();
    return lock;
  }

  /** Adds the API's base URL to what the file says (a daemon, once it listens). */
  noteApi(api: string): void {
    this.info = { ...this.info, api };
    this.write();
  }

  private write(): void {
    if (this.fd === null) return;
    ftruncateSync(this.fd, 0);
    writeSync(this.fd, JSON.stringify(this.info) + '\n', 0);
  }

  /** Lets the next process in (the file stays: removing it would race with one opening it). */
  release(): void {
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
  }
}

function readHolder(path: string): LockHolder | null {
  try {
    const h = JSON.parse(readFileSync(path, 'utf8')) as LockHolder;
    return typeof h.pid === 'number' && (h.holder === 'daemon' || h.holder === 'fsck') ? h : null;
  } catch {
    return null; // being written this very moment, or damaged: the caller says "another Shoal process"
  }
}
