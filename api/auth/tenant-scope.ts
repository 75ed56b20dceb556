// The volume layer as a caller bound to one tenant sees it (or, for a token without a tenant that is
// not an admin, as the volumes without a tenant). Another tenant's volume reads exactly like a volume
// that does not exist — as a route's own name, a clone's origin, or a reflink/dedupe source — so a
// tenant learns nothing of others' volumes. Each check runs in the same tick as the call it guards,
// so no request can swap the volume in between.
import { ShoalError } from '../../server/errors.js';
import { volumeOfExport } from '../../server/volume/names.js';
import {
  volumeNotFound,
  type ChangesQuery,
  type FsckReport,
  type RangeRequest,
  type SnapshotInfo,
  type Stats,
  type VolumeActivity,
  type VolumeControl,
  type VolumeInfo,
} from '../../server/volume/control.js';
import type { ChangeList } from '../../server/volume/changes.js';

export class TenantScopedControl implements VolumeControl {
  constructor(
    private readonly control: VolumeControl,
    /** The tenant whose volumes this caller may use; null: the volumes without a tenant. */
    private readonly tenant: string | null,
  ) {}

  private get whose(): string {
    return this.tenant === null ? 'a token without a tenant' : `a token of tenant ${this.tenant}`;
  }

  /** The volume exists and is in scope, or volume_not_found, worded as for a volume that does not exist. */
  private mine(name: string): string {
    if (this.control.tenantOf(name) !== this.tenant) throw volumeNotFound(name);
    return name;
  }

  createVolume(req: { name: string; size: number; domain?: string; tenant?: string; incomplete?: boolean }): Promise<VolumeInfo> {
    if (req.tenant !== undefined && req.tenant !== this.tenant) {
      throw new ShoalError('forbidden', `${this.whose} creates volumes ${this.tenant === null ? 'without a tenant' : `only for tenant ${this.tenant}`}; only an admin token without a tenant chooses another.`);
    }
    // Chunks are shared across a whole domain: choosing one is how tenants come to share data, which is an admin's call.
    const ownDomain = this.tenant ?? 'default';
    if (req.domain !== undefined && req.domain !== ownDomain) {
      throw new ShoalError('forbidden', `${this.whose} keeps its volumes in dedup domain ${ownDomain}; only an admin token without a tenant puts a volume in another domain (domain "${req.domain}").`);
    }
    return this.control.createVolume({
      name: req.name,
      size: req.size,
      ...(this.tenant !== null ? { tenant: this.tenant } : {}),
      ...(req.incomplete !== undefined ? { incomplete: req.incomplete } : {}),
    });
  }

  cloneVolume(req: { name: string; from: { volume: string; snapshot?: string } }): Promise<VolumeInfo> {
    this.mine(req.from.volume);
    return this.control.cloneVolume(req);
  }

  listVolumes(): VolumeInfo[] {
    return this.control.listVolumes().filter((v) => v.tenant === this.tenant);
  }

  getVolume(name: string): VolumeInfo {
    return this.control.getVolume(this.mine(name));
  }

  tenantOf(name: string): string | null {
    return this.control.tenantOf(this.mine(name));
  }

  markComplete(name: string): Promise<void> {
    return this.control.markComplete(this.mine(name));
  }

  activity(): VolumeActivity[] {
    return this.control.activity().filter((v) => v.tenant === this.tenant);
  }

  resizeVolume(name: string, size: number, opts?: { shrink?: boolean }): Promise<VolumeInfo> {
    return this.control.resizeVolume(this.mine(name), size, opts);
  }

  deleteVolume(name: string, opts?: { force?: boolean; recursive?: boolean }): Promise<void> {
    return this.control.deleteVolume(this.mine(name), opts);
  }

  createSnapshot(volume: string, name: string): Promise<SnapshotInfo> {
    return this.control.createSnapshot(this.mine(volume), name);
  }

  listSnapshots(volume: string): SnapshotInfo[] {
    return this.control.listSnapshots(this.mine(volume));
  }

  deleteSnapshot(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<void> {
    return this.control.deleteSnapshot(this.mine(volume), snapshot, opts);
  }

  rollback(volume: string, snapshot: string, opts?: { force?: boolean }): Promise<VolumeInfo> {
    return this.control.rollback(this.mine(volume), snapshot, opts);
  }

  reflink(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; copiedBytes: number }> {
    this.mine(volume);
    this.mine(volumeOfExport(req.source));
    return this.control.reflink(volume, req);
  }

  dedupe(volume: string, req: RangeRequest): Promise<{ sharedBytes: number; differentBytes: number }> {
    this.mine(volume);
    this.mine(volumeOfExport(req.source));
    return this.control.dedupe(volume, req);
  }

  changes(volume: string, query: ChangesQuery): Promise<ChangeList> {
    return this.control.changes(this.mine(volume), query);
  }

  stats(): Stats {
    return this.control.stats({ tenant: this.tenant });
  }

  fsck(): Promise<FsckReport> {
    // The route is daemon-wide and never reaches here with a scoped caller; refuse rather than trust that.
    throw new ShoalError('forbidden', `a consistency check covers every tenant: ${this.whose} cannot run one.`);
  }
}
