// Authentication and authorization of every request, before its route runs: the bearer token names a
// caller (401 if it is missing or unknown), the route's declared access says whether that caller's
// role may call it (403), and the request gets the volume layer as that caller may see it
// (req.control). Without a tokens file the API is open and every caller is an admin.
import type { FastifyInstance, FastifyRequest, FastifyReply } from 'fastify';
import { ShoalError } from '../../server/errors.js';
import type { VolumeControl } from '../../server/volume/control.js';
import { A_ROLE, OPEN_ACCESS, ROLE_SENTENCE, roleAllows, seesEveryTenant, type Principal, type RouteAccess } from './roles.js';
import { TenantScopedControl } from './tenant-scope.js';
import type { TokenStore } from './token-store.js';

declare module 'fastify' {
  // Routes declare who may call them in their config: fastify's context config takes our fields.
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type -- interface merging needs an interface
  interface FastifyContextConfig extends RouteAccess {}
  // Set before every route that is not public; a public route (/healthz, /docs) reads neither.
  interface FastifyRequest {
    /** Who is calling. */
    principal: Principal;
    /** The volume layer as the caller may see it: routes use this, never the daemon's own control. */
    control: VolumeControl;
  }
}

const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i;

function unauthorized(reply: FastifyReply, message: string, error?: 'invalid_token'): ShoalError {
  reply.header('www-authenticate', `Bearer realm="shoal"${error ? `, error="${error}"` : ''}`);
  return new ShoalError('unauthorized', message);
}

function authenticate(req: FastifyRequest, reply: FastifyReply, tokens: TokenStore): Principal {
  const header = req.headers.authorization;
  if (header === undefined || header.trim() === '') {
    throw unauthorized(reply, 'this API needs a bearer token: send "Authorization: Bearer TOKEN" (`shoal token create` makes one; the CLI takes --token-file or SHOAL_API_TOKEN).');
  }
  const m = BEARER.exec(header);
  if (!m) throw unauthorized(reply, 'the Authorization header must be "Bearer TOKEN": this API takes only bearer tokens.', 'invalid_token');
  const principal = tokens.verify(m[1]!);
  if (!principal) throw unauthorized(reply, 'the bearer token is not valid: it is unknown, or it was revoked.', 'invalid_token');
  return principal;
}

/** 403 unless the caller's role and tenant binding allow the route. */
function authorize(req: FastifyRequest, p: Principal, route: RouteAccess): void {
  const need = route.access ?? 'admin'; // a route that declares nothing is for admins only
  if (need === 'public') return;
  const who = `this token ("${p.token}", role ${p.role}${p.tenant === null ? '' : `, tenant ${p.tenant}`})`;
  const what = `${req.method} ${req.url.split('?')[0]}`;
  if (!roleAllows(p.role, need)) throw new ShoalError('forbidden', `${who} ${ROLE_SENTENCE[p.role]}: ${what} needs ${A_ROLE[need]} token.`);
  if (route.daemonWide && p.tenant !== null) throw new ShoalError('forbidden', `${what} covers every tenant, and ${who} is bound to one: use a token without a tenant.`);
}

/**
 * Registers the hook (before the routes, so that onRoute sees them): `tokens` null leaves the API open.
 * The OpenAPI document and its UI are public: they describe the API, they hold no data.
 */
export function installAuthorization(app: FastifyInstance, opts: { control: VolumeControl; tokens: TokenStore | null }): void {
  // fastify wants decorations declared up front; the hook below fills them in for every route that is not public.
  app.decorateRequest('principal', null as unknown as Principal);
  app.decorateRequest('control', null as unknown as VolumeControl);
  app.addHook('onRoute', (route) => {
    if (route.url === '/docs' || route.url.startsWith('/docs/')) route.config = { ...route.config, access: 'public' };
    // The OpenAPI document says which token each route needs.
    const access = (route.config as RouteAccess | undefined)?.access;
    if (route.schema && access && access !== 'public') {
      const needs = `Needs ${A_ROLE[access]} token${(route.config as RouteAccess).daemonWide ? ' not bound to a tenant' : ''} when the daemon has --api-tokens.`;
      route.schema = { ...route.schema, security: [{ bearer: [] }], description: route.schema.description ? `${route.schema.description} ${needs}` : needs };
    }
  });
  app.addHook('onRequest', async (req, reply) => {
    // An unknown route answers 404 to any valid token, and 401 to anyone else: routes are not probed for free.
    const route: RouteAccess = req.is404 ? { access: 'reader' } : req.routeOptions.config;
    if (route.access === 'public') return;
    const p = opts.tokens ? authenticate(req, reply, opts.tokens) : OPEN_ACCESS;
    authorize(req, p, route);
    req.principal = p;
    req.control = seesEveryTenant(p) ? opts.control : new TenantScopedControl(opts.control, p.tenant);
  });
}
