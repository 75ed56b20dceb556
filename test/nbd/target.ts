// Where the NBD tests connect. One switch: the real daemon (compiled dist/, started through
// test/helpers/daemon.ts) when it is built, else the protocol engine in-process over an in-memory
// provider. Force either with SHOAL_NBD_TARGET=daemon|memory.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, startDaemon } from '../helpers/daemon.js';
import { NbdServer } from '../../server/nbd/server.js';
import { MemoryProvider, type MemoryProviderOptions } from './memory-provider.js';

export const TARGET_KIND: 'daemon' | 'memory' =
  process.env.SHOAL_NBD_TARGET === 'memory' || process.env.SHOAL_NBD_TARGET === 'daemon'
    ? process.env.SHOAL_NBD_TARGET
    : existsSync(MAIN)
      ? 'daemon'
      : 'memory';

export interface Target {
  kind: 'daemon' | 'memory';
  host: string;
  port: number;
  socketPath: string;
  uri(name: string): string;
  unixUri(name: string): string;
  createVolume(name: string, size: number): Promise<void>;
  /** Makes a read-only export of `volume` (a snapshot) and returns its export name. */
  createReadOnly(volume: string, snapshot: string): Promise<string>;
  /** Deletes a volume while clients are connected (revoking their exports), if the target can. */
  forceDelete?(name: string): Promise<void>;
  /** Process serving NBD (for memory checks). */
  pid: number;
  /** The in-memory provider, when kind === 'memory' (lets tests look inside). */
  memory?: MemoryProvider;
  dispose(): Promise<void>;
}

export async function startTarget(opts: { memory?: MemoryProviderOptions; server?: Partial<ConstructorParameters<typeof NbdServer>[0]> } = {}): Promise<Target> {
  if (TARGET_KIND === 'daemon') {
    const d = await startDaemon();
    return {
      kind: 'daemon',
      pid: d.proc.pid!,
      host: '127.0.0.1',
      port: d.nbdPort,
      socketPath: d.nbdSocket,
      uri: (n) => d.uri(n),
      unixUri: (n) => d.unixUri(n),
      createVolume: (n, s) => d.createVolume(n, s),
      async createReadOnly(volume, snapshot) {
        const r = await d.api('POST', `/v1/volumes/${encodeURIComponent(volume)}/snapshots`, { name: snapshot });
        if (r.status !== 201) throw new Error(`snapshot ${volume}@${snapshot}: ${r.status} ${JSON.stringify(r.body)}`);
        return `${volume}@${snapshot}`;
      },
      async forceDelete(name) {
        const r = await d.api('DELETE', `/v1/volumes/${encodeURIComponent(name)}?force=true`);
        if (r.status >= 300) throw new Error(`delete ${name}: ${r.status} ${JSON.stringify(r.body)}`);
      },
      dispose: () => d.dispose(),
    };
  }
  const provider = new MemoryProvider(opts.memory);
  const server = new NbdServer({ provider, ...(opts.server ?? {}) });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  const dir = mkdtempSync(join(tmpdir(), 'shoal-nbd-test-'));
  const socketPath = join(dir, 'nbd.sock');
  await server.listenUnix(socketPath);
  return {
    kind: 'memory',
    pid: process.pid,
    host: '127.0.0.1',
    port,
    socketPath,
    memory: provider,
    uri: (n) => `nbd://127.0.0.1:${port}/${encodeURIComponent(n)}`,
    unixUri: (n) => `nbd+unix:///${encodeURIComponent(n)}?socket=${socketPath}`,
    async createVolume(n, s) {
      provider.add(n, s);
    },
    async createReadOnly(volume, snapshot) {
      const src = provider.volumes.get(volume);
      if (!src) throw new Error(`no volume ${volume}`);
      const name = `${volume}@${snapshot}`;
      const snap = provider.add(name, src.size, true);
      for (const [k, p] of src.pages) snap.pages.set(k, Buffer.from(p));
      return name;
    },
    async forceDelete(name) {
      provider.remove(name);
    },
    async dispose() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
