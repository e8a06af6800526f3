import { calculateJwkThumbprint } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  createDefaultRegistry,
  createSampleAttester,
  issueEar,
  offlineSource,
  sampleVerifier,
} from '../../src/attest/index.js';
import {
  attestedReportData,
  createAttestedSigner,
  signStatement,
  verifyAttestedEnvelope,
} from '../../src/tee/attested-receipt.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import { fromBase64, fromHex, toBase64, toHex, utf8 } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import {
  type DsseEnvelope,
  es256Signer,
  IN_TOTO_PAYLOAD_TYPE,
  IN_TOTO_STATEMENT_TYPE,
  type InTotoStatement,
  signEnvelope,
} from '../../src/wire/dsse.js';

const JOB = 'a1'.repeat(32);
const options = () => ({
  registry: createDefaultRegistry(),
  at: new Date(),
  collateral: { get: async () => undefined },
});
const statement = (): InTotoStatement<{ what: string }> => ({
  _type: IN_TOTO_STATEMENT_TYPE,
  subject: [{ name: 'out.sealed', digest: { sha256: 'cd'.repeat(32) } }],
  predicateType: 'https://example.com/p/v1',
  predicate: { what: 'a test' },
});

/** The envelope's payload replaced by `edit(statement)`, re-signed with `key` (a forger's own key). */
async function resign(
  env: DsseEnvelope,
  key: CryptoKey,
  edit: (s: Record<string, unknown>) => Record<string, unknown>,
): Promise<DsseEnvelope> {
  const s = JSON.parse(utf8.decode(fromBase64(env.payload)));
  return signEnvelope(IN_TOTO_PAYLOAD_TYPE, canonicalizeBytes(edit(s)), [es256Signer(key)]);
}

