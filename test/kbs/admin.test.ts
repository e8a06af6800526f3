/**
 * Admin API security and behaviour over HTTP: the disabled API, every kind of bad token, tenant
 * isolation, the auditor's read-only role, secret values never leaving the broker, policy validation and
 * explanation, reference values (versioned, mismatch, expiry) and resource rotation and deletion.
 */
import { exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { adminToken, sampleAttester, type TestBroker, testBroker, testKeys } from './helpers.js';

const enc = (s: string) => new TextEncoder().encode(s);

/** One request per admin route (method, path, body). */
const ROUTES: [string, string, (Uint8Array | object)?][] = [
  ['GET', '/admin/v1/resources'],
  ['PUT', '/admin/v1/resources/acme/keys/k1', enc('v')],
  ['POST', '/admin/v1/resources/acme/keys/k1', enc('v')],
  ['DELETE', '/admin/v1/resources/acme/keys/k1'],
  ['PUT', '/admin/v1/policies', { scope: 'default', source: 'true' }],
  ['GET', '/admin/v1/policies'],
  ['POST', '/admin/v1/policy/evaluate', { token: 'x', resource: 'acme/keys/k1' }],
  ['POST', '/admin/v1/refvalues', { tee: 'sample', name: 'measurement', values: ['00'] }],
  ['GET', '/admin/v1/refvalues'],
  ['GET', '/admin/v1/log/entries'],
  ['GET', '/admin/v1/log/bundle'],
  ['POST', '/admin/v1/log/checkpoint'],
];

describe('admin API without admin keys', () => {
  it('answers 403 on every route, with or without a token', async () => {
    const keys = await testKeys();
    const b = await testBroker({ adminKeysFile: undefined }, { keys });
    try {
      const token = await adminToken(keys.adminPrivateKey);
      for (const [method, path, body] of ROUTES) {
        for (const t of [token, '']) {
          const r = await b.call(method, path, t, body);
          expect([method, path, r.status]).toEqual([method, path, 403]);
          expect((await r.json()).detail).toMatch(/admin API is disabled/);
        }
      }
    } finally {
      await b.close();
    }
  });
});

describe('admin tokens', () => {
  let b: TestBroker;
  let key: CryptoKey;
  beforeAll(async () => {
    const keys = await testKeys();
    key = keys.adminPrivateKey;
    b = await testBroker({}, { keys });
  });
  afterAll(() => b.close());

  it('refuses a missing, expired, mis-addressed, forged, role-less or tenant-less token with 401', async () => {
    const other = (await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true })).privateKey;
    const past = Math.floor(Date.now() / 1000) - 60;
    const cases: [string, string, RegExp][] = [
      ['none', '', /send an admin token/],
      ['garbage', 'not.a.jwt', /admin token refused/],
      ['expired', await adminToken(key, 'admin', undefined, { expiresAt: past }), /"exp"/],
      ['audience', await adminToken(key, 'admin', undefined, { audience: 'kbs' }), /"aud"/],
      ['signature', await adminToken(other, 'admin'), /admin token refused/],
      ['role', await adminToken(key, 'root'), /role must be/],
      ['no role', await adminToken(key, ''), /role must be/],
      ['tenant-admin without tenant', await adminToken(key, 'tenant-admin'), /tenant claim/],
    ];
    for (const [name, token, detail] of cases) {
      for (const [method, path, body] of [ROUTES[0]!, ROUTES[1]!]) {
        const r = await b.call(method, path, token, body);
        expect([name, r.status]).toEqual([name, 401]);
        expect((await r.json()).detail, name).toMatch(detail);
      }
    }
    // A forged signature made by flipping a byte of a good token.
    const good = await adminToken(key);
    const flipped = `${good.slice(0, -3)}${good.at(-3) === 'A' ? 'B' : 'A'}${good.slice(-2)}`;
    expect((await b.call('GET', '/admin/v1/resources', flipped)).status).toBe(401);
    expect((await b.call('GET', '/admin/v1/resources', good)).status).toBe(200);
  });

  it('accepts an ES256 admin key as well as EdDSA', async () => {
    const keys = await testKeys();
    const es = await generateKeyPair('ES256', { extractable: true });
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      keys.adminKeysFile,
      JSON.stringify({ keys: [{ ...(await exportJWK(es.publicKey)), alg: 'ES256' }] }),
    );
    const b2 = await testBroker({}, { keys });
    try {
      const { SignJWT } = await import('jose');
      const t = await new SignJWT({ role: 'global-auditor' })
        .setProtectedHeader({ alg: 'ES256' })
        .setSubject('es')
        .setAudience('cloister-kbs-admin')
        .setIssuedAt()
        .setJti('es-1')
        .setExpirationTime('1m')
        .sign(es.privateKey);
      expect((await b2.call('GET', '/admin/v1/resources', t)).status).toBe(200);
    } finally {
      await b2.close();
    }
  });
});

