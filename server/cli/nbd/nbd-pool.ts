// Several connections to one export when the server says a write completed on one is seen on all
// and a FLUSH on one covers all (NBD_FLAG_CAN_MULTI_CONN, which Shoal advertises): a copy spreads
// its requests over them, as nbdcopy does, so one socket's latency is not the limit.
import { NbdClient } from './nbd-client.js';
import type { NbdTarget } from './client-handshake.js';

export class NbdPool {
  private constructor(readonly conns: NbdClient[]) {}

  /**
   * Up to `max` connections, opened at once (a handshake is a few round trips: one after another
   * they cost a copy's start ~5 ms); only the first is kept if the server does not allow multi-conn.
   */
  static async open(t: NbdTarget, max: number): Promise<NbdPool> {
    const all = await Promise.allSettled(Array.from({ length: Math.max(1, max) }, () => NbdClient.connect(t)));
    const conns = all.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = all.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      for (const c of conns) c.destroy();
      throw failed.reason;
    }
    if (!conns[0]!.canMultiConn) {
      for (const c of conns.slice(1)) void c.close();
      return new NbdPool(conns.slice(0, 1));
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
