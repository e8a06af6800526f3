import { describe, expect, it } from 'vitest';
import {
  createDefaultRegistry,
  createSampleAttester,
  issueEar,
  offlineSource,
  sampleVerifier,
} from '../../src/attest/index.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import {
  createReceiptSigner,
  type ReceiptBody,
  receiptReportData,
  signReceipt,
  verifyReceipt,
} from '../../src/tee/receipt.js';
import { toHex } from '../../src/util/bytes.js';

const options = () => ({
  registry: createDefaultRegistry(),
  at: new Date(),
  collateral: { get: async () => undefined },
});

function body(attestation: ReceiptBody['attestation']): ReceiptBody {
  const now = new Date().toISOString();
  return {
    type: 'cloister-run-receipt/v1',
    command: ['true'],
    exitCode: 0,
    signal: null,
    startedAt: now,
    endedAt: now,
    inputs: [],
    outputs: [],
    tee: { kind: 'sample', insecure: true, claims: null },
    ear: null,
    attestation,
  };
}

describe('run receipts', () => {
  it('the receipt key is bound into the evidence report data; a good receipt verifies', async () => {
    const signer = await createReceiptSigner(new InsecureSampleAttester());
    expect(signer.attestation.reportData).toBe(toHex(await receiptReportData(signer.publicJwk)));
    const v = await verifyReceipt(await signReceipt(body(signer.attestation), signer), options());
    expect(v.appraisal.kind).toBe('sample');
    expect(v.body.command).toEqual(['true']);
  });

  it('evidence that binds another key is refused (receipt-binding)', async () => {
    const a = await createReceiptSigner(new InsecureSampleAttester());
    const b = await createReceiptSigner(new InsecureSampleAttester());
    await expect(verifyReceipt(await signReceipt(body(b.attestation), a), options())).rejects.toMatchObject({
      code: 'receipt-binding',
    });
  });

  it('evidence whose report data was rewritten to match is refused by the evidence verifier', async () => {
    const a = await createReceiptSigner(new InsecureSampleAttester());
    const b = await createReceiptSigner(new InsecureSampleAttester());
    // b's evidence with a's report data claimed: the sample verifier compares the signed report data.
    const forged = { ...b.attestation, reportData: a.attestation.reportData };
    await expect(verifyReceipt(await signReceipt(body(forged), a), options())).rejects.toMatchObject({
      code: 'report-data-mismatch',
    });
  });

  it('an EAR token describing another TEE than the evidence is refused (receipt-ear-mismatch)', async () => {
    const signer = await createReceiptSigner(new InsecureSampleAttester());
    const earKey = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const other = await createSampleAttester({ measurement: 'ab'.repeat(48) });
    const appraisal = await sampleVerifier.appraiseEvidence(await other.attest(new Uint8Array(64)), {
      at: new Date(),
      collateral: offlineSource,
    });
    const ear = await issueEar({ cpu0: appraisal }, { signingKey: earKey.privateKey });
    const forged = { ...body(signer.attestation), ear };
    await expect(
      verifyReceipt(await signReceipt(forged, signer), { ...options(), earKey: earKey.publicKey }),
    ).rejects.toMatchObject({
      code: 'receipt-ear-mismatch',
    });
  });
});
