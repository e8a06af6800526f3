import { describe, expect, it } from 'vitest';
import { InsecureSampleAttester } from '../../src/agent/attest/sample.js';
import {
  createReceiptSigner,
  type ReceiptBody,
  receiptReportData,
  signReceipt,
  verifyReceipt,
} from '../../src/agent/receipt.js';
import { createDefaultRegistry } from '../../src/attest/index.js';
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
});
