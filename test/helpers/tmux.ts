// A terminal for the CLI's live views: a tmux server on a private socket (nothing shared with
// anyone's tmux), one window running a command, read back with capture-pane and typed into with
// send-keys, as a person at a terminal would.
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runOk } from './tools.js';

export class Tmux {
  private readonly dir = mkdtempSync(join(tmpdir(), 'shoal-tmux-'));
  private readonly socket = join(this.dir, 'tmux.sock');
  /** The command's exit status is written here when it ends. */
  private readonly statusFile = join(this.dir, 'status');

  private tmux(...args: string[]) {
    return runOk('tmux', ['-S', this.socket, ...args]);
  }

  /** Runs `argv` (through sh, with `env`) in a new window of `cols` x `rows`. */
  async start(argv: string[], opts: { cols?: number; rows?: number; env?: Record<string, string> } = {}): Promise<void> {
    const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const env = Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${quote(v)} `).join('');
    const cmd = `${env}${argv.map(quote).join(' ')}; echo $? > ${quote(this.statusFile)}; sleep 600`;
    await this.tmux('new-session', '-d', '-s', 'shoal', '-x', String(opts.cols ?? 120), '-y', String(opts.rows ?? 30), cmd);
  }

  /** The visible screen, one string per line. */
  async screen(): Promise<string> {
    return this.tmux('capture-pane', '-p', '-t', 'shoal');
  }

  async keys(...keys: string[]): Promise<void> {
    await this.tmux('send-keys', '-t', 'shoal', ...keys);
  }

  /** Polls the screen until `re` matches it; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    const end = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < end) {
      last = await this.screen();
      const m = last.match(re);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the screen never showed ${re}; last screen:\n${last}`);
  }

  /** The command's exit status once it has ended. */
  async exitStatus(timeoutMs = 60_000): Promise<number> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (existsSync(this.statusFile)) {
        const s = readFileSync(this.statusFile, 'utf8').trim();
        if (s !== '') return Number(s);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the command did not end; its screen:\n${await this.screen()}`);
  }

  async dispose(): Promise<void> {
    await run('tmux', ['-S', this.socket, 'kill-server']);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
