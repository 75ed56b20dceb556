// What every command that talks to the daemon shares: its flags (with --api, --token-file,
// --cacert) parsed strictly, an API client built from them on first use, and sizes typed on the
// command line.
import { parsePositiveSize, parseSize } from '../size.js';
import { ApiClient, apiBaseUrl } from './api-client.js';
import { CLIENT_FLAGS, UsageError, commandFlags, type Flag, type FlagValues } from './args.js';
import { clientToken, readCaFile } from './client-credentials.js';
import type { Ctx } from './command-context.js';

/**
 * `base`: the API's URL when the command found it itself (instead of --api or SHOAL_API).
 * `nbdToo`: the command also speaks NBD, where --cacert may be the CA of the daemon's NBD TLS: the
 * API client then trusts it only for an https API instead of refusing it for an http one.
 */
export function apiCommand(ctx: Ctx, command: string, flags: Flag[] = [], opts: { nbdToo?: boolean; base?: string } = {}): { flags: FlagValues; api: () => ApiClient } {
  const values = commandFlags(ctx.argv, command, [...CLIENT_FLAGS, ...flags]);
  let client: ApiClient | undefined;
  const api = () => {
    if (client) return client;
    const base = apiBaseUrl(opts.base ?? values.api, ctx.env);
    const trustCa = values.cacert !== undefined && (!opts.nbdToo || base.startsWith('https:'));
    client = new ApiClient(base, { token: clientToken(values['token-file'], ctx.env), ...(trustCa ? { ca: readCaFile(values.cacert!) } : {}) });
    return client;
  };
  return { flags: values, api };
}

/** A size or offset typed on the command line; garbage is a usage error. */
export function sizeArg(text: string, what: string, positive: boolean): number {
  try {
    return positive ? parsePositiveSize(text, what) : parseSize(text, what);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}
