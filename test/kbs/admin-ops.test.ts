/**
 * The operator's admin verbs beyond put/set/add: removing a policy or a set of reference values,
 * reassigning a repository, and the public keys the broker publishes. Each change is one log entry;
 * each refusal (auditors, another tenant, a name that would lie about its owner) changes nothing.
 */
import { decodeProtectedHeader, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyEar } from '../../src/attest/index.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const enc = (s: string) => new TextEncoder().encode(s);

describe('admin operations', () => {
  let b: TestBroker;
  let admin: string;
  let acme: string;
  const kinds = async () => {
    const r = await b.call('GET', '/admin/v1/log/entries', admin);
    return ((await r.json()) as { entries: { kind: string; tenant: string; details: object }[] }).entries;
  };
  const status = async (p: Promise<Response>) => (await p).status;

  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    admin = await b.admin();
    acme = await b.admin('tenant-admin', 'acme');
    expect((await b.call('PUT', '/admin/v1/resources/acme-models/key/k1', acme, enc('k'))).status).toBe(201);
    expect((await b.call('PUT', '/admin/v1/resources/Shared/key/k1', admin, enc('k'))).status).toBe(201);
  });
  afterAll(() => b?.close());

  it('policy rm removes every version of a scope; the next scope applies; tenancy holds', async () => {
    const scope = 'resource:acme-models/key/k1';
    for (const source of ['true', 'false'])
      expect((await b.call('PUT', '/admin/v1/policies', acme, { scope, source })).status).toBe(200);
    const q = `/admin/v1/policies?scope=${encodeURIComponent(scope)}`;
    expect(await status(b.call('DELETE', q, await b.admin('auditor', 'acme')))).toBe(403);
    expect(await status(b.call('DELETE', q, await b.admin('tenant-admin', 'bigcorp')))).toBe(403);
    expect(await status(b.call('DELETE', '/admin/v1/policies?scope=default', acme))).toBe(403);
    expect(await status(b.call('DELETE', '/admin/v1/policies?scope=nonsense', acme))).toBe(400);
    const r = await b.call('DELETE', q, acme);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ scope, deleted: 2 });
    const again = await b.call('DELETE', q, acme);
    expect(again.status).toBe(404);
    expect(((await again.json()) as { detail: string }).detail).toBe(`no policy is set for scope ${scope}`);
    const policies = (await (await b.call('GET', '/admin/v1/policies', admin)).json()) as {
      policies: unknown[];
    };
    expect(policies.policies).toEqual([]);
    expect((await kinds()).filter((e) => e.kind === 'policy-delete')).toEqual([
      expect.objectContaining({ tenant: 'acme', subject: scope }),
    ]);
  });

  it('refvalue rm removes one owner’s set; tenant admins their own, admins any', async () => {
    const add = (token: string, body: object) => b.call('POST', '/admin/v1/refvalues', token, body);
    expect((await add(acme, { tee: 'tdx', name: 'mr_td', values: ['aa'] })).status).toBe(201);
    expect((await add(acme, { tee: 'tdx', name: 'mr_td', values: ['bb'] })).status).toBe(201);
    expect((await add(admin, { tee: 'tdx', name: 'mr_td', values: ['cc'] })).status).toBe(201);
    const q = '/admin/v1/refvalues?tee=tdx&name=mr_td';
    expect(await status(b.call('DELETE', `${q}&tenant=bigcorp`, acme))).toBe(403);
    expect(await status(b.call('DELETE', q, await b.admin('global-auditor')))).toBe(403);
    expect(await status(b.call('DELETE', `${q}&tenant=default`, admin))).toBe(400);
    expect(await status(b.call('DELETE', '/admin/v1/refvalues?tee=tdx', admin))).toBe(400);
    const r = await b.call('DELETE', q, acme);
    expect(await r.json()).toEqual({ tee: 'tdx', name: 'mr_td', tenant: 'acme', deleted: 2 });
    expect(await status(b.call('DELETE', q, acme))).toBe(404);
    const left = (await (await b.call('GET', '/admin/v1/refvalues', admin)).json()) as {
      refvalues: { tenant: string | null }[];
    };
    expect(left.refvalues.map((v) => v.tenant)).toEqual([null]);
    expect(await (await b.call('DELETE', q, admin)).json()).toMatchObject({ tenant: null, deleted: 1 });
    expect((await kinds()).filter((e) => e.kind === 'refvalue-delete')).toHaveLength(2);
  });

  it('repository assign: admins only, into the namespace the name says unless told otherwise', async () => {
    const put = (token: string, repo: string, body: object) =>
      b.call('PUT', `/admin/v1/repositories/${repo}/owner`, token, body);
    expect(await status(put(acme, 'Shared', { tenant: 'acme' }))).toBe(403);
    expect(await status(put(await b.admin('global-auditor'), 'Shared', { tenant: 'acme' }))).toBe(403);
    expect(await status(put(admin, 'Shared', { tenant: 'default' }))).toBe(400);
    expect(await status(put(admin, 'Unknown', { tenant: null }))).toBe(404);
    expect(await status(put(admin, 'Shared', { tenant: null }))).toBe(409);
    const lie = await put(admin, 'Shared', { tenant: 'acme' });
    expect(lie.status).toBe(400);
    expect(((await lie.json()) as { detail: string }).detail).toMatch(
      /repository Shared is in the operator's namespace; giving it to tenant acme makes its name say the wrong owner/,
    );
    const r = await put(admin, 'Shared', { tenant: 'acme', outsideNamespace: true });
    expect(await r.json()).toEqual({ repository: 'Shared', from: null, to: 'acme' });
    // Now acme's: its tenant admin sees and changes it, and the operator's name no longer reaches it.
    const listed = (await (await b.call('GET', '/admin/v1/resources', acme)).json()) as {
      resources: { path: string }[];
    };
    expect(listed.resources.map((x) => x.path)).toEqual(['Shared/key/k1', 'acme-models/key/k1']);
    expect(await status(b.call('POST', '/admin/v1/resources/Shared/key/k1', acme, enc('v2')))).toBe(200);
    expect(await (await put(admin, 'Shared', { tenant: null })).json()).toMatchObject({ from: 'acme' });
    expect(await status(b.call('POST', '/admin/v1/resources/Shared/key/k1', acme, enc('v3')))).toBe(403);
    expect((await kinds()).filter((e) => e.kind === 'repository-assign')).toEqual([
      expect.objectContaining({
        tenant: 'acme',
        details: { to: 'acme', from: null, outsideNamespace: true },
      }),
      expect.objectContaining({ tenant: '', details: { to: null, from: 'acme' } }),
    ]);
  });

  it('publishes the EAR key (with the kid every EAR carries) and the log verifier key, unauthenticated', async () => {
    const r = await fetch(new URL('/.well-known/cloister-kbs', b.url));
    expect(r.status).toBe(200);
    const keys = (await r.json()) as {
      ear: { keys: { kid: string; d?: string }[] };
      log: { origin: string; verifierKey: string };
    };
    expect(keys.log).toEqual({ origin: 'cloister-kbs/log', verifierKey: b.logVerifierKey });
    const [jwk] = keys.ear.keys;
    expect(jwk).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    expect(jwk!.d).toBeUndefined();
    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    expect(decodeProtectedHeader(token).kid).toBe(jwk!.kid);
    await expect(verifyEar(token, jwk as JsonWebKey)).resolves.toBeTruthy();
    await expect(verifyEar(token, (await importJWK(jwk!, 'ES256')) as CryptoKey)).resolves.toBeTruthy();
  });
});
