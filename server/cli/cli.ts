// `shoal <command>` for everything but `serve`: a thin client of the REST API (and `shoal token`,
// which edits the daemon's tokens file).
// Exit codes: 0 success, 1 the operation failed (API error, daemon unreachable, fsck found problems),
// 2 the command line is wrong, 130 interrupted (Ctrl-C during an import or export).
import type { DataDirInUse } from '../data-dir-lock.js';
import { isShoalError } from '../errors.js';
import { formatSize } from '../size.js';
import type { ChangeList, FsckReport, SnapshotInfo, Stats, VolumeInfo } from '../volume/control.js';
import { CliError, type ApiClient } from './api-client.js';
import { UsageError, expectPositionals, scanArgs } from './args.js';
import { apiCommand, sizeArg } from './api-command.js';
import { fsckText, snapshotTable, statsText, table, volumeDetails, volumeTable } from './render.js';
import { print, type CliOptions, type Ctx } from './command-context.js';
import { FsckProgressLine } from './fsck-progress.js';
import { USAGE } from './usage.js';

export type { CliOptions } from './command-context.js';
const enc = encodeURIComponent;

export async function runCli(argv: string[], opts: CliOptions = {}): Promise<number> {
  const out = opts.stdout ?? ((t: string) => void process.stdout.write(t));
  const err = opts.stderr ?? ((t: string) => void process.stderr.write(t));
  const env = opts.env ?? process.env;
  try {
    const { positionals, help, json } = scanArgs(argv);
    const [group] = positionals;
    if (group === undefined || group === 'help' || help) {
      if (group === undefined && !help) {
        err(USAGE);
        return 2;
      }
      out(USAGE);
      return 0;
    }
    return await dispatch({ argv, positionals, env, json, out, err, opts });
  } catch (e) {
    if (e instanceof UsageError) {
      err(`shoal: ${trim(e.message)} (see \`shoal help\`)\n`);
      return 2;
    }
    if (e instanceof CliError || isShoalError(e)) {
      err(`shoal: ${trim(e.message)}\n`);
      return e instanceof CliError && e.code === 'interrupted' ? EXIT_INTERRUPTED : 1;
    }
    err(`shoal: unexpected error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}

/** Exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it. */
const EXIT_INTERRUPTED = 130;

const trim = (s: string) => s.trim().replace(/\.$/, '');

async function dispatch(ctx: Ctx): Promise<number> {
  const [group, ...rest] = ctx.positionals;
  switch (group) {
    case 'volume':
    case 'volumes':
      return volumeCommand(ctx, rest);
    case 'snapshot':
    case 'snapshots':
      return snapshotCommand(ctx, rest);
    case 'rollback':
      return rollback(ctx, rest);
    case 'changes':
      return changes(ctx, rest);
    case 'clone':
      return clone(ctx, rest);
    case 'reflink':
    case 'dedupe':
      return range(ctx, group, rest);
    case 'stats':
      return stats(ctx, rest);
    case 'top':
      return (await import('./top-command.js')).topCommand(ctx, rest);
    case 'import':
      return (await import('./image-commands.js')).importCommand(ctx, rest);
    case 'export':
      return (await import('./image-commands.js')).exportCommand(ctx, rest);
    case 'fsck':
      return fsck(ctx, rest);
    case 'token':
    case 'tokens':
      return (await import('./token-commands.js')).tokenCommand(ctx, rest);
    case 'serve':
      throw new UsageError('`shoal serve` is handled by the shoal executable, not the client');
    default:
      throw new UsageError(`unknown command "${group}"`);
  }
}


async function volumeCommand(ctx: Ctx, rest: string[]): Promise<number> {
  const [sub, ...args] = rest;
  switch (sub) {
    case 'create': {
      const { flags, api } = apiCommand(ctx, 'volume create', ['domain', 'tenant']);
      const [name, size] = expectPositionals(args, 'volume create', ['NAME', 'SIZE']);
      const body: Record<string, unknown> = { name, size: sizeArg(size!, 'SIZE', true) };
      if (flags.domain !== undefined) body.domain = flags.domain;
      if (flags.tenant !== undefined) body.tenant = flags.tenant;
      const r = await api().request<VolumeInfo>('POST', '/v1/volumes', body);
      const tenant = r.body.tenant ? `tenant ${r.body.tenant}, ` : '';
      return print(ctx, r.body, () => `created volume ${r.body.name} (${formatSize(r.body.size)}, ${tenant}domain ${r.body.domain})\n`);
    }
    case 'list':
    case 'ls': {
      const { api } = apiCommand(ctx, 'volume list');
      expectPositionals(args, 'volume list', []);
      const r = await api().request<{ volumes: VolumeInfo[] }>('GET', '/v1/volumes');
      return print(ctx, r.body, () => volumeTable(r.body.volumes));
    }
    case 'show': {
      const { api } = apiCommand(ctx, 'volume show');
      const [name] = expectPositionals(args, 'volume show', ['NAME']);
      const r = await api().request<VolumeInfo>('GET', `/v1/volumes/${enc(name!)}`);
      return print(ctx, r.body, () => volumeDetails(r.body));
    }
    case 'resize': {
      const { flags, api } = apiCommand(ctx, 'volume resize', ['shrink']);
      const [name, size] = expectPositionals(args, 'volume resize', ['NAME', 'SIZE']);
      const body = { size: sizeArg(size!, 'SIZE', true), ...(flags.shrink ? { shrink: true } : {}) };
      const r = await api().request<VolumeInfo>('PATCH', `/v1/volumes/${enc(name!)}`, body);
      return print(ctx, r.body, () => `resized volume ${r.body.name} to ${formatSize(r.body.size)}\n`);
    }
    case 'delete':
    case 'rm': {
      const { flags, api } = apiCommand(ctx, 'volume delete', ['force', 'recursive']);
      const [name] = expectPositionals(args, 'volume delete', ['NAME']);
      await api().request('DELETE', `/v1/volumes/${enc(name!)}${query({ force: flags.force, recursive: flags.recursive })}`);
      return print(ctx, undefined, () => `deleted volume ${name}${flags.recursive ? ' and its snapshots' : ''}\n`);
    }
    case undefined:
      throw new UsageError('`shoal volume` needs a subcommand: create, list, show, resize or delete');
    default:
      throw new UsageError(`unknown subcommand "volume ${sub}": use create, list, show, resize or delete`);
  }
}

async function snapshotCommand(ctx: Ctx, rest: string[]): Promise<number> {
  const [sub, ...args] = rest;
  switch (sub) {
    case 'create': {
      const { api } = apiCommand(ctx, 'snapshot create');
      const [volume, snap] = expectPositionals(args, 'snapshot create', ['VOLUME', 'SNAPSHOT']);
      const r = await api().request<SnapshotInfo>('POST', `/v1/volumes/${enc(volume!)}/snapshots`, { name: snap });
      return print(ctx, r.body, () => `created snapshot ${r.body.exportName} (${formatSize(r.body.size)}, read-only NBD export ${r.body.exportName})\n`);
    }
    case 'list':
    case 'ls': {
      const { api } = apiCommand(ctx, 'snapshot list');
      const [volume] = expectPositionals(args, 'snapshot list', ['VOLUME']);
      const r = await api().request<{ snapshots: SnapshotInfo[] }>('GET', `/v1/volumes/${enc(volume!)}/snapshots`);
      return print(ctx, r.body, () => snapshotTable(volume!, r.body.snapshots));
    }
    case 'delete':
    case 'rm': {
      const { flags, api } = apiCommand(ctx, 'snapshot delete', ['force']);
      const [volume, snap] = expectPositionals(args, 'snapshot delete', ['VOLUME', 'SNAPSHOT']);
      await api().request('DELETE', `/v1/volumes/${enc(volume!)}/snapshots/${enc(snap!)}${query({ force: flags.force })}`);
      return print(ctx, undefined, () => `deleted snapshot ${volume}@${snap}\n`);
    }
    case undefined:
      throw new UsageError('`shoal snapshot` needs a subcommand: create, list or delete');
    default:
      throw new UsageError(`unknown subcommand "snapshot ${sub}": use create, list or delete`);
  }
}

async function rollback(ctx: Ctx, args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, 'rollback', ['force']);
  const [volume, snap] = expectPositionals(args, 'rollback', ['VOLUME', 'SNAPSHOT']);
  const body: Record<string, unknown> = { snapshot: snap };
  if (flags.force) body.force = true;
  const r = await api().request<VolumeInfo>('POST', `/v1/volumes/${enc(volume!)}/rollback`, body);
  return print(ctx, r.body, () => `rolled volume ${volume} back to snapshot ${snap}\n`);
}

/** "?force=true&recursive=true" for the flags that are set. */
function query(flags: Record<string, boolean | undefined>): string {
  const on = Object.keys(flags).filter((k) => flags[k]);
  return on.length === 0 ? '' : '?' + on.map((k) => `${k}=true`).join('&');
}

/** `shoal changes VOLUME[@SNAPSHOT] --since SNAPSHOT`: every page of GET /v1/volumes/{name}/changes. */
async function changes(ctx: Ctx, args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, 'changes', ['since']);
  const [ref] = expectPositionals(args, 'changes', ['VOLUME[@SNAPSHOT]']);
  const { volume, snapshot } = splitRef(ref!, 'VOLUME[@SNAPSHOT]');
  const since = flags.since;
  if (typeof since !== 'string' || since === '') throw new UsageError('`shoal changes` needs --since SNAPSHOT, the older snapshot to compare with');
  const extents: ChangeList['extents'] = [];
  let offset: number | undefined = 0;
  while (offset !== undefined) {
    const q = new URLSearchParams({ since, ...(snapshot === undefined ? {} : { until: snapshot }), offset: String(offset), limit: '65536' });
    const page: ChangeList = (await api().request<ChangeList>('GET', `/v1/volumes/${enc(volume)}/changes?${q}`)).body;
    for (const e of page.extents) extents.push(e);
    offset = page.next;
  }
  return print(ctx, { extents }, () => {
    const bytes = extents.reduce((n, e) => n + e.length, 0);
    const rows = extents.map((e) => [String(e.offset), String(e.length)]);
    return `${rows.length > 0 ? table(['OFFSET', 'LENGTH'], rows, [true, true]) : ''}${extents.length} extent(s), ${formatSize(bytes)} may differ from ${since}\n`;
  });
}

/** "vol" or "vol@snap". */
function splitRef(ref: string, what: string): { volume: string; snapshot?: string } {
  const parts = ref.split('@');
  if (parts.length > 2 || parts.some((p) => p === '')) throw new UsageError(`${what} "${ref}" must be VOLUME or VOLUME@SNAPSHOT`);
  return parts.length === 2 ? { volume: parts[0]!, snapshot: parts[1]! } : { volume: parts[0]! };
}

async function clone(ctx: Ctx, args: string[]): Promise<number> {
  const { api } = apiCommand(ctx, 'clone');
  const [name, source] = expectPositionals(args, 'clone', ['NEW', 'VOLUME[@SNAPSHOT]']);
  const from = splitRef(source!, 'the clone source');
  const r = await api().request<VolumeInfo>('POST', '/v1/volumes', { name, from });
  return print(ctx, r.body, () => `created volume ${r.body.name} (${formatSize(r.body.size)}), a clone of ${source}\n`);
}

async function range(ctx: Ctx, command: 'reflink' | 'dedupe', args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, command, ['offset', 'source-offset', 'length']);
  const [dest, source] = expectPositionals(args, command, ['DEST', 'SOURCE[@SNAPSHOT]']);
  splitRef(source!, 'SOURCE');
  const num = (flag: 'offset' | 'source-offset' | 'length', positive: boolean) => {
    const v = flags[flag];
    if (v === undefined) throw new UsageError(`\`shoal ${command}\` needs --${flag} N`);
    return sizeArg(v, `--${flag}`, positive);
  };
  const body = { source, sourceOffset: num('source-offset', false), offset: num('offset', false), length: num('length', true) };
  const r = await api().request<{ sharedBytes: number; copiedBytes?: number; differentBytes?: number }>('POST', `/v1/volumes/${enc(dest!)}/${command}`, body);
  return print(ctx, r.body, () =>
    command === 'reflink'
      ? `shared ${formatSize(r.body.sharedBytes)} of ${source} into ${dest}, copied ${formatSize(r.body.copiedBytes ?? 0)} at unaligned edges\n`
      : `shared ${formatSize(r.body.sharedBytes)} of ${source} with ${dest}; ${formatSize(r.body.differentBytes ?? 0)} differed and were left alone\n`,
  );
}

