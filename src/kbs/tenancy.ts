/**
 * Who may act where in the key broker: the one grammar of tenant names, the namespace a repository name
 * belongs to, and the claims of an admin token. The same checks run when `cloister kbs admin-token`
 * issues a token and when the broker verifies one, so a token the CLI refuses to make is also refused
 * if it was made some other way.
 *
 * The operator (admins, global auditors, broker-wide policies and reference values) is a scope of its
 * own, never a reserved tenant name: no tenant can be mistaken for it, whatever it is called.
 */
import { type KeyInput, SignJWT } from 'jose';

export const ADMIN_AUDIENCE = 'cloister-kbs-admin';

/**
 *   admin           everything, every tenant (operator scope)
 *   tenant-admin    resources, policies and reference values of its tenant
 *   auditor         read-only, one tenant
 *   global-auditor  read-only, every tenant and the transparency log (operator scope)
 */
export const ADMIN_ROLES = ['admin', 'tenant-admin', 'auditor', 'global-auditor'] as const;
export type AdminRole = (typeof ADMIN_ROLES)[number];

/** Roles bound to one tenant: their tokens must name it; the others must not name any. */
const TENANT_ROLES: ReadonlySet<AdminRole> = new Set(['tenant-admin', 'auditor']);

export type AdminScope = { kind: 'operator' } | { kind: 'tenant'; tenant: string };

export interface AdminPrincipal {
  subject: string;
  role: AdminRole;
  scope: AdminScope;
  /** The token's `jti`: what a revocation names. */
  tokenId: string;
  /** The token's `exp`, seconds since the epoch. */
  expiresAt: number;
}

/**
 * Lower-case letter first, then lower-case letters, digits and `_`, at most 63 characters. No `-` and
 * no `.`: those separate a tenant's name from the rest of its repository names (`acme-models`), so no
 * tenant name can be a prefix that reaches into another tenant's namespace.
 */
export const TENANT_NAME = /^[a-z][a-z0-9_]{0,62}$/;

/**
 * Names that read as the operator or as "every tenant", or that older brokers stored as sentinels
 * (`default` owned what admins created; `*` held operator-wide reference values and policies).
 */
export const RESERVED_TENANT_NAMES: ReadonlySet<string> = new Set([
  'default',
  'operator',
  'admin',
  'admins',
  'root',
  'system',
  'global',
  'all',
  'any',
  'none',
  'null',
  'public',
  'kbs',
  'cloister',
]);

/** Why `name` is not a tenant name, or undefined when it is one. */
export function tenantNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'a tenant name is a string';
  if (!TENANT_NAME.test(name))
    return `tenant name ${JSON.stringify(name)} must match ${TENANT_NAME.source} (lower-case letter first; letters, digits, _; no - or .)`;
  if (RESERVED_TENANT_NAMES.has(name)) return `tenant name ${JSON.stringify(name)} is reserved`;
  return undefined;
}

/**
 * The tenant whose namespace holds a repository name: `acme`, `acme-…` and `acme.…` are tenant acme's,
 * and only acme (or an admin, on acme's behalf) can create them. A name without a tenant prefix
 * (`operator-keys`, `Shared`, `default`) is the operator's: only admins create those. Because the name
 * alone says whose it is, a sealer reading `kbs:///bigcorp/…` knows the key is bigcorp's.
 */
export function repositoryNamespace(repository: string): AdminScope {
  const prefix = repository.split(/[-.]/, 1)[0] ?? '';
  return tenantNameProblem(prefix) === undefined ? { kind: 'tenant', tenant: prefix } : { kind: 'operator' };
}

export type AdminTokenErrorCode = 'bad-role' | 'bad-tenant' | 'bad-lifetime' | 'bad-claims';

