/**
 * AMD SEV-SNP verifier: parseReport → verifyReport → appraiseReport, and `snpVerifier` for dispatch.
 * See docs/attestation/snp.md for every check and error code.
 */
import type { Appraisal, KindVerifier, VerifyOptions } from '../common/types.js';
import { appraiseReport } from './appraise.js';
import { parseReport } from './report.js';
import { verifyReport } from './verify.js';

export {
  appraiseReport,
  type SnpAppraiseOptions,
  type SnpTcbStatus,
  snpClaims,
  tcbStatus,
} from './appraise.js';
export { type EndorsementKeyInfo, readEndorsementKeyInfo } from './certs.js';
export { type CertTableEntry, certTableCollateral, parseCertTable } from './certtable.js';
export {
  type CocoSnpEvidence,
  certTableFromCocoJson,
  fromCocoSnpEvidence,
  reportFromCocoJson,
  toCocoSnpEvidence,
} from './coco.js';
export {
  decodePolicy,
  decodeTcb,
  type ParsedReport,
  parseReport,
  productFromCpuid,
  REPORT_SIZE,
  SIGNED_SIZE,
  type SnpPolicy,
  type SnpProduct,
  type TcbVersion,
} from './report.js';
export {
  certChainRequest,
  crlRequest,
  KDS_BASE,
  type VerifiedReport,
  vcekRequest,
  verifyReport,
  vlekRequest,
} from './verify.js';

/** Evidence is one raw 1184-byte ATTESTATION_REPORT; certificates come from options.collateral. */
export const snpVerifier: KindVerifier = {
  kind: 'snp',
  async appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal> {
    const verified = await verifyReport(parseReport(evidence), options);
    return appraiseReport(verified, {
      ...(options.policy ? { policy: options.policy } : {}),
      ...(options.expectedReportData ? { expectedReportData: options.expectedReportData } : {}),
    });
  },
};
