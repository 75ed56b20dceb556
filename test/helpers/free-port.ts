// A TCP port on 127.0.0.1 that was free a moment ago, for servers that cannot be told to pick one
// themselves and report it (Prometheus, systemd-socket-activate). Callers retry if it was taken since.
import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}
