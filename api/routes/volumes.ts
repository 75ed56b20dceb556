// /v1/volumes: create (empty or clone), list, show, resize, delete.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ShoalError } from '../../server/errors.js';
import { parsePositiveSize } from '../../server/size.js';
import type { VolumeControl } from '../../server/volume/control.js';
import { CreateVolumeBody, ForceQuery, ResizeBody, VolumeInfo, VolumeList, VolumeParams, withErrors } from '../schemas.js';
import { Type } from '@sinclair/typebox';

const tags = ['volumes'];
export const isForce = (q: { force?: string }) => q.force === 'true' || q.force === '1';

export const volumeRoutes: FastifyPluginAsyncTypebox<{ control: VolumeControl }> = async (app, { control }) => {
  app.post(
    '/v1/volumes',
    {
      schema: {
        tags,
        summary: 'Create a volume',
        description:
          'With `{name, size, domain?}` creates an empty thin volume. With `{name, from: {volume, snapshot?}}` creates a writable clone ' +
          'of a snapshot, or of the current contents of a volume; a clone shares every chunk with its origin and costs the same at any size.',
        body: CreateVolumeBody,
        response: withErrors({ 201: VolumeInfo }),
      },
    },
    async (req, reply) => {
      const { name, size, domain, from } = req.body;
      let info;
      if (from) {
        if (size !== undefined || domain !== undefined) {
          throw new ShoalError('invalid_request', 'a clone takes its size and domain from its origin: give either "size" (and "domain") or "from", not both.');
        }
        info = await control.cloneVolume({ name, from: from.snapshot === undefined ? { volume: from.volume } : { volume: from.volume, snapshot: from.snapshot } });
      } else {
        if (size === undefined) throw new ShoalError('invalid_request', 'the request body needs "size" to create an empty volume, or "from" to clone one.');
        info = await control.createVolume(domain === undefined ? { name, size: parsePositiveSize(size) } : { name, size: parsePositiveSize(size), domain });
      }
      reply.code(201).header('location', `/v1/volumes/${encodeURIComponent(info.name)}`);
      return info;
    },
  );

  app.get('/v1/volumes', { schema: { tags, summary: 'List volumes', response: withErrors({ 200: VolumeList }) } }, async () => ({ volumes: control.listVolumes() }));

  app.get(
    '/v1/volumes/:name',
    { schema: { tags, summary: 'Show a volume', params: VolumeParams, response: withErrors({ 200: VolumeInfo }) } },
    async (req) => control.getVolume(req.params.name),
  );

  app.patch(
    '/v1/volumes/:name',
    {
      schema: {
        tags,
        summary: 'Resize a volume',
        description: 'Connected clients see the new size when they next negotiate.',
        params: VolumeParams,
        body: ResizeBody,
        response: withErrors({ 200: VolumeInfo }),
      },
    },
    async (req) => control.resizeVolume(req.params.name, parsePositiveSize(req.body.size)),
  );

  app.delete(
    '/v1/volumes/:name',
    {
      schema: {
        tags,
        summary: 'Delete a volume',
        description: 'Refused with 409 volume_busy while NBD clients are connected, unless `force=true`, which disconnects them.',
        params: VolumeParams,
        querystring: ForceQuery,
        response: withErrors({ 204: Type.Null({ description: 'Deleted.' }) }),
      },
    },
    async (req, reply) => {
      await control.deleteVolume(req.params.name, { force: isForce(req.query) });
      reply.code(204).send(null);
    },
  );
};
