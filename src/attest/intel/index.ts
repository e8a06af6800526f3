/**
 * Intel DCAP quote verification shared by TDX and SGX: parseQuote → verifyQuote → evaluateTcb, with
 * collateral from Intel PCS or offline files. See docs/attestation/intel.md.
 */
export {
  appraiseIntel,
  checkReportData,
  type IntelAppraiseOptions,
  type KindClaims,
  tcbClaims,
} from './appraise.js';
export {
  fetchCollateral,
  type IsvTcbLevel,
  PCS_BASE,
  type PckCa,
  parseQeIdentity,
  parseTcbInfo,
  pckCrlRequest,
  type QeIdentity,
  qeIdentityRequest,
  type RawCollateral,
  ROOT_CA_CRL_URL,
  rootCaCrlRequest,
  type SignedJson,
  TCB_STATUSES,
  type TcbInfo,
  type TcbLevel,
  type TcbLevelStatus,
  type TdxModuleIdentity,
  tcbInfoRequest,
} from './collateral.js';
export { type PckExtensions, type PckTcb, parsePckExtensions, SGX_EXTENSION_OID } from './pck.js';
export { type PcsOptions, pcsCollateral } from './pcs.js';
export {
  type EnclaveReport,
  INTEL_QE_VENDOR_ID,
  type ParsedQuote,
  parseQuote,
  type QuoteBody,
  type QuoteHeader,
  type TdReport,
  TEE_TYPE_SGX,
  TEE_TYPE_TDX,
} from './quote.js';
export { INTEL_SGX_ROOT_CA_PEM } from './roots.js';
export { evaluateTcb, type TcbEvaluation, type TcbStatus } from './tcb.js';
export {
  checkQuoteSignatures,
  type VerifiedQuote,
  type VerifyQuoteOptions,
  verifyQuote,
} from './verify.js';
