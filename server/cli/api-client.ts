// The CLI's only way into the daemon: the REST API. Turns transport failures and API errors into
// sentences (CliError) the CLI prints as `shoal: <sentence>`.
//
// Requests go through node:http and node:https, not fetch: a client command's first fetch loaded
// Node's bundled undici and the web globals, ~45-55 ms of a `shoal volume list` that took ~230 ms
// in all (CPU profile), and `shoal import`'s fixed cost counts against its speed.
import { request as httpRequest, type IncomingMessage } from 'node:http';

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

export class ApiClient {
  private readonly timeoutMs: number;

  constructor(
    readonly baseUrl: string,
    private readonly opts: ApiClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    if (opts.ca && !baseUrl.startsWith('https:')) throw new CliError(`--cacert applies to an https:// API, and ${baseUrl} is not one`);
  }

  async request<T = unknown>(method: string, path: string, body?: unknown, opts: { timeoutMs?: number | null } = {}): Promise<{ status: number; body: T }> {
    const timeout = opts.timeoutMs === undefined ? this.timeoutMs : opts.timeoutMs;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = {};
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    if (this.opts.token !== undefined) headers.authorization = `Bearer ${this.opts.token}`;
    let res: { status: number; text: string };
    try {
      res = await this.send(method, this.baseUrl + path, headers, payload, timeout);
    } catch (e) {
      throw this.transportError(e);
    }
    const text = res.text;
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CliError(`the API at ${this.baseUrl} answered ${method} ${path} with HTTP ${res.status} and a body that is not JSON: is it really Shoal?`);
    }
    if (res.status < 200 || res.status > 299) {
      const err = (parsed as { error?: { code?: string; message?: unknown } } | undefined)?.error;
      if (err && typeof err.message === 'string') throw new CliError(err.message.replace(/\.$/, ''), err.code);
      throw new CliError(`the API answered ${method} ${path} with HTTP ${res.status}`);
    }
    return { status: res.status, body: parsed as T };
  }

  private async send(method: string, url: string, headers: Record<string, string | number>, payload: Buffer | undefined, timeout: number | null): Promise<{ status: number; text: string }> {
    const https = url.startsWith('https:');
    // node:https (and TLS) only for an https API: a plain one does not pay for loading them.
    const request = https ? (await import('node:https')).request : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        { method, headers, ...(https && this.opts.ca ? { ca: this.opts.ca } : {}), ...(timeout === null ? {} : { signal: AbortSignal.timeout(timeout) }) },
        (r: IncomingMessage) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
          r.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  private transportError(e: unknown): CliError {
    const err = e as Error & { code?: string; errors?: Array<{ code?: string }> };
    if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
      return new CliError(`the Shoal API at ${this.baseUrl} did not answer within ${Math.round(this.timeoutMs / 1000)} s`);
    }
    // node:http gives the socket's error itself (an AggregateError when several addresses were tried).
    const code: string | undefined = err?.code ?? err?.errors?.[0]?.code;
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return new CliError(`cannot reach the Shoal API at ${this.baseUrl}: is the daemon running?`);
    if (typeof code === 'string' && TLS_TRUST_ERRORS.has(code)) {
      return new CliError(`the Shoal API at ${this.baseUrl} presented a certificate this client does not trust (${code}): give the CA that signed it with --cacert FILE`);
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return new CliError(`the certificate of the Shoal API at ${this.baseUrl} is not for that host name (${err?.message ?? code})`);
    const why = code ?? err?.message ?? String(e);
    return new CliError(`cannot reach the Shoal API at ${this.baseUrl} (${why}): is the daemon running, and is --api right?`);
  }
}
