/** Every TDX quote in test/vectors, judged at a time inside its window (PROVENANCE.md). */
import { describe, expect, it } from 'vitest';
import { parseQuote } from '../../../src/attest/intel/quote.js';
import { checkQuoteSignatures } from '../../../src/attest/intel/verify.js';
import { appraiseTdx, parseTdxQuote, tdxVerifier, verifyQuote } from '../../../src/attest/tdx/index.js';
import { fromBase64, fromHex, utf8 } from '../../../src/util/bytes.js';
import {
  collateralFrom,
  GO_TDX,
  offsets,
  rejects,
  V4_UPTODATE,
  V5_NO_MATCH,
  vector,
} from '../intel/vectors.js';

const AT_2025 = new Date('2025-07-01T00:00:00Z');
const AT_2026 = new Date('2026-03-01T00:00:00Z');
const AT_2023 = new Date('2023-07-01T01:00:00Z');

describe('tdx/dcap-qvl_v4_b0c06f_uptodate (complete collateral.json)', () => {
  const quote = vector(`${V4_UPTODATE}/quote.bin`);
  const collateral = collateralFrom(V4_UPTODATE);

  it('is affirming: genuine, UpToDate platform, TDX module and QE, no advisories', async () => {
    const a = await tdxVerifier.appraiseEvidence(quote, { at: AT_2025, collateral });
    expect(a.kind).toBe('tdx');
    expect(a.status).toBe('affirming');
    expect(a.trustVector).toMatchObject({ hardware: 2, configuration: 2 });
    expect(a.claims).toMatchObject({
      tcb_status: 'UpToDate',
      advisory_ids: [],
      platform_tcb_status: 'UpToDate',
      tdx_module_tcb_status: 'UpToDate',
      qe_tcb_status: 'UpToDate',
      tcb_date: '2024-03-13T00:00:00Z',
      fmspc: 'b0c06f000000',
      mr_td:
        '91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7',
      rtmr3: '00'.repeat(48),
      tee_tcb_svn: '06010300000000000000000000000000',
      td_attributes: '0000001000000000',
      xfam: 'e702060000000000',
      mr_seam:
        '5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1',
    });
    expect(a.claims['td_attributes_decoded']).toMatchObject({ debug: false, sept_ve_disable: true });
    expect(a.findings).toContainEqual(expect.objectContaining({ check: 'reference.mr_td', status: 'none' }));
  });

  it('binds report data and judges reference values', async () => {
    const reportData = fromHex(
      '9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20',
    );
    const mrTd =
      '91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7';
    const ok = await tdxVerifier.appraiseEvidence(quote, {
      at: AT_2025,
      collateral,
      expectedReportData: reportData,
      policy: { referenceValues: { mr_td: [mrTd.toUpperCase()] } },
    });
    expect(ok.status).toBe('affirming');
    expect(ok.trustVector.executables).toBe(2);
    const bad = await tdxVerifier.appraiseEvidence(quote, {
      at: AT_2025,
      collateral,
      policy: { referenceValues: { rtmr0: ['00'.repeat(48)] } },
    });
    expect(bad.status).toBe('contraindicated');
    expect(bad.trustVector.executables).toBe(96);
    await rejects(
      tdxVerifier.appraiseEvidence(quote, {
        at: AT_2025,
        collateral,
        expectedReportData: reportData.subarray(1),
      }),
      'appraise',
      'report-data-mismatch',
    );
  });

  it('is refused outside the window: TCB info expired, QE identity not yet issued', async () => {
    const late = await rejects(
      tdxVerifier.appraiseEvidence(quote, { at: new Date('2025-07-25T00:00:00Z'), collateral }),
      'verify',
      'collateral-expired',
    );
    expect(late.message).toMatch(/TCB info is valid 2025-06-19T10:16:03.000Z \.\. 2025-07-19T10:16:03.000Z/);
    await rejects(
      tdxVerifier.appraiseEvidence(quote, { at: new Date('2025-06-19T10:20:00Z'), collateral }),
      'verify',
      'collateral-expired',
    );
    // Just after the PCK CRL's nextUpdate, but while TCB info and QE identity are still current.
    await rejects(
      tdxVerifier.appraiseEvidence(quote, { at: new Date('2025-07-19T10:05:00Z'), collateral }),
      'verify',
      'crl-expired',
    );
  });

  it('still verifies with its PCK chain carried root-first (the chain is built by signature)', async () => {
    const { certData } = offsets(quote);
    const blocks = utf8
      .decode(parseQuote(quote).pckChainBytes)
      .match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/g)!;
    const b = quote.slice();
    b.set(utf8.encode([...blocks].reverse().join('')), certData);
    expect((await tdxVerifier.appraiseEvidence(b, { at: AT_2025, collateral })).status).toBe('affirming');
  });

  it("verifies with several trust anchors, one of them Intel's", async () => {
    const a = await tdxVerifier.appraiseEvidence(quote, {
      at: AT_2025,
      collateral,
      trustAnchors: [vector('roots/amd_ark_milan.pem'), vector('roots/intel_sgx_root_ca.der')],
    });
    expect(a.status).toBe('affirming');
  });

  it("refuses TCB info signed under any certificate but the root's TCB Signing certificate", async () => {
    const bundle = JSON.parse(utf8.decode(vector(`${V4_UPTODATE}/collateral.json`))) as Record<
      string,
      string
    >;
    bundle['tcb_info_issuer_chain'] = utf8.decode(parseQuote(quote).pckChainBytes).replace(/\0/g, '');
    const body = utf8.encode(JSON.stringify(bundle));
    const e = await rejects(
      tdxVerifier.appraiseEvidence(quote, {
        at: AT_2025,
        collateral: { get: async () => ({ body, headers: {} }) },
      }),
      'verify',
      'invalid-tcb-signing-cert',
    );
    expect(e.message).toMatch(/SGX PCK Certificate/);
  });

  it('is refused by a verifier that trusts another root', async () => {
    const other = vector('roots/amd_ark_milan.pem');
    await rejects(
      tdxVerifier.appraiseEvidence(quote, { at: AT_2025, collateral, trustAnchors: [other] }),
      'verify',
      'untrusted-root',
    );
  });
});

