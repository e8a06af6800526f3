/** End-to-end SGX verification against the test authority (v3 quotes, generated root). */
import { beforeAll, describe, expect, it } from 'vitest';
import type { VerifyOptions } from '../../../src/attest/common/types.js';
import { sgxVerifier } from '../../../src/attest/sgx/index.js';
import {
  createIntelTestAuthority,
  INTEL_TEST_TIME,
  type IntelTestAuthority,
} from '../../../src/attest/testing/intel.js';
import { flip, offsets, rejects } from '../intel/vectors.js';

let ta: IntelTestAuthority;
let quote: Uint8Array;
let opts: VerifyOptions;

beforeAll(async () => {
  ta = await createIntelTestAuthority();
  quote = await ta.issueSgxQuote({
    mrEnclave: new Uint8Array(32).fill(0xee),
    isvSvn: 7,
    reportData: new Uint8Array([9]),
  });
  opts = { at: INTEL_TEST_TIME, collateral: await ta.collateral(), trustAnchors: ta.trustAnchors };
});

const judge = (q: Uint8Array, o: Partial<VerifyOptions> = {}) =>
  sgxVerifier.appraiseEvidence(q, { ...opts, ...o });

describe('SGX quotes from the test authority', () => {
  it('a genuine v3 quote is affirming (PCS responses and bundle)', async () => {
    for (const collateral of [opts.collateral, await ta.collateral({ layout: 'bundle' })]) {
      const a = await judge(quote, { collateral, expectedReportData: new Uint8Array([9]) });
      expect(a.status).toBe('affirming');
      expect(a.claims).toMatchObject({
        mr_enclave: 'ee'.repeat(32),
        isv_svn: 7,
        tcb_status: 'UpToDate',
        qe_tcb_status: 'UpToDate',
      });
      expect(a.claims).not.toHaveProperty('tdx_module_tcb_status');
    }
  });

  it('SGX quotes in the v4 and v5 (body type 1) layouts verify too', async () => {
    for (const version of [4, 5] as const) {
      const q = await ta.issueSgxQuote({ version, isvSvn: 2 });
      const a = await judge(q);
      expect(a.claims).toMatchObject({ quote_version: version, isv_svn: 2, tcb_status: 'UpToDate' });
      expect(a.status).toBe('affirming');
    }
  });

  it('reference values on mr_enclave and isv_svn', async () => {
    const ok = await judge(quote, {
      policy: { referenceValues: { mr_enclave: ['EE'.repeat(32)], isv_svn: ['7'] } },
    });
    expect(ok.status).toBe('affirming');
    const bad = await judge(quote, { policy: { referenceValues: { mr_signer: ['00'.repeat(32)] } } });
    expect(bad.status).toBe('contraindicated');
    const unknown = await judge(quote, { policy: { referenceValues: { mr_td: ['00'] } } });
    expect(unknown.status).toBe('contraindicated');
  });

  it('a debug enclave is contraindicated unless allowed', async () => {
    const debug = await ta.issueSgxQuote({ debug: true });
    expect((await judge(debug)).status).toBe('contraindicated');
    expect((await judge(debug, { policy: { allowDebug: true } })).status).toBe('warning');
  });

  it('refuses flipped signature, QE report, revoked PCK, expired collateral, other root', async () => {
    const { signature, qeReport } = offsets(quote);
    await rejects(judge(flip(quote, signature)), 'verify', 'bad-signature');
    await rejects(judge(flip(quote, 48 + 64 + 3)), 'verify', 'bad-signature');
    await rejects(judge(flip(quote, qeReport + 50)), 'verify', 'bad-qe-report-signature');
    await rejects(
      judge(quote, { collateral: await ta.collateral({ revokePck: true }) }),
      'verify',
      'certificate-revoked',
    );
    await rejects(judge(quote, { at: new Date('2026-03-01T00:00:00Z') }), 'verify', 'collateral-expired');
    await rejects(judge(quote, { trustAnchors: undefined }), 'verify', 'untrusted-root');
    await rejects(
      judge(quote, { expectedReportData: new Uint8Array([8]) }),
      'appraise',
      'report-data-mismatch',
    );
  });

  it('out-of-date platform and QE', async () => {
    const a = await judge(quote, {
      collateral: await ta.collateral({ tcbStatus: 'OutOfDateConfigurationNeeded' }),
    });
    expect(a).toMatchObject({ status: 'warning', claims: { tcb_status: 'OutOfDateConfigurationNeeded' } });
    const b = await judge(quote, {
      collateral: await ta.collateral({ tcbStatus: 'ConfigurationAndSWHardeningNeeded', qeUpToDateSvn: 5 }),
    });
    expect(b.claims).toMatchObject({
      tcb_status: 'OutOfDateConfigurationNeeded',
      qe_tcb_status: 'OutOfDate',
    });
  });
});
