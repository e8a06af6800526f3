/**
 * The admin API (/admin/v1). Callers present a JWT signed by one of the configured admin keys (EdDSA
 * or ES256) with audience "cloister-kbs-admin", `sub`, `jti`, `iat`, `exp` (at most the configured
 * lifetime after `iat`), a `role` and, for tenant roles, a `tenant` (see tenancy.ts):
 *   admin           everything, every tenant
 *   tenant-admin    resources, policies and reference values of its own tenant's repositories
 *   auditor         read-only, its own tenant
 *   global-auditor  read-only, every tenant, and the transparency log
 * A revoked token id is refused. With no admin keys configured every admin request is refused (secure
 * default). Resource values can be written but are never returned.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { createLocalJWKSet, type JSONWebKeySet, type JWK, jwtVerify } from 'jose';
import { verifyEar } from '../attest/index.js';
import { compilePolicy, PolicyError } from '../policy/index.js';
import { type LogStore, TranslogError, TransparencyLog } from '../translog/index.js';
import { parseResourcePath } from '../wire/index.js';
import { decideRelease } from './decide.js';
import { KbsError, type KbsHttpCode, type KbsRouteDoc } from './errors.js';
import type { PolicyPool } from './policy-pool.js';
import { parseScope, scopeName } from './scope.js';
import type { SecretBox } from './secrets.js';
import { ownerName } from './store/common.js';
import { type KbsStore, type LogAppend, NotFoundError, type Owner, type PolicyScope } from './store/types.js';
import {
  ADMIN_AUDIENCE,
  type AdminPrincipal,
  AdminTokenError,
  principalOf,
  repositoryNamespace,
  tenantNameProblem,
} from './tenancy.js';

export { ADMIN_AUDIENCE, type AdminPrincipal, type AdminRole } from './tenancy.js';

export interface AdminOptions {
  store: KbsStore;
  secrets: SecretBox;
  /** Public JWKs allowed to sign admin tokens; empty = admin API disabled. */
  adminKeys: JWK[];
  earPublicKey: CryptoKey;
  devMode: boolean;
  /** Largest resource value in bytes. */
  maxResourceBytes: number;
  /** Longest admin-token lifetime (`exp - iat`) accepted, in seconds. */
  maxAdminTokenLifetimeSeconds: number;
  /** Signs and stores a checkpoint of the log as it is now; returns the note. */
  checkpoint: () => Promise<string>;
  logStore: LogStore;
  /** The log's origin line (checkpoint key name). */
  origin: string;
  /** Evaluates policies too costly for the event loop (decide.ts), for `policy/evaluate`. */
  policyPool?: PolicyPool;
}

const forbidden = (msg: string) => new KbsError('forbidden', msg);
const badToken = (msg: string) => new KbsError('bad-admin-token', msg);
const isAuditor = (p: AdminPrincipal) => p.role === 'auditor' || p.role === 'global-auditor';
const ADMIN_SECURITY = [{ adminToken: [] }];
/** Every admin route may refuse the caller's token or role. */
const AUTH_ERRORS: readonly KbsHttpCode[] = ['no-admin-token', 'bad-admin-token', 'forbidden'];
/** Writing a resource value: refusals of its path and its body. */
const RESOURCE_WRITE_ERRORS: readonly KbsHttpCode[] = [
  'bad-resource-path',
  'empty-value',
  'value-too-large',
  'body-too-large',
  'unsupported-media-type',
];
const LOG_RANGE = {
  type: 'object',
  properties: {
    from: { type: 'string', pattern: '^\\d+$', description: 'first entry (default 0)' },
    to: { type: 'string', pattern: '^\\d+$', description: 'end of the range, exclusive (default: the size)' },
  },
} as const;
/** An admin route's document entry: its answers, the auth refusals and its own. */
const doc = (
  ok: KbsRouteDoc['ok'],
  errors: readonly KbsHttpCode[] = [],
  invalid?: KbsRouteDoc['invalid'],
  usage?: string,
): KbsRouteDoc => ({
  ok,
  errors: [...AUTH_ERRORS, ...errors],
  ...(invalid !== undefined ? { invalid } : {}),
  ...(usage !== undefined ? { usage } : {}),
});
/** What a principal may list: its tenant's records, or (operator scope) everyone's. */
const listFilter = (p: AdminPrincipal): string | undefined =>
  p.scope.kind === 'tenant' ? p.scope.tenant : undefined;