describe('tdx/dcap-qvl_v5_90c06f_no-tcb-match', () => {
  it('verifies (v5, TD 1.5 body) but no TCB level matches: SGX component 8 is 3, levels need 5', async () => {
    const v = await verifyQuote(parseTdxQuote(vector(`${V5_NO_MATCH}/quote.bin`)), {
      at: AT_2026,
      collateral: collateralFrom(V5_NO_MATCH),
    });
    expect(v.tcbInfo.tcbEvaluationDataNumber).toBe(18);
    const e = await rejects(() => appraiseTdx(v), 'appraise', 'tcb-level-not-found');
    expect(e.message).toMatch(/3,3,2,2,4,1,0,3/);
  });
});

describe('tdx/go-tdx-guest_v4_50806f (separate PCS files, June 2023)', () => {
  const raw = vector(`${GO_TDX}/quote.bin`);
  const stripped = raw.subarray(0, raw.length - 39);
  const collateral = collateralFrom(GO_TDX);

  it('is refused as received: 39 ASCII bytes after the signature data', async () => {
    await rejects(tdxVerifier.appraiseEvidence(raw, { at: AT_2023, collateral }), 'parse', 'trailing-bytes');
  });

  it('without them: every signature, chain and CRL verifies, but no TCB level matches', async () => {
    const v = await verifyQuote(parseQuote(stripped), { at: AT_2023, collateral });
    expect(v.qeIdentity.id).toBe('TD_QE');
    await rejects(() => appraiseTdx(v), 'appraise', 'tcb-level-not-found');
  });

  it('cannot be verified today: its TCB signing certificate expired 2025-05-21', async () => {
    await rejects(
      tdxVerifier.appraiseEvidence(stripped, { at: new Date('2025-06-01T00:00:00Z'), collateral }),
      'verify',
      'certificate-expired',
    );
  });
});

describe('tdx/trustee_v4_50806f (collateral from go-tdx-guest_v4_50806f)', () => {
  const quote = vector('tdx/trustee_v4_50806f/quote.bin');
  const options = { at: AT_2023, collateral: collateralFrom('tdx/trustee_v4_50806f', GO_TDX) };

  it('is an UpToDate platform running a debug TD: contraindicated', async () => {
    const a = await tdxVerifier.appraiseEvidence(quote, options);
    expect(a.claims).toMatchObject({
      tcb_status: 'UpToDate',
      tcb_date: '2023-02-15T00:00:00Z',
      qe_tcb_status: 'UpToDate',
    });
    expect(a.claims['td_attributes_decoded']).toMatchObject({ debug: true });
    expect(a.status).toBe('contraindicated');
    expect(a.trustVector.configuration).toBe(96);
    expect(a.findings).toContainEqual(expect.objectContaining({ check: 'debug', status: 'contraindicated' }));
  });

  it('is a warning when the policy allows debug TDs', async () => {
    const a = await tdxVerifier.appraiseEvidence(quote, { ...options, policy: { allowDebug: true } });
    expect(a.status).toBe('warning');
  });
});

