// Ctrl-C (SIGINT), SIGTERM and a closed terminal (SIGHUP) during a transfer: the first one aborts
// it, so the command can clean up (delete the half-imported volume, remove the half-written
// file) and exit 130; a second Ctrl-C exits at once.
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export class Interrupt {
  private readonly controller = new AbortController();
  private readonly onSignal = (sig: NodeJS.Signals) => {
    if (this.controller.signal.aborted) {
      if (sig === 'SIGINT') process.exit(130);
      return;
    }
    this.controller.abort();
  };

  constructor() {
    for (const s of SIGNALS) process.on(s, this.onSignal);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  dispose(): void {
    for (const s of SIGNALS) process.off(s, this.onSignal);
  }
}