async function stats(ctx: Ctx, args: string[]): Promise<number> {
  const { api } = apiCommand(ctx, 'stats');
  expectPositionals(args, 'stats', []);
  const r = await api().request<Stats>('GET', '/v1/stats');
  return print(ctx, r.body, () => statsText(r.body));
}

async function fsck(ctx: Ctx, args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, 'fsck');
  const [dir] = expectPositionals(args, 'fsck', ['[DATA_DIR]'], 1);
  const line = new FsckProgressLine(ctx.opts.terminal ?? process.stderr);
  let report: FsckReport;
  if (dir !== undefined) {
    if (flags.api !== undefined) throw new UsageError('give either DATA_DIR (offline check) or --api (check the running daemon), not both');
    if (!ctx.opts.offlineFsck) throw new CliError('offline fsck of a data directory is not available in this build');
    try {
      report = await ctx.opts.offlineFsck(dir, line.enabled ? (p) => line.draw(p) : undefined);
    } catch (e) {
      if (!isShoalError(e) || e.code !== 'data_dir_in_use') throw e;
      // A daemon serves it: opening its metadata beside it is not safe, but the daemon can check itself.
      const h = (e as DataDirInUse).holder;
      if (h?.holder !== 'daemon' || !h.api) throw new CliError(`${e.message}; run the check when it is done${h?.holder === 'daemon' ? ', or through the daemon\'s API with --api URL' : ''}.`);
      ctx.err(`shoal: ${dir} is served by the daemon with pid ${h.pid}: checking it through its API at ${h.api}\n`);
      report = await onlineFsck(apiCommand(ctx, 'fsck', [], { base: h.api }).api, line);
    } finally {
      line.clear();
    }
  } else report = await onlineFsck(api, line);
  print(ctx, report, () => fsckText(report));
  return report.ok ? 0 : 1;
}

/** POST /v1/fsck, drawing the check's progress (from /v1/stats) on a terminal. */
async function onlineFsck(api: () => ApiClient, line: FsckProgressLine): Promise<FsckReport> {
  // A full check can take a while on a big store: no client-side timeout. Its progress is in /v1/stats.
  const check = api().request<FsckReport>('POST', '/v1/fsck', undefined, { timeoutMs: null });
  const poll = line.enabled
    ? setInterval(() => {
        api()
          .request<Stats>('GET', '/v1/stats')
          .then((r) => r.body.fsck?.running && line.draw(r.body.fsck))
          .catch(() => {}); // the check's own answer says what went wrong
      }, 300)
    : null;
  try {
    return (await check).body;
  } finally {
    if (poll) clearInterval(poll);
    line.clear();
  }
}