export class AdminTokenError extends Error {
  override name = 'AdminTokenError';
  constructor(
    readonly code: AdminTokenErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const withArticle = (role: string) => `${/^[aeiou]/.test(role) ? 'an' : 'a'} ${role}`;

/** Seconds a token may be valid ahead of the verifier's clock at `iat` (clock skew between machines). */
const IAT_SKEW_SECONDS = 60;

/**
 * The role and scope of a token's claims (signature, audience and expiry already checked by the
 * caller). `maxLifetimeSeconds` bounds `exp - iat`; `iat` may not lie in the future, so no token is valid
 * for longer than that from now.
 */
export function principalOf(
  claims: Record<string, unknown>,
  o: { maxLifetimeSeconds: number; now: number },
): AdminPrincipal {
  const { role, tenant, sub, jti, iat, exp } = claims;
  if (typeof role !== 'string' || !(ADMIN_ROLES as readonly string[]).includes(role))
    throw new AdminTokenError('bad-role', `admin token role must be one of ${ADMIN_ROLES.join(', ')}`);
  const r = role as AdminRole;
  if (typeof sub !== 'string' || sub === '')
    throw new AdminTokenError('bad-claims', 'an admin token names its holder in "sub"');
  if (typeof jti !== 'string' || jti === '' || jti.length > 128)
    throw new AdminTokenError('bad-claims', 'an admin token carries a token id ("jti", 1..128 characters)');
  if (typeof exp !== 'number' || typeof iat !== 'number')
    throw new AdminTokenError('bad-lifetime', 'an admin token carries "iat" and "exp"');
  if (iat > o.now + IAT_SKEW_SECONDS)
    throw new AdminTokenError('bad-lifetime', 'admin token "iat" is in the future');
  if (exp - iat > o.maxLifetimeSeconds)
    throw new AdminTokenError(
      'bad-lifetime',
      `admin token lifetime ${exp - iat} s exceeds the broker's maximum of ${o.maxLifetimeSeconds} s`,
    );
  let scope: AdminScope;
  if (TENANT_ROLES.has(r)) {
    if (tenant === undefined)
      throw new AdminTokenError('bad-tenant', `${withArticle(r)} token needs a tenant claim`);
    const problem = tenantNameProblem(tenant);
    if (problem) throw new AdminTokenError('bad-tenant', problem);
    scope = { kind: 'tenant', tenant: tenant as string };
  } else {
    if (tenant !== undefined)
      throw new AdminTokenError(
        'bad-tenant',
        `${withArticle(r)} token acts for every tenant and carries no tenant claim (use tenant-admin or auditor for one tenant)`,
      );
    scope = { kind: 'operator' };
  }
  return { subject: sub, role: r, scope, tokenId: jti, expiresAt: exp };
}

export interface IssueAdminToken {
  role: string;
  tenant?: string;
  subject: string;
  ttlSeconds: number;
}

/**
 * Signs an admin token after the same checks the broker applies (a lifetime bound is the broker's to
 * set, so only positive whole seconds are checked here). Returns the token and its id, for revocation.
 */
export async function signAdminToken(
  key: KeyInput,
  header: { alg: string; kid?: string },
  t: IssueAdminToken,
): Promise<{ token: string; tokenId: string; expiresAt: number }> {
  if (!Number.isSafeInteger(t.ttlSeconds) || t.ttlSeconds <= 0)
    throw new AdminTokenError('bad-lifetime', 'the token lifetime is a positive whole number of seconds');
  const now = Math.floor(Date.now() / 1000);
  const tokenId = crypto.randomUUID();
  const claims = {
    role: t.role,
    ...(t.tenant !== undefined ? { tenant: t.tenant } : {}),
    sub: t.subject,
    jti: tokenId,
    iat: now,
    exp: now + t.ttlSeconds,
  };
  principalOf(claims, { maxLifetimeSeconds: t.ttlSeconds, now });
  const token = await new SignJWT(claims)
    .setProtectedHeader({ alg: header.alg, ...(header.kid ? { kid: header.kid } : {}) })
    .setAudience(ADMIN_AUDIENCE)
    .sign(key);
  return { token, tokenId, expiresAt: claims.exp };
}