describe('tenants, auditors and secret values', () => {
  const SECRET_A = 'acme-secret-4f1c9e';
  const SECRET_B = 'globex-secret-77d2aa';
  let b: TestBroker;
  /** Every admin response body seen in this block, scanned for secret bytes at the end. */
  const bodies: string[] = [];
  const call = async (method: string, path: string, token: string, body?: Uint8Array | object) => {
    const r = await b.call(method, path, token, body);
    const text = await r.text();
    bodies.push(text);
    return { status: r.status, text, json: () => JSON.parse(text) };
  };
  let tenantA: string;
  let tenantB: string;
  let auditor: string;
  let admin: string;

  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    tenantA = await b.admin('tenant-admin', 'acme');
    tenantB = await b.admin('tenant-admin', 'globex');
    auditor = await b.admin('global-auditor');
    admin = await b.admin();
    expect((await call('PUT', '/admin/v1/resources/acme/keys/k1', tenantA, enc(SECRET_A))).status).toBe(201);
    expect((await call('PUT', '/admin/v1/resources/globex/keys/k1', tenantB, enc(SECRET_B))).status).toBe(
      201,
    );
  });
  afterAll(() => b.close());

  it("keeps a tenant admin out of another tenant's repository", async () => {
    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    const attempts: [string, string, (Uint8Array | object)?][] = [
      ['PUT', '/admin/v1/resources/globex/keys/k1', enc('overwrite')],
      ['PUT', '/admin/v1/resources/globex/keys/new', enc('sneak in')],
      ['POST', '/admin/v1/resources/globex/keys/k1', enc('rotate')],
      ['DELETE', '/admin/v1/resources/globex/keys/k1'],
      ['PUT', '/admin/v1/policies', { scope: 'repository:globex', source: 'true' }],
      ['PUT', '/admin/v1/policies', { scope: 'resource:globex/keys/k1', source: 'true' }],
      ['POST', '/admin/v1/policy/evaluate', { token, resource: 'globex/keys/k1' }],
    ];
    for (const [method, path, body] of attempts) {
      const r = await call(method, path, tenantA, body);
      expect([method, path, r.status]).toEqual([method, path, 403]);
      expect(r.json().detail).toMatch(/another tenant/);
    }
    const def = await call('PUT', '/admin/v1/policies', tenantA, { scope: 'default', source: 'true' });
    expect(def.status).toBe(403);
    expect(def.json().detail).toMatch(/only admins/);
    // The other tenant's key is unchanged and still released.
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(new TextDecoder().decode(await client.getResource('globex/keys/k1'))).toBe(SECRET_B);
  });

  it('lists only the tenant’s own resources, policies and reference values', async () => {
    expect(
      (await call('PUT', '/admin/v1/policies', tenantA, { scope: 'repository:acme', source: 'true' })).status,
    ).toBe(200);
    expect(
      (await call('PUT', '/admin/v1/policies', tenantB, { scope: 'repository:globex', source: 'true' }))
        .status,
    ).toBe(200);
    expect(
      (await call('POST', '/admin/v1/refvalues', tenantB, { tee: 'sample', name: 'x', values: ['00'] }))
        .status,
    ).toBe(201);
    const res = (await call('GET', '/admin/v1/resources', tenantA)).json().resources;
    expect(res.map((r: { path: string }) => r.path)).toEqual(['acme/keys/k1']);
    const pol = (await call('GET', '/admin/v1/policies', tenantA)).json().policies;
    expect(pol.map((p: { tenant: string }) => p.tenant)).toEqual(['acme']);
    expect((await call('GET', '/admin/v1/refvalues', tenantA)).json().refvalues).toEqual([]);
    const all = (await call('GET', '/admin/v1/resources', admin)).json().resources;
    expect(all.map((r: { path: string }) => r.path).sort()).toEqual(['acme/keys/k1', 'globex/keys/k1']);
    // The log is for admins and auditors.
    expect((await call('GET', '/admin/v1/log/entries', tenantA)).status).toBe(403);
  });

  it('lets an auditor read metadata and the log but change nothing', async () => {
    for (const path of [
      '/admin/v1/resources',
      '/admin/v1/policies',
      '/admin/v1/refvalues',
      '/admin/v1/log/entries',
      '/admin/v1/log/bundle',
    ]) {
      expect([path, (await call('GET', path, auditor)).status]).toEqual([path, 200]);
    }
    expect((await call('GET', '/admin/v1/resources', auditor)).json().resources).toHaveLength(2);
    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    const ev = await call('POST', '/admin/v1/policy/evaluate', auditor, { token, resource: 'acme/keys/k1' });
    expect(ev.status).toBe(200);
    expect(ev.json().allow).toBe(true);
    const writes: [string, string, (Uint8Array | object)?][] = [
      ['PUT', '/admin/v1/resources/acme/keys/k1', enc('x')],
      ['PUT', '/admin/v1/resources/fresh/keys/k1', enc('x')],
      ['POST', '/admin/v1/resources/acme/keys/k1', enc('x')],
      ['DELETE', '/admin/v1/resources/acme/keys/k1'],
      ['PUT', '/admin/v1/policies', { scope: 'repository:acme', source: 'true' }],
      ['PUT', '/admin/v1/policies', { scope: 'default', source: 'true' }],
      ['POST', '/admin/v1/refvalues', { tee: 'sample', name: 'measurement', values: ['00'] }],
      ['POST', '/admin/v1/log/checkpoint'],
    ];
    const size = (await call('GET', '/admin/v1/log/entries', auditor)).json().size;
    for (const [method, path, body] of writes) {
      expect([method, path, (await call(method, path, auditor, body)).status]).toEqual([method, path, 403]);
    }
    expect((await call('GET', '/admin/v1/log/entries', auditor)).json().size).toBe(size);
    expect((await call('GET', '/admin/v1/resources', admin)).json().resources).toHaveLength(2);
  });

  it('never returns a resource value from any admin route', async () => {
    for (const [method, path, body] of ROUTES) {
      if (method === 'GET') await call(method, path, admin, body);
    }
    await call('GET', '/admin/v1/log/bundle?proofs=all', admin);
    await call('GET', '/admin/v1/log/entries', admin);
    await call('POST', '/admin/v1/resources/acme/keys/k1', admin, enc(SECRET_A));
    await call('PUT', '/admin/v1/resources/acme/keys/k2?contentType=text/plain', admin, enc(SECRET_A));
    expect(bodies.length).toBeGreaterThan(30);
    const forms = (s: string) => {
      const bytes = enc(s);
      const b64 = btoa(String.fromCharCode(...bytes));
      return [
        s,
        b64,
        b64.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_'),
        Buffer.from(bytes).toString('hex'),
      ];
    };
    for (const text of bodies) {
      for (const f of [...forms(SECRET_A), ...forms(SECRET_B)]) expect(text).not.toContain(f);
    }
  });
});