export class AdminApi {
  private readonly jwks?: ReturnType<typeof createLocalJWKSet>;

  constructor(private readonly o: AdminOptions) {
    if (o.adminKeys.length > 0) this.jwks = createLocalJWKSet({ keys: o.adminKeys } as JSONWebKeySet);
  }

  async authenticate(req: FastifyRequest): Promise<AdminPrincipal> {
    if (!this.jwks)
      throw forbidden('the admin API is disabled: no admin keys are configured (see docs/kbs.md)');
    const h = req.headers.authorization;
    if (!h?.startsWith('Bearer '))
      throw new KbsError('no-admin-token', 'send an admin token: Authorization: Bearer <JWT>');
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(h.slice(7).trim(), this.jwks, {
        audience: ADMIN_AUDIENCE,
        algorithms: ['EdDSA', 'ES256'],
        requiredClaims: ['exp', 'iat', 'sub', 'jti'],
      }));
    } catch (e) {
      throw badToken(`admin token refused: ${(e as Error).message}`);
    }
    let p: AdminPrincipal;
    try {
      p = principalOf(payload, {
        maxLifetimeSeconds: this.o.maxAdminTokenLifetimeSeconds,
        now: Math.floor(Date.now() / 1000),
      });
    } catch (e) {
      if (e instanceof AdminTokenError) throw badToken(e.message);
      throw e;
    }
    if (await this.o.store.isAdminTokenRevoked(p.tokenId))
      throw badToken(`admin token ${p.tokenId} has been revoked`);
    return p;
  }

  /**
   * The owner of `repository` for `p`, creating it on a write if it does not exist yet. A new
   * repository belongs to the namespace its name is in (tenancy.ts): a tenant admin creates only in its
   * own, so no tenant can claim another's name first; an admin creating `acme-…` creates it for acme.
   */
  private async tenantFor(p: AdminPrincipal, repository: string, write: boolean): Promise<Owner> {
    if (write && isAuditor(p)) throw forbidden('auditors cannot change anything');
    const existing = await this.o.store.repositoryOwner(repository);
    if (existing) {
      if (p.scope.kind === 'tenant' && existing.tenant !== p.scope.tenant)
        throw forbidden(`repository ${repository} belongs to another tenant`);
      return existing.tenant;
    }
    const ns = repositoryNamespace(repository);
    const owner = ns.kind === 'tenant' ? ns.tenant : null;
    if (p.scope.kind === 'tenant' && owner !== p.scope.tenant) {
      const t = p.scope.tenant;
      throw forbidden(
        `repository ${repository} is outside tenant ${t}'s namespace: its repositories are named ${t}, ${t}-… or ${t}.…`,
      );
    }
    if (write)
      await this.o.store.createRepository(
        repository,
        owner,
        this.log(p, 'repository', repository, owner, { tenant: owner }),
      );
    return owner;
  }

  private log(
    p: AdminPrincipal,
    kind: string,
    subject: string,
    tenant: Owner,
    details: Record<string, unknown>,
  ): LogAppend {
    return { kind, tenant, actor: `${p.role}:${p.subject}`, subject, details };
  }

  /**
   * The admin routes, as a plugin of their own: every one authenticates in preValidation, so a caller
   * without a valid token learns nothing about what its body would have been told, and schema checks
   * run only for callers the broker knows.
   */
  async register(app: FastifyInstance): Promise<void> {
    await app.register(async (scope) => {
      const principals = new WeakMap<FastifyRequest, AdminPrincipal>();
      scope.addHook('preValidation', async (req) => {
        principals.set(req, await this.authenticate(req));
      });
      const auth = (req: FastifyRequest): AdminPrincipal => {
        const p = principals.get(req);
        // preValidation ran for every route of this plugin; a miss is a bug, not a caller's fault.
        if (!p) throw new Error('admin route reached without authentication');
        return p;
      };
      this.routes(scope, auth);
    });
  }

  private routes(app: FastifyInstance, auth: (req: FastifyRequest) => AdminPrincipal): void {
    app.get(
      '/admin/v1/resources',
      {
        schema: { summary: 'List resource metadata (never values)', security: ADMIN_SECURITY },
        config: { doc: doc({ 200: '{resources}' }) },
      },
      async (req) => {
        const p = auth(req);
        return { resources: await this.o.store.listResources(listFilter(p)) };
      },
    );

    app.put<{ Params: { '*': string }; Querystring: { contentType?: string } }>(
      '/admin/v1/resources/*',
      {
        schema: {
          summary: 'Create a resource (body: the value, application/octet-stream)',
          security: ADMIN_SECURITY,
          querystring: {
            type: 'object',
            properties: { contentType: { type: 'string', description: "the value's media type" } },
          },
        },
        config: {
          doc: doc({ 201: 'metadata' }, [...RESOURCE_WRITE_ERRORS, 'conflict'], 'bad-request'),
        },
      },
      async (req, reply) => {
        const p = auth(req);
        const path = req.params['*'];
        const { repository, type, tag } = parseResourcePath(path);
        const value = this.value(req.body);
        const tenant = await this.tenantFor(p, repository, true);
        const secret = await this.o.secrets.seal(path, value);
        const meta = await this.o.store.putResource(
          {
            path,
            repository,
            type,
            tag,
            tenant,
            size: value.length,
            contentType: req.query.contentType ?? 'application/octet-stream',
            secret,
          },
          this.log(p, 'resource-put', path, tenant, { size: value.length }),
        );
        value.fill(0);
        return reply.code(201).send(meta);
      },
    );

    app.post<{ Params: { '*': string } }>(
      '/admin/v1/resources/*',
      {
        schema: { summary: 'Rotate: store a new version of the value', security: ADMIN_SECURITY },
        config: { doc: doc({ 200: 'metadata' }, [...RESOURCE_WRITE_ERRORS, 'not-found']) },
      },
      async (req) => {
        const p = auth(req);
        const path = req.params['*'];
        const { repository } = parseResourcePath(path);
        const value = this.value(req.body);
        const tenant = await this.tenantFor(p, repository, true);
        const secret = await this.o.secrets.seal(path, value);
        const meta = await this.o.store.rotateResource(
          path,
          secret,
          value.length,
          this.log(p, 'resource-rotate', path, tenant, { size: value.length }),
        );
        value.fill(0);
        return meta;
      },
    );

    app.delete<{ Params: { '*': string } }>(
      '/admin/v1/resources/*',
      {
        schema: { summary: 'Delete a resource', security: ADMIN_SECURITY },
        config: { doc: doc({ 204: 'deleted' }, ['bad-resource-path', 'unknown-resource']) },
      },
      async (req, reply) => {
        const p = auth(req);
        const path = req.params['*'];
        const { repository } = parseResourcePath(path);
        const tenant = await this.tenantFor(p, repository, true);
        const gone = await this.o.store.deleteResource(
          path,
          this.log(p, 'resource-delete', path, tenant, {}),
        );
        if (!gone) throw new KbsError('unknown-resource', `resource ${path} does not exist`);
        return reply.code(204).send();
      },
    );

    app.put<{ Body: { scope: string; source: string } }>(
      '/admin/v1/policies',
      {
        schema: {
          summary: 'Set a CEL policy for "default", "repository:<name>" or "resource:<path>"',
          security: ADMIN_SECURITY,
          body: {
            type: 'object',
            required: ['scope', 'source'],
            properties: {
              scope: {
                type: 'string',
                description: '"default", "repository:<name>" or "resource:<repository>/<type>/<tag>"',
              },
              source: { type: 'string', description: 'a CEL expression (docs/policy.md)' },
            },
          },
        },
        config: {
          doc: doc({ 200: 'policy record' }, ['bad-scope', 'bad-policy', 'bad-resource-path'], {
            scope: 'bad-scope',
            '*': 'bad-policy',
          }),
        },
      },
      async (req) => {
        const p = auth(req);
        const { scope, source } = req.body;
        const s = parseScope(scope);
        if (source.trim() === '') throw new KbsError('bad-policy', 'source must be a CEL expression');
        try {
          compilePolicy(source);
        } catch (e) {
          // Refused when stored, not at release time: a typo must never lock a key away.
          throw new KbsError('bad-policy', e instanceof PolicyError ? e.message : String(e));
        }
        const tenant = await this.scopeOwner(p, s, true);
        return this.o.store.setPolicy(
          { scope: s, tenant, source, actor: `${p.role}:${p.subject}` },
          this.log(p, 'policy-set', scopeName(s), tenant, { source }),
        );
      },
    );

    app.get(
      '/admin/v1/policies',
      {
        schema: { summary: 'List active policies', security: ADMIN_SECURITY },
        config: { doc: doc({ 200: '{policies}' }) },
      },
      async (req) => {
        const p = auth(req);
        return { policies: await this.o.store.listPolicies(listFilter(p)) };
      },
    );

    app.delete<{ Querystring: { scope: string } }>(
      '/admin/v1/policies',
      {
        schema: {
          summary: "Remove a scope's policy, every version (the next scope's then applies)",
          security: ADMIN_SECURITY,
          querystring: {
            type: 'object',
            required: ['scope'],
            properties: {
              scope: {
                type: 'string',
                description: '"default", "repository:<name>" or "resource:<repository>/<type>/<tag>"',
              },
            },
          },
        },
        config: {
          doc: doc({ 200: '{scope, deleted}' }, ['bad-scope', 'bad-resource-path', 'not-found'], 'bad-scope'),
        },
      },
      async (req) => {
        const p = auth(req);
        if (isAuditor(p)) throw forbidden('auditors cannot change anything');
        const s = parseScope(req.query.scope);
        const tenant = await this.scopeOwner(p, s, false);
        const name = scopeName(s);
        const deleted = await this.o.store.deletePolicy(s, this.log(p, 'policy-delete', name, tenant, {}));
        if (deleted === 0) throw new NotFoundError(`no policy is set for scope ${name}`);
        return { scope: name, deleted };
      },
    );

    app.post<{ Body: { token: string; resource: string } }>(
      '/admin/v1/policy/evaluate',
      {
        schema: {
          summary: 'Explain why a token would be allowed or denied a resource',
          security: ADMIN_SECURITY,
          body: {
            type: 'object',
            required: ['token', 'resource'],
            properties: {
              token: { type: 'string', description: 'an EAR token this broker issued' },
              resource: { type: 'string', description: '<repository>/<type>/<tag>' },
            },
          },
        },
        config: {
          doc: doc(
            { 200: '{allow, reasons, policyScope, clauses}' },
            ['bad-request', 'bad-resource-path', 'bad-ear-token'],
            'bad-request',
            'send {"token": EAR JWT, "resource": "<repository>/<type>/<tag>"}',
          ),
        },
      },
      async (req) => {
        const p = auth(req);
        const { token, resource } = req.body;
        const r = parseResourcePath(resource);
        const tenant = await this.tenantFor(p, r.repository, false);
        const ear = await verifyEar(token, this.o.earPublicKey).catch((e: Error) => {
          throw new KbsError('bad-ear-token', `token refused: ${e.message}`);
        });
        return decideRelease({
          store: this.o.store,
          ear,
          resource: { ...r, path: resource, tenant },
          devMode: this.o.devMode,
          now: new Date(),
          explainClauses: true,
          ...(this.o.policyPool ? { policyPool: this.o.policyPool } : {}),
        });
      },
    );

    app.post<{
      Body: {
        tee: string;
        name: string;
        values: string[];
        tenant?: unknown;
        expiresAt?: string;
        note?: unknown;
      };
    }>(
      '/admin/v1/refvalues',
      {
        schema: {
          summary: 'Add a reference value (a new version)',
          security: ADMIN_SECURITY,
          body: {
            type: 'object',
            required: ['tee', 'name', 'values'],
            properties: {
              tee: { type: 'string' },
              name: { type: 'string', description: 'the claim, e.g. measurement' },
              values: {
                type: 'array',
                minItems: 1,
                items: { type: 'string', pattern: '^[0-9a-f]+$', description: 'lower-case hex' },
              },
              tenant: { description: "a tenant's name; left out: operator-wide (admins only)" },
              expiresAt: { type: 'string', description: 'RFC 3339 time' },
              note: { description: 'text kept with the record' },
            },
          },
        },
        config: {
          doc: doc(
            { 201: 'record' },
            ['bad-refvalue', 'bad-tenant'],
            'bad-refvalue',
            'send {"tee", "name", "values": [lower-case hex, …], "expiresAt"?, "note"?}',
          ),
        },
      },
      async (req, reply) => {
        const p = auth(req);
        const b = req.body;
        const tenant = this.refvalueOwner(p, b.tenant);
        if (b.expiresAt !== undefined && Number.isNaN(Date.parse(b.expiresAt))) {
          throw new KbsError('bad-refvalue', 'expiresAt must be an RFC 3339 time');
        }
        const rec = await this.o.store.addReferenceValue(
          {
            tenant,
            tee: b.tee,
            name: b.name,
            values: b.values,
            ...(b.expiresAt !== undefined ? { expiresAt: new Date(b.expiresAt).toISOString() } : {}),
            ...(typeof b.note === 'string' ? { note: b.note } : {}),
          },
          this.log(p, 'refvalue-add', `${b.tee}/${b.name}`, tenant, { values: b.values }),
        );
        return reply.code(201).send(rec);
      },
    );

    app.get<{ Querystring: { tee?: string } }>(
      '/admin/v1/refvalues',
      {
        schema: {
          summary: 'List reference values',
          security: ADMIN_SECURITY,
          querystring: { type: 'object', properties: { tee: { type: 'string' } } },
        },
        config: { doc: doc({ 200: '{refvalues}' }) },
      },
      async (req) => {
        const p = auth(req);
        const t = listFilter(p);
        return {
          refvalues: await this.o.store.listReferenceValues({
            ...(t !== undefined ? { tenant: t } : {}),
            ...(req.query.tee ? { tee: req.query.tee } : {}),
          }),
        };
      },
    );

    app.delete<{ Querystring: { tee: string; name: string; tenant?: string } }>(
      '/admin/v1/refvalues',
      {
        schema: {
          summary: "Remove one owner's reference values for a TEE kind and claim, every version",
          security: ADMIN_SECURITY,
          querystring: {
            type: 'object',
            required: ['tee', 'name'],
            properties: {
              tee: { type: 'string', minLength: 1 },
              name: { type: 'string', minLength: 1, description: 'the claim, e.g. mr_td' },
              tenant: { type: 'string', description: "a tenant's name; left out: the operator-wide set" },
            },
          },
        },
        config: {
          doc: doc(
            { 200: '{tee, name, tenant, deleted}' },
            ['bad-refvalue', 'bad-tenant', 'not-found'],
            'bad-refvalue',
            'give ?tee=<kind>&name=<claim>[&tenant=<name>]',
          ),
        },
      },
      async (req) => {
        const p = auth(req);
        const { tee, name } = req.query;
        const tenant = this.refvalueOwner(p, req.query.tenant);
        const deleted = await this.o.store.deleteReferenceValues(
          { tenant, tee, name },
          this.log(p, 'refvalue-delete', `${tee}/${name}`, tenant, {}),
        );
        if (deleted === 0)
          throw new NotFoundError(
            `no reference values ${tee}/${name} ${tenant === null ? 'operator-wide' : `of tenant ${tenant}`}`,
          );
        return { tee, name, tenant, deleted };
      },
    );

    app.put<{ Params: { repository: string }; Body: { tenant: string | null; outsideNamespace?: boolean } }>(
      '/admin/v1/repositories/:repository/owner',
      {
        schema: {
          summary:
            'Give a repository, its resources and policies to another tenant or the operator (admins only)',
          security: ADMIN_SECURITY,
          params: {
            type: 'object',
            required: ['repository'],
            properties: { repository: { type: 'string', pattern: '^[A-Za-z0-9._-]+$' } },
          },
          body: {
            type: 'object',
            required: ['tenant'],
            properties: {
              tenant: {
                type: ['string', 'null'],
                description: "the new owner: a tenant's name, or null for the operator",
              },
              outsideNamespace: {
                type: 'boolean',
                description: "allow an owner other than the one the repository's name says (docs/kbs.md)",
              },
            },
          },
        },
        config: {
          doc: doc(
            { 200: '{repository, from, to}' },
            ['bad-tenant', 'not-found', 'conflict'],
            'bad-tenant',
            'send {"tenant": "<name>" | null, "outsideNamespace"?: true}',
          ),
        },
      },
      async (req) => {
        const p = auth(req);
        if (p.role !== 'admin') throw forbidden('only admins reassign repositories');
        const { repository } = req.params;
        const { tenant: to, outsideNamespace = false } = req.body;
        if (to !== null) {
          const problem = tenantNameProblem(to);
          if (problem) throw new KbsError('bad-tenant', `${problem}; give null for the operator`);
        }
        // The name says whose a repository is (tenancy.ts): a sealer reading kbs:///acme-…/ trusts it
        // is acme's. Giving it to anyone else makes the name lie, so that takes an explicit switch.
        const ns = repositoryNamespace(repository);
        const nsOwner: Owner = ns.kind === 'tenant' ? ns.tenant : null;
        if (to !== nsOwner && !outsideNamespace)
          throw new KbsError(
            'bad-tenant',
            `repository ${repository} is in ${ownerName(nsOwner)}'s namespace; giving it to ${ownerName(to)} makes its name say the wrong owner (set outsideNamespace to do it anyway)`,
          );
        const { from } = await this.o.store.assignRepository(
          repository,
          to,
          this.log(p, 'repository-assign', repository, to, {
            to,
            ...(to !== nsOwner ? { outsideNamespace: true } : {}),
          }),
        );
        return { repository, from, to };
      },
    );

    app.post<{ Body: { tokenId: string; expiresAt?: string; reason?: string } }>(
      '/admin/v1/tokens/revoke',
      {
        schema: {
          summary: 'Revoke an admin token by its id (jti); admins only',
          security: ADMIN_SECURITY,
          body: {
            type: 'object',
            required: ['tokenId'],
            properties: {
              tokenId: { type: 'string', minLength: 1, maxLength: 128, description: "the token's jti" },
              expiresAt: {
                type: 'string',
                description: 'RFC 3339 time; the revocation may be dropped after it',
              },
              reason: { type: 'string', maxLength: 500 },
            },
          },
        },
        config: {
          doc: doc(
            { 201: 'revocation record' },
            ['bad-revocation', 'conflict'],
            'bad-revocation',
            'send {"tokenId": the token\'s jti, "expiresAt"?, "reason"? (at most 500 characters)}',
          ),
        },
      },
      async (req, reply) => {
        const p = auth(req);
        if (p.role !== 'admin') throw forbidden('only admins revoke admin tokens');
        const { tokenId, expiresAt, reason } = req.body;
        if (expiresAt !== undefined && Number.isNaN(Date.parse(expiresAt)))
          throw new KbsError('bad-revocation', 'expiresAt must be an RFC 3339 time');
        const rec = await this.o.store.revokeAdminToken(
          {
            tokenId,
            actor: `${p.role}:${p.subject}`,
            ...(expiresAt !== undefined ? { expiresAt: new Date(expiresAt).toISOString() } : {}),
            ...(reason !== undefined ? { reason } : {}),
          },
          this.log(p, 'admin-token-revoke', `admin-token:${tokenId}`, null, {
            ...(expiresAt !== undefined ? { expiresAt } : {}),
            ...(reason !== undefined ? { reason } : {}),
          }),
        );
        return reply.code(201).send(rec);
      },
    );

    app.get(
      '/admin/v1/tokens/revoked',
      {
        schema: {
          summary: 'List revoked admin tokens (admins and global auditors)',
          security: ADMIN_SECURITY,
        },
        config: { doc: doc({ 200: '{revoked}' }) },
      },
      async (req) => {
        const p = auth(req);
        if (p.scope.kind !== 'operator')
          throw forbidden('revocations are read by admins and global auditors');
        return { revoked: await this.o.store.listAdminTokenRevocations() };
      },
    );

    app.get<{ Querystring: { from?: string; to?: string } }>(
      '/admin/v1/log/entries',
      {
        schema: {
          summary: 'Transparency-log entries [from, to)',
          security: ADMIN_SECURITY,
          querystring: LOG_RANGE,
        },
        config: { doc: doc({ 200: '{size, entries}' }, ['bad-range'], 'bad-range') },
      },
      async (req) => {
        logReader(auth(req));
        const size = await this.o.store.logSize();
        const { from, to } = logRange(req.query, size);
        const entries = await this.o.store.logEntries(from, to);
        return { size, entries: entries.map((e) => JSON.parse(new TextDecoder().decode(e.canonical))) };
      },
    );

    app.get<{ Querystring: { from?: string; to?: string; proofs?: string } }>(
      '/admin/v1/log/bundle',
      {
        schema: {
          summary: 'Export the log as a bundle for `cloister log verify`',
          security: ADMIN_SECURITY,
          querystring: {
            ...LOG_RANGE,
            properties: {
              ...LOG_RANGE.properties,
              proofs: { type: 'string', description: '"all": an inclusion proof for every entry' },
            },
          },
        },
        config: { doc: doc({ 200: 'application/jsonl bundle' }, ['bad-range'], 'bad-range') },
      },
      async (req, reply) => {
        logReader(auth(req));
        await this.o.checkpoint();
        const { from, to } = logRange(req.query, await this.o.store.logSize());
        const log = new TransparencyLog(this.o.logStore, this.o.origin);
        const lines = log.exportLines({
          from,
          to,
          consistency: true,
          ...(req.query.proofs === 'all' ? { inclusion: 'all' as const } : {}),
        });
        // The first lines are made before the status is sent, so that a range the log cannot prove is
        // still refused; the rest is streamed as the client reads it (backpressure), each write resetting
        // the connection's idle timeout, so that no request timeout cuts a long export that progresses.
        let first: IteratorResult<string>;
        try {
          first = await lines.next();
        } catch (e) {
          if (e instanceof TranslogError) throw new KbsError('bad-range', e.message);
          throw e;
        }
        async function* all(): AsyncGenerator<string> {
          if (!first.done) yield first.value;
          yield* lines;
        }
        return reply.type('application/jsonl').send(Readable.from(all(), { objectMode: false }));
      },
    );

    app.post(
      '/admin/v1/log/checkpoint',
      {
        schema: { summary: 'Sign a checkpoint now (admins only)', security: ADMIN_SECURITY },
        config: { doc: doc({ 200: '{checkpoint}' }) },
      },
      async (req) => {
        const p = auth(req);
        if (p.role !== 'admin') throw forbidden('only admins sign checkpoints on demand');
        return { checkpoint: await this.o.checkpoint() };
      },
    );
  }

  private value(body: unknown): Uint8Array {
    if (!(body instanceof Uint8Array))
      throw new KbsError('unsupported-media-type', 'send the resource value as application/octet-stream');
    if (body.length === 0) throw new KbsError('empty-value', 'a resource value cannot be empty');
    if (body.length > this.o.maxResourceBytes)
      throw new KbsError(
        'value-too-large',
        `resource values are limited to ${this.o.maxResourceBytes} bytes`,
      );
    return new Uint8Array(body);
  }

  /**
   * Whose reference values a writer means: a tenant admin its own tenant's; an admin a named tenant's,
   * or (no tenant) the operator-wide ones.
   */
  private refvalueOwner(p: AdminPrincipal, tenant: unknown): Owner {
    if (isAuditor(p)) throw forbidden('auditors cannot change anything');
    if (p.scope.kind === 'tenant') {
      if (tenant !== undefined && tenant !== p.scope.tenant)
        throw forbidden('a tenant admin changes reference values of its own tenant only');
      return p.scope.tenant;
    }
    if (tenant === undefined) return null;
    const problem = tenantNameProblem(tenant);
    if (problem) throw new KbsError('bad-tenant', `${problem}; leave tenant out for operator-wide values`);
    return tenant as string;
  }

  private async scopeOwner(p: AdminPrincipal, s: PolicyScope, write: boolean): Promise<Owner> {
    if (s.kind === 'default') {
      if (p.role !== 'admin') throw forbidden('only admins set the broker-wide default policy');
      return null;
    }
    const repository = s.kind === 'repository' ? s.repository : parseResourcePath(s.path).repository;
    return this.tenantFor(p, repository, write);
  }
}

/**
 * The whole log is readable by admins and global auditors: entries of every tenant are chained together,
 * so a tenant's view cannot be cut out of it without breaking the proofs.
 */
function logReader(p: AdminPrincipal): void {
  if (p.scope.kind !== 'operator') {
    throw forbidden('the log holds every tenant: it is read by admins and global auditors');
  }
}

/**
 * `from`/`to` query values as a valid half-open range of the log (defaults: everything). The routes'
 * schema (LOG_RANGE) has already refused anything but digits.
 */
function logRange(q: { from?: string; to?: string }, size: number): { from: number; to: number } {
  const from = q.from === undefined ? 0 : Number(q.from);
  const to = q.to === undefined ? size : Number(q.to);
  if (from > to || to > size)
    throw new KbsError('bad-range', `range [${from}, ${to}) is not within the log of ${size} entries`);
  return { from, to };
}
