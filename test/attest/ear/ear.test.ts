import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { type Appraisal, AttestationError } from '../../../src/attest/common/types.js';
import {
  EAR_PROFILE,
  earDisagreement,
  issueEar,
  TRUSTEE_EAR_PROFILE,
  verifyEar,
} from '../../../src/attest/ear/index.js';
import { createSampleAttester, sampleVerifier } from '../../../src/attest/sample/index.js';

async function keys() {
  return (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
}

const gpu: Appraisal = {
  kind: 'nvidia',
  status: 'affirming',
  trustVector: { hardware: 2, executables: 2, instance_identity: 2 },
  claims: { hwmodel: 'GH100' },
  findings: [{ check: 'rim', status: 'affirming', message: 'all measurements match' }],
};

const at = new Date('2026-03-01T12:00:00Z');

async function refusal(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

describe('EAR', () => {
  it('issues the draft-ietf-rats-ear shape and verifies it back', async () => {
    const kp = await keys();
    const cpu = await sampleVerifier.appraiseEvidence(
      await (await createSampleAttester()).attest(new Uint8Array(32)),
      { at, collateral: { get: async () => undefined } },
    );
    const token = await issueEar(
      { cpu0: cpu, gpu0: gpu },
      {
        signingKey: kp.privateKey,
        build: 'test',
        nonce: new Uint8Array(16).fill(7),
        issuedAt: at,
        kid: 'k1',
      },
    );
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'ES256', typ: 'JWT', kid: 'k1' });
    // biome-ignore lint/suspicious/noExplicitAny: reading an untyped JSON payload in a test
    const raw = decodeJwt(token) as Record<string, any>;
    expect(raw.eat_profile).toBe(EAR_PROFILE);
    expect(raw.iat).toBe(at.getTime() / 1000);
    expect(raw['ear.verifier-id']).toEqual({ developer: 'https://cloister.dev', build: 'test' });
    expect(raw.eat_nonce).toBe('BwcHBwcHBwcHBwcHBwcHBw');
    expect(raw.submods.cpu0['ear.status']).toBe('warning');
    expect(raw.submods.cpu0['cloister.insecure']).toBe(true);
    expect(raw.submods.cpu0['ear.trustworthiness-vector']).toMatchObject({ hardware: 32 });
    expect(raw.submods.cpu0['cloister.reasons'][0]).toMatchObject({ check: 'insecure', status: 'warning' });
    expect(raw.submods.gpu0['ear.trustworthiness-vector']).toEqual({
      'instance-identity': 2,
      executables: 2,
      hardware: 2,
    });
    expect(raw.submods.gpu0['cloister.reasons']).toEqual([]);
    expect(raw.submods.gpu0['cloister.insecure']).toBeUndefined();
    expect(raw.submods.gpu0['ear.veraison.annotated-evidence']).toEqual({ hwmodel: 'GH100' });

    const r = await verifyEar(token, kp.publicKey, { at, nonce: new Uint8Array(16).fill(7) });
    expect(r.status).toBe('warning');
    expect(r.submods.cpu0!.insecure).toBe(true);
    expect(r.submods.cpu0!.kind).toBe('sample');
    expect(r.submods.gpu0).toMatchObject({
      status: 'affirming',
      insecure: false,
      trustVector: gpu.trustVector,
    });
    expect(r.verifierId.build).toBe('test');
    // JWK keys work as well as CryptoKeys (browser callers often hold JWKs).
    const jwk = await crypto.subtle.exportKey('jwk', kp.publicKey);
    expect((await verifyEar(token, jwk, { at })).status).toBe('warning');
  });

  it('never lets an insecure appraisal read as affirming', async () => {
    const kp = await keys();
    const lying: Appraisal = { ...gpu, kind: 'sample', insecure: true };
    const token = await issueEar({ cpu0: lying }, { signingKey: kp.privateKey, issuedAt: at });
    const r = await verifyEar(token, kp.publicKey, { at });
    expect(r.submods.cpu0!.status).toBe('warning');
    expect(r.submods.cpu0!.reasons[0]!.check).toBe('insecure');
  });

  it('refuses a bad signature, a wrong key, expiry, a wrong profile, a wrong nonce, alg none', async () => {
    const kp = await keys();
    const token = await issueEar(
      { gpu0: gpu },
      { signingKey: kp.privateKey, issuedAt: at, nonce: 'abcdefgh' },
    );
    const [h, p, s] = token.split('.');
    const flipped = `${h}.${p}.${s!.startsWith('A') ? 'B' : 'A'}${s!.slice(1)}`;
    expect((await refusal(verifyEar(flipped, kp.publicKey, { at }))).code).toBe('ear-bad-signature');
    expect((await refusal(verifyEar(token, (await keys()).publicKey, { at }))).code).toBe(
      'ear-bad-signature',
    );
    const later = new Date(at.getTime() + 2 * 3600_000);
    expect((await refusal(verifyEar(token, kp.publicKey, { at: later }))).code).toBe('ear-expired');
    const earlier = new Date(at.getTime() - 3600_000);
    expect((await refusal(verifyEar(token, kp.publicKey, { at: earlier }))).code).toBe('ear-not-yet-valid');
    expect((await refusal(verifyEar(token, kp.publicKey, { at, nonce: 'other-nonce' }))).code).toBe(
      'ear-nonce-mismatch',
    );
    const other = await new SignJWT({
      eat_profile: 'tag:example.com,2024:other',
      iat: at.getTime() / 1000,
      submods: {},
    })
      .setProtectedHeader({ alg: 'ES256' })
      .sign(kp.privateKey);
    expect((await refusal(verifyEar(other, kp.publicKey, { at }))).code).toBe('ear-bad-profile');
    const unsigned = `${btoa('{"alg":"none"}').replace(/=/g, '')}.${p}.`;
    expect((await refusal(verifyEar(unsigned, kp.publicKey, { at }))).code).toBe('ear-malformed');
  });

  it('refuses a contradictory or malformed submodule', async () => {
    const kp = await keys();
    const sign = (submods: unknown) =>
      new SignJWT({
        eat_profile: EAR_PROFILE,
        iat: at.getTime() / 1000,
        exp: at.getTime() / 1000 + 60,
        'ear.verifier-id': { developer: 'x', build: 'y' },
        submods: submods as Record<string, unknown>,
      })
        .setProtectedHeader({ alg: 'ES256' })
        .sign(kp.privateKey);
    const cases = [
      { cpu0: { 'ear.status': 'affirming', 'cloister.insecure': true } },
      { cpu0: { 'ear.status': 'great' } },
      { cpu0: { 'ear.status': 'affirming', 'ear.trustworthiness-vector': { hardware: 300 } } },
      {},
    ];
    for (const c of cases) {
      expect((await refusal(verifyEar(await sign(c), kp.publicKey, { at }))).code, JSON.stringify(c)).toBe(
        'ear-malformed',
      );
    }
  });

  it('refuses a token without exp unless the caller opts in', async () => {
    const kp = await keys();
    const token = await new SignJWT({
      eat_profile: EAR_PROFILE,
      iat: at.getTime() / 1000,
      'ear.verifier-id': { developer: 'x', build: 'y' },
      submods: { gpu0: { 'ear.status': 'affirming' } },
    })
      .setProtectedHeader({ alg: 'ES256' })
      .sign(kp.privateKey);
    expect((await refusal(verifyEar(token, kp.publicKey, { at }))).code).toBe('ear-no-expiry');
    expect((await verifyEar(token, kp.publicKey, { at, allowNoExpiry: true })).expiresAt).toBeUndefined();
  });

  it('allows seconds of clock skew after exp, not a minute', async () => {
    const kp = await keys();
    const token = await issueEar(
      { gpu0: gpu },
      { signingKey: kp.privateKey, issuedAt: at, lifetimeSeconds: 60 },
    );
    const pastExpiry = (s: number) => new Date(at.getTime() + (60 + s) * 1000);
    expect((await verifyEar(token, kp.publicKey, { at: pastExpiry(3) })).status).toBe('affirming');
    expect((await refusal(verifyEar(token, kp.publicKey, { at: pastExpiry(30) }))).code).toBe('ear-expired');
    expect(
      (await verifyEar(token, kp.publicKey, { at: pastExpiry(30), clockToleranceSeconds: 45 })).status,
    ).toBe('affirming');
  });

  it("reads Trustee's EAR profile: TEE key, init-data and TEE kind where its broker puts them", async () => {
    const kp = await keys();
    const other = await keys();
    const iat = at.getTime() / 1000;
    const teePubkey = { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x: 'eA', y: 'eQ' };
    const headerJwk = { ...(await crypto.subtle.exportKey('jwk', other.publicKey)), alg: 'ES256' };
    const sign = (annotated: Record<string, unknown>, status = 'affirming') =>
      new SignJWT({
        eat_profile: TRUSTEE_EAR_PROFILE,
        iat,
        exp: iat + 300,
        iss: 'CoCo-Attestation-Service',
        'ear.verifier-id': {
          developer: 'https://confidentialcontainers.org',
          build: 'attestation-service 0.1.0',
        },
        submods: {
          cpu0: {
            'ear.status': status,
            'ear.trustworthiness-vector': { 'instance-identity': 0, configuration: 2, hardware: 2 },
            'ear.appraisal-policy-id': 'default',
            'ear.veraison.annotated-evidence': annotated,
          },
        },
      })
        // Trustee embeds its signing key in the header; only the key the caller gives counts.
        .setProtectedHeader({
          alg: 'ES256',
          typ: 'JWT',
          jwk: headerJwk,
        })
        .sign(kp.privateKey);
    const tdx = await sign({
      init_data: 'ab'.repeat(48),
      init_data_claims: { 'aa.toml': { token_configs: {} } },
      report_data: 'cd'.repeat(64),
      runtime_data_claims: { nonce: 'n0nce', 'tee-pubkey': teePubkey },
      tdx: { quote: { body: { mr_td: 'AA'.repeat(48), rtmr_0: '11'.repeat(48) } } },
    });
    expect((await refusal(verifyEar(tdx, other.publicKey, { at }))).code).toBe('ear-bad-signature');
    const ear = await verifyEar(tdx, kp.publicKey, { at });
    expect(ear.profile).toBe(TRUSTEE_EAR_PROFILE);
    expect(ear.teePubkey).toEqual(teePubkey);
    expect(ear.initData).toEqual({ digest: 'ab'.repeat(48), claims: { 'aa.toml': { token_configs: {} } } });
    expect(ear.submods.cpu0).toMatchObject({ kind: 'tdx', status: 'affirming', insecure: false });
    const appraisal = (claims: Record<string, unknown>, kind: Appraisal['kind'] = 'tdx'): Appraisal => ({
      kind,
      status: 'affirming',
      trustVector: {},
      claims,
      findings: [],
    });
    expect(earDisagreement(ear, appraisal({ mr_td: 'aa'.repeat(48), rtmr0: '11'.repeat(48) }))).toEqual([]);
    expect(earDisagreement(ear, appraisal({ mr_td: 'bb'.repeat(48) }))).toEqual(['mr_td']);
    expect(earDisagreement(ear, appraisal({}, 'snp'))).toEqual(['kind']);
    // A measurement the TEE has but the Trustee token does not carry where Trustee puts it: no match.
    expect(earDisagreement(ear, appraisal({ mr_td: 'aa'.repeat(48), rtmr1: '22'.repeat(48) }))).toEqual([
      'rtmr1',
    ]);

    // Trustee's policy may call its sample TEE affirming; Cloister never does.
    const sample = await verifyEar(await sign({ sample: { svn: '1' }, report_data: '' }), kp.publicKey, {
      at,
    });
    expect(sample.submods.cpu0).toMatchObject({ kind: 'sample', status: 'warning', insecure: true });
    expect(sample.teePubkey).toBeUndefined();
    // Trustee puts a device's claims next to the CPU's: the CPU still names the kind, and sample
    // evidence anywhere makes the result insecure (a sample CPU with a GPU was affirming, kind unset).
    const withGpu = await verifyEar(await sign({ tdx: {}, nvidia: { x: 1 } }), kp.publicKey, { at });
    expect(withGpu.submods.cpu0).toMatchObject({ kind: 'tdx', status: 'affirming', insecure: false });
    for (const annotated of [
      { sample: { svn: '1' }, nvidia: { x: 1 } },
      { tdx: {}, sampledevice: {} },
    ]) {
      const mixed = await verifyEar(await sign(annotated), kp.publicKey, { at });
      expect(mixed.submods.cpu0, JSON.stringify(annotated)).toMatchObject({
        status: 'warning',
        insecure: true,
      });
      expect(mixed.status).toBe('warning');
    }
    // A TEE Cloister does not know names no kind, so it agrees with nothing.
    const cca = await verifyEar(await sign({ cca: {} }), kp.publicKey, { at });
    expect(earDisagreement(cca, appraisal({}))).toEqual(['kind']);
  });
});
