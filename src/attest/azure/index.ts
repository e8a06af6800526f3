/**
 * Azure confidential VMs with a vTPM: `az-snp-vtpm` (fully verified with the SEV-SNP verifier) and
 * `az-tdx-vtpm` (HCL binding and vTPM quote here, the TD quote through an injected TDX verifier).
 * See docs/attestation/azure.md.
 */
export { type AzureEvidence, parseAzureEvidence } from './evidence.js';
export {
  type HclHash,
  type ParsedHclReport,
  parseHclReport,
  type RuntimeData,
  tdReportFields,
} from './hcl.js';
export { type PcrSelection, parseTpmQuote, type TpmQuoteInfo, verifyTpmQuote } from './tpm.js';
export {
  type AzureVerifyOptions,
  appraiseAzureVtpmEvidence,
  azSnpVtpmVerifier,
  createAzTdxVtpmVerifier,
  type ParsedAzureVtpmEvidence,
  type ParsedTpmQuote,
  parseAzureVtpmEvidence,
  type VerifiedAzureVtpmEvidence,
  type VerifyTdQuote,
  verifyAzureVtpmEvidence,
} from './vtpm.js';
