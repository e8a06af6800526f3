/**
 * Tenant boundaries and admin tokens, as an outside attacker's report found them broken: reserved tenant
 * names (`default`, `*`, '') crossing into the operator's scope, an empty tenant claim acting as a
 * global auditor, repository squatting, and admin tokens without a bounded lifetime or revocation.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  principalOf,
  repositoryNamespace,
  signAdminToken,
  tenantNameProblem,
} from '../../src/kbs/tenancy.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import {
  adminToken,
  sampleAttester,
  type TestBroker,
  type TestKeys,
  testBroker,
  testKeys,
} from './helpers.js';
import { SQLITE_SCHEMA_V1, V1_ROWS } from './store/fixtures/schema-v1.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

describe('tenant names and repository namespaces', () => {
  it('refuses reserved, empty, wildcard and ambiguous tenant names', () => {
    for (const bad of [
      '',
      '*',
      'default',
      'operator',
      'global',
      'Acme',
      'acme-eu',
      'acme.eu',
      '1acme',
      '_acme',
      ' acme',
      'a'.repeat(64),
      undefined,
      null,
      7,
    ]) {
      expect([bad, tenantNameProblem(bad)]).toEqual([bad, expect.any(String)]);
    }
    for (const good of ['acme', 'acme_eu', 'a1', 'a'.repeat(63)])
      expect(tenantNameProblem(good)).toBeUndefined();
  });

  it('puts a repository in the namespace of the tenant its name starts with, else the operator', () => {
    expect(repositoryNamespace('acme')).toEqual({ kind: 'tenant', tenant: 'acme' });
    expect(repositoryNamespace('acme-models')).toEqual({ kind: 'tenant', tenant: 'acme' });
    expect(repositoryNamespace('acme.eu-west')).toEqual({ kind: 'tenant', tenant: 'acme' });
    for (const op of ['default', 'default-keys', 'operator-keys', 'Shared', '0keys', '_x', '-acme'])
      expect([op, repositoryNamespace(op)]).toEqual([op, { kind: 'operator' }]);
  });

  it('binds role and tenant claim together when a token is issued', async () => {
    const key = (await testKeys()).adminPrivateKey;
    const issue = (role: string, tenant?: string, ttlSeconds = 60) =>
      signAdminToken(
        key,
        { alg: 'EdDSA' },
        { role, ...(tenant !== undefined ? { tenant } : {}), subject: 's', ttlSeconds },
      );
    for (const [role, tenant] of [
      ['tenant-admin', 'default'],
      ['tenant-admin', '*'],
      ['tenant-admin', ''],
      ['tenant-admin', undefined],
      ['auditor', ''],
      ['auditor', undefined],
      ['admin', 'acme'],
      ['global-auditor', 'acme'],
      ['root', undefined],
    ] as const) {
      await expect(issue(role, tenant), `${role} ${tenant}`).rejects.toThrow(/tenant|role/);
    }
    await expect(issue('admin', undefined, 0)).rejects.toThrow(/lifetime/);
    const t = await issue('tenant-admin', 'acme');
    const claims = JSON.parse(Buffer.from(t.token.split('.')[1]!, 'base64url').toString());
    expect(claims).toMatchObject({ role: 'tenant-admin', tenant: 'acme', jti: t.tokenId });
    expect(claims.exp - claims.iat).toBe(60);
  });

  it('refuses a token lifetime above the maximum and an iat in the future', () => {
    const now = 1_000_000;
    const base = { role: 'admin', sub: 's', jti: 'j', iat: now, exp: now + 60 };
    expect(principalOf(base, { maxLifetimeSeconds: 60, now }).scope).toEqual({ kind: 'operator' });
    expect(() => principalOf({ ...base, exp: now + 61 }, { maxLifetimeSeconds: 60, now })).toThrow(
      /exceeds the broker's maximum of 60 s/,
    );
    expect(() =>
      principalOf({ ...base, iat: now + 3600, exp: now + 3630 }, { maxLifetimeSeconds: 60, now }),
    ).toThrow(/in the future/);
  });
});

describe('tenant boundary over the admin API', () => {
  let keys: TestKeys;
  let b: TestBroker;
  let admin: string;
  let acme: string;
  let globex: string;
  const tok = (role: string, tenant?: string, o: Parameters<typeof adminToken>[3] = {}) =>
    adminToken(keys.adminPrivateKey, role, tenant, o);

  beforeAll(async () => {
    keys = await testKeys();
    b = await testBroker({ devMode: true, maxAdminTokenLifetimeSeconds: 3600 }, { keys });
    admin = await b.admin();
    acme = await b.admin('tenant-admin', 'acme');
    globex = await b.admin('tenant-admin', 'globex');
    // What the operator keeps for itself, and what each tenant has.
    expect((await b.call('PUT', '/admin/v1/resources/Shared/keys/k', admin, enc('operator'))).status).toBe(
      201,
    );
    expect((await b.call('PUT', '/admin/v1/resources/globex/keys/k', globex, enc('globex'))).status).toBe(
      201,
    );
  });
  afterAll(() => b.close());

  it('refuses tokens naming a reserved or malformed tenant, or a tenant on an operator role (401)', async () => {
    const cases: [string, string][] = [
      ['tenant-admin default', await tok('tenant-admin', 'default')],
      ['tenant-admin *', await tok('tenant-admin', '*')],
      ['tenant-admin ""', await tok('tenant-admin', '')],
      ['tenant-admin operator', await tok('tenant-admin', 'operator')],
      ['tenant-admin Acme', await tok('tenant-admin', 'Acme')],
      ['tenant-admin acme-eu', await tok('tenant-admin', 'acme-eu')],
      ['tenant-admin 7', await tok('tenant-admin', undefined, { claims: { tenant: 7 } })],
      ['auditor ""', await tok('auditor', '')],
      ['auditor without tenant', await tok('auditor')],
      ['admin with tenant', await tok('admin', 'acme')],
      ['global-auditor with tenant', await tok('global-auditor', 'acme')],
    ];
    for (const [name, token] of cases) {
      for (const [method, path, body] of [
        ['GET', '/admin/v1/resources'],
        ['GET', '/admin/v1/log/entries'],
        ['POST', '/admin/v1/refvalues', { tee: 'sample', name: 'measurement', values: ['00'] }],
      ] as const) {
        const r = await b.call(method, path, token, body);
        expect([name, path, r.status]).toEqual([name, path, 401]);
        expect((await r.json()).type).toMatch(/bad-admin-token/);
      }
    }
  });

  it("keeps an admin's repositories from every tenant: no list, re-key or policy", async () => {
    const meta = (await (await b.call('GET', '/admin/v1/resources', admin)).json()).resources;
    expect(meta.find((r: { path: string }) => r.path === 'Shared/keys/k')).toMatchObject({ tenant: null });
    const listed = (await (await b.call('GET', '/admin/v1/resources', acme)).json()).resources;
    expect(listed.map((r: { path: string }) => r.path)).not.toContain('Shared/keys/k');
    for (const [method, path, body] of [
      ['POST', '/admin/v1/resources/Shared/keys/k', enc('re-keyed')],
      ['PUT', '/admin/v1/resources/Shared/keys/new', enc('x')],
      ['DELETE', '/admin/v1/resources/Shared/keys/k'],
      ['PUT', '/admin/v1/policies', { scope: 'repository:Shared', source: 'true' }],
      ['PUT', '/admin/v1/policies', { scope: 'resource:Shared/keys/k', source: 'true' }],
    ] as const) {
      expect([method, path, (await b.call(method, path, acme, body)).status]).toEqual([method, path, 403]);
    }
    const c = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(dec(await c.getResource('Shared/keys/k'))).toBe('operator');
  });

  it("lets only admins write operator-wide reference values; a tenant's never judge another tenant", async () => {
    const NOT_IT = 'ab'.repeat(48);
    const own = await b.call('POST', '/admin/v1/refvalues', acme, {
      tee: 'sample',
      name: 'measurement',
      values: [NOT_IT],
    });
    expect(own.status).toBe(201);
    expect(await own.json()).toMatchObject({ tenant: 'acme' });
    const claim = await b.call('POST', '/admin/v1/refvalues', acme, {
      tenant: '*',
      tee: 'sample',
      name: 'measurement',
      values: [NOT_IT],
    });
    expect(claim.status).toBe(403);
    for (const tenant of ['*', '', 'default', null]) {
      const r = await b.call('POST', '/admin/v1/refvalues', admin, {
        tenant,
        tee: 'sample',
        name: 'measurement',
        values: ['00'],
      });
      expect([tenant, r.status]).toEqual([tenant, 400]);
    }
    // acme's value does not match the sample TEE, yet globex's and the operator's keys are released.
    const c = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(dec(await c.getResource('globex/keys/k'))).toBe('globex');
    expect(dec(await c.getResource('Shared/keys/k'))).toBe('operator');
    // The tenant sees its own values only; the admin's operator-wide ones have no tenant.
    const opWide = await b.call('POST', '/admin/v1/refvalues', admin, {
      tee: 'tdx',
      name: 'mr_td',
      values: ['00'],
    });
    expect(await opWide.json()).toMatchObject({ tenant: null });
    const seen = (await (await b.call('GET', '/admin/v1/refvalues', acme)).json()).refvalues;
    expect(seen.map((r: { tenant: string }) => r.tenant)).toEqual(['acme']);
  });

  it('lets no tenant create a repository in another tenant’s namespace, even one not created yet', async () => {
    for (const repo of ['bigcorp', 'bigcorp-models', 'bigcorp.eu', 'Shared2', 'default']) {
      const r = await b.call('PUT', `/admin/v1/resources/${repo}/keys/k`, acme, enc('squat'));
      expect([repo, r.status]).toEqual([repo, 403]);
      expect((await r.json()).detail).toMatch(/outside tenant acme's namespace/);
    }
    for (const policy of ['repository:bigcorp', 'resource:bigcorp/keys/k']) {
      const r = await b.call('PUT', '/admin/v1/policies', acme, { scope: policy, source: 'true' });
      expect([policy, r.status]).toEqual([policy, 403]);
    }
    const bigcorp = await b.admin('tenant-admin', 'bigcorp');
    expect((await b.call('PUT', '/admin/v1/resources/bigcorp/keys/k', bigcorp, enc('b'))).status).toBe(201);
    for (const repo of ['acme', 'acme-models', 'acme.eu'])
      expect((await b.call('PUT', `/admin/v1/resources/${repo}/keys/k`, acme, enc('a'))).status).toBe(201);
    // An admin creating a name in a tenant's namespace creates it for that tenant.
    expect((await b.call('PUT', '/admin/v1/resources/bigcorp-out/keys/k', admin, enc('o'))).status).toBe(201);
    const theirs = (await (await b.call('GET', '/admin/v1/resources', bigcorp)).json()).resources;
    expect(theirs.map((r: { path: string }) => r.path)).toEqual(['bigcorp-out/keys/k', 'bigcorp/keys/k']);
    // So the name tells a sealer whose key a kbs:/// URI is.
    const all = (await (await b.call('GET', '/admin/v1/resources', admin)).json()).resources;
    for (const r of all as { repository: string; tenant: string | null }[]) {
      const ns = repositoryNamespace(r.repository);
      expect([r.repository, r.tenant]).toEqual([r.repository, ns.kind === 'tenant' ? ns.tenant : null]);
    }
  });

  it('makes global audit a role of its own: reads everything, writes nothing', async () => {
    const global = await b.admin('global-auditor');
    expect((await b.call('GET', '/admin/v1/log/entries', global)).status).toBe(200);
    expect(
      (await (await b.call('GET', '/admin/v1/resources', global)).json()).resources.length,
    ).toBeGreaterThan(2);
    expect((await b.call('PUT', '/admin/v1/resources/Shared/keys/z', global, enc('x'))).status).toBe(403);
    const scoped = await b.admin('auditor', 'globex');
    const seen = (await (await b.call('GET', '/admin/v1/resources', scoped)).json()).resources;
    expect(seen.map((r: { path: string }) => r.path)).toEqual(['globex/keys/k']);
    expect((await b.call('GET', '/admin/v1/log/entries', scoped)).status).toBe(403);
  });

  it('refuses admin tokens without id, iat or exp, or living longer than the configured maximum', async () => {
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, string, RegExp][] = [
      ['no jti', await tok('admin', undefined, { jti: null }), /"jti"/],
      ['no iat', await tok('admin', undefined, { issuedAt: null }), /"iat"/],
      ['no exp', await tok('admin', undefined, { expiresAt: null }), /"exp"/],
      ['too long', await tok('admin', undefined, { issuedAt: now, expiresAt: now + 3601 }), /exceeds/],
      ['iat ahead', await tok('admin', undefined, { issuedAt: now + 7200, expiresAt: now + 7300 }), /future/],
    ];
    for (const [name, token, detail] of cases) {
      const r = await b.call('GET', '/admin/v1/resources', token);
      expect([name, r.status]).toEqual([name, 401]);
      expect((await r.json()).detail, name).toMatch(detail);
    }
    expect(
      (
        await b.call(
          'GET',
          '/admin/v1/resources',
          await tok('admin', undefined, { issuedAt: now, expiresAt: now + 3600 }),
        )
      ).status,
    ).toBe(200);
  });
});

describe('admin-token revocation', () => {
  it('refuses a revoked token from then on, logs the revocation, and keeps it across a restart', async () => {
    const keys = await testKeys();
    let b = await testBroker({ devMode: true }, { keys });
    try {
      const admin = await b.admin();
      const victim = await adminToken(keys.adminPrivateKey, 'tenant-admin', 'acme', { jti: 'stolen-1' });
      expect((await b.call('GET', '/admin/v1/resources', victim)).status).toBe(200);
      // Only admins revoke; only the operator scope lists revocations.
      expect((await b.call('POST', '/admin/v1/tokens/revoke', victim, { tokenId: 'stolen-1' })).status).toBe(
        403,
      );
      expect((await b.call('GET', '/admin/v1/tokens/revoked', victim)).status).toBe(403);
      for (const bad of [
        {},
        { tokenId: '' },
        { tokenId: 'x', expiresAt: 'soon' },
        { tokenId: 'x', reason: 5 },
      ])
        expect((await b.call('POST', '/admin/v1/tokens/revoke', admin, bad)).status).toBe(400);

      const r = await b.call('POST', '/admin/v1/tokens/revoke', admin, {
        tokenId: 'stolen-1',
        reason: 'laptop lost',
      });
      expect(r.status).toBe(201);
      expect(await r.json()).toMatchObject({
        tokenId: 'stolen-1',
        reason: 'laptop lost',
        actor: 'admin:test',
      });
      const refused = await b.call('GET', '/admin/v1/resources', victim);
      expect(refused.status).toBe(401);
      expect((await refused.json()).detail).toMatch(/stolen-1 has been revoked/);
      expect((await b.call('POST', '/admin/v1/tokens/revoke', admin, { tokenId: 'stolen-1' })).status).toBe(
        409,
      );
      const log = await (await b.call('GET', '/admin/v1/log/entries', admin)).json();
      expect(log.entries.at(-1)).toMatchObject({
        kind: 'admin-token-revoke',
        tenant: '',
        actor: 'admin:test',
        subject: 'admin-token:stolen-1',
        details: { reason: 'laptop lost' },
      });
      // Other tokens of the same tenant still work.
      expect((await b.call('GET', '/admin/v1/resources', await b.admin('tenant-admin', 'acme'))).status).toBe(
        200,
      );

      await b.close();
      b = await testBroker({ devMode: true }, { keys });
      expect((await b.call('GET', '/admin/v1/resources', victim)).status).toBe(401);
      const listed = await (
        await b.call('GET', '/admin/v1/tokens/revoked', await b.admin('global-auditor'))
      ).json();
      expect(listed.revoked.map((x: { tokenId: string }) => x.tokenId)).toEqual(['stolen-1']);
    } finally {
      await b.close();
    }
  });
});

describe('upgrading a version 1 database', () => {
  it("warns at every start while reference values of v1's tenant `default` lie inert", async () => {
    const keys = await testKeys();
    const db = join(keys.dir, 'v1.db');
    const old = new Database(db);
    old.exec(SQLITE_SCHEMA_V1);
    old.exec(V1_ROWS("x'0102'"));
    old.pragma('user_version = 1');
    old.close();
    for (let start = 0; start < 2; start++) {
      const b = await testBroker({ db: `sqlite:${db}` }, { keys });
      try {
        const warning = b.lines.filter((l) => l.includes('judge nothing since schema 2'));
        expect(warning).toHaveLength(1);
        expect(warning[0]).toMatch(/WARNING: 1 reference value set\(s\) of version 1's tenant "default"/);
        expect(warning[0]).toContain('tdx/mr_td');
      } finally {
        await b.close();
      }
    }
  });

  it('says nothing on a database without such values', async () => {
    const b = await testBroker();
    try {
      expect(b.lines.some((l) => l.includes('judge nothing'))).toBe(false);
    } finally {
      await b.close();
    }
  });
});
