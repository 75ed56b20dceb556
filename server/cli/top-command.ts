// `shoal top`: a live view of the daemon, redrawn every second on the terminal's alternate
// screen with plain ANSI escape codes, until `q` (or Ctrl-C). Two cheap reads a second:
// GET /v1/stats and GET /v1/activity; rates are the difference between two reads.
import type { Stats, VolumeActivity } from '../volume/control.js';
import { CliError } from './api-client.js';
import { apiCommand } from './api-command.js';
import { expectPositionals } from './args.js';
import type { Ctx } from './command-context.js';
import { ANSI, type TermOut } from './terminal.js';
import { topScreen, type TopSample } from './top-view.js';

const REFRESH_MS = 1000;

export async function topCommand(ctx: Ctx, args: string[]): Promise<number> {
  const { api } = apiCommand(ctx, 'top');
  expectPositionals(args, 'top', []);
  const out: TermOut & { rows?: number } = ctx.opts.terminal ?? process.stdout;
  const stdin = process.stdin;
  if (!out.isTTY || !stdin.isTTY) throw new CliError('shoal top draws on a terminal; for figures in a script use `shoal stats --json` or GET /v1/activity');
  const client = api();
  const read = async (): Promise<TopSample> => {
    const [stats, activity] = await Promise.all([client.request<Stats>('GET', '/v1/stats'), client.request<{ volumes: VolumeActivity[] }>('GET', '/v1/activity')]);
    return { at: performance.now(), stats: stats.body, volumes: activity.body.volumes };
  };
  // The first read fails like any other command (daemon down, bad token); later failures are shown and retried.
  let now = await read();
  let prev: TopSample | null = null;
  let error: string | undefined;

  const draw = () => {
    const lines = topScreen(prev, now, { api: client.baseUrl, rows: out.rows ?? 24, cols: out.columns ?? 80, error });
    out.write(ANSI.home + lines.map((l) => l + '\x1b[K').join('\n') + ANSI.clearBelow);
  };

  out.write(ANSI.altScreen + ANSI.hideCursor + ANSI.clearScreen);
  stdin.setRawMode(true);
  stdin.resume();
  const onResize = () => draw();
  process.stdout.on('resize', onResize);
  try {
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        read().then(
          (s) => {
            prev = now;
            now = s;
            error = undefined;
            draw();
          },
          (e: Error) => {
            error = e.message;
            draw();
          },
        );
      }, REFRESH_MS);
      stdin.on('data', (key: Buffer) => {
        const k = key.toString();
        // q, Q, Ctrl-C (raw mode delivers it as a byte), Ctrl-D.
        if (k === 'q' || k === 'Q' || k === '\x03' || k === '\x04') {
          clearInterval(timer);
          resolve();
        }
      });
      draw();
    });
  } finally {
    process.stdout.off('resize', onResize);
    stdin.setRawMode(false);
    stdin.pause();
    out.write(ANSI.showCursor + ANSI.mainScreen);
  }
  return 0;
}