describe('policies', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    const admin = await b.admin();
    for (const p of ['owner/keys/open', 'owner/keys/locked'])
      expect((await b.call('PUT', `/admin/v1/resources/${p}`, admin, enc('v'))).status).toBe(201);
    const set = await b.call('PUT', '/admin/v1/policies', admin, {
      scope: 'resource:owner/keys/locked',
      source: 'dev_mode\n&& cpu.claims.measurement == "00"',
    });
    expect(set.status).toBe(200);
  });
  afterAll(() => b.close());

  it('refuses a CEL syntax error with 400 and its position, and keeps the old policy', async () => {
    const admin = await b.admin();
    const r = await b.call('PUT', '/admin/v1/policies', admin, {
      scope: 'resource:owner/keys/locked',
      source: 'dev_mode &&\n  cpu.claims.measurement == ',
    });
    expect(r.status).toBe(400);
    const p = await r.json();
    expect(p.type).toMatch(/bad-policy/);
    expect(p.detail).toMatch(/policy-syntax at line 2, column \d+/);
    const list = (await (await b.call('GET', '/admin/v1/policies', admin)).json()).policies;
    expect(list.find((x: { scope: { path?: string } }) => x.scope.path === 'owner/keys/locked').version).toBe(
      1,
    );
    for (const bad of [
      { scope: 'default', source: '' },
      { scope: 'everything', source: 'true' },
      { source: 'true' },
    ]) {
      expect((await b.call('PUT', '/admin/v1/policies', admin, bad)).status).toBe(400);
    }
  });

  it('explains allow and deny for a real attestation token, reasons and clauses', async () => {
    const admin = await b.admin();
    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    const ev = async (resource: string) =>
      b.call('POST', '/admin/v1/policy/evaluate', admin, { token, resource }).then((r) => r.json());
    const allow = await ev('owner/keys/open');
    expect(allow).toMatchObject({ allow: true, reasons: [], policyScope: 'built-in' });
    expect(allow.clauses.length).toBeGreaterThan(1);
    expect(allow.clauses.every((c: { outcome: string }) => c.outcome === 'true')).toBe(true);
    const deny = await ev('owner/keys/locked');
    expect(deny).toMatchObject({ allow: false, policyScope: 'resource:owner/keys/locked' });
    expect(deny.reasons.join(' ')).toMatch(/cpu\.claims\.measurement == "00"/);
    expect(deny.clauses).toEqual([
      { source: 'dev_mode', outcome: 'true' },
      { source: 'cpu.claims.measurement == "00"', outcome: 'false' },
    ]);
    const forged = await b.call('POST', '/admin/v1/policy/evaluate', admin, {
      token: `${token.slice(0, -4)}AAAA`,
      resource: 'owner/keys/open',
    });
    expect(forged.status).toBe(400);
  });
});

