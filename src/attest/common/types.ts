/**
 * Types shared by every verifier. Each TEE kind is three stages with their own types:
 *   parse(bytes) → Parsed<Kind>          (structure only, every length checked)
 *   verify(parsed, options) → Verified   (signatures, chains, revocation, collateral at `at`)
 *   appraise(verified, policy) → Appraisal (claims against reference values and policy)
 */

import type { VerifierContext } from '../context.js';

export type TeeKind = 'tdx' | 'sgx' | 'snp' | 'nvidia' | 'az-snp-vtpm' | 'az-tdx-vtpm' | 'sample';

/**
 * Bytes of report data every TEE kind here binds (TDX, SGX, SNP, sample; a GPU's nonce is derived from
 * them): the one size the attesters pad to and the verifiers and composite evidence check against.
 */
export const REPORT_DATA_SIZE = 64;

/** Every TEE kind, for validating input; `satisfies` keeps it in step with the TeeKind type. */
export const TEE_KINDS = [
  'tdx',
  'sgx',
  'snp',
  'nvidia',
  'az-snp-vtpm',
  'az-tdx-vtpm',
  'sample',
] as const satisfies readonly TeeKind[];
// Fails to compile when TeeKind gains a member that TEE_KINDS lacks.
const _allKinds: Exclude<TeeKind, (typeof TEE_KINDS)[number]> extends never ? true : never = true;
void _allKinds;

/** EAR status tiers (draft-ietf-rats-ear), worst last. */
export type EarStatus = 'affirming' | 'warning' | 'contraindicated' | 'none';

export const STATUS_ORDER: readonly EarStatus[] = ['none', 'affirming', 'warning', 'contraindicated'];

/** The worse of two statuses; `none` (nothing appraised) is outranked by any judgement. */
export function worseStatus(a: EarStatus, b: EarStatus): EarStatus {
  return STATUS_ORDER.indexOf(a) >= STATUS_ORDER.indexOf(b) ? a : b;
}

/**
 * AR4SI trustworthiness vector (draft-ietf-rats-ar4si): each claim is a small signed integer, where
 * 0 = no claim, 2..31 affirming, 32..95 warning, 96..127 contraindicated, and -1..-127 verifier errors.
 */
export interface TrustVector {
  instance_identity?: number;
  configuration?: number;
  executables?: number;
  file_system?: number;
  hardware?: number;
  runtime_opaque?: number;
  storage_opaque?: number;
  sourced_data?: number;
}

/** One judged point: every non-affirming status carries a reason an operator can act on. */
export interface Finding {
  check: string;
  status: EarStatus;
  message: string;
}

/** Output of the appraise stage, per submodule (`cpu0`, `gpu0`, …). */
export interface Appraisal {
  kind: TeeKind;
  status: EarStatus;
  trustVector: TrustVector;
  /** Annotated evidence: the claims as plain JSON values (hex for byte strings). */
  claims: Record<string, unknown>;
  findings: Finding[];
  /** True only for the `sample` software TEE. */
  insecure?: boolean;
}

/** The stage a failure came from, so callers and tests can tell a bad structure from a bad signature. */
export type Stage = 'parse' | 'verify' | 'appraise';

/**
 * Every code an AttestationError may carry, a closed list: callers (the key broker's problem
 * documents, `cloister verify --json`, tests) match on them. docs/attestation.md lists the same codes
 * (test/attest/error-codes.test.ts keeps the two equal); a new refusal needs a code here and a row
 * there.
 */
