// Splits a command line into positionals and --flags. Flags may appear anywhere; each command then says
// which flags it takes, so a misplaced one is an error rather than silently ignored.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const BOOLEAN_FLAGS = new Set(['json', 'force', 'help']);
const VALUE_FLAGS = new Set(['api', 'domain', 'source-offset', 'offset', 'length', 'since']);
export const GLOBAL_FLAGS = ['api', 'json', 'help'];

export interface ParsedArgs {
  positionals: string[];
  flags: Map<string, string | true>;
}

export function parseArgs(argv: string[]): ParsedArgs {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '-h') {
      flags.set('help', true);
      continue;
    }
    if (!arg.startsWith('--') || arg === '-') {
      if (arg.startsWith('-') && arg.length > 1 && !/^-\d/.test(arg)) throw new UsageError(`unknown option "${arg}".`);
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (BOOLEAN_FLAGS.has(name)) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value.`);
      flags.set(name, true);
    } else if (VALUE_FLAGS.has(name)) {
      let value: string;
      if (eq >= 0) value = arg.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i]!;
      else throw new UsageError(`--${name} needs a value.`);
      flags.set(name, value);
    } else {
      throw new UsageError(`unknown option "--${name}".`);
    }
  }
  return { positionals, flags };
}

/** Refuses flags the command does not take. */
export function allowFlags(args: ParsedArgs, command: string, allowed: string[]): void {
  for (const name of args.flags.keys()) {
    if (!GLOBAL_FLAGS.includes(name) && !allowed.includes(name)) throw new UsageError(`--${name} does not apply to \`shoal ${command}\`.`);
  }
}

/** Exactly these positionals, named for the sentence. */
export function expectPositionals(args: string[], command: string, names: string[], optional = 0): string[] {
  const min = names.length - optional;
  if (args.length < min) throw new UsageError(`\`shoal ${command}\` needs ${names.slice(args.length, min).join(' and ')}: shoal ${command} ${names.join(' ')}.`);
  if (args.length > names.length) throw new UsageError(`\`shoal ${command}\` takes ${names.length === 0 ? 'no arguments' : names.join(' ')}, not "${args.slice(names.length).join(' ')}".`);
  return args;
}
