// The daemon's live set of API tokens: read from the tokens file at start (a bad file stops the
// daemon with a sentence), re-read when the file changes or on SIGHUP, so `shoal token create` and
// `shoal token revoke` take effect without a restart. A file that turns bad while the daemon runs is
// logged and the tokens read before stay in force: a typo must not lock every client out.
import { timingSafeEqual } from 'node:crypto';
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import { readTokenFile, hashToken, type TokenEntry } from './token-file.js';
import type { Principal } from './roles.js';

interface Logger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

interface Loaded {
  entry: TokenEntry;
  hash: Buffer;
}

/** How often the file's mtime is checked. A stat a second costs nothing, and survives the file being replaced by a rename. */
const WATCH_INTERVAL_MS = 1000;

export class TokenStore {
  private tokens: Loaded[] = [];
  private watching = false;

  private constructor(
    readonly path: string,
    private readonly logger?: Logger,
  ) {}

  /** Reads the file now; throws ShoalError with a sentence if it is missing, open to writers, or malformed. */
  static open(path: string, logger?: Logger): TokenStore {
    const store = new TokenStore(path, logger);
    store.install(readTokenFile(path));
    if (store.tokens.length === 0) logger?.warn({ path }, 'the API tokens file holds no tokens: every request but /healthz is refused until `shoal token create` adds one');
    return store;
  }

  get size(): number {
    return this.tokens.length;
  }

  private install(entries: TokenEntry[]): void {
    this.tokens = entries.map((entry) => ({ entry, hash: Buffer.from(entry.sha256, 'hex') }));
  }

  /** The caller a token stands for, or null. Compares against every entry in constant time, with no early exit. */
  verify(token: string): Principal | null {
    const h = Buffer.from(hashToken(token), 'hex');
    let found: TokenEntry | null = null;
    for (const t of this.tokens) if (timingSafeEqual(h, t.hash) && found === null) found = t.entry;
    return found && { token: found.name, role: found.role, tenant: found.tenant ?? null };
  }

  /** Re-reads the file; keeps the tokens in force if it cannot. Returns whether the new file was taken. */
  reload(reason: string): boolean {
    try {
      this.install(readTokenFile(this.path));
      this.logger?.info({ path: this.path, tokens: this.tokens.length, reason }, 'API tokens reloaded');
      return true;
    } catch (e) {
      this.logger?.error({ path: this.path, reason, err: (e as Error).message }, 'the API tokens file could not be reloaded; the tokens read before stay in force');
      return false;
    }
  }

  /** Reloads whenever the file's inode, size or mtime changes. */
  watch(): void {
    if (this.watching) return;
    this.watching = true;
    watchFile(this.path, { interval: WATCH_INTERVAL_MS, persistent: false }, this.onChange);
  }

  private readonly onChange = (cur: Stats, prev: Stats): void => {
    if (cur.mtimeMs === prev.mtimeMs && cur.ino === prev.ino && cur.size === prev.size) return;
    this.reload('the file changed');
  };

  close(): void {
    if (this.watching) unwatchFile(this.path, this.onChange);
    this.watching = false;
  }
}
