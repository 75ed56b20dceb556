// Daemon-wide routes: stats, fsck, health, Prometheus metrics.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { Metrics } from '../metrics.js';
import { FsckReport, Health, Stats, withErrors } from '../schemas.js';

export const systemRoutes: FastifyPluginAsyncTypebox<{ metrics: Metrics }> = async (app, { metrics }) => {
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

  app.post(
    '/v1/fsck',
    {
      config: { access: 'admin', daemonWide: true },
      schema: {
        tags: ['system'],
        summary: 'Check metadata consistency',
        description: 'Checks refcounts, maps and chunks of the running daemon. Answers 200 with `ok: false` and one sentence per problem if it finds any.',
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
