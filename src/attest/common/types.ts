/**
 * Types shared by every verifier. Each TEE kind is three stages with their own types:
 *   parse(bytes) → Parsed<Kind>          (structure only, every length checked)
 *   verify(parsed, options) → Verified   (signatures, chains, revocation, collateral at `at`)
 *   appraise(verified, policy) → Appraisal (claims against reference values and policy)
 */

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
 * Every verifier failure is one of these, never a bare Error: `code` is stable for tests and logs,
 * `message` is the sentence for humans.
 */
export class AttestationError extends Error {
  override name = 'AttestationError';
  constructor(
    readonly stage: Stage,
    readonly code: string,
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
}

/** What every TEE kind module exports for dispatch by the CLI, the key broker and composite evidence. */
export interface KindVerifier {
  kind: TeeKind;
  /** parse → verify → appraise in one call; stage failures are AttestationErrors. */
  appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal>;
}
