// Daemon-wide routes: stats, fsck, health, Prometheus metrics.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { VolumeControl } from '../../server/volume/control.js';
import type { Metrics } from '../metrics.js';
import { FsckReport, Health, Stats, withErrors } from '../schemas.js';

export const systemRoutes: FastifyPluginAsyncTypebox<{ control: VolumeControl; metrics: Metrics }> = async (app, { control, metrics }) => {
  app.get(
    '/v1/stats',
    { schema: { tags: ['system'], summary: 'Space, dedup and cache figures', response: withErrors({ 200: Stats }) } },
    async () => control.stats(),
  );

  app.post(
    '/v1/fsck',
    {
      schema: {
        tags: ['system'],
        summary: 'Check metadata consistency',
        description: 'Checks refcounts, maps and chunks of the running daemon. Answers 200 with `ok: false` and one sentence per problem if it finds any.',
        response: withErrors({ 200: FsckReport }),
      },
    },
    async () => control.fsck(),
  );

  app.get('/healthz', { schema: { tags: ['system'], summary: 'Liveness', response: withErrors({ 200: Health }) } }, async () => ({ status: 'ok' as const }));

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['system'],
        summary: 'Prometheus metrics',
        description: 'Text exposition format. Metric names start with `shoal_`.',
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