describe('attested receipts (DSSE)', () => {
  it('binds a fresh key and the context into the evidence; a signed statement verifies offline', async () => {
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    expect(signer.keyid).toBe(await calculateJwkThumbprint(signer.publicJwk, 'sha256'));
    expect(signer.attestation.reportData).toBe(
      toHex(await attestedReportData(signer.publicJwk, fromHex(JOB))),
    );
    expect(signer.attestation.context).toBe(JOB);
    expect(signer.insecure).toBe(true);
    const env = await signStatement(statement(), signer, { ear: null });
    expect(env.payloadType).toBe(IN_TOTO_PAYLOAD_TYPE);
    expect(env.signatures).toEqual([{ keyid: signer.keyid, sig: expect.any(String) }]);
    const v = await verifyAttestedEnvelope(JSON.stringify(env), {
      ...options(),
      predicateType: 'https://example.com/p/v1',
      context: fromHex(JOB),
    });
    expect(v.appraisal).toMatchObject({ kind: 'sample', insecure: true });
    expect(v.statement.predicate).toMatchObject({
      what: 'a test',
      attestation: { kind: 'sample', ear: null },
    });
    expect(v.keyid).toBe(signer.keyid);
    expect(toHex(v.context)).toBe(JOB);
    expect(v.ear).toBeUndefined();
  });

  it('another context gives another report data; an unexpected context is refused (receipt-context)', async () => {
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    const other = await attestedReportData(signer.publicJwk, fromHex('b2'.repeat(32)));
    expect(toHex(other)).not.toBe(signer.attestation.reportData);
    const env = await signStatement(statement(), signer);
    await expect(
      verifyAttestedEnvelope(env, { ...options(), context: fromHex('b2'.repeat(32)) }),
    ).rejects.toMatchObject({ code: 'receipt-context' });
  });

  it('a context rewritten in the receipt no longer matches the evidence (receipt-binding)', async () => {
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    const env = await signStatement(statement(), signer);
    // The forger holds the receipt key here (the worst case): the evidence still names the old context.
    const forged = await resign(env, signer.privateKey, (s) => {
      const p = s.predicate as { attestation: { context: string } };
      p.attestation.context = 'b2'.repeat(32);
      return s;
    });
    await expect(verifyAttestedEnvelope(forged, options())).rejects.toMatchObject({
      code: 'receipt-binding',
    });
  });

  it("another key's evidence is refused: by the binding, or by the verifier when report data is rewritten", async () => {
    const a = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    const b = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    const env = await signStatement(statement(), b);
    const swapKey = await resign(env, a.privateKey, (s) => {
      (s.predicate as { attestation: { publicJwk: unknown } }).attestation.publicJwk = a.publicJwk;
      return s;
    });
    await expect(verifyAttestedEnvelope(swapKey, options())).rejects.toMatchObject({
      code: 'receipt-binding',
    });
    const swapAll = await resign(env, a.privateKey, (s) => {
      const at = (s.predicate as { attestation: Record<string, unknown> }).attestation;
      at.publicJwk = a.publicJwk;
      at.reportData = a.attestation.reportData;
      return s;
    });
    await expect(verifyAttestedEnvelope(swapAll, options())).rejects.toMatchObject({
      code: 'report-data-mismatch',
    });
    // b's receipt re-signed by a forger's key without changing the named key: the signature fails.
    const forger = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    await expect(
      verifyAttestedEnvelope(await resign(env, forger.privateKey, (s) => s), options()),
    ).rejects.toMatchObject({
      code: 'receipt-signature',
    });
  });

  it('checks the EAR token with the broker key: the same TEE verifies, another is refused', async () => {
    const attester = new InsecureSampleAttester();
    const signer = await createAttestedSigner(attester, fromHex(JOB));
    const brokerKey = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const mine = await sampleVerifier.appraiseEvidence(fromBase64(signer.attestation.evidence), {
      at: new Date(),
      collateral: offlineSource,
    });
    const good = await issueEar({ cpu0: mine }, { signingKey: brokerKey.privateKey });
    const v = await verifyAttestedEnvelope(await signStatement(statement(), signer, { ear: good }), {
      ...options(),
      earKey: brokerKey.publicKey,
    });
    expect(v.ear?.status).toBe(mine.status);
    const other = await createSampleAttester({ measurement: 'ab'.repeat(48) });
    const theirs = await sampleVerifier.appraiseEvidence(await other.attest(new Uint8Array(64)), {
      at: new Date(),
      collateral: offlineSource,
    });
    const bad = await issueEar({ cpu0: theirs }, { signingKey: brokerKey.privateKey });
    await expect(
      verifyAttestedEnvelope(await signStatement(statement(), signer, { ear: bad }), {
        ...options(),
        earKey: brokerKey.publicKey,
      }),
    ).rejects.toMatchObject({ code: 'receipt-ear-mismatch' });
    // Without the broker's key the token is carried, not checked.
    await expect(
      verifyAttestedEnvelope(await signStatement(statement(), signer, { ear: bad }), options()),
    ).resolves.toMatchObject({ appraisal: { kind: 'sample' } });
  });

  it('names malformed receipts, foreign payload types and unexpected predicate types', async () => {
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    const env = await signStatement(statement(), signer);
    await expect(verifyAttestedEnvelope('{"payload":', options())).rejects.toMatchObject({
      code: 'receipt-malformed',
    });
    await expect(
      verifyAttestedEnvelope(
        await resign(env, signer.privateKey, (s) => ({ ...s, predicate: { what: 1 } })),
        options(),
      ),
    ).rejects.toMatchObject({ code: 'receipt-malformed', message: /attestation is missing/ });
    const json = await signEnvelope('application/json', fromBase64(env.payload), [
      es256Signer(signer.privateKey),
    ]);
    await expect(verifyAttestedEnvelope(json, options())).rejects.toMatchObject({
      code: 'receipt-payload-type',
    });
    await expect(
      verifyAttestedEnvelope(env, { ...options(), predicateType: ['https://x/v2'] }),
    ).rejects.toMatchObject({
      code: 'receipt-predicate-type',
    });
    await expect(signStatement({ ...statement(), predicate: { attestation: 1 } }, signer)).rejects.toThrow(
      /already has an attestation/,
    );
    // Byte for byte: every change of the payload is refused.
    const payload = fromBase64(env.payload);
    for (let i = 0; i < payload.length; i += 7) {
      const p = payload.slice();
      p[i]! ^= 0x01;
      await expect(
        verifyAttestedEnvelope({ ...env, payload: toBase64(p) }, options()),
      ).rejects.toBeInstanceOf(Error);
    }
  });
});
