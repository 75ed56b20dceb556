// Range sharing between volumes: reflink (like FICLONERANGE) and dedupe (like FIDEDUPERANGE).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { DedupeResult, RangeBody, ReflinkResult, VolumeParams, withErrors } from '../schemas.js';

const tags = ['ranges'];

export const rangeRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post(
    '/v1/volumes/:name/reflink',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Share a range of another volume into this one',
        description:
          'Makes `[offset, offset+length)` of this volume read as `[sourceOffset, sourceOffset+length)` of `source` (a volume or VOLUME@SNAPSHOT) ' +
          'without copying whole chunks; partial chunks at the edges are copied. A source in another tenant reads as a volume that does not exist.',
        params: VolumeParams,
        body: RangeBody,
        response: withErrors({ 200: ReflinkResult }),
      },
    },
    async (req) => req.control.reflink(req.params.name, req.body),
  );

  app.post(
    '/v1/volumes/:name/dedupe',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Share a range only where the bytes are already equal',
        description: 'Like reflink, but each chunk is shared only if both sides hold identical bytes; nothing a reader sees changes.',
        params: VolumeParams,
        body: RangeBody,
        response: withErrors({ 200: DedupeResult }),
      },
    },
    async (req) => req.control.dedupe(req.params.name, req.body),
  );
};
