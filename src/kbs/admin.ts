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
import { verifyEar } from '../attest/ear/index.js';
import { compilePolicy, PolicyError } from '../policy/index.js';
import { type LogStore, TranslogError, TransparencyLog } from '../translog/index.js';
import { ProtocolError, parseResourcePath } from '../wire/kbs.js';
import { decideRelease } from './decide.js';
import type { PolicyPool } from './policy-pool.js';
import { parseScope, scopeName } from './scope.js';
import type { SecretBox } from './secrets.js';
import type { KbsStore, LogAppend, Owner, PolicyScope } from './store/types.js';
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

const forbidden = (msg: string) => new ProtocolError(403, 'forbidden', msg);
const badToken = (msg: string) => new ProtocolError(401, 'bad-admin-token', msg);
const isAuditor = (p: AdminPrincipal) => p.role === 'auditor' || p.role === 'global-auditor';
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
      throw new ProtocolError(401, 'no-admin-token', 'send an admin token: Authorization: Bearer <JWT>');
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

  register(app: FastifyInstance): void {
    const auth = (req: FastifyRequest) => this.authenticate(req);

    app.get('/admin/v1/resources', async (req) => {
      const p = await auth(req);
      return { resources: await this.o.store.listResources(listFilter(p)) };
    });

    app.put<{ Params: { '*': string }; Querystring: { contentType?: string } }>(
      '/admin/v1/resources/*',
      async (req, reply) => {
        const p = await auth(req);
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

    app.post<{ Params: { '*': string } }>('/admin/v1/resources/*', async (req) => {
      const p = await auth(req);
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
    });

    app.delete<{ Params: { '*': string } }>('/admin/v1/resources/*', async (req, reply) => {
      const p = await auth(req);
      const path = req.params['*'];
      const { repository } = parseResourcePath(path);
      const tenant = await this.tenantFor(p, repository, true);
      const gone = await this.o.store.deleteResource(path, this.log(p, 'resource-delete', path, tenant, {}));
      if (!gone) throw new ProtocolError(404, 'unknown-resource', `resource ${path} does not exist`);
      return reply.code(204).send();
    });

    app.put<{ Body: { scope?: unknown; source?: unknown } }>('/admin/v1/policies', async (req) => {
      const p = await auth(req);
      const { scope, source } = req.body ?? {};
      const s = parseScope(scope);
      if (typeof source !== 'string' || source.trim() === '')
        throw new ProtocolError(400, 'bad-policy', 'source must be a CEL expression');
      try {
        compilePolicy(source);
      } catch (e) {
        // Refused when stored, not at release time: a typo must never lock a key away.
        throw new ProtocolError(400, 'bad-policy', e instanceof PolicyError ? e.message : String(e));
      }
      const tenant = await this.scopeOwner(p, s, true);
      return this.o.store.setPolicy(
        { scope: s, tenant, source, actor: `${p.role}:${p.subject}` },
        this.log(p, 'policy-set', scopeName(s), tenant, { source }),
      );
    });

    app.get('/admin/v1/policies', async (req) => {
      const p = await auth(req);
      return { policies: await this.o.store.listPolicies(listFilter(p)) };
    });

    app.post<{ Body: { token?: unknown; resource?: unknown } }>('/admin/v1/policy/evaluate', async (req) => {
      const p = await auth(req);
      const { token, resource } = req.body ?? {};
      if (typeof token !== 'string' || typeof resource !== 'string') {
        throw new ProtocolError(
          400,
          'bad-request',
          'send {"token": EAR JWT, "resource": "<repository>/<type>/<tag>"}',
        );
      }
      const r = parseResourcePath(resource);
      const tenant = await this.tenantFor(p, r.repository, false);
      const ear = await verifyEar(token, this.o.earPublicKey).catch((e: Error) => {
        throw new ProtocolError(400, 'bad-token', `token refused: ${e.message}`);
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
    });

    app.post<{ Body: Record<string, unknown> }>('/admin/v1/refvalues', async (req, reply) => {
      const p = await auth(req);
      if (isAuditor(p)) throw forbidden('auditors cannot change anything');
      const b = req.body ?? {};
      // A tenant admin adds its own tenant's; an admin names a tenant, or adds operator-wide values.
      let tenant: Owner;
      if (p.scope.kind === 'tenant') {
        if (b.tenant !== undefined && b.tenant !== p.scope.tenant)
          throw forbidden('a tenant admin adds reference values of its own tenant only');
        tenant = p.scope.tenant;
      } else if (b.tenant === undefined) {
        tenant = null;
      } else {
        const problem = tenantNameProblem(b.tenant);
        if (problem)
          throw new ProtocolError(400, 'bad-tenant', `${problem}; leave tenant out for operator-wide values`);
        tenant = b.tenant as string;
      }
      const values = Array.isArray(b.values) ? b.values : [];
      if (
        typeof b.tee !== 'string' ||
        typeof b.name !== 'string' ||
        values.length === 0 ||
        !values.every((v) => typeof v === 'string' && /^[0-9a-f]+$/.test(v))
      ) {
        throw new ProtocolError(
          400,
          'bad-refvalue',
          'send {"tee", "name", "values": [lower-case hex, …], "expiresAt"?, "note"?}',
        );
      }
      if (
        b.expiresAt !== undefined &&
        (typeof b.expiresAt !== 'string' || Number.isNaN(Date.parse(b.expiresAt)))
      ) {
        throw new ProtocolError(400, 'bad-refvalue', 'expiresAt must be an RFC 3339 time');
      }
      const rec = await this.o.store.addReferenceValue(
        {
          tenant,
          tee: b.tee,
          name: b.name,
          values: values as string[],
          ...(typeof b.expiresAt === 'string' ? { expiresAt: new Date(b.expiresAt).toISOString() } : {}),
          ...(typeof b.note === 'string' ? { note: b.note } : {}),
        },
        this.log(p, 'refvalue-add', `${b.tee}/${b.name}`, tenant, { values }),
      );
      return reply.code(201).send(rec);
    });

    app.get<{ Querystring: { tee?: string } }>('/admin/v1/refvalues', async (req) => {
      const p = await auth(req);
      const t = listFilter(p);
      return {
        refvalues: await this.o.store.listReferenceValues({
          ...(t !== undefined ? { tenant: t } : {}),
          ...(req.query.tee ? { tee: req.query.tee } : {}),
        }),
      };
    });

    app.post<{ Body: { tokenId?: unknown; expiresAt?: unknown; reason?: unknown } }>(
      '/admin/v1/tokens/revoke',
      async (req, reply) => {
        const p = await auth(req);
        if (p.role !== 'admin') throw forbidden('only admins revoke admin tokens');
        const { tokenId, expiresAt, reason } = req.body ?? {};
        if (typeof tokenId !== 'string' || tokenId === '' || tokenId.length > 128)
          throw new ProtocolError(400, 'bad-revocation', 'send {"tokenId": the token\'s jti, "reason"?}');
        if (expiresAt !== undefined && (typeof expiresAt !== 'string' || Number.isNaN(Date.parse(expiresAt))))
          throw new ProtocolError(400, 'bad-revocation', 'expiresAt must be an RFC 3339 time');
        if (reason !== undefined && (typeof reason !== 'string' || reason.length > 500))
          throw new ProtocolError(400, 'bad-revocation', 'reason must be text of at most 500 characters');
        const rec = await this.o.store.revokeAdminToken(
          {
            tokenId,
            actor: `${p.role}:${p.subject}`,
            ...(expiresAt !== undefined ? { expiresAt: new Date(expiresAt as string).toISOString() } : {}),
            ...(reason !== undefined ? { reason: reason as string } : {}),
          },
          this.log(p, 'admin-token-revoke', `admin-token:${tokenId}`, null, {
            ...(expiresAt !== undefined ? { expiresAt } : {}),
            ...(reason !== undefined ? { reason } : {}),
          }),
        );
        return reply.code(201).send(rec);
      },
    );

    app.get('/admin/v1/tokens/revoked', async (req) => {
      const p = await auth(req);
      if (p.scope.kind !== 'operator') throw forbidden('revocations are read by admins and global auditors');
      return { revoked: await this.o.store.listAdminTokenRevocations() };
    });

    app.get<{ Querystring: { from?: string; to?: string } }>('/admin/v1/log/entries', async (req) => {
      logReader(await auth(req));
      const size = await this.o.store.logSize();
      const { from, to } = logRange(req.query, size);
      const entries = await this.o.store.logEntries(from, to);
      return { size, entries: entries.map((e) => JSON.parse(new TextDecoder().decode(e.canonical))) };
    });

    app.get<{ Querystring: { from?: string; to?: string; proofs?: string } }>(
      '/admin/v1/log/bundle',
      async (req, reply) => {
        logReader(await auth(req));
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
        // still a 400; the rest is streamed as the client reads it (backpressure), each write resetting
        // the connection's idle timeout, so that no request timeout cuts a long export that progresses.
        let first: IteratorResult<string>;
        try {
          first = await lines.next();
        } catch (e) {
          if (e instanceof TranslogError) throw new ProtocolError(400, 'bad-range', e.message);
          throw e;
        }
        async function* all(): AsyncGenerator<string> {
          if (!first.done) yield first.value;
          yield* lines;
        }
        return reply.type('application/jsonl').send(Readable.from(all(), { objectMode: false }));
      },
    );

    app.post('/admin/v1/log/checkpoint', async (req) => {
      const p = await auth(req);
      if (p.role !== 'admin') throw forbidden('only admins sign checkpoints on demand');
      return { checkpoint: await this.o.checkpoint() };
    });
  }

  private value(body: unknown): Uint8Array {
    if (!(body instanceof Uint8Array))
      throw new ProtocolError(
        415,
        'unsupported-media-type',
        'send the resource value as application/octet-stream',
      );
    if (body.length === 0) throw new ProtocolError(400, 'empty-value', 'a resource value cannot be empty');
    if (body.length > this.o.maxResourceBytes)
      throw new ProtocolError(
        413,
        'value-too-large',
        `resource values are limited to ${this.o.maxResourceBytes} bytes`,
      );
    return new Uint8Array(body);
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

/** `from`/`to` query values as a valid half-open range of the log (defaults: everything). */
function logRange(q: { from?: string; to?: string }, size: number): { from: number; to: number } {
  const num = (v: string | undefined, dflt: number, what: string): number => {
    if (v === undefined) return dflt;
    if (!/^\d+$/.test(v)) throw new ProtocolError(400, 'bad-range', `${what} must be a non-negative integer`);
    return Number(v);
  };
  const from = num(q.from, 0, 'from');
  const to = num(q.to, size, 'to');
  if (from > to || to > size)
    throw new ProtocolError(
      400,
      'bad-range',
      `range [${from}, ${to}) is not within the log of ${size} entries`,
    );
  return { from, to };
}
