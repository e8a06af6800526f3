/** Every SGX quote in test/vectors, judged at a time inside its window (PROVENANCE.md). */
import { describe, expect, it } from 'vitest';
import { parseQuote } from '../../../src/attest/intel/quote.js';
import { checkQuoteSignatures } from '../../../src/attest/intel/verify.js';
import { sgxVerifier } from '../../../src/attest/sgx/index.js';
import { collateralFrom, rejects, SGX_HARDENING, V4_UPTODATE, vector } from '../intel/vectors.js';

const AT = new Date('2025-07-01T00:00:00Z');

describe('sgx/dcap-qvl_v3_00a067_sw-hardening (complete collateral.json, Processor CA)', () => {
  const quote = vector(`${SGX_HARDENING}/quote.bin`);
  const collateral = collateralFrom(SGX_HARDENING);

  it('is ConfigurationAndSWHardeningNeeded with INTEL-SA-00289 and INTEL-SA-00615: a warning', async () => {
    const a = await sgxVerifier.appraiseEvidence(quote, { at: AT, collateral });
    expect(a.kind).toBe('sgx');
    expect(a.status).toBe('warning');
    expect(a.trustVector.hardware).toBe(32);
    expect(a.claims).toMatchObject({
      tcb_status: 'ConfigurationAndSWHardeningNeeded',
      advisory_ids: ['INTEL-SA-00289', 'INTEL-SA-00615'],
      qe_tcb_status: 'UpToDate',
      fmspc: '00a067110000',
      mr_enclave: '33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb',
      mr_signer: '815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6',
      isv_prod_id: 0,
      isv_svn: 0,
      attributes: '0500000000000000e700000000000000',
      report_data: `48656c6c6f2c20776f726c6421${'00'.repeat(51)}`,
    });
    expect(a.claims['attributes_decoded']).toMatchObject({ debug: false, mode64bit: true });
    expect(a.findings.find((f) => f.check === 'tcb')?.message).toMatch(/INTEL-SA-00289, INTEL-SA-00615/);
  });

  it('is affirming when the policy accepts that status', async () => {
    const a = await sgxVerifier.appraiseEvidence(quote, {
      at: AT,
      collateral,
      policy: { acceptTcbStatus: ['UpToDate', 'ConfigurationAndSWHardeningNeeded'] },
      expectedReportData: new TextEncoder().encode('Hello, world!'),
    });
    expect(a.status).toBe('affirming');
  });

  it('is refused with TDX collateral (wrong TCB info, wrong PCK CRL)', async () => {
    await rejects(
      sgxVerifier.appraiseEvidence(quote, { at: AT, collateral: collateralFrom(V4_UPTODATE) }),
      'verify',
      'crl-mismatch',
    );
  });
});

describe('sgx/trustee_occlum_v3_00606a (quote only)', () => {
  const quote = vector('sgx/trustee_occlum_v3_00606a/quote.bin');

  it('has valid signatures, but no collateral for FMSPC 00606a000000 exists in the vectors', async () => {
    await checkQuoteSignatures(parseQuote(quote));
    await rejects(
      sgxVerifier.appraiseEvidence(quote, {
        at: AT,
        collateral: collateralFrom('sgx/trustee_occlum_v3_00606a'),
      }),
      'verify',
      'collateral-missing',
    );
  });

  it('refuses a PCK CRL of the other PCK CA (its PCK is from the Platform CA)', async () => {
    await rejects(
      sgxVerifier.appraiseEvidence(quote, { at: AT, collateral: collateralFrom(SGX_HARDENING) }),
      'verify',
      'crl-mismatch',
    );
  });
});

it('the sgx verifier refuses a TDX quote', async () => {
  await rejects(
    sgxVerifier.appraiseEvidence(vector(`${V4_UPTODATE}/quote.bin`), {
      at: AT,
      collateral: collateralFrom(V4_UPTODATE),
    }),
    'parse',
    'wrong-tee-type',
  );
});
