// /v1/volumes: create (empty or clone), list, show, resize, delete.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ShoalError } from '../../server/errors.js';
import { parsePositiveSize } from '../../server/size.js';
import { CreateVolumeBody, DeleteVolumeQuery, ResizeBody, VolumeInfo, VolumeList, VolumeParams, isYes, withErrors } from '../schemas.js';
import { Type } from '@sinclair/typebox';

const tags = ['volumes'];

export const volumeRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post(
    '/v1/volumes',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Create a volume',
        description:
          'With `{name, size, domain?, tenant?}` creates an empty thin volume; its dedup domain defaults to its tenant (or `default`), so tenants share no chunks unless an admin puts them in one domain. ' +
          'With `{name, from: {volume, snapshot?}}` creates a writable clone of a snapshot, or of the current contents of a volume; a clone shares every chunk with its origin, ' +
          "takes its origin's tenant and domain, and costs the same at any size.",
        body: CreateVolumeBody,
        response: withErrors({ 201: VolumeInfo }),
      },
    },
    async (req, reply) => {
      const { name, size, domain, tenant, incomplete, from } = req.body;
      let info;
      if (from) {
        if (size !== undefined || domain !== undefined || tenant !== undefined || incomplete !== undefined) {
          throw new ShoalError('invalid_request', 'a clone takes its size, domain and tenant from its origin: give either "size" (and "domain", "tenant", "incomplete") or "from", not both.');
        }
        info = await req.control.cloneVolume({ name, from: from.snapshot === undefined ? { volume: from.volume } : { volume: from.volume, snapshot: from.snapshot } });
      } else {
        if (size === undefined) throw new ShoalError('invalid_request', 'the request body needs "size" to create an empty volume, or "from" to clone one.');
        info = await req.control.createVolume({
          name,
          size: parsePositiveSize(size),
          ...(domain !== undefined ? { domain } : {}),
          ...(tenant !== undefined ? { tenant } : {}),
          ...(incomplete !== undefined ? { incomplete } : {}),
        });
      }
      reply.code(201).header('location', `/v1/volumes/${encodeURIComponent(info.name)}`);
      return info;
    },
  );

  app.get(
    '/v1/volumes',
    { config: { access: 'reader' }, schema: { tags, summary: 'List volumes', description: 'A token bound to a tenant lists only its tenant\'s volumes.', response: withErrors({ 200: VolumeList }) } },
    async (req) => ({ volumes: req.control.listVolumes() }),
  );

  app.get(
    '/v1/volumes/:name',
    { config: { access: 'reader' }, schema: { tags, summary: 'Show a volume', params: VolumeParams, response: withErrors({ 200: VolumeInfo }) } },
    async (req) => req.control.getVolume(req.params.name),
  );

  app.patch(
    '/v1/volumes/:name',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Resize a volume',
        description:
          'Connected clients see the new size when they next negotiate. Making a volume smaller discards what lies past the new end, so it needs `"shrink": true`; ' +
          'without it the call is refused with 409 shrink_not_allowed, saying how much written data would be lost.',
        params: VolumeParams,
        body: ResizeBody,
        response: withErrors({ 200: VolumeInfo }),
      },
    },
    async (req) => req.control.resizeVolume(req.params.name, parsePositiveSize(req.body.size), { shrink: req.body.shrink === true }),
  );

  app.post(
    '/v1/volumes/:name/complete',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Mark a volume complete',
        description:
          'Clears the mark of a volume created with `incomplete: true`, once whatever filled it (`shoal import`) has finished and flushed. Answers without the volume, whose figures take a walk of its map to compute.',
        params: VolumeParams,
        response: withErrors({ 204: Type.Null({ description: 'Marked complete (or it was already).' }) }),
      },
    },
    async (req, reply) => {
      await req.control.markComplete(req.params.name);
      reply.code(204).send(null);
    },
  );

  app.delete(
    '/v1/volumes/:name',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Delete a volume',
        description:
          'Refused with 409 volume_busy while NBD clients are connected, unless `force=true`, which disconnects them. ' +
          'Refused with 409 volume_has_dependents if the volume has snapshots (naming them), unless `recursive=true`, which deletes them with it; clones made from them keep their data.',
        params: VolumeParams,
        querystring: DeleteVolumeQuery,
        response: withErrors({ 204: Type.Null({ description: 'Deleted.' }) }),
      },
    },
    async (req, reply) => {
      await req.control.deleteVolume(req.params.name, { force: isYes(req.query.force), recursive: isYes(req.query.recursive) });
      reply.code(204).send(null);
    },
  );
};
