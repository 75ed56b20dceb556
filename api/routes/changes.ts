// /v1/volumes/{name}/changes: changed-block tracking between snapshots, for incremental backups.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ChangeList, ChangesQuery, VolumeParams, withErrors } from '../schemas.js';

const tags = ['snapshots'];

export const changeRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    '/v1/volumes/:name/changes',
    {
      config: { access: 'reader' },
      schema: {
        tags,
        summary: 'List the byte ranges changed since a snapshot',
        description:
          'The extents of the volume (or of its snapshot `until`) whose contents may differ from the snapshot `since`: what an incremental backup ' +
          'copies onto a full copy of `since`. Computed from the shared map trees, so it costs what changed, not the volume\'s size. Paged: ' +
          'when `next` is present, ask again with `offset=next`. Without `until`, each page reads the volume as it is at that moment. ' +
          '404 snapshot_not_found for an unknown snapshot; 400 invalid_snapshot_range when `since` is `until` or newer than it; ' +
          '400 invalid_range for an offset past the end.',
        params: VolumeParams,
        querystring: ChangesQuery,
        response: withErrors({ 200: ChangeList }),
      },
    },
    async (req) => {
      const { since, until, offset, limit } = req.query;
      return req.control.changes(req.params.name, {
        since,
        until,
        offset: offset === undefined ? undefined : Number(offset),
        limit: limit === undefined ? undefined : Number(limit),
      });
    },
  );
};
