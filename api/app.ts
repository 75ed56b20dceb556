// The REST control plane: JSON under /v1, /metrics, /healthz and the OpenAPI document at /docs.
// buildApi only assembles the fastify instance; the daemon decides where it listens.
import { readFileSync } from 'node:fs';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { VolumeControl } from '../server/volume/control.js';
import type { Metrics } from './metrics.js';
import { errorHandler, frameworkErrors, notFoundHandler } from './error-reply.js';
import { ShoalError } from '../server/errors.js';
import { volumeRoutes } from './routes/volumes.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { rangeRoutes } from './routes/ranges.js';
import { changeRoutes } from './routes/changes.js';
import { systemRoutes, type NbdEndpoints } from './routes/system.js';
import { installAuthorization } from './auth/authorize.js';
import type { TokenStore } from './auth/token-store.js';

export interface ApiOptions {
  control: VolumeControl;
  metrics: Metrics;
  /** A pino logger (used as is), or nothing (silent). */
  logger?: FastifyBaseLogger;
  /** Largest accepted request body in bytes (every body Shoal takes is tiny). Default 64 KiB. */
  bodyLimit?: number;
  /** The API tokens (--api-tokens); without them the API is open to whoever reaches it. */
  tokens?: TokenStore | null;
  /** Serve HTTPS with this certificate and key (PEM), from --api-tls-certificates. */
  https?: { cert: Buffer; key: Buffer } | null;
  /** Where the daemon serves NBD (GET /v1/endpoints); read on each request, since listeners open after the API is built. */
  nbdEndpoints?: () => NbdEndpoints;
}

export async function buildApi(opts: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger } : { logger: false }),
    // fastify types an HTTPS instance apart from an HTTP one; the routes never touch the raw server, so both are typed as HTTP.
    ...((opts.https ? { https: opts.https } : {}) as object),
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    // Names are up to 128 characters (the default limit of 100 would make long names unaddressable);
    // anything longer is refused by frameworkErrors as invalid_name.
    routerOptions: { maxParamLength: 256 },
    frameworkErrors,
    // One line per request at info would drown the daemon's log; requests are logged at debug below.
    logController: new LogController({ disableRequestLogging: true }),
    ajv: {
      customOptions: {
        // No coercion: {"size": true} must not become a 1-byte volume. No silent removal: unknown fields are errors.
        coerceTypes: false,
        removeAdditional: false,
        allErrors: false,
        // Errors carry the offending value and the schema's title, for sentences like '"a@b" is not a valid volume name'.
        verbose: true,
      },
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  // JSON bodies: our own parser so that malformed JSON gets code invalid_json, and an empty body with a
  // JSON content-type (curl -H 'content-type: application/json' -X POST .../fsck) is simply no body.
  // Only JSON is accepted: any other content-type is refused with 415 rather than parsed as a string.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = (body as string).trim();
    if (text === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text));
    } catch (e) {
      done(new ShoalError('invalid_json', `the request body is not valid JSON: ${(e as Error).message}.`), undefined);
    }
  });

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  app.addHook('onResponse', async (req, reply) => {
    req.log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 1000) / 1000, token: req.principal?.token }, 'request');
  });
  // Before any route is added: its onRoute hook reads each route's declared access.
  installAuthorization(app, { control: opts.control, tokens: opts.tokens ?? null });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Shoal',
        version: packageVersion(),
        description:
          'Control plane of Shoal: thin, deduplicated, copy-on-write block volumes served over NBD, with one chunk cache shared by every volume. ' +
          'Errors are always `{error: {code, message}}` with a stable `code`.',
      },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A token from `shoal token create` (when the daemon runs with --api-tokens).' } },
      },
      tags: [
        { name: 'volumes', description: 'Volumes and clones' },
        { name: 'snapshots', description: 'Snapshots and rollback' },
        { name: 'ranges', description: 'Reflink and dedupe of byte ranges' },
        { name: 'system', description: 'Stats, consistency check, health, metrics' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  await app.register(volumeRoutes);
  await app.register(snapshotRoutes);
  await app.register(rangeRoutes);
  await app.register(changeRoutes);
  await app.register(systemRoutes, { metrics: opts.metrics, nbdEndpoints: opts.nbdEndpoints ?? (() => ({ tcp: null, unix: null, tls: 'off' })) });
  return app;
}

function packageVersion(): string {
  // api/app.ts runs from the source tree (tsx) or from dist/api/app.js: package.json is one or two levels up.
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8'));
      if (pkg.name === 'shoal' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      /* try the next */
    }
  }
  return '0.0.0';
}
