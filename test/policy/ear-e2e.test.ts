import { beforeAll, describe, expect, it } from 'vitest';
import type { Appraisal } from '../../src/attest/common/types.js';
import { issueEar, verifyEar } from '../../src/attest/ear/index.js';
import { createSampleAttester, sampleVerifier } from '../../src/attest/sample/index.js';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  evaluatePolicy,
  explain,
  MemoryReferenceValueStore,
  type PolicyContext,
  policyInputFromEar,
  referenceValuesFor,
} from '../../src/policy/index.js';

// End to end: evidence → appraisal → signed EAR → verified EAR → policy input → decision.
const at = new Date('2026-03-01T12:00:00Z');
const reportData = new Uint8Array(64).fill(0x5a);
const ctx: PolicyContext = {
  resource: { uri: 'kbs:///acme/models/llama', repository: 'acme', type: 'models', tag: 'llama' },
  tenant: 'acme',
  now: at,
};
const policy = compilePolicy(DEFAULT_RESOURCE_POLICY);
let keys: CryptoKeyPair;

beforeAll(async () => {
  keys = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
});

/** The same path the key broker takes: sign the appraisals, verify the token, build the input. */
async function roundTrip(submods: Record<string, Appraisal>) {
  const token = await issueEar(submods, { signingKey: keys.privateKey, issuedAt: at });
  return verifyEar(token, keys.publicKey, { at });
}

async function sampleAppraisal(options: {
  debug?: boolean;
  measurement?: string;
  accept?: Record<string, string[]>;
}) {
  const attester = await createSampleAttester({
    ...(options.debug !== undefined ? { debug: options.debug } : {}),
    ...(options.measurement !== undefined ? { measurement: options.measurement } : {}),
  });
  return sampleVerifier.appraiseEvidence(await attester.attest(reportData), {
    at,
    collateral: { get: async () => undefined },
    expectedReportData: reportData,
    ...(options.accept ? { policy: { referenceValues: options.accept } } : {}),
  });
}

// Stand-ins for appraisals of real hardware (their verifiers live in other modules).
const tdx: Appraisal = {
  kind: 'tdx',
  status: 'affirming',
  trustVector: { hardware: 2, configuration: 2, executables: 2, instance_identity: 2 },
  claims: { mr_td: 'ab'.repeat(48), tcb_status: 'UpToDate' },
  findings: [],
};
const h100 = (status: Appraisal['status']): Appraisal => ({
  kind: 'nvidia',
  status,
  trustVector: { hardware: status === 'affirming' ? 2 : 96 },
  claims: { hwmodel: 'GH100' },
  findings:
    status === 'affirming'
      ? []
      : [{ check: 'rim', status, message: 'measurement index 5 does not match the RIM' }],
});

describe('policy over real EAR tokens', () => {
  it('allows an affirming TDX CPU with affirming GPUs, and a pinned MRTD', async () => {
    const ear = await roundTrip({ cpu0: tdx, gpu0: h100('affirming'), gpu1: h100('affirming') });
    const i = policyInputFromEar(ear, ctx);
    expect(evaluatePolicy(policy, i)).toEqual({ allow: true, reasons: [] });
    expect(i).toMatchObject({ tenant: 'acme', dev_mode: false, now: at });
    const pinned = compilePolicy(
      `tee == "tdx" && cpu.claims.mr_td == "${'ab'.repeat(48)}" && resource.repository == tenant`,
    );
    expect(evaluatePolicy(pinned, i).allow).toBe(true);
  });

  it('denies when one GPU of the token is contraindicated, with the verifier finding in the reasons', async () => {
    const ear = await roundTrip({ cpu0: tdx, gpu0: h100('affirming'), gpu1: h100('contraindicated') });
    const d = evaluatePolicy(policy, policyInputFromEar(ear, ctx));
    expect(d.allow).toBe(false);
    expect(d.publicMessage).toBe('denied by policy');
    expect(d.reasons).toContain(
      'attestation: gpu1 (nvidia) is contraindicated — rim (contraindicated): measurement index 5 does not match the RIM',
    );
  });

  it('refuses the sample TEE unless dev mode is on', async () => {
    const ear = await roundTrip({ cpu0: await sampleAppraisal({}) });
    expect(ear.submods.cpu0!.status).toBe('warning');
    const refused = explain(policy, policyInputFromEar(ear, ctx));
    expect(refused.allow).toBe(false);
    expect(refused.conjuncts.filter((c) => c.outcome === 'false').map((c) => c.line)).toEqual([2, 4, 5]);
    expect(refused.attestation[0]!.reasons[0]).toMatch(
      /^insecure \(warning\): sample is a software-only TEE/,
    );
    expect(evaluatePolicy(policy, policyInputFromEar(ear, { ...ctx, devMode: true })).allow).toBe(true);
  });

  it('refuses a sample TEE in debug mode even in dev mode', async () => {
    const ear = await roundTrip({ cpu0: await sampleAppraisal({ debug: true }) });
    expect(ear.submods.cpu0!.status).toBe('contraindicated');
    expect(evaluatePolicy(policy, policyInputFromEar(ear, { ...ctx, devMode: true })).allow).toBe(false);
  });

  it('refuses a token without cpu0', async () => {
    const ear = await roundTrip({ gpu0: h100('affirming') });
    const d = evaluatePolicy(policy, policyInputFromEar(ear, ctx));
    expect(d.allow).toBe(false);
    expect(d.reasons[0]).toBe('failed (line 1:1): "cpu0" in submods');
  });

  it('uses stored reference values in appraisal: a measurement not in force is refused, even in dev mode', async () => {
    let now = new Date('2026-02-01T00:00:00Z');
    const store = new MemoryReferenceValueStore({ now: () => now });
    const good = '11'.repeat(48);
    await store.add({
      tenant: 'acme',
      tee: 'sample',
      name: 'measurement',
      values: [good.toUpperCase()],
      expiresAt: new Date('2026-04-01T00:00:00Z'),
    });
    const dev = { ...ctx, devMode: true };
    const decide = async (measurement: string, when: Date) => {
      const accept = await referenceValuesFor(store, { tenant: 'acme', tee: 'sample', at: when });
      const ear = await roundTrip({ cpu0: await sampleAppraisal({ measurement, accept }) });
      return evaluatePolicy(policy, policyInputFromEar(ear, dev));
    };
    expect((await decide(good, at)).allow).toBe(true);
    const other = await decide('22'.repeat(48), at);
    expect(other.allow).toBe(false);
    expect(other.reasons.join('\n')).toMatch(/measurement (2{96}) is not among the 1 reference value/);
    // After expiry the name accepts nothing: the good measurement is refused too, not left unjudged.
    expect((await decide(good, new Date('2026-04-02T00:00:00Z'))).allow).toBe(false);
    // A new version replaces the old one.
    now = new Date('2026-02-15T00:00:00Z');
    await store.add({ tenant: 'acme', tee: 'sample', name: 'measurement', values: ['22'.repeat(48)] });
    expect((await decide(good, at)).allow).toBe(false);
    expect((await decide('22'.repeat(48), at)).allow).toBe(true);
    // Appraising as of a time before the new version uses the old one.
    expect((await decide(good, new Date('2026-02-10T00:00:00Z'))).allow).toBe(true);
  });
});
