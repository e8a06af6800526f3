/**
 * Intel SGX verifier: parseQuote → verifyQuote → appraiseSgx (DCAP quote v3, or v4/v5 with an SGX
 * enclave report). See docs/attestation/intel.md for every check and error code.
 */
import { toHex } from '../../util/index.js';
import {
  type Appraisal,
  AttestationError,
  type KindVerifier,
  type TrustVector,
  type VerifyOptions,
} from '../common/types.js';
import { appraiseIntel, type IntelAppraiseOptions, tcbClaims } from '../intel/appraise.js';
import { type EnclaveReport, type ParsedQuote, parseQuote } from '../intel/quote.js';
import { evaluateTcb } from '../intel/tcb.js';
import { type VerifiedQuote, verifyQuote } from '../intel/verify.js';

export { parseQuote, verifyQuote };

/** SGX ATTRIBUTES flags (first 8 bytes, little-endian): bit 1 DEBUG, bit 2 MODE64BIT, bit 4 PROVISIONKEY, bit 5 EINITTOKENKEY, bit 7 KSS. */
export function decodeSgxAttributes(a: Uint8Array): Record<string, boolean> {
  const bit = (n: number) => ((a[n >> 3]! >> (n & 7)) & 1) === 1;
  return {
    init: bit(0),
    debug: bit(1),
    mode64bit: bit(2),
    provision_key: bit(4),
    einittoken_key: bit(5),
    kss: bit(7),
  };
}

export function sgxClaims(r: EnclaveReport): Record<string, unknown> {
  return {
    mr_enclave: toHex(r.mrEnclave),
    mr_signer: toHex(r.mrSigner),
    isv_prod_id: r.isvProdId,
    isv_svn: r.isvSvn,
    attributes: toHex(r.attributes),
    attributes_decoded: decodeSgxAttributes(r.attributes),
    misc_select: toHex(r.miscSelect),
    cpu_svn: toHex(r.cpuSvn),
    config_id: toHex(r.configId),
    config_svn: r.configSvn,
    isv_ext_prod_id: toHex(r.isvExtProdId),
    isv_family_id: toHex(r.isvFamilyId),
    report_data: toHex(r.reportData),
  };
}

const REFERENCE_CLAIMS: Record<string, keyof TrustVector> = {
  mr_enclave: 'executables',
  mr_signer: 'executables',
  isv_prod_id: 'executables',
  isv_svn: 'executables',
  attributes: 'configuration',
  misc_select: 'configuration',
  config_id: 'configuration',
  config_svn: 'configuration',
  report_data: 'configuration',
  fmspc: 'hardware',
  tcb_status: 'hardware',
};

function enclaveReport(q: ParsedQuote): EnclaveReport {
  if (q.body.kind !== 'sgx')
    throw new AttestationError('parse', 'wrong-tee-type', 'this is a TDX quote; use the tdx verifier');
  return q.body.report;
}

/** parseQuote that accepts only SGX quotes. */
export function parseSgxQuote(raw: Uint8Array): ParsedQuote {
  const q = parseQuote(raw);
  enclaveReport(q);
  return q;
}

/** Appraises a verified SGX quote: TCB status (Intel QVL rules), debug, report data, reference values. */
export function appraiseSgx(v: VerifiedQuote, options: IntelAppraiseOptions = {}): Appraisal {
  const r = enclaveReport(v.quote);
  const t = evaluateTcb(v);
  return appraiseIntel(
    t,
    {
      kind: 'sgx',
      claims: { ...sgxClaims(r), ...tcbClaims(v, t) },
      referenceClaims: REFERENCE_CLAIMS,
      mainMeasurement: 'mr_enclave',
      debug: decodeSgxAttributes(r.attributes)['debug']!,
      reportData: r.reportData,
    },
    options,
  );
}

/** Evidence is one raw DCAP SGX quote; collateral comes from options.collateral. */
export const sgxVerifier: KindVerifier = {
  kind: 'sgx',
  async appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal> {
    return appraiseSgx(await verifyQuote(parseSgxQuote(evidence), options), {
      ...(options.policy ? { policy: options.policy } : {}),
      ...(options.expectedReportData ? { expectedReportData: options.expectedReportData } : {}),
    });
  },
};
