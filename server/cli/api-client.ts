// The CLI's only way into the daemon: the REST API. Turns transport failures and API errors into
// sentences (CliError) the CLI prints as `shoal: <sentence>`.
import type { Dispatcher } from 'undici';

export class CliError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

const DEFAULT_API = 'http://127.0.0.1:10880';

// OpenSSL's names for a certificate chain the client cannot verify.
const TLS_TRUST_ERRORS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

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

export interface ApiClientOptions {
  /** Sent as "Authorization: Bearer TOKEN". */
  token?: string;
  /** PEM CA certificate(s) to trust for an https API (instead of the system's). */
  ca?: Buffer;
  timeoutMs?: number;
}

// The fetch both Node's global and undici's satisfy; undici's takes a dispatcher (the Agent that trusts --cacert).
type Fetch = (url: string, init: RequestInit & { dispatcher?: Dispatcher }) => Promise<Response>;

export class ApiClient {
  private readonly timeoutMs: number;
  private transport: Promise<{ fetch: Fetch; dispatcher?: Dispatcher }> | undefined;

  constructor(
    readonly baseUrl: string,
    private readonly opts: ApiClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    if (opts.ca && !baseUrl.startsWith('https:')) throw new CliError(`--cacert applies to an https:// API, and ${baseUrl} is not one`);
  }

  /** Node's fetch, or, with a CA to trust, undici's with an Agent that trusts it (loaded only then: the CLI starts fast). */
  private fetcher(): Promise<{ fetch: Fetch; dispatcher?: Dispatcher }> {
    const ca = this.opts.ca;
    this.transport ??= ca
      ? import('undici').then((u) => ({ fetch: u.fetch as unknown as Fetch, dispatcher: new u.Agent({ connect: { ca } }) }))
      : Promise.resolve({ fetch: globalThis.fetch as Fetch });
    return this.transport;
  }

  async request<T = unknown>(method: string, path: string, body?: unknown, opts: { timeoutMs?: number | null } = {}): Promise<{ status: number; body: T }> {
    const timeout = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.opts.token !== undefined) headers.authorization = `Bearer ${this.opts.token}`;
    let res: Response;
    try {
      const { fetch, dispatcher } = await this.fetcher();
      res = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: timeout === null ? undefined : AbortSignal.timeout(timeout),
        ...(dispatcher ? { dispatcher } : {}),
      });
    } catch (e) {
      throw this.transportError(e);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CliError(`the API at ${this.baseUrl} answered ${method} ${path} with HTTP ${res.status} and a body that is not JSON: is it really Shoal?`);
    }
    if (!res.ok) {
      const err = (parsed as { error?: { code?: string; message?: unknown } } | undefined)?.error;
      if (err && typeof err.message === 'string') throw new CliError(err.message.replace(/\.$/, ''), err.code);
      throw new CliError(`the API answered ${method} ${path} with HTTP ${res.status}`);
    }
    return { status: res.status, body: parsed as T };
  }

  private transportError(e: unknown): CliError {
    const err = e as Error & { cause?: { code?: string; message?: string; errors?: Array<{ code?: string }> } };
    if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
      return new CliError(`the Shoal API at ${this.baseUrl} did not answer within ${Math.round(this.timeoutMs / 1000)} s`);
    }
    // undici hides the socket error in `cause` (an AggregateError when several addresses were tried).
    const cause = err?.cause;
    const code: string | undefined = cause?.code ?? cause?.errors?.[0]?.code;
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return new CliError(`cannot reach the Shoal API at ${this.baseUrl}: is the daemon running?`);
    if (typeof code === 'string' && TLS_TRUST_ERRORS.has(code)) {
      return new CliError(`the Shoal API at ${this.baseUrl} presented a certificate this client does not trust (${code}): give the CA that signed it with --cacert FILE`);
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return new CliError(`the certificate of the Shoal API at ${this.baseUrl} is not for that host name (${cause?.message ?? code})`);
    const why = code ?? cause?.message ?? err?.message ?? String(e);
    return new CliError(`cannot reach the Shoal API at ${this.baseUrl} (${why}): is the daemon running, and is --api right?`);
  }
}
