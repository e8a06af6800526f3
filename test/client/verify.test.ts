import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CollateralSource } from '../../src/attest/common/types.js';
import { issueEar } from '../../src/attest/ear/index.js';
import { type IssuedReport, SnpTestAuthority } from '../../src/attest/testing/snp.js';
import { confidentialFetch } from '../../src/client/fetch.js';
import { parseClientPolicy } from '../../src/client/policy.js';
import { verifyServer } from '../../src/client/verify.js';
import type { CpuAttester } from '../../src/tee/evidence/types.js';
import { toBase64Url, toHex } from '../../src/util/bytes.js';
import { type Harness, startHarness } from '../infer/harness.js';

/** A server in an SEV-SNP guest signed by the test authority: the real SNP verifier judges it. */
let authority: SnpTestAuthority;
let h: Harness;
let collateral: CollateralSource;
const chipId = crypto.getRandomValues(new Uint8Array(64));
const measurement = crypto.getRandomValues(new Uint8Array(48));
let first: IssuedReport | undefined;

beforeAll(async () => {
  authority = await SnpTestAuthority.create();
  const cpu: CpuAttester = {
    source: 'SNP test authority',
    insecure: false,
    async collect(reportData) {
      const rd = new Uint8Array(64);
      rd.set(reportData);
      const issued = await authority.issue({ reportData: rd, chipId, measurement });
      first ??= issued;
      return { kind: 'snp', evidence: issued.report };
    },
  };
  h = await startHarness({ tee: { cpu } });
  collateral = authority.collateral(first!);
});
afterAll(async () => {
  await h.server.close();
});

function options(policy: object) {
  return {
    collateral,
    trustAnchors: [authority.trustAnchor],
    policy: parseClientPolicy({ tees: ['snp'], ...policy }),
  };
}

describe('verifying a server in an SEV-SNP TEE', () => {
  it('accepts it with the default status and the expected measurement, then talks to it', async () => {
    // The test authority makes a new VCEK per report, so the collateral fits only the startup evidence.
    const f = confidentialFetch({
      url: h.server.url,
      ...options({ measurements: { measurement: [toHex(measurement)] }, fresh: false }),
    });
    const server = await f.server();
    expect(server.appraisal.status).toBe('affirming');
    expect(server.warnings).toEqual([]);
    const res = await f(`${h.server.url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny-llama', prompt: 'snp' }),
    });
    expect((await res.json()).choices[0].text).toBe(' snp done');
  });

  it('refuses another measurement, naming both', async () => {
    await expect(
      verifyServer(h.server.attestation, options({ measurements: { measurement: ['00'.repeat(48)] } })),
    ).rejects.toMatchObject({
      code: 'measurement',
      message: expect.stringContaining(toHex(measurement)),
    });
  });

  it('refuses a document whose models were edited after attestation (binding)', async () => {
    const doc = structuredClone(h.server.attestation);
    doc.identity.models[0]!.digest = `sha256:${'ee'.repeat(32)}`;
    await expect(verifyServer(doc, options({}))).rejects.toMatchObject({ code: 'binding' });
  });

  it('refuses tampered evidence (signature)', async () => {
    const doc = structuredClone(h.server.attestation);
    const raw = Buffer.from(doc.evidence.evidence, 'base64url');
    raw[0x90]! ^= 1; // inside the signed report body
    doc.evidence.evidence = toBase64Url(raw);
    await expect(verifyServer(doc, options({}))).rejects.toMatchObject({
      code: expect.stringMatching(/^(evidence|binding)$/),
    });
  });

  it('refuses a TEE kind the policy does not list before appraising anything', async () => {
    await expect(
      verifyServer(h.server.attestation, { ...options({}), policy: parseClientPolicy({ tees: ['tdx'] }) }),
    ).rejects.toMatchObject({
      code: 'tee-not-allowed',
    });
  });

  it('refuses evidence signed by another authority', async () => {
    const other = await SnpTestAuthority.create();
    await expect(
      verifyServer(h.server.attestation, { ...options({}), trustAnchors: [other.trustAnchor] }),
    ).rejects.toMatchObject({
      code: 'evidence',
    });
  });

  it("checks the key broker's EAR token when given the broker's key: same TEE accepted, another refused", async () => {
    const broker = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const o = options({ fresh: false });
    const { appraisal } = await verifyServer(h.server.attestation, o);
    const withEar = {
      ...structuredClone(h.server.attestation),
      ear: await issueEar(appraisal.submods, { signingKey: broker.privateKey }),
    };
    const ok = await verifyServer(withEar, { ...o, earKey: broker.publicKey });
    expect(ok.ear?.status).toBe('affirming');

    const other = structuredClone(appraisal.submods);
    other.cpu0!.claims.measurement = '11'.repeat(48);
    const elsewhere = { ...withEar, ear: await issueEar(other, { signingKey: broker.privateKey }) };
    await expect(verifyServer(elsewhere, { ...o, earKey: broker.publicKey })).rejects.toMatchObject({
      code: 'ear',
      message: expect.stringContaining('measurement'),
    });
    const tdx = structuredClone(appraisal.submods);
    tdx.cpu0!.kind = 'tdx';
    const otherKind = { ...withEar, ear: await issueEar(tdx, { signingKey: broker.privateKey }) };
    await expect(verifyServer(otherKind, { ...o, earKey: broker.publicKey })).rejects.toMatchObject({
      code: 'ear',
      message: expect.stringContaining('kind'),
    });
    const stranger = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    await expect(verifyServer(withEar, { ...o, earKey: stranger.publicKey })).rejects.toMatchObject({
      code: 'ear',
    });
  });
});
