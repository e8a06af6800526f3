/**
 * Intel TDX verifier: parseQuote → verifyQuote → appraiseTdx (DCAP quote v4/v5). See
 * docs/attestation/intel.md for every check and error code.
 */
import { isAllZero, toHex } from '../../util/index.js';
import {
  type Appraisal,
  AttestationError,
  type KindVerifier,
  type TrustVector,
  type VerifyOptions,
} from '../common/types.js';
import { appraiseIntel, type IntelAppraiseOptions, type KindClaims, tcbClaims } from '../intel/appraise.js';
import { type ParsedQuote, parseQuote, type TdReport } from '../intel/quote.js';
import { evaluateTcb } from '../intel/tcb.js';
import { type VerifiedQuote, verifyQuote } from '../intel/verify.js';

export { parseQuote, verifyQuote };

/** TD_ATTRIBUTES bits (TDX module ABI): byte 0 bit 0 DEBUG; bit 28 SEPT_VE_DISABLE; 30 PKS; 31 KL; 63 PERFMON. */
export function decodeTdAttributes(a: Uint8Array): Record<string, boolean> {
  const bit = (n: number) => ((a[n >> 3]! >> (n & 7)) & 1) === 1;
  return { debug: bit(0), sept_ve_disable: bit(28), pks: bit(30), kl: bit(31), perfmon: bit(63) };
}

export function tdxClaims(td: TdReport): Record<string, unknown> {
  return {
    mr_td: toHex(td.mrTd),
    rtmr0: toHex(td.rtmr[0]),
    rtmr1: toHex(td.rtmr[1]),
    rtmr2: toHex(td.rtmr[2]),
    rtmr3: toHex(td.rtmr[3]),
    mr_config_id: toHex(td.mrConfigId),
    mr_owner: toHex(td.mrOwner),
    mr_owner_config: toHex(td.mrOwnerConfig),
    xfam: toHex(td.xfam),
    td_attributes: toHex(td.tdAttributes),
    td_attributes_decoded: decodeTdAttributes(td.tdAttributes),
    mr_seam: toHex(td.mrSeam),
    mr_signer_seam: toHex(td.mrSignerSeam),
    seam_attributes: toHex(td.seamAttributes),
    tee_tcb_svn: toHex(td.teeTcbSvn),
    ...(td.teeTcbSvn2 ? { tee_tcb_svn2: toHex(td.teeTcbSvn2) } : {}),
    ...(td.mrServiceTd ? { mr_servicetd: toHex(td.mrServiceTd) } : {}),
    report_data: toHex(td.reportData),
  };
}

const REFERENCE_CLAIMS: Record<string, keyof TrustVector> = {
  mr_td: 'executables',
  rtmr0: 'executables',
  rtmr1: 'executables',
  rtmr2: 'executables',
  rtmr3: 'executables',
  mr_servicetd: 'executables',
  mr_config_id: 'configuration',
  mr_owner: 'configuration',
  mr_owner_config: 'configuration',
  xfam: 'configuration',
  td_attributes: 'configuration',
  report_data: 'configuration',
  mr_seam: 'hardware',
  tee_tcb_svn: 'hardware',
  fmspc: 'hardware',
  tcb_status: 'hardware',
};

function tdReport(q: ParsedQuote): TdReport {
  if (q.body.kind === 'sgx') {
    throw new AttestationError('parse', 'wrong-tee-type', 'this is an SGX quote; use the sgx verifier');
  }
  return q.body.report;
}

/** parseQuote that accepts only TDX quotes. */
export function parseTdxQuote(raw: Uint8Array): ParsedQuote {
  const q = parseQuote(raw);
  tdReport(q);
  return q;
}

/** Appraises a verified TDX quote: TCB status (Intel QVL rules), debug, report data, reference values. */
export function appraiseTdx(v: VerifiedQuote, options: IntelAppraiseOptions = {}): Appraisal {
  const td = tdReport(v.quote);
  const t = evaluateTcb(v);
  const attributes = decodeTdAttributes(td.tdAttributes);
  const concerns: KindClaims['concerns'] = [];
  if (!attributes['sept_ve_disable'] && !attributes['debug']) {
    concerns.push({
      check: 'td_attributes.sept_ve_disable',
      claim: 'td_attributes',
      status: 'warning',
      message:
        'SEPT_VE_DISABLE is off: the host can make private-memory accesses raise #VE in the TD; launch with SEPT_VE_DISABLE or list td_attributes as a reference value',
      vector: 'configuration',
    });
  }
  if (td.mrServiceTd && !isAllZero(td.mrServiceTd)) {
    concerns.push({
      check: 'mr_servicetd',
      claim: 'mr_servicetd',
      status: 'warning',
      message:
        'a service TD (e.g. a migration TD) is bound to this TD and can access its state; list its measurement in referenceValues.mr_servicetd',
      vector: 'executables',
    });
  }
  return appraiseIntel(
    t,
    {
      kind: 'tdx',
      claims: { ...tdxClaims(td), ...tcbClaims(v, t) },
      referenceClaims: REFERENCE_CLAIMS,
      mainMeasurement: 'mr_td',
      debug: attributes['debug']!,
      reportData: td.reportData,
      concerns,
    },
    options,
  );
}

/** Evidence is one raw DCAP TDX quote (v4 or v5); collateral comes from options.collateral. */
export const tdxVerifier: KindVerifier = {
  kind: 'tdx',
  async appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal> {
    return appraiseTdx(await verifyQuote(parseTdxQuote(evidence), options), {
      ...(options.policy ? { policy: options.policy } : {}),
      ...(options.expectedReportData ? { expectedReportData: options.expectedReportData } : {}),
    });
  },
};
