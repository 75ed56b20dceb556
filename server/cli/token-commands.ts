// `shoal token create|list|revoke`: edits the daemon's API tokens file (--api-tokens) in place. It needs
// no running daemon, only write access to the file, which is what makes someone an admin of tokens.
// The daemon picks the change up by itself (it watches the file; SIGHUP forces a re-read).
import { createToken, listTokens, revokeToken } from '../../api/auth/token-file.js';
import { ROLES } from '../../api/auth/roles.js';
import { UsageError, commandFlags, expectPositionals } from './args.js';
import { print, type Ctx } from './command-context.js';
import { table } from './render.js';

/** --tokens-file, or the daemon's own SHOAL_API_TOKENS when it is set. */
function tokensFile(ctx: Ctx, command: string, flag: string | undefined): string {
  const path = flag ?? ctx.env.SHOAL_API_TOKENS;
  if (path === undefined || path === '') throw new UsageError(`\`shoal ${command}\` needs --tokens-file FILE: the file the daemon reads with --api-tokens`);
  return path;
}

export async function tokenCommand(ctx: Ctx, rest: string[]): Promise<number> {
  const [sub, ...args] = rest;
  switch (sub) {
    case 'create': {
      const flags = commandFlags(ctx.argv, 'token create', ['role', 'tenant', 'tokens-file']);
      const [name] = expectPositionals(args, 'token create', ['NAME']);
      if (flags.role === undefined) throw new UsageError(`\`shoal token create\` needs --role ${ROLES.join('|')}`);
      if (!(ROLES as readonly string[]).includes(flags.role)) throw new UsageError(`--role "${flags.role}" is not a role: use ${ROLES.join(', ')}`);
      const path = tokensFile(ctx, 'token create', flags['tokens-file']);
      const { entry, token } = createToken(path, { name: name!, role: flags.role, ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}) });
      const { sha256: _hash, ...shown } = entry;
      // The token alone on stdout, so `shoal token create … > FILE` makes a --token-file.
      print(ctx, { ...shown, token }, () => `${token}\n`);
      if (!ctx.json) {
        const scope = entry.tenant ? `, tenant ${entry.tenant}` : '';
        ctx.err(`created token ${entry.name} (${entry.role}${scope}) in ${path}; it is shown only this once, and the file keeps only its hash\n`);
      }
      return 0;
    }
    case 'list':
    case 'ls': {
      const flags = commandFlags(ctx.argv, 'token list', ['tokens-file']);
      expectPositionals(args, 'token list', []);
      const tokens = listTokens(tokensFile(ctx, 'token list', flags['tokens-file'])).map(({ sha256: _hash, ...t }) => t);
      return print(ctx, { tokens }, () =>
        tokens.length === 0
          ? 'no tokens\n'
          : table(['NAME', 'ROLE', 'TENANT', 'CREATED'], tokens.map((t) => [t.name, t.role, t.tenant ?? '-', t.createdAt || '-'])),
      );
    }
    case 'revoke':
    case 'rm': {
      const flags = commandFlags(ctx.argv, 'token revoke', ['tokens-file']);
      const [name] = expectPositionals(args, 'token revoke', ['NAME']);
      const path = tokensFile(ctx, 'token revoke', flags['tokens-file']);
      const { sha256: _hash, ...gone } = revokeToken(path, name!);
      return print(ctx, gone, () => `revoked token ${gone.name}; a running daemon refuses it once it has re-read ${path} (within seconds, or at once on SIGHUP)\n`);
    }
    case undefined:
      throw new UsageError('`shoal token` needs a subcommand: create, list or revoke');
    default:
      throw new UsageError(`unknown subcommand "token ${sub}": use create, list or revoke`);
  }
}