export const ATTESTATION_ERROR_CODES = [
  'arch-mismatch',
  'bad-ak',
  'bad-attestation-key',
  'bad-cert-table',
  'bad-certificate',
  'bad-certification-data',
  'bad-coco-evidence',
  'bad-collateral',
  'bad-collateral-headers',
  'bad-collateral-signature',
  'bad-composite',
  'bad-crl',
  'bad-endorsement-certificate',
  'bad-evidence',
  'bad-expected-nonce',
  'bad-expected-report-data',
  'bad-key',
  'bad-length',
  'bad-magic',
  'bad-measurement',
  'bad-measurement-block',
  'bad-ocsp',
  'bad-opaque-data',
  'bad-options',
  'bad-pck-extension',
  'bad-pcr-selection',
  'bad-public-key',
  'bad-qe-report-signature',
  'bad-report-data',
  'bad-rim',
  'bad-runtime-data',
  'bad-signature',
  'bad-signature-encoding',
  'bad-spdm-code',
  'bad-structure',
  'certificate-expired',
  'certificate-revoked',
  'chain-incomplete',
  'chain-loop',
  'chain-order',
  'chain-too-long',
  'chip-id-mismatch',
  'collateral-expired',
  'collateral-missing',
  'collateral-unavailable',
  'composite-bad-kind',
  'composite-no-report-data',
  'crl-expired',
  'crl-mismatch',
  'crl-signature',
  'crl-wrong-issuer',
  'ear-bad-profile',
  'ear-bad-signature',
  'ear-expired',
  'ear-malformed',
  'ear-no-expiry',
  'ear-nonce-mismatch',
  'ear-not-yet-valid',
  'fmspc-mismatch',
  'fwid-mismatch',
  'gpu-not-bound',
  'init-data-mismatch',
  'init-data-unbound',
  'invalid-pck-cert',
  'invalid-tcb-signing-cert',
  'issuer-not-ca',
  'missing-certificate-chain',
  'no-measurements',
  'no-opaque-data',
  'no-signing-key',
  'nonce-mismatch',
  'not-a-quote',
  'not-json',
  'ocsp-bad-signature',
  'ocsp-error',
  'ocsp-stale',
  'ocsp-unknown',
  'partial-measurements',
  'pceid-mismatch',
  'pcr-digest-mismatch',
  'pcr-missing',
  'private-key-in-evidence',
  'product-mismatch',
  'qe-identity-mismatch',
  'qe-report-data-mismatch',
  'report-data-mismatch',
  'reserved-nonzero',
  'reserved-platform-info-bit',
  'reserved-policy-bit',
  'rim-bad-signature',
  'rim-digest-mismatch',
  'rim-index-conflict',
  'rim-unsupported-algorithm',
  'runtime-data-mismatch',
  'slot-mismatch',
  'tcb-info-mismatch',
  'tcb-level-not-found',
  'tcb-mismatch',
  'td-quote-mismatch',
  'td-quote-missing',
  'td-quote-unverified',
  'tdx-module-mismatch',
  'too-large',
  'tpm-quote-missing',
  'trailing-bytes',
  'truncated',
  'unexpected-certificate',
  'unknown-format',
  'unknown-qe-vendor',
  'unsigned-request',
  'unsupported-body-type',
  'unsupported-certification-data',
  'unsupported-collateral',
  'unsupported-gpu',
  'unsupported-hash',
  'unsupported-key-type',
  'unsupported-kind',
  'unsupported-opaque-version',
  'unsupported-pcr-selection',
  'unsupported-product',
  'unsupported-report-type',
  'unsupported-signature-algo',
  'unsupported-spdm-version',
  'unsupported-tee-type',
  'unsupported-version',
  'untrusted-root',
  'wrong-key-kind',
  'wrong-report-type',
  'wrong-tee',
  'wrong-tee-type',
] as const;
export type AttestationErrorCode = (typeof ATTESTATION_ERROR_CODES)[number];

/**
 * Every verifier failure is one of these, never a bare Error: `code` (from the closed list above) is
 * stable for tests, logs and callers' decisions, `message` is the sentence for humans.
 */
export class AttestationError extends Error {
  override name = 'AttestationError';
  constructor(
    readonly stage: Stage,
    readonly code: AttestationErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Reference values and platform rules a caller brings to appraisal. Without reference values a
 * verifier judges only what the evidence proves on its own (genuine chain, fresh collateral, TCB,
 * debug off) and lists the measurements it could not judge.
 */
export interface AppraisalPolicy {
  /** Claim name → acceptable values (lower-case hex for byte strings). A mismatch is contraindicated. */
  referenceValues?: Record<string, string[]>;
  /** Debug TEEs are contraindicated unless this is set. */
  allowDebug?: boolean;
  /** TCB statuses judged affirming (default ['UpToDate']); any other status is at least a warning. */
  acceptTcbStatus?: string[];
}

/** A vendor collateral item: where it lives online and the names it may have in an offline folder. */
export interface CollateralRequest {
  url: string;
  files: string[];
}

export interface CollateralItem {
  body: Uint8Array;
  /** HTTP response headers, lower-case names (Intel PCS sends issuer chains in headers). */
  headers: Record<string, string>;
}

/** Where verifiers get collateral: a folder, an on-disk cache, the vendor services, or a chain of them. */
export interface CollateralSource {
  get(req: CollateralRequest): Promise<CollateralItem | undefined>;
}

export interface VerifyOptions {
  /** Verification time: certificates, CRLs and collateral must all be valid at this instant. */
  at: Date;
  collateral: CollateralSource;
  policy?: AppraisalPolicy;
  /** When set, the evidence's report data must equal this (zero-padded to the field). */
  expectedReportData?: Uint8Array;
  /**
   * Replacement trust anchors (PEM or DER) for this kind, e.g. the test authority's root. Production
   * callers leave this unset and get the vendor roots bundled with Cloister.
   */
  trustAnchors?: Uint8Array[];
  /**
   * Where verified chains, CRLs and collateral are remembered between calls (`createVerifierContext()`);
   * default: the registry's context, or the shared default context.
   */
  context?: VerifierContext;
}

/** What every TEE kind module exports for dispatch by the CLI, the key broker and composite evidence. */
export interface KindVerifier {
  kind: TeeKind;
  /** parse → verify → appraise in one call; stage failures are AttestationErrors. */
  appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal>;
}