describe('quotes completed by the Feb 2026 collateral (FMSPC 90c06f000000)', () => {
  const collateral = collateralFrom(V5_NO_MATCH);

  it('tdx/trustee_v5_90c06f: no platform TCB level matches (SGX components 1,1,…)', async () => {
    await rejects(
      tdxVerifier.appraiseEvidence(vector('tdx/trustee_v5_90c06f/quote.bin'), { at: AT_2026, collateral }),
      'appraise',
      'tcb-level-not-found',
    );
  });

  it('tdx/dstack_v4_90c06f_eventlog: UpToDate, report data 1234…', async () => {
    const a = await tdxVerifier.appraiseEvidence(vector('tdx/dstack_v4_90c06f_eventlog/quote.bin'), {
      at: AT_2026,
      collateral,
      expectedReportData: new Uint8Array([0x12, 0x34]),
    });
    expect(a.status).toBe('affirming');
    expect(a.claims).toMatchObject({
      tcb_status: 'UpToDate',
      tdx_module_tcb_status: 'UpToDate',
      qe_tcb_status: 'UpToDate',
    });
    expect(a.claims['rtmr3']).toBe(
      '0f787c3877f3e95095d5a4d13dd0fe0233803b30120d8469866719dc28f519ce021fe1e53459121e7a5a4443147185a8',
    );
  });

  it('azure-vtpm/openpcc_az-tdx td_quote: UpToDate', async () => {
    const a = await tdxVerifier.appraiseEvidence(vector('azure-vtpm/openpcc_az-tdx/td_quote.bin'), {
      at: AT_2026,
      collateral,
    });
    expect(a.status).toBe('affirming');
    expect(a.claims['tcb_status']).toBe('UpToDate');
  });

  it('dstack quote.bin is the quote inside quote-report.json', () => {
    const report = JSON.parse(utf8.decode(vector('tdx/dstack_v4_90c06f_eventlog/quote-report.json'))) as {
      quote: string;
    };
    expect(fromHex(report.quote)).toEqual(vector('tdx/dstack_v4_90c06f_eventlog/quote.bin'));
  });
});

describe('quotes with no TCB info for their FMSPC (00806f050000) in the vectors', () => {
  const quotes = {
    'tdx/go-tdx-guest_ccel_gce': vector('tdx/go-tdx-guest_ccel_gce/quote.bin'),
    'azure-vtpm/trustee_az-tdx_v1': fromBase64(
      (JSON.parse(utf8.decode(vector('azure-vtpm/trustee_az-tdx_v1/evidence.json'))) as { td_quote: string })
        .td_quote,
    ),
  };
  for (const [name, quote] of Object.entries(quotes)) {
    it(`${name}: signatures and QE binding verify; verification stops at the missing collateral`, async () => {
      await checkQuoteSignatures(parseQuote(quote));
      const e = await rejects(
        tdxVerifier.appraiseEvidence(quote, {
          at: AT_2026,
          collateral: collateralFrom('tdx/go-tdx-guest_ccel_gce'),
        }),
        'verify',
        'collateral-missing',
      );
      expect(e.message).toMatch(/TCB info for FMSPC 00806f050000/);
      // TCB info for another FMSPC is not accepted in its place.
      await rejects(
        tdxVerifier.appraiseEvidence(quote, { at: AT_2026, collateral: collateralFrom(V5_NO_MATCH) }),
        'verify',
        'fmspc-mismatch',
      );
    });
  }
});

describe('kind checks', () => {
  it('the tdx verifier refuses an SGX quote', async () => {
    await rejects(
      tdxVerifier.appraiseEvidence(vector('sgx/dcap-qvl_v3_00a067_sw-hardening/quote.bin'), {
        at: AT_2025,
        collateral: collateralFrom(V4_UPTODATE),
      }),
      'parse',
      'wrong-tee-type',
    );
  });
});
