/**
 * Appraisal shared by TDX and SGX: TCB status → EAR status and AR4SI hardware claim, debug policy,
 * report-data binding and reference values. The kind modules supply the claims and which of them are
 * measurements.
 */

import { equalBytes, toHex } from '../../util/index.js';
import { AFFIRM, judgeReferenceValues } from '../common/appraise.js';
import {
  type Appraisal,
  type AppraisalPolicy,
  AttestationError,
  type EarStatus,
  type Finding,
  type TeeKind,
  type TrustVector,
  worseStatus,
} from '../common/types.js';
import type { TcbEvaluation, TcbStatus } from './tcb.js';
import type { VerifiedQuote } from './verify.js';

export interface IntelAppraiseOptions {
  policy?: AppraisalPolicy;
  /** Must equal the report data (zero-padded to 64 bytes) or appraisal fails with 'report-data-mismatch'. */
  expectedReportData?: Uint8Array;
}

const WARN = 32;
const CONTRA = 96;

/**
 * What each TCB status means for a relying party. OutOfDate is a warning, not a refusal: Intel's QVL
 * returns it as a completed verification with a non-terminal result (the platform is genuine but
 * lacks security updates), and AR4SI's hardware claim 32 ("genuine, known vulnerabilities") says
 * exactly that. Only Revoked is contraindicated; policy.acceptTcbStatus can raise the others.
 */
const TCB_ADVICE: Record<TcbStatus, string> = {
  UpToDate: 'the platform TCB is up to date',
  SWHardeningNeeded:
    'the platform is up to date but the workload needs software mitigations for the listed advisories',
  ConfigurationNeeded:
    'the platform needs BIOS/configuration changes to be fully mitigated against the listed advisories',
  ConfigurationAndSWHardeningNeeded:
    'the platform needs BIOS/configuration changes and the workload software mitigations for the listed advisories',
  OutOfDate:
    'the platform is genuine but lacks microcode/firmware/TDX module updates for the listed advisories',
  OutOfDateConfigurationNeeded:
    'the platform lacks microcode/firmware updates and needs configuration changes for the listed advisories',
  TDRelaunchAdvised:
    'the TDX module was updated in place; relaunch the TD to run under the up-to-date module',
  TDRelaunchAdvisedConfigurationNeeded:
    'the TDX module was updated in place; relaunch the TD, and the platform needs configuration changes',
  Revoked: 'the platform TCB (or its quoting enclave) is revoked by Intel and must not be trusted',
};

export interface KindClaims {
  kind: TeeKind;
  claims: Record<string, unknown>;
  /** Reference-value claim → the trust-vector entry a mismatch affects. */
  referenceClaims: Record<string, keyof TrustVector>;
  /** The claim without whose reference value the workload is "not judged". */
  mainMeasurement: string;
  debug: boolean;
  reportData: Uint8Array;
  /** Kind-specific points that are not affirming (judged unless a reference value covers the claim). */
  concerns?: {
    check: string;
    claim: string;
    status: EarStatus;
    message: string;
    vector: keyof TrustVector;
  }[];
}

export function tcbClaims(v: VerifiedQuote, t: TcbEvaluation): Record<string, unknown> {
  return {
    tcb_status: t.status,
    advisory_ids: t.advisoryIds,
    platform_tcb_status: t.platformStatus,
    ...(t.tdxModuleStatus ? { tdx_module_tcb_status: t.tdxModuleStatus } : {}),
    qe_tcb_status: t.qeStatus,
    tcb_date: t.tcbDate,
    tcb_evaluation_data_number: v.tcbInfo.tcbEvaluationDataNumber,
    fmspc: toHex(v.pck.fmspc),
    pce_id: toHex(v.pck.pceId),
    sgx_type: v.pck.sgxType,
    pck_tcb: {
      sgx_components: v.pck.tcb.components,
      pcesvn: v.pck.tcb.pcesvn,
      cpusvn: toHex(v.pck.tcb.cpusvn),
    },
    qe_isv_svn: v.quote.qeReport.isvSvn,
    quote_version: v.quote.header.version,
    collateral_valid_until: v.collateralValidUntil.toISOString(),
  };
}

export function checkReportData(have: Uint8Array, expected: Uint8Array | undefined, what: string): void {
  if (!expected) return;
  if (expected.length > have.length) {
    throw new AttestationError(
      'appraise',
      'report-data-mismatch',
      `${what}: expected report data is longer than ${have.length} bytes`,
    );
  }
  const want = new Uint8Array(have.length);
  want.set(expected);
  if (!equalBytes(want, have)) {
    throw new AttestationError(
      'appraise',
      'report-data-mismatch',
      `${what}: REPORT_DATA ${toHex(have)} is not the expected ${toHex(want)} (stale or replayed evidence, or another key binding)`,
    );
  }
}

export function appraiseIntel(t: TcbEvaluation, k: KindClaims, options: IntelAppraiseOptions): Appraisal {
  const what = k.kind.toUpperCase();
  checkReportData(k.reportData, options.expectedReportData, what);
  const policy = options.policy ?? {};
  const claims = k.claims;
  const findings: Finding[] = [];
  const tv: TrustVector = { hardware: AFFIRM, instance_identity: AFFIRM, configuration: AFFIRM };
  let status: EarStatus = 'affirming';
  const judge = (check: string, s: EarStatus, message: string, vector: keyof TrustVector): void => {
    findings.push({ check, status: s, message });
    status = worseStatus(status, s);
    if (s === 'warning' || s === 'contraindicated')
      tv[vector] = Math.max(tv[vector] ?? 0, s === 'warning' ? WARN : CONTRA);
  };

  const advisories = t.advisoryIds.length ? ` (${t.advisoryIds.join(', ')})` : '';
  const accepted = policy.acceptTcbStatus ?? ['UpToDate'];
  if (t.status === 'Revoked') {
    judge('tcb', 'contraindicated', `TCB status Revoked: ${TCB_ADVICE.Revoked}${advisories}`, 'hardware');
  } else if (accepted.includes(t.status)) {
    findings.push({
      check: 'tcb',
      status: 'affirming',
      message:
        t.status === 'UpToDate'
          ? `TCB status UpToDate${advisories}`
          : `TCB status ${t.status} accepted by policy: ${TCB_ADVICE[t.status]}${advisories}`,
    });
  } else {
    judge('tcb', 'warning', `TCB status ${t.status}: ${TCB_ADVICE[t.status]}${advisories}`, 'hardware');
  }

  if (k.debug) {
    if (policy.allowDebug) {
      judge(
        'debug',
        'warning',
        `${what} runs in debug mode (accepted because policy.allowDebug is set)`,
        'configuration',
      );
    } else {
      judge(
        'debug',
        'contraindicated',
        `${what} runs in debug mode: the host can read and change its memory; launch it without debug or set policy.allowDebug`,
        'configuration',
      );
    }
  }

  const refs = policy.referenceValues ?? {};
  for (const c of k.concerns ?? []) if (!refs[c.claim]) judge(c.check, c.status, c.message, c.vector);
  judgeReferenceValues({ refs, claims, vectors: k.referenceClaims, what, judge, findings, tv });
  if (!refs[k.mainMeasurement]) {
    findings.push({
      check: `reference.${k.mainMeasurement}`,
      status: 'none',
      message: `no reference value for ${k.mainMeasurement}: the workload was not judged`,
    });
  }
  return { kind: k.kind, status, trustVector: tv, claims, findings };
}
