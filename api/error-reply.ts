// Turns anything that goes wrong in a request into {error: {code, message}} with the right status:
// ShoalError keeps its code, schema failures become sentences, transport problems get their own codes,
// and only the unexpected is a 500 (and logged, since it is a bug).
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ErrorCodes, isShoalError, type ErrorCode } from '../server/errors.js';
import { NAME_RULE } from '../server/volume/names.js';

interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

const e = (code: ErrorCode, message: string): ErrorBody => ({ error: { code, message } });

interface AjvError {
  keyword: string;
  instancePath: string;
  message?: string;
  params: Record<string, unknown>;
  parentSchema?: { title?: string };
  data?: unknown;
}

// fastify's own errors that carry a 4xx status, mapped to stable codes.
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'body_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_request',
};

export function errorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const { status, body } = describe(err, request);
  if (status >= 500 && !isShoalError(err)) request.log.error({ err }, 'unexpected error serving %s %s', request.method, request.url);
  else if (status >= 500) request.log.warn({ err }, 'request failed: %s', err.message);
  reply.code(status).send(body);
}

/** Errors the router raises before any route runs (malformed URL, over-long path segment). */
export function frameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    reply.code(400).send(e('invalid_name', 'a name in the URL is too long: names are at most 128 characters.'));
  } else if (err.code === 'FST_ERR_BAD_URL') {
    reply.code(400).send(e('invalid_request', 'the URL is malformed (bad percent-encoding).'));
  } else {
    errorHandler(err, request, reply);
  }
}

export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): void {
  reply.code(404).send(reply404(request.method, request.url));
}

function reply404(method: string, url: string): ErrorBody {
  const path = url.split('?')[0];
  return e('not_found', `there is no route ${method} ${path}; see /docs for the API.`);
}

function describe(err: FastifyError, request: FastifyRequest): { status: number; body: ErrorBody } {
  if (isShoalError(err)) return { status: err.status, body: e(err.code, err.message) };
  if (Array.isArray(err.validation) && err.validation.length > 0) {
    const [code, message] = validationSentence(err.validation[0] as AjvError, err.validationContext ?? 'body', request);
    return { status: 400, body: e(code, message) };
  }
  const mapped = err.code ? FASTIFY_CODES[err.code] : undefined;
  if (mapped === 'body_too_large') return { status: ErrorCodes[mapped].status, body: e(mapped, 'the request body is too large.') };
  if (mapped === 'invalid_json') return { status: ErrorCodes[mapped].status, body: e(mapped, `the request body is not valid JSON${err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? ' (it is empty)' : ''}.`) };
  if (mapped === 'unsupported_media_type') return { status: ErrorCodes[mapped].status, body: e(mapped, `request bodies must be JSON (content-type: application/json), not ${request.headers['content-type']}.`) };
  const status = typeof err.statusCode === 'number' ? err.statusCode : 500;
  if (status >= 400 && status < 500) return { status, body: e(mapped ?? 'invalid_request', `${sentence(err.message)}.`) };
  return { status: 500, body: e('internal', `internal error: ${sentence(err.message || 'unknown')} (details are in the daemon log).`) };
}

/** [code, sentence] for the first schema failure; names and sizes get codes of their own. */
function validationSentence(v: AjvError, context: string, request: FastifyRequest): [ErrorCode, string] {
  const segments = v.instancePath.split('/').slice(1);
  const field = segments.join('.');
  const last = segments[segments.length - 1] ?? '';
  const where = context === 'body' ? 'the request body' : context === 'params' ? 'the URL' : context === 'querystring' ? 'the query string' : context;
  const value = v.data !== undefined ? v.data : lookup((request as unknown as Record<string, unknown>)[context], segments);
  const shown = typeof value === 'string' ? `"${value}"` : JSON.stringify(value);
  const title = v.parentSchema?.title;

  if (v.keyword === 'required') return ['invalid_request', `${where} is missing "${prefix(field)}${v.params.missingProperty}".`];
  if (v.keyword === 'additionalProperties') return ['invalid_request', `${where} has an unknown field "${prefix(field)}${v.params.additionalProperty}".`];
  if (segments.length === 0 && v.keyword === 'type') return ['invalid_request', `${where} must be a JSON ${v.params.type}.`];
  if (title && title.endsWith(' name')) {
    return ['invalid_name', typeof value === 'string' ? `${shown} is not a valid ${title}: use ${NAME_RULE}.` : `a ${title} must be a string of ${NAME_RULE}, not ${shown}.`];
  }
  if (title === 'source' && typeof value === 'string') return ['invalid_name', `${shown} is not a valid source: use VOLUME or VOLUME@SNAPSHOT (names are ${NAME_RULE}).`];
  if (last === 'size' && context === 'body') {
    return ['invalid_size', `size must be a positive whole number of bytes or a string such as "64M" or "16T", not ${shown}.`];
  }
  if (v.keyword === 'enum') return ['invalid_request', `"${field}" in ${where} must be one of ${(v.params.allowedValues as unknown[]).join(', ')}, not ${shown}.`];
  if (v.keyword === 'type' && v.params.type === 'integer') return ['invalid_request', `"${field}" in ${where} must be a whole number, not ${shown}.`];
  return ['invalid_request', `"${field}" in ${where} ${v.message ?? 'is invalid'}${value === undefined ? '' : `, not ${shown}`}.`];
}

const prefix = (field: string) => (field ? field + '.' : '');

function lookup(root: unknown, path: string[]): unknown {
  let cur: unknown = root;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[p];
  }
  return cur;
}

function sentence(s: string): string {
  const t = s.trim();
  return t.endsWith('.') ? t.slice(0, -1) : t;
}
