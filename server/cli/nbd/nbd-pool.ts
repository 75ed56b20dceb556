// Several connections to one export when the server says a write completed on one is seen on all
// and a FLUSH on one covers all (NBD_FLAG_CAN_MULTI_CONN, which Shoal advertises): a copy spreads
// its requests over them, as nbdcopy does, so one socket's latency is not the limit.
import { NbdClient } from './nbd-client.js';
import type { NbdTarget } from './client-handshake.js';

export class NbdPool {
  private constructor(readonly conns: NbdClient[]) {}

  /** One connection, then up to `max` in all if the server allows multi-conn. */
  static async open(t: NbdTarget, max: number): Promise<NbdPool> {
    const first = await NbdClient.connect(t);
    if (!first.canMultiConn || max <= 1) return new NbdPool([first]);
    const more = await Promise.allSettled(Array.from({ length: max - 1 }, () => NbdClient.connect(t)));
    const failed = more.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const conns = [first, ...more.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    if (failed) {
      for (const c of conns) c.destroy();
      throw failed.reason;
    }
    return new NbdPool(conns);
  }

  get size(): number {
    return this.conns[0]!.size;
  }

  get first(): NbdClient {
    return this.conns[0]!;
  }

  /** With multi-conn, one FLUSH makes every connection's completed writes durable. */
  async flush(): Promise<void> {
    if (this.first.canFlush) await this.first.flush();
  }

  async close(): Promise<void> {
    await Promise.all(this.conns.map((c) => c.close()));
  }

  destroy(): void {
    for (const c of this.conns) c.destroy();
  }
}
