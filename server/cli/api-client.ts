// The CLI's only way into the daemon: the REST API. Turns transport failures and API errors into
// sentences (CliError) the CLI prints as `shoal: <sentence>`.

export class CliError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export const DEFAULT_API = 'http://127.0.0.1:10880';

/**
 * The base URL from --api or SHOAL_API. SHOAL_API is also the daemon's listen address ("127.0.0.1:10880",
 * "0.0.0.0:10880"), so a bare HOST:PORT is accepted, and a wildcard host means this machine.
 */
export function apiBaseUrl(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const raw = (flag ?? env.SHOAL_API ?? '').trim() || DEFAULT_API;
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new CliError(`"${raw}" is not an API address: give a URL such as http://127.0.0.1:10880.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new CliError(`"${raw}" is not an http:// or https:// URL.`);
  if (url.hostname === '0.0.0.0') url.hostname = '127.0.0.1';
  if (url.hostname === '[::]') url.hostname = '[::1]';
  return url.toString().replace(/\/+$/, '');
}

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly timeoutMs = 120_000,
  ) {}

  async request<T = any>(method: string, path: string, body?: unknown, opts: { timeoutMs?: number | null } = {}): Promise<{ status: number; body: T }> {
    const timeout = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    let res: Response;
    try {
      res = await fetch(this.baseUrl + path, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: timeout === null ? undefined : AbortSignal.timeout(timeout),
      });
    } catch (e) {
      throw this.transportError(e);
    }
    const text = await res.text();
    let parsed: any;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CliError(`the API at ${this.baseUrl} answered ${method} ${path} with HTTP ${res.status} and a body that is not JSON: is it really Shoal?`);
    }
    if (!res.ok) {
      const err = parsed?.error;
      if (err && typeof err.message === 'string') throw new CliError(err.message.replace(/\.$/, ''), err.code);
      throw new CliError(`the API answered ${method} ${path} with HTTP ${res.status}`);
    }
    return { status: res.status, body: parsed as T };
  }

  private transportError(e: unknown): CliError {
    const err = e as Error & { cause?: any };
    if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
      return new CliError(`the Shoal API at ${this.baseUrl} did not answer within ${Math.round(this.timeoutMs / 1000)} s`);
    }
    // undici hides the socket error in `cause` (an AggregateError when several addresses were tried).
    const cause = err?.cause;
    const code: string | undefined = cause?.code ?? cause?.errors?.[0]?.code;
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return new CliError(`cannot reach the Shoal API at ${this.baseUrl}: is the daemon running?`);
    const why = code ?? cause?.message ?? err?.message ?? String(e);
    return new CliError(`cannot reach the Shoal API at ${this.baseUrl} (${why}): is the daemon running, and is --api right?`);
  }
}
