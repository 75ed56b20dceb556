// What every CLI command gets: the command line, the environment, where to print, and the options
// main.ts passes in. One place, so the API commands (cli.ts) and `shoal token` share it.
import type { FsckProgress, FsckReport } from '../meta/fsck.js';
import type { TermOut } from './terminal.js';

export interface CliOptions {
  /** Checks a data directory with the daemon stopped (`shoal fsck DATA_DIR`); main.ts provides it. */
  offlineFsck?: (dir: string, onProgress?: (p: FsckProgress) => void) => Promise<FsckReport> | FsckReport;
  env?: NodeJS.ProcessEnv;
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  /** Where progress lines and live views draw (default process.stderr for progress, process.stdout for `shoal top`). */
  terminal?: TermOut;
}

export interface Ctx {
  argv: string[];
  /** The positionals: the command's words, then its arguments. */
  positionals: string[];
  env: NodeJS.ProcessEnv;
  json: boolean;
  out: (text: string) => void;
  err: (text: string) => void;
  opts: CliOptions;
}

/** --json prints the body as JSON; otherwise the human text. */
export function print(ctx: Ctx, body: unknown, human: () => string): number {
  if (ctx.json) {
    if (body !== undefined) ctx.out(JSON.stringify(body, null, 2) + '\n');
  } else ctx.out(human());
  return 0;
}
