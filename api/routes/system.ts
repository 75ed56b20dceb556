// Daemon-wide routes: stats, activity, NBD endpoints, fsck, health, Prometheus metrics.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from '@sinclair/typebox';
import type { Metrics } from '../metrics.js';
import { ActivityList, Endpoints, FsckReport, Health, Stats, withErrors } from '../schemas.js';

/** Where the daemon serves NBD, as it listens (known once its listeners are open). */
export type NbdEndpoints = Static<typeof Endpoints>['nbd'];

export interface SystemRouteOptions {
  metrics: Metrics;
  nbdEndpoints: () => NbdEndpoints;
}

export const systemRoutes: FastifyPluginAsyncTypebox<SystemRouteOptions> = async (app, { metrics, nbdEndpoints }) => {
  app.get(
    '/v1/stats',
    {
      config: { access: 'reader' },
      schema: {
        tags: ['system'],
        summary: 'Space, dedup and cache figures',
        description:
          "For a token that does not see every tenant, `volumes`, `snapshots` and `logicalBytes` count only the volumes it sees; the store's and the cache's figures belong to no one volume.",
        response: withErrors({ 200: Stats }),
      },
    },
    async (req) => req.control.stats(),
  );

  app.get(
    '/v1/activity',
    {
      config: { access: 'reader' },
      schema: {
        tags: ['system'],
        summary: 'NBD requests per volume',
        description:
          'Running counts of NBD reads and writes accepted on each volume (and its snapshots) since the daemon started, and its open connections: cheap to read every second (`shoal top` computes rates from two reads). A token bound to a tenant sees its volumes only.',
        response: withErrors({ 200: ActivityList }),
      },
    },
    async (req) => ({ volumes: req.control.activity() }),
  );

  app.get(
    '/v1/endpoints',
    {
      config: { access: 'reader' },
      schema: {
        tags: ['system'],
        summary: 'Where the daemon serves NBD',
        description: 'The NBD TCP address and Unix socket the daemon listens on, and whether NBD needs TLS: `shoal import` and `shoal export` find the export this way.',
        response: withErrors({ 200: Endpoints }),
      },
    },
    async () => ({ nbd: nbdEndpoints() }),
  );

  app.post(
    '/v1/fsck',
    {
      config: { access: 'admin', daemonWide: true },
      schema: {
        tags: ['system'],
        summary: 'Check metadata consistency',
        description:
          'Checks refcounts, maps and chunks of the running daemon. Answers 200 with `ok: false` and one sentence per problem if it finds any. Reads are served meanwhile; writes and changes to volumes wait until it ends. `GET /v1/stats` shows its progress (`fsck`); a second call while one runs joins it.',
        response: withErrors({ 200: FsckReport }),
      },
    },
    async (req) => req.control.fsck(),
  );

  app.get('/healthz', { config: { access: 'public' }, schema: { tags: ['system'], summary: 'Liveness', response: withErrors({ 200: Health }) } }, async () => ({ status: 'ok' as const }));

  app.get(
    '/metrics',
    {
      // Per-volume series name every tenant's volumes: a token bound to one tenant may not scrape them.
      config: { access: 'reader', daemonWide: true },
      schema: {
        tags: ['system'],
        summary: 'Prometheus metrics',
        description: 'Text exposition format. Metric names start with `shoal_`. Needs a token without a tenant (a reader token is enough).',
        produces: ['text/plain'],
        response: withErrors({ 200: Type.String({ description: 'Prometheus text exposition.' }) }),
      },
    },
    async (_req, reply) => {
      const text = await metrics.metrics();
      reply.type(metrics.contentType);
      return text;
    },
  );
};
