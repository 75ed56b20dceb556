#!/usr/bin/env node
// The `shoal` executable. `serve` runs the daemon; every other command is the REST client (cli/cli.ts).
// The daemon, its settings and the offline fsck are imported lazily so client commands start fast
// and load no LMDB.
import { isShoalError } from './errors.js';
import type { Config } from './config.js';
import { runCli } from './cli/cli.js';
import { USAGE } from './cli/usage.js';

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'serve') {
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(USAGE);
      return 0;
    }
    // Loaded here, not at the top: the settings' schema library costs a client command ~0.15 s.
    const { loadConfig } = await import('./config.js');
    let config: Config;
    try {
      config = loadConfig(rest);
    } catch (e) {
      if (!isShoalError(e)) throw e;
      process.stderr.write(`shoal: ${e.message.replace(/\.$/, '')}\n`);
      return 2;
    }
    const { runDaemon } = await import('./daemon.js');
    await runDaemon(config);
    return 0;
  }
  return runCli(argv, {
    offlineFsck: async (dir, onProgress) => {
      const { fsckDataDir } = await import('./offline-fsck.js');
      return fsckDataDir(dir, onProgress);
    },
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    // exitCode rather than exit(): let stdout drain when it is a pipe.
    process.exitCode = code;
  },
  (e) => {
    // System errors (EADDRINUSE, EACCES on the data directory…) and ShoalErrors are sentences; anything else is a bug: show the stack.
    const err = e as NodeJS.ErrnoException;
    const sentence = isShoalError(e) || (typeof err?.code === 'string' && typeof err?.syscall === 'string');
    process.stderr.write(`shoal: ${sentence ? err.message.replace(/\.$/, '') : (err?.stack ?? String(e))}\n`);
    process.exitCode = 1;
  },
);
