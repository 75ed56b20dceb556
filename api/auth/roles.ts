// Who may do what on the REST API. Each route declares the least role it needs in its `config.access`
// (next to the route); the authorize hook compares it with the caller's token.

export const ROLES = ['reader', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** What a route needs: 'public' (no token: /healthz, /docs) or the least role. */
type Access = Role | 'public';

export interface RouteAccess {
  access?: Access;
  /** The route's answer covers every tenant (fsck, /metrics): a token bound to one tenant may not use it. */
  daemonWide?: boolean;
}

/** The caller of one request, from its bearer token (or the open API when no tokens file is configured). */
export interface Principal {
  token: string | null; // the token's name; null for the open API
  role: Role;
  tenant: string | null; // the tenant the token is bound to; null: none
}

/** Without --api-tokens the API is open (loopback only, unless --insecure): every caller is an admin. */
export const OPEN_ACCESS: Principal = { token: null, role: 'admin', tenant: null };

export function roleAllows(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}

/** Every tenant's volumes are open only to an admin bound to no tenant. */
export function seesEveryTenant(p: Principal): boolean {
  return p.role === 'admin' && p.tenant === null;
}

export const A_ROLE: Record<Role, string> = { reader: 'a reader', operator: 'an operator', admin: 'an admin' };

export const ROLE_SENTENCE: Record<Role, string> = {
  reader: 'may only read',
  operator: 'may manage volumes, snapshots and clones',
  admin: 'may do anything',
};