describe('reference values and resource versions', () => {
  const ZERO = '00'.repeat(48);
  const OTHER = 'ab'.repeat(48);
  let b: TestBroker;
  let admin: string;
  const client = async (measurement = ZERO) =>
    new KbsClient({ url: b.url, attester: await sampleAttester({ measurement }) });
  const lastDenial = async () => {
    const log = await (await b.call('GET', '/admin/v1/log/entries', admin)).json();
    return log.entries.findLast((e: { kind: string }) => e.kind === 'denial');
  };
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    admin = await b.admin();
    const t = await b.admin('tenant-admin', 'refs');
    expect((await b.call('PUT', '/admin/v1/resources/refs/keys/k', t, enc('refs value'))).status).toBe(201);
    expect((await b.call('PUT', '/admin/v1/resources/rot/keys/k', admin, enc('version one'))).status).toBe(
      201,
    );
  });
  afterAll(() => b.close());

  it('adds versioned reference values; a mismatching claim is denied with the reason logged', async () => {
    const add = (values: string[], extra: object = {}) =>
      b.call('POST', '/admin/v1/refvalues', admin, {
        tenant: 'refs',
        tee: 'sample',
        name: 'measurement',
        values,
        ...extra,
      });
    const v1 = await add([OTHER]);
    expect(v1.status).toBe(201);
    expect(await v1.json()).toMatchObject({ version: 1, tenant: 'refs', values: [OTHER] });
    await expect((await client(ZERO)).getResource('refs/keys/k')).rejects.toMatchObject({ status: 403 });
    const denial = await lastDenial();
    expect(denial.subject).toBe('refs/keys/k');
    expect(denial.details.reasons.join(' ')).toMatch(
      new RegExp(`measurement ${ZERO} is not a reference value for sample/measurement`),
    );
    const v2 = await add([OTHER, ZERO], { note: 'new build' });
    expect(await v2.json()).toMatchObject({ version: 2 });
    expect(new TextDecoder().decode(await (await client(ZERO)).getResource('refs/keys/k'))).toBe(
      'refs value',
    );
    const listed = (await (await b.call('GET', '/admin/v1/refvalues?tee=sample', admin)).json()).refvalues;
    expect(listed.map((r: { version: number }) => r.version).sort()).toEqual([1, 2]);
    // Other tenants are not judged by this tenant's values.
    expect(new TextDecoder().decode(await (await client(OTHER)).getResource('rot/keys/k'))).toBe(
      'version one',
    );
  });

  it('fails closed when the newest reference value has expired', async () => {
    const r = await b.call('POST', '/admin/v1/refvalues', admin, {
      tenant: 'refs',
      tee: 'sample',
      name: 'measurement',
      values: [ZERO],
      expiresAt: new Date(Date.now() - 60_000).toISOString(),
    });
    expect(r.status).toBe(201);
    await expect((await client(ZERO)).getResource('refs/keys/k')).rejects.toMatchObject({ status: 403 });
    expect((await lastDenial()).details.reasons.join(' ')).toMatch(/sample\/measurement has expired/);
    const bad = await b.call('POST', '/admin/v1/refvalues', admin, {
      tee: 'sample',
      name: 'measurement',
      values: ['NOT HEX'],
    });
    expect(bad.status).toBe(400);
  });

  it('rotates a resource to a new version the client then receives, and deletes it', async () => {
    const rot = await b.call('POST', '/admin/v1/resources/rot/keys/k', admin, enc('version two'));
    expect(rot.status).toBe(200);
    expect(await rot.json()).toMatchObject({ path: 'rot/keys/k', version: 2, size: 11 });
    expect(new TextDecoder().decode(await (await client()).getResource('rot/keys/k'))).toBe('version two');
    const log = await (await b.call('GET', '/admin/v1/log/entries', admin)).json();
    expect(log.entries.at(-1)).toMatchObject({
      kind: 'release',
      subject: 'rot/keys/k',
      details: { version: 2 },
    });
    expect((await b.call('POST', '/admin/v1/resources/rot/keys/none', admin, enc('x'))).status).toBe(404);
    expect((await b.call('DELETE', '/admin/v1/resources/rot/keys/k', admin)).status).toBe(204);
    expect((await b.call('DELETE', '/admin/v1/resources/rot/keys/k', admin)).status).toBe(404);
    await expect((await client()).getResource('rot/keys/k')).rejects.toMatchObject({ status: 403 });
  });
});
