/**
 * End-to-end TDX verification against the test authority: real quote format and signatures, a
 * generated root as trust anchor, and each refusal the verifier must make.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { CollateralSource, VerifyOptions } from '../../../src/attest/common/types.js';
import { tcbInfoRequest } from '../../../src/attest/intel/collateral.js';
import { parseQuote } from '../../../src/attest/intel/quote.js';
import { tdxVerifier } from '../../../src/attest/tdx/index.js';
import {
  createIntelTestAuthority,
  INTEL_TEST_TIME,
  type IntelTestAuthority,
  TEST_FMSPC,
} from '../../../src/attest/testing/intel.js';
import { utf8 } from '../../../src/util/bytes.js';
import { flip, offsets, rejects } from '../intel/vectors.js';

let ta: IntelTestAuthority;
let quote: Uint8Array;
let opts: VerifyOptions;

beforeAll(async () => {
  ta = await createIntelTestAuthority();
  quote = await ta.issueTdxQuote({
    reportData: new Uint8Array([1, 2, 3]),
    mrTd: new Uint8Array(48).fill(0xab),
  });
  opts = { at: INTEL_TEST_TIME, collateral: await ta.collateral(), trustAnchors: ta.trustAnchors };
});

const judge = (q: Uint8Array, o: Partial<VerifyOptions> = {}) =>
  tdxVerifier.appraiseEvidence(q, { ...opts, ...o });

describe('genuine quotes', () => {
  it('v4 and v5 quotes are affirming with PCS responses (chains in headers) and with a collateral.json bundle', async () => {
    const v5 = await ta.issueTdxQuote({ version: 5 });
    const bundle = await ta.collateral({ layout: 'bundle' });
    for (const [q, collateral] of [
      [quote, opts.collateral],
      [v5, opts.collateral],
      [quote, bundle],
      [v5, bundle],
    ] as const) {
      const a = await judge(q, { collateral });
      expect(a.status).toBe('affirming');
      expect(a.claims).toMatchObject({
        tcb_status: 'UpToDate',
        fmspc: TEST_FMSPC,
        tdx_module_tcb_status: 'UpToDate',
      });
    }
  });

  it('carries the measurements and binds the report data', async () => {
    const a = await judge(quote, {
      expectedReportData: new Uint8Array([1, 2, 3]),
      policy: { referenceValues: { mr_td: ['ab'.repeat(48)], rtmr0: ['00'.repeat(48)] } },
    });
    expect(a.status).toBe('affirming');
    expect(a.claims['mr_td']).toBe('ab'.repeat(48));
    expect(a.trustVector.executables).toBe(2);
  });

  it('verifies with the PCK chain carried root-first', async () => {
    const { certData } = offsets(quote);
    const q = parseQuote(quote);
    const text = utf8.decode(q.pckChainBytes);
    const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\r?\n?/g)!;
    const reordered = utf8.encode([...blocks].reverse().join(''));
    const b = quote.slice();
    b.set(reordered, certData);
    expect((await judge(b)).status).toBe('affirming');
  });
});

describe('refusals', () => {
  it('a flipped quote signature byte or body byte: bad-signature', async () => {
    const { signature } = offsets(quote);
    await rejects(judge(flip(quote, signature + 5)), 'verify', 'bad-signature');
    await rejects(judge(flip(quote, 48 + 200)), 'verify', 'bad-signature');
    await rejects(judge(flip(quote, 10)), 'verify', 'bad-signature');
  });

  it('a bad signature is reported before a collateral failure, though both are checked side by side', async () => {
    const { signature } = offsets(quote);
    const none: CollateralSource = { get: async () => undefined };
    await rejects(judge(flip(quote, signature + 5), { collateral: none }), 'verify', 'bad-signature');
    const stale = await ta.collateral({ nextUpdate: new Date(INTEL_TEST_TIME.getTime() - 1000) });
    await rejects(judge(flip(quote, signature + 5), { collateral: stale }), 'verify', 'bad-signature');
    await rejects(judge(quote, { collateral: none }), 'verify', 'collateral-missing');
  });

  it('a flipped QE report or QE report signature byte: bad-qe-report-signature', async () => {
    const { qeReport } = offsets(quote);
    await rejects(judge(flip(quote, qeReport + 100)), 'verify', 'bad-qe-report-signature');
    await rejects(judge(flip(quote, qeReport + 384 + 3)), 'verify', 'bad-qe-report-signature');
  });

  it('changed QE auth data: the attestation key is no longer bound', async () => {
    const { qeReport } = offsets(quote);
    await rejects(judge(flip(quote, qeReport + 384 + 64 + 2 + 5)), 'verify', 'qe-report-data-mismatch');
  });

  it('a verifier trusting only Intel refuses the test root', async () => {
    await rejects(judge(quote, { trustAnchors: undefined }), 'verify', 'untrusted-root');
  });

  it('a revoked PCK certificate', async () => {
    const e = await rejects(
      judge(quote, { collateral: await ta.collateral({ revokePck: true }) }),
      'verify',
      'certificate-revoked',
    );
    expect(e.message).toContain(ta.pckSerial);
  });

  it('expired collateral, before and after its window, also after a cached success', async () => {
    expect((await judge(quote)).status).toBe('affirming');
    await rejects(judge(quote, { at: new Date('2026-02-02T00:00:00Z') }), 'verify', 'collateral-expired');
    await rejects(judge(quote, { at: new Date('2025-12-31T00:00:00Z') }), 'verify', 'collateral-expired');
    expect((await judge(quote)).status).toBe('affirming');
  });

  it('tampered TCB info: bad-collateral-signature', async () => {
    const real = opts.collateral;
    const url = tcbInfoRequest('tdx', TEST_FMSPC).url;
    const tampered: CollateralSource = {
      async get(req) {
        const item = await real.get(req);
        if (!item || req.url !== url) return item;
        return {
          ...item,
          body: utf8.encode(
            utf8.decode(item.body).replace('"tcbEvaluationDataNumber":19', '"tcbEvaluationDataNumber":20'),
          ),
        };
      },
    };
    await rejects(judge(quote, { collateral: tampered }), 'verify', 'bad-collateral-signature');
  });

  it('missing collateral', async () => {
    await rejects(
      judge(quote, { collateral: { get: async () => undefined } }),
      'verify',
      'collateral-missing',
    );
    await rejects(
      judge(quote, {
        collateral: {
          get: async () => {
            throw new Error('network down');
          },
        },
      }),
      'verify',
      'collateral-unavailable',
    );
  });

  it('a debug TD is contraindicated unless the policy allows debug', async () => {
    const debug = await ta.issueTdxQuote({ debug: true });
    const a = await judge(debug);
    expect(a.status).toBe('contraindicated');
    expect(a.trustVector.configuration).toBe(96);
    expect((await judge(debug, { policy: { allowDebug: true } })).status).toBe('warning');
  });

  it('SEPT_VE_DISABLE off, or a bound service TD, is a warning unless a reference value covers it', async () => {
    const noSept = await ta.issueTdxQuote({ tdAttributes: new Uint8Array(8) });
    const a = await judge(noSept);
    expect(a.status).toBe('warning');
    expect(a.findings).toContainEqual(
      expect.objectContaining({ check: 'td_attributes.sept_ve_disable', status: 'warning' }),
    );
    expect(
      (await judge(noSept, { policy: { referenceValues: { td_attributes: ['0000000000000000'] } } })).status,
    ).toBe('affirming');
    const service = await ta.issueTdxQuote({ version: 5, mrServiceTd: new Uint8Array(48).fill(0x77) });
    const b = await judge(service);
    expect(b.status).toBe('warning');
    expect(b.trustVector.executables).toBe(32);
    const ok = await judge(service, { policy: { referenceValues: { mr_servicetd: ['77'.repeat(48)] } } });
    expect(ok.status).toBe('affirming');
  });

  it('a collateral buffer rewritten in place after a success is verified again, not taken from cache', async () => {
    const real = opts.collateral;
    const url = tcbInfoRequest('tdx', TEST_FMSPC).url;
    const held = await real.get({ url, files: [] });
    const body = held!.body.slice();
    const source: CollateralSource = {
      get: async (req) => (req.url === url ? { body, headers: held!.headers } : real.get(req)),
    };
    expect((await judge(quote, { collateral: source })).status).toBe('affirming');
    const text = utf8.decode(body).replace('"tcbEvaluationDataNumber":19', '"tcbEvaluationDataNumber":18');
    body.set(utf8.encode(text));
    await rejects(judge(quote, { collateral: source }), 'verify', 'bad-collateral-signature');
  });

  it('report data that is not the expected: report-data-mismatch', async () => {
    await rejects(
      judge(quote, { expectedReportData: new Uint8Array([1, 2, 4]) }),
      'appraise',
      'report-data-mismatch',
    );
    await rejects(
      judge(quote, { expectedReportData: new Uint8Array(65) }),
      'appraise',
      'report-data-mismatch',
    );
  });

  it('a truncated quote and bytes after it', async () => {
    await rejects(judge(quote.subarray(0, quote.length - 1)), 'parse', 'truncated');
    const longer = new Uint8Array(quote.length + 4);
    longer.set(quote);
    longer[quote.length + 2] = 0x20;
    await rejects(judge(longer), 'parse', 'trailing-bytes');
  });
});

describe('TCB status (Intel QVL rules)', () => {
  const status = async (collateral: Parameters<IntelTestAuthority['collateral']>[0], q?: Uint8Array) => {
    const a = await judge(q ?? quote, { collateral: await ta.collateral(collateral) });
    return {
      status: a.status,
      tcb: a.claims['tcb_status'],
      advisories: a.claims['advisory_ids'],
      hw: a.trustVector.hardware,
    };
  };

  it('an out-of-date platform is a warning (hardware 32), with its advisories', async () => {
    expect(await status({ tcbStatus: 'OutOfDate', advisoryIds: ['INTEL-SA-00828'] })).toEqual({
      status: 'warning',
      tcb: 'OutOfDate',
      advisories: ['INTEL-SA-00828'],
      hw: 32,
    });
  });

  it('a revoked platform is contraindicated, even if the policy lists Revoked', async () => {
    const a = await judge(quote, {
      collateral: await ta.collateral({ tcbStatus: 'Revoked' }),
      policy: { acceptTcbStatus: ['UpToDate', 'Revoked'] },
    });
    expect(a.status).toBe('contraindicated');
    expect(a.trustVector.hardware).toBe(96);
  });

  it('SWHardeningNeeded / ConfigurationNeeded are warnings unless accepted', async () => {
    expect((await status({ tcbStatus: 'SWHardeningNeeded' })).status).toBe('warning');
    expect((await status({ tcbStatus: 'ConfigurationNeeded' })).status).toBe('warning');
    const a = await judge(quote, {
      collateral: await ta.collateral({ tcbStatus: 'SWHardeningNeeded' }),
      policy: { acceptTcbStatus: ['UpToDate', 'SWHardeningNeeded'] },
    });
    expect(a.status).toBe('affirming');
  });

  it('an out-of-date TDX module makes an UpToDate platform OutOfDate, a ConfigurationNeeded one OutOfDateConfigurationNeeded', async () => {
    expect((await status({ tdxModuleStatus: 'OutOfDate' })).tcb).toBe('OutOfDate');
    expect((await status({ tdxModuleStatus: 'OutOfDate', tcbStatus: 'ConfigurationNeeded' })).tcb).toBe(
      'OutOfDateConfigurationNeeded',
    );
    expect((await status({ tdxModuleStatus: 'Revoked' })).tcb).toBe('Revoked');
  });

  it('an out-of-date QE makes the result OutOfDate and adds its advisories', async () => {
    const old = await ta.issueTdxQuote({ qeSvn: 3 });
    const a = await judge(old);
    expect(a.claims).toMatchObject({
      tcb_status: 'OutOfDate',
      qe_tcb_status: 'OutOfDate',
      advisory_ids: ['INTEL-SA-00999'],
    });
    expect(a.status).toBe('warning');
  });

  it('a TD 1.5 quote whose module was updated in place: TDRelaunchAdvised', async () => {
    const q = await ta.issueTdxQuote({
      version: 5,
      teeTcbSvn: new Uint8Array([1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
      teeTcbSvn2: new Uint8Array([3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    });
    const a = await judge(q);
    expect(a.claims).toMatchObject({ tcb_status: 'TDRelaunchAdvised', tdx_module_tcb_status: 'OutOfDate' });
    expect(a.status).toBe('warning');
    // The same module without the in-place update is plain OutOfDate.
    const v4 = await ta.issueTdxQuote({
      teeTcbSvn: new Uint8Array([1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    });
    expect((await judge(v4)).claims['tcb_status']).toBe('OutOfDate');
  });

  it('a TDX module below every module level, or of an unlisted major version', async () => {
    const low = await ta.issueTdxQuote({
      teeTcbSvn: new Uint8Array([0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    });
    await rejects(judge(low), 'appraise', 'tcb-level-not-found');
    const unknown = await ta.issueTdxQuote({
      teeTcbSvn: new Uint8Array([3, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    });
    await rejects(judge(unknown), 'verify', 'tdx-module-mismatch');
  });

  it('TEE_TCB_SVN below every TDX level (module major version 0 compares all 16 components)', async () => {
    const q = await ta.issueTdxQuote({
      teeTcbSvn: new Uint8Array([3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    });
    await rejects(judge(q), 'appraise', 'tcb-level-not-found');
  });
});
