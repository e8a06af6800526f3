/**
 * SEV-SNP appraisal: turns a verified report into EAR claims, judges the guest policy, VMPL and TCB
 * against platform rules, and the measurements against the caller's reference values.
 */

import { equalBytes, isAllZero, toHex } from '../../util/index.js';
import { AFFIRM, judgeReferenceValues } from '../common/appraise.js';
import {
  type Appraisal,
  type AppraisalPolicy,
  AttestationError,
  type EarStatus,
  type Finding,
  type TrustVector,
  worseStatus,
} from '../common/types.js';
import type { TcbVersion } from './report.js';
import type { VerifiedReport } from './verify.js';

export interface SnpAppraiseOptions {
  policy?: AppraisalPolicy;
  expectedReportData?: Uint8Array;
}

/** AR4SI values: affirming, warning, contraindicated. */
const WARN = 32;
const CONTRA = 96;

/** TCB statuses this verifier reports (AMD publishes no TCB-status service; these are derived). */
export type SnpTcbStatus = 'UpToDate' | 'ReportedTcbOutOfDate' | 'ProvisionalFirmware' | 'Inconsistent';

/** Claims judged by reference values and the trust-vector entry they affect. */
const REFERENCE_CLAIMS: Record<string, keyof TrustVector> = {
  measurement: 'executables',
  host_data: 'configuration',
  family_id: 'configuration',
  image_id: 'configuration',
  id_key_digest: 'configuration',
  author_key_digest: 'configuration',
  guest_svn: 'executables',
  vmpl: 'configuration',
  report_data: 'configuration',
  chip_id: 'instance_identity',
  policy: 'configuration',
  product: 'hardware',
  signing_key: 'hardware',
  reported_tcb: 'hardware',
  current_tcb: 'hardware',
  committed_tcb: 'hardware',
  launch_tcb: 'hardware',
  csp_id: 'hardware',
};

function tcbClaim(t: TcbVersion): Record<string, unknown> {
  return { ...t };
}

const COMPONENTS = ['fmc', 'bootloader', 'tee', 'snp', 'microcode'] as const;

function anyAbove(a: TcbVersion, b: TcbVersion): boolean {
  return COMPONENTS.some((c) => (a[c] ?? 0) > (b[c] ?? 0));
}

function anyBelow(a: TcbVersion, b: TcbVersion): boolean {
  return COMPONENTS.some((c) => (a[c] ?? 0) < (b[c] ?? 0));
}

/**
 * How the reported TCB (the one the VCEK was derived for) relates to what the platform runs. Keys
 * can only be derived for TCBs at or below the running one, so a reported or committed TCB above
 * CURRENT_TCB cannot come from genuine firmware.
 */
export function tcbStatus(v: VerifiedReport): SnpTcbStatus {
  if (anyAbove(v.reportedTcb, v.currentTcb) || anyAbove(v.committedTcb, v.currentTcb)) return 'Inconsistent';
  if (anyBelow(v.reportedTcb, v.committedTcb)) return 'ReportedTcbOutOfDate';
  if (anyBelow(v.committedTcb, v.currentTcb)) return 'ProvisionalFirmware';
  return 'UpToDate';
}

export function snpClaims(v: VerifiedReport): Record<string, unknown> {
  const r = v.report;
  const fw = (f: { major: number; minor: number; build: number }) => `${f.major}.${f.minor}.${f.build}`;
  return {
    version: r.version,
    product: v.product,
    signing_key: v.signingKey,
    endorsement_key_product_name: v.endorsementKey.productName,
    ...(v.endorsementKey.cspId !== undefined ? { csp_id: v.endorsementKey.cspId } : {}),
    guest_svn: r.guestSvn,
    policy: r.policyRaw.toString(16).padStart(16, '0'),
    policy_decoded: { ...r.policy },
    family_id: toHex(r.familyId),
    image_id: toHex(r.imageId),
    vmpl: r.vmpl,
    signature_algo: r.signatureAlgo,
    platform_info: r.platformInfoRaw.toString(16).padStart(16, '0'),
    platform_info_decoded: { ...r.platformInfo },
    author_key_en: r.signerInfo.authorKeyEn,
    mask_chip_key: r.signerInfo.maskChipKey,
    report_data: toHex(r.reportData),
    measurement: toHex(r.measurement),
    host_data: toHex(r.hostData),
    id_key_digest: toHex(r.idKeyDigest),
    author_key_digest: toHex(r.authorKeyDigest),
    report_id: toHex(r.reportId),
    report_id_ma: toHex(r.reportIdMa),
    chip_id: toHex(r.chipId),
    chip_id_masked: isAllZero(r.chipId),
    ...(r.cpuid ? { cpuid: { ...r.cpuid } } : {}),
    current_tcb: tcbClaim(v.currentTcb),
    reported_tcb: tcbClaim(v.reportedTcb),
    committed_tcb: tcbClaim(v.committedTcb),
    launch_tcb: tcbClaim(v.launchTcb),
    tcb_status: tcbStatus(v),
    current_firmware: fw(r.currentVersion),
    committed_firmware: fw(r.committedVersion),
    ...(r.launchMitVector !== undefined
      ? {
          launch_mit_vector: r.launchMitVector.toString(16).padStart(16, '0'),
          current_mit_vector: r.currentMitVector!.toString(16).padStart(16, '0'),
        }
      : {}),
    revocation_checked: v.revocationChecked,
  };
}

