// The CLI's command line, parsed by Node's util.parseArgs in two passes. The first knows every flag
// of every command, so it can tell a flag's value from a positional and find the command; the second
// is strict and knows only the flags of that command, so a misplaced flag is an error rather than
// silently ignored. parseArgs' own messages are replaced by sentences that name the flag.
import { parseArgs as nodeParseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Every flag any command takes. */
const OPTIONS = {
  api: { type: 'string' },
  'token-file': { type: 'string' },
  cacert: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  domain: { type: 'string' },
  tenant: { type: 'string' },
  force: { type: 'boolean' },
  recursive: { type: 'boolean' },
  shrink: { type: 'boolean' },
  offset: { type: 'string' },
  'source-offset': { type: 'string' },
  length: { type: 'string' },
  since: { type: 'string' },
  role: { type: 'string' },
  'tokens-file': { type: 'string' },
  size: { type: 'string' },
  format: { type: 'string' },
  'tls-psk': { type: 'string' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

export type Flag = keyof typeof OPTIONS;
export type FlagValues = { [F in Flag]?: (typeof OPTIONS)[F]['type'] extends 'string' ? string : boolean };

/** Flags every command takes. */
const COMMON: Flag[] = ['json', 'help'];
/** Flags of every command that talks to the daemon's API. */
export const CLIENT_FLAGS: Flag[] = ['api', 'token-file', 'cacert'];

const isFlag = (name: string): name is Flag => Object.hasOwn(OPTIONS, name);

function tokensOf(argv: string[]) {
  return nodeParseArgs({ args: argv, options: OPTIONS, strict: false, allowPositionals: true, tokens: true }).tokens;
}

/** The first problem of a command line, as a sentence (given the flags allowed, if known), or null. */
function problem(argv: string[], command?: string, allowed?: ReadonlySet<string>): string | null {
  for (const t of tokensOf(argv)) {
    if (t.kind !== 'option') continue;
    if (!isFlag(t.name)) return `unknown option "${t.rawName}".`;
    const flag = `--${t.name}`;
    if (allowed && !allowed.has(t.name)) return `${flag} does not apply to \`shoal ${command}\`.`;
    if (OPTIONS[t.name].type === 'boolean') {
      if (t.value !== undefined) return `${flag} takes no value.`;
    } else if (t.value === undefined) {
      return `${flag} needs a value.`;
    } else if (!t.inlineValue && t.value.startsWith('-')) {
      return `${flag} needs a value; to give one that starts with "-", write ${flag}=${t.value}.`;
    }
  }
  return null;
}

/** First pass: the positionals (the command and its arguments) and whether help was asked for. */
export function scanArgs(argv: string[]): { positionals: string[]; help: boolean; json: boolean } {
  const why = problem(argv);
  if (why) throw new UsageError(why);
  const { positionals, values } = nodeParseArgs({ args: argv, options: OPTIONS, strict: false, allowPositionals: true });
  return { positionals, help: values.help === true, json: values.json === true };
}

/** Second pass, strict: the values of `command`'s flags; any other flag is a usage error. */
export function commandFlags(argv: string[], command: string, allowed: Flag[]): FlagValues {
  const names = new Set<string>([...COMMON, ...allowed]);
  const options = Object.fromEntries(Object.entries(OPTIONS).filter(([name]) => names.has(name)));
  try {
    return nodeParseArgs({ args: argv, options, strict: true, allowPositionals: true }).values as FlagValues;
  } catch (e) {
    throw new UsageError(problem(argv, command, names) ?? (e as Error).message.split('\n')[0]!);
  }
}

/** Exactly these positionals, named for the sentence. */
export function expectPositionals(args: string[], command: string, names: string[], optional = 0): string[] {
  const min = names.length - optional;
  if (args.length < min) throw new UsageError(`\`shoal ${command}\` needs ${names.slice(args.length, min).join(' and ')}: shoal ${command} ${names.join(' ')}.`);
  if (args.length > names.length) throw new UsageError(`\`shoal ${command}\` takes ${names.length === 0 ? 'no arguments' : names.join(' ')}, not "${args.slice(names.length).join(' ')}".`);
  return args;
}
