/**
 * The whole KBS protocol against a real broker (SQLite store, HTTP on loopback): releases with the
 * sample TEE and with test-authority SEV-SNP and GPU evidence, and every refusal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveGpuNonce } from '../../src/attest/composite.js';
import { createNvidiaTestAuthority } from '../../src/attest/testing/nvidia.js';
import { SnpTestAuthority } from '../../src/attest/testing/snp.js';
import { KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { toBase64Url } from '../../src/util/bytes.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const SECRET = new TextEncoder().encode('the model key');

async function post(
  b: TestBroker,
  path: string,
  body: unknown,
  cookie?: string,
  contentType = 'application/json',
) {
  return fetch(new URL(path, b.url), {
    method: 'POST',
    headers: { 'content-type': contentType, ...(cookie ? { cookie } : {}) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function ecJwk() {
  const kp = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
  const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
  return { kty: 'EC', crv: 'P-256', x: j.x, y: j.y };
}

describe('KBS protocol with the sample TEE (dev mode)', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true, bearerTokens: true });
    const r = await b.call('PUT', '/admin/v1/resources/owner/models/kek1', await b.admin(), SECRET);
    expect(r.status).toBe(201);
  });
  afterAll(() => b.close());

  it('releases a resource as a JWE that only the TEE key opens', async () => {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(new TextDecoder().decode(await client.getResource('owner/models/kek1'))).toBe('the model key');
    const log = await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json();
    expect(log.entries.map((e: { kind: string }) => e.kind)).toContain('release');
    expect(b.lines.every((l) => l.startsWith('[DEV MODE'))).toBe(true);
  });

  it('also releases with the attestation token as a bearer token', async () => {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    const token = await client.token();
    const r = await fetch(new URL('/kbs/v0/resource/owner/models/kek1', b.url), {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(r.status).toBe(200);
    expect((await r.json()).protected).toBeTruthy();
  });

  it('refuses report data that does not bind the nonce and key', async () => {
    const client = new KbsClient({
      url: b.url,
      attester: await sampleAttester({ tamper: (rd) => rd.map((x, i) => (i === 0 ? x ^ 1 : x)) }),
    });
    await expect(client.getResource('owner/models/kek1')).rejects.toMatchObject({
      status: 401,
      type: 'attestation-report-data-mismatch',
    });
  });

  it('refuses a wrong nonce, a replayed nonce and an unknown session', async () => {
    const auth = await post(b, '/kbs/v0/auth', { version: '0.4.0', tee: 'sample' });
    const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
    const teePubkey = await ecJwk();
    const wrong = await post(
      b,
      '/kbs/v0/attest',
      {
        'runtime-data': { nonce: 'AAAA', 'tee-pubkey': teePubkey },
        'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
      },
      cookie,
    );
    expect(wrong.status).toBe(401);
    expect((await wrong.json()).type).toMatch(/nonce-mismatch/);

    // Refused evidence uses the nonce up: the same session cannot try again (Trustee would let it).
    const again = await post(b, '/kbs/v0/auth', { version: '0.4.0', tee: 'sample' });
    const refusedCookie = again.headers.get('set-cookie')!.split(';')[0]!;
    const { nonce } = await again.json();
    const refused = await post(
      b,
      '/kbs/v0/attest',
      {
        'runtime-data': { nonce, 'tee-pubkey': teePubkey },
        'tee-evidence': { primary_evidence: { svn: '1', report_data: '' }, additional_evidence: '' },
      },
      refusedCookie,
    );
    expect(refused.status).toBe(401);
    const replay = await post(
      b,
      '/kbs/v0/attest',
      {
        'runtime-data': { nonce, 'tee-pubkey': teePubkey },
        'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
      },
      refusedCookie,
    );
    expect(replay.status).toBe(401);
    expect((await replay.json()).type).toMatch(/nonce-used/);

    // An attested session asked again answers with its token, as Trustee's does, but only to the same
    // nonce and TEE key (test/kbs/trustee-interop.test.ts): another key gets nothing.
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    const token = await client.token();
    const session = (client as unknown as { session: { cookie: string } }).session.cookie;
    const reattest = await post(
      b,
      '/kbs/v0/attest',
      {
        'runtime-data': { nonce: 'x', 'tee-pubkey': teePubkey },
        'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
      },
      session,
    );
    expect(token).toBeTruthy();
    expect(reattest.status).toBe(401);
    expect((await reattest.json()).type).toMatch(/nonce-used/);

    const none = await fetch(new URL('/kbs/v0/resource/owner/models/kek1', b.url), {
      headers: { cookie: 'kbs-session-id=nope' },
    });
    expect(none.status).toBe(401);
  });

  it('refuses unusable TEE keys before looking at evidence', async () => {
    const auth = await post(b, '/kbs/v0/auth', { version: '0.4.0', tee: 'sample' });
    const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
    const { nonce } = await auth.json();
    for (const key of [
      { kty: 'EC', crv: 'P-384', x: 'AA', y: 'AA' },
      { kty: 'RSA', n: toBase64Url(new Uint8Array(128).fill(1)), e: 'AQAB' },
      { kty: 'oct', k: 'AAAA' },
      { ...(await ecJwk()), d: 'AAAA' },
    ]) {
      const r = await post(
        b,
        '/kbs/v0/attest',
        {
          'runtime-data': { nonce, 'tee-pubkey': key },
          'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
        },
        cookie,
      );
      expect(r.status).toBe(400);
      expect((await r.json()).type).toMatch(/unusable-key/);
    }
  });

  it('answers an unknown resource exactly like a refusal, and logs the real reason', async () => {
    const admin = await b.admin();
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    const refusal = async (path: string) => {
      const auth = await client.token();
      const r = await fetch(new URL(`/kbs/v0/resource/${path}`, b.url), {
        headers: { authorization: `Bearer ${auth}` },
      });
      return { status: r.status, type: r.headers.get('content-type'), body: await r.json() };
    };
    expect((await b.call('PUT', '/admin/v1/resources/owner/models/guarded', admin, SECRET)).status).toBe(201);
    expect(
      (
        await b.call('PUT', '/admin/v1/policies', admin, {
          scope: 'resource:owner/models/guarded',
          source: 'cpu.claims.measurement == "00"',
        })
      ).status,
    ).toBe(200);
    const missing = await refusal('owner/models/nope');
    const denied = await refusal('owner/models/guarded');
    expect(missing.status).toBe(403);
    expect(missing).toEqual(denied);
    const log = await (await b.call('GET', '/admin/v1/log/entries', admin)).json();
    const entry = log.entries.findLast(
      (e: { kind: string; subject: string }) => e.kind === 'denial' && e.subject === 'owner/models/nope',
    );
    expect(entry.details.reasons).toEqual(['unknown resource']);
  });

  it('denies by policy with a generic message and logs the reasons', async () => {
    const admin = await b.admin();
    const set = await b.call('PUT', '/admin/v1/policies', admin, {
      scope: 'resource:owner/models/locked',
      source: 'cpu.claims.measurement == "00"',
    });
    expect(set.status).toBe(200);
    expect((await b.call('PUT', '/admin/v1/resources/owner/models/locked', admin, SECRET)).status).toBe(201);
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    const err = await client.getResource('owner/models/locked').catch((e: KbsClientError) => e);
    expect(err).toBeInstanceOf(KbsClientError);
    expect((err as KbsClientError).status).toBe(403);
    expect((err as Error).message).toMatch(/denied by policy$/);
    const log = await (await b.call('GET', '/admin/v1/log/entries', admin)).json();
    const denial = log.entries.findLast((e: { kind: string }) => e.kind === 'denial');
    expect(denial.subject).toBe('owner/models/locked');
    expect(JSON.stringify(denial.details.reasons)).toMatch(/measurement/);
  });

  it('refuses a debug sample TEE even in dev mode', async () => {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester({ debug: true }) });
    await expect(client.getResource('owner/models/kek1')).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
  });

  it('refuses bad input with 4xx problem documents, never 500', async () => {
    const cases: [string, RequestInit, number][] = [
      [
        '/kbs/v0/auth',
        { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{not json' },
        400,
      ],
      ['/kbs/v0/auth', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[]' }, 400],
      ['/kbs/v0/auth', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hi' }, 415],
      [
        '/kbs/v0/auth',
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ version: '0.1.0', tee: 'sample' }),
        },
        400,
      ],
      [
        '/kbs/v0/auth',
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ version: '0.4.0', tee: 'quantum' }),
        },
        400,
      ],
      [
        '/kbs/v0/auth',
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: `{"a":"${'x'.repeat(2 * 1024 * 1024)}"}`,
        },
        413,
      ],
      [
        '/kbs/v0/attest',
        { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' },
        401,
      ],
      ['/kbs/v0/resource/a/b', { method: 'GET' }, 400],
      ['/kbs/v0/nothing', { method: 'GET' }, 404],
    ];
    for (const [path, init, status] of cases) {
      const r = await fetch(new URL(path, b.url), init);
      expect([path, r.status]).toEqual([path, status]);
      expect(r.headers.get('content-type')).toMatch(/problem\+json/);
      expect((await r.json()).status).toBe(status);
    }
  });
});

describe('attestation tokens as bearer credentials', () => {
  const resource = (b: TestBroker, headers: Record<string, string>) =>
    fetch(new URL('/kbs/v0/resource/owner/models/kek1', b.url), { headers });
  const entries = async (b: TestBroker) =>
    (await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json()).entries as {
      kind: string;
      details: { via?: string };
    }[];

  it('are refused by default: a published token makes no release and no log entry', async () => {
    const b = await testBroker({ devMode: true });
    try {
      expect(
        (await b.call('PUT', '/admin/v1/resources/owner/models/kek1', await b.admin(), SECRET)).status,
      ).toBe(201);
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      // The token an inference server publishes at /v1/attestation is this one.
      const published = await client.token();
      const before = (await entries(b)).length;
      const r = await resource(b, { authorization: `Bearer ${published}` });
      expect(r.status).toBe(401);
      expect((await r.json()).type).toMatch(/bearer-disabled$/);
      expect((await entries(b)).length).toBe(before);
      // The TEE's own session still works, also when a bearer token comes along.
      const cookie = (client as unknown as { session: { cookie: string } }).session.cookie;
      const own = await resource(b, { cookie, authorization: `Bearer ${published}` });
      expect(own.status).toBe(200);
      expect((await entries(b)).at(-1)).toMatchObject({ kind: 'release', details: { via: 'session' } });
    } finally {
      await b.close();
    }
  });

  it('are accepted with bearerTokens on, and the log says a token was presented', async () => {
    const b = await testBroker({ devMode: true, bearerTokens: true });
    try {
      expect(
        (await b.call('PUT', '/admin/v1/resources/owner/models/kek1', await b.admin(), SECRET)).status,
      ).toBe(201);
      const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
      expect((await resource(b, { authorization: `Bearer ${token}` })).status).toBe(200);
      expect((await entries(b)).at(-1)).toMatchObject({ kind: 'release', details: { via: 'bearer' } });
    } finally {
      await b.close();
    }
  });
});

describe('KBS protocol without dev mode', () => {
  it('refuses the sample TEE at auth', async () => {
    const b = await testBroker({ devMode: false });
    try {
      const r = await post(b, '/kbs/v0/auth', { version: '0.4.0', tee: 'sample' });
      expect(r.status).toBe(400);
      expect((await r.json()).detail).toMatch(/accepted only in dev mode/);
    } finally {
      await b.close();
    }
  });

  it('expires sessions', async () => {
    const b = await testBroker({ devMode: true, sessionTtlSeconds: 1 });
    try {
      const auth = await post(b, '/kbs/v0/auth', { version: '0.4.0', tee: 'sample' });
      const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
      await new Promise((r) => setTimeout(r, 1100));
      const r = await post(
        b,
        '/kbs/v0/attest',
        {
          'runtime-data': { nonce: 'x', 'tee-pubkey': await ecJwk() },
          'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
        },
        cookie,
      );
      expect(r.status).toBe(401);
      expect((await r.json()).type).toMatch(/session-expired/);
    } finally {
      await b.close();
    }
  });
});

describe('KBS protocol with test-authority SEV-SNP and GPU evidence', () => {
  let b: TestBroker;
  let snp: SnpTestAuthority;
  let gpu: Awaited<ReturnType<typeof createNvidiaTestAuthority>>;
  beforeAll(async () => {
    snp = await SnpTestAuthority.create();
    gpu = await createNvidiaTestAuthority();
    const probe = await snp.issue({});
    b = await testBroker(
      {},
      {
        collateral: snp.collateral(probe),
        trustAnchors: { snp: [snp.trustAnchor], nvidia: gpu.trustAnchors },
      },
    );
    expect(
      (await b.call('PUT', '/admin/v1/resources/owner/models/kek1', await b.admin(), SECRET)).status,
    ).toBe(201);
  });
  afterAll(() => b.close());

  const snpAttester = (gpus: number, o: { spliceGpu?: boolean; gpuMeasurementTamper?: boolean } = {}) => ({
    tee: 'snp',
    async primaryEvidence(reportData: Uint8Array) {
      const r = await snp.issue({ reportData });
      return { report: toBase64Url(r.report), vcek: toBase64Url(r.endorsementKey) };
    },
    async additionalEvidence(base: Uint8Array) {
      if (gpus === 0) return '';
      const list = [];
      for (let i = 0; i < gpus; i++) {
        const nonce = await deriveGpuNonce(o.spliceGpu ? new Uint8Array(48) : base, i);
        const measurements = gpu.defaultMeasurements();
        const report = await gpu.issueReport({ nonce, measurements });
        list.push(
          JSON.parse(
            new TextDecoder().decode(gpu.envelope(report, o.gpuMeasurementTamper ? { ccMode: 'off' } : {})),
          ),
        );
      }
      return JSON.stringify({ nvidia: { gpus: list } });
    },
  });

  it('releases to an SNP guest with two GPUs bound to its attestation', async () => {
    const client = new KbsClient({ url: b.url, attester: snpAttester(2) });
    expect(new TextDecoder().decode(await client.getResource('owner/models/kek1'))).toBe('the model key');
  });

  it('refuses GPU evidence spliced from another attestation', async () => {
    const client = new KbsClient({ url: b.url, attester: snpAttester(1, { spliceGpu: true }) });
    await expect(client.getResource('owner/models/kek1')).rejects.toMatchObject({
      status: 403,
      type: 'attestation-gpu-not-bound',
    });
  });

  it('denies a contraindicated GPU', async () => {
    const client = new KbsClient({ url: b.url, attester: snpAttester(1, { gpuMeasurementTamper: true }) });
    await expect(client.getResource('owner/models/kek1')).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
    const log = await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json();
    expect(JSON.stringify(log.entries.at(-1).details)).toMatch(/gpu0.*contraindicated/);
  });

  it('refuses the sample TEE and unknown TEE kinds outside dev mode', async () => {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    await expect(client.getResource('owner/models/kek1')).rejects.toMatchObject({ status: 400 });
  });
});