export function appraiseReport(v: VerifiedReport, options: SnpAppraiseOptions = {}): Appraisal {
  const r = v.report;
  const policy = options.policy ?? {};
  if (options.expectedReportData) {
    const want = new Uint8Array(64);
    if (options.expectedReportData.length > 64) {
      throw new AttestationError(
        'appraise',
        'report-data-mismatch',
        'SEV-SNP: expected report data is longer than 64 bytes',
      );
    }
    want.set(options.expectedReportData);
    if (!equalBytes(want, r.reportData)) {
      throw new AttestationError(
        'appraise',
        'report-data-mismatch',
        `SEV-SNP: REPORT_DATA ${toHex(r.reportData)} is not the expected ${toHex(want)} (stale or replayed evidence, or a different key binding)`,
      );
    }
  }

  const claims = snpClaims(v);
  const findings: Finding[] = [];
  const tv: TrustVector = { hardware: AFFIRM, instance_identity: AFFIRM, configuration: AFFIRM };
  let status: EarStatus = 'affirming';
  const judge = (check: string, s: EarStatus, message: string, vector?: keyof TrustVector): void => {
    findings.push({ check, status: s, message });
    status = worseStatus(status, s);
    if (vector && (s === 'warning' || s === 'contraindicated')) {
      const value = s === 'warning' ? WARN : CONTRA;
      tv[vector] = Math.max(tv[vector] ?? 0, value);
    }
  };

  if (r.policy.debug) {
    if (policy.allowDebug) {
      judge(
        'policy.debug',
        'warning',
        'guest policy allows debugging (accepted because policy.allowDebug is set)',
        'configuration',
      );
    } else {
      judge(
        'policy.debug',
        'contraindicated',
        'guest policy allows debugging: the host can read and change guest memory; relaunch with DEBUG=0 or set policy.allowDebug',
        'configuration',
      );
    }
  }
  if (r.policy.migrateMa) {
    judge(
      'policy.migrate_ma',
      'warning',
      'guest policy allows a migration agent: the guest may be exported to another platform by the agent it is associated with',
      'configuration',
    );
  }
  if (!policy.referenceValues?.['vmpl'] && r.vmpl !== 0) {
    judge(
      'vmpl',
      'warning',
      `report requested at VMPL ${r.vmpl}; by default only VMPL 0 is expected (set referenceValues.vmpl to accept a paravisor/SVSM layout)`,
      'configuration',
    );
  }

  const tcb = tcbStatus(v);
  const accepted = policy.acceptTcbStatus ?? ['UpToDate'];
  if (tcb === 'Inconsistent') {
    judge(
      'tcb',
      'contraindicated',
      'TCB values are inconsistent: reported or committed TCB is newer than the running TCB',
      'hardware',
    );
  } else if (!accepted.includes(tcb)) {
    const why =
      tcb === 'ReportedTcbOutOfDate'
        ? `the report is signed with a key for an older TCB (reported ${v.reportedTcb.raw}, committed ${v.committedTcb.raw}); the host chose to report a TCB below what the platform runs`
        : `the running firmware is newer than the committed TCB (committed ${v.committedTcb.raw}, current ${v.currentTcb.raw}); an update can still be rolled back`;
    judge('tcb', 'warning', `TCB status ${tcb}: ${why}`, 'hardware');
  }
  if (!v.revocationChecked) {
    judge(
      'revocation',
      'warning',
      `no ${v.signingKey.toUpperCase()} CRL for ${v.product} was available at this time: ASK/ASVK revocation was not checked; supply AMD KDS's crl`,
      'hardware',
    );
  }

  const refs = policy.referenceValues ?? {};
  judgeReferenceValues({ refs, claims, vectors: REFERENCE_CLAIMS, what: 'SEV-SNP', judge, findings, tv });
  if (!refs['measurement']) {
    findings.push({
      check: 'reference.measurement',
      status: 'none',
      message: 'no reference value for the launch measurement: the guest image was not judged',
    });
  }
  return { kind: 'snp', status, trustVector: tv, claims, findings };
}
