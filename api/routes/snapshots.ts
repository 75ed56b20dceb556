// /v1/volumes/{name}/snapshots and rollback.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { CreateSnapshotBody, ForceQuery, RollbackBody, SnapshotInfo, SnapshotList, SnapshotParams, VolumeInfo, VolumeParams, isYes, withErrors } from '../schemas.js';
import { ShoalError } from '../../server/errors.js';

const tags = ['snapshots'];

export const snapshotRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.post(
    '/v1/volumes/:name/snapshots',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Snapshot a volume',
        description: 'A read-only, point-in-time copy, exported over NBD as VOLUME@SNAPSHOT. Costs the same at any volume size.',
        params: VolumeParams,
        body: CreateSnapshotBody,
        response: withErrors({ 201: SnapshotInfo }),
      },
    },
    async (req, reply) => {
      const snap = await req.control.createSnapshot(req.params.name, req.body.name);
      reply.code(201).header('location', `/v1/volumes/${encodeURIComponent(req.params.name)}/snapshots/${encodeURIComponent(snap.name)}`);
      return snap;
    },
  );

  app.get(
    '/v1/volumes/:name/snapshots',
    { config: { access: 'reader' }, schema: { tags, summary: "List a volume's snapshots", params: VolumeParams, response: withErrors({ 200: SnapshotList }) } },
    async (req) => ({ snapshots: req.control.listSnapshots(req.params.name) }),
  );

  app.get(
    '/v1/volumes/:name/snapshots/:snap',
    { config: { access: 'reader' }, schema: { tags, summary: 'Show a snapshot', params: SnapshotParams, response: withErrors({ 200: SnapshotInfo }) } },
    async (req) => {
      const { name, snap } = req.params;
      const found = req.control.listSnapshots(name).find((s) => s.name === snap);
      if (!found) throw new ShoalError('snapshot_not_found', `volume "${name}" has no snapshot "${snap}".`);
      return found;
    },
  );

  app.delete(
    '/v1/volumes/:name/snapshots/:snap',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Delete a snapshot',
        description: 'Refused with 409 volume_busy while NBD clients read it, unless `force=true`, which disconnects them.',
        params: SnapshotParams,
        querystring: ForceQuery,
        response: withErrors({ 204: Type.Null({ description: 'Deleted.' }) }),
      },
    },
    async (req, reply) => {
      await req.control.deleteSnapshot(req.params.name, req.params.snap, { force: isYes(req.query.force) });
      reply.code(204).send(null);
    },
  );

  app.post(
    '/v1/volumes/:name/rollback',
    {
      config: { access: 'operator' },
      schema: {
        tags,
        summary: 'Roll a volume back to a snapshot',
        description: 'The volume takes the contents and size of the snapshot; the snapshot stays. Refused while clients are connected unless `force`.',
        params: VolumeParams,
        body: RollbackBody,
        response: withErrors({ 200: VolumeInfo }),
      },
    },
    async (req) => req.control.rollback(req.params.name, req.body.snapshot, { force: req.body.force === true }),
  );
};
