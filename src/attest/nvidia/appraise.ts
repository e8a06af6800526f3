/**
 * Appraise stage for a verified GPU report: claims in NVIDIA's vocabulary (hwmodel, ueid, driver and
 * VBIOS versions, measurements, CC feature), the RIM comparison, the confidential-computing mode and the
 * caller's reference values, folded into an EAR status and AR4SI trust vector.
 */

import { toHex } from '../../util/index.js';
import type { Appraisal, AppraisalPolicy, EarStatus, Finding, TrustVector } from '../common/types.js';
import { worseStatus } from '../common/types.js';
import type { ReportedCcMode } from './evidence.js';
import { compareMeasurements, type MeasurementComparison } from './measurements.js';
import type { RevocationResult } from './ocsp.js';
import { opaqueFieldName } from './opaque.js';
import type { VerifiedRim } from './rim.js';
import type { VerifiedGpuReport } from './verify.js';

const AFFIRMING = 2;
const CONTRAINDICATED = 96;

export interface GpuAppraisalInput {
  verified: VerifiedGpuReport;
  driverRim?: VerifiedRim;
  vbiosRim?: VerifiedRim;
  /** The CC mode the agent read from NVML (unsigned): 'off' or 'devtools' is contraindicated. */
  reportedCcMode?: ReportedCcMode;
  /** OCSP outcome; undefined = revocation not attempted. */
  revocation?: RevocationResult;
  policy?: AppraisalPolicy;
}

export function appraiseGpuReport(input: GpuAppraisalInput): Appraisal {
  const { verified, policy } = input;
  const { report } = verified;
  const opaque = report.response.opaqueData;
  const findings: Finding[] = [];
  const tv: TrustVector = { hardware: AFFIRMING, instance_identity: verified.nonceChecked ? AFFIRMING : 0 };

  const measurements: Record<string, string> = {};
  for (const b of report.response.blocks) measurements[String(b.index)] = toHex(b.value);
  const opaqueClaims: Record<string, string> = {};
  for (const [type, value] of opaque.fields) opaqueClaims[opaqueFieldName(type)] = toHex(value);

  const claims: Record<string, unknown> = {
    arch: verified.arch,
    hwmodel: verified.hwModel,
    ueid: verified.ueid,
    driver_version: opaque.driverVersion ?? null,
    vbios_version: opaque.vbiosVersion ?? null,
    project: opaque.project ?? null,
    project_sku: opaque.projectSku ?? null,
    chip_sku: opaque.chipSku ?? null,
    fwid: opaque.fwid ? toHex(opaque.fwid) : null,
    nonce: toHex(report.request.nonce),
    responder_nonce: toHex(report.response.responderNonce),
    spdm_version: '1.1',
    opaque_data_version: opaque.opaqueDataVersion,
    cc_feature: opaque.featureFlag
      ? (opaque.featureFlag.name ?? `unknown(${opaque.featureFlag.value})`)
      : null,
    cc_mode_reported: input.reportedCcMode ?? null,
    nvdec0_status: opaque.nvdec0Status === undefined ? null : opaque.nvdec0Status.toString(16),
    measurements,
    opaque: opaqueClaims,
    cert_chain: verified.chain.path.map((c) => c.subject),
  };

  if (!verified.nonceChecked) {
    findings.push({
      check: 'nonce',
      status: 'none',
      message: 'freshness not checked: no expected nonce was given',
    });
  }
  const unchecked = input.revocation?.unchecked;
  claims['ocsp_good'] = input.revocation?.checked ?? [];
  if (!input.revocation || (unchecked && unchecked.length > 0)) {
    findings.push({
      check: 'revocation',
      status: 'none',
      message: unchecked
        ? `OCSP status not checked (no response supplied) for: ${unchecked.map((s) => `"${s}"`).join(', ')}`
        : 'OCSP status of the GPU and RIM certificates was not checked',
    });
  }

  // Confidential-computing mode: the signed FEATURE_FLAG (opaque data v1+) names the CC mode; older
  // firmware has no signed flag, and then the RIM measurements (taken in CC mode) stand for it.
  let configuration = 0;
  if (opaque.featureFlag && !opaque.featureFlag.name) {
    findings.push({
      check: 'cc-mode',
      status: 'contraindicated',
      message: `the GPU reports an unknown confidential-computing feature flag ${opaque.featureFlag.value}`,
    });
    configuration = CONTRAINDICATED;
  } else if (input.reportedCcMode && input.reportedCcMode !== 'on') {
    findings.push({
      check: 'cc-mode',
      status: 'contraindicated',
      message: `confidential computing is ${input.reportedCcMode === 'off' ? 'off' : 'in DevTools (debug) mode'} on this GPU`,
    });
    configuration = CONTRAINDICATED;
  } else if (opaque.featureFlag) {
    configuration = AFFIRMING;
  }

  // Reference integrity manifests.
  const rims: { driver?: VerifiedRim; vbios?: VerifiedRim } = {
    driver: input.driverRim,
    vbios: input.vbiosRim,
  };
  const usable: { driver?: VerifiedRim['rim']; vbios?: VerifiedRim['rim'] } = {};
  for (const source of ['driver', 'vbios'] as const) {
    const v = rims[source];
    const label = source === 'driver' ? 'driver' : 'VBIOS';
    const reported = source === 'driver' ? opaque.driverVersion : opaque.vbiosVersion;
    if (!v) {
      findings.push({
        check: `${source}-rim`,
        status: 'none',
        message: `${label} measurements not judged: no ${label} RIM${reported ? ` for ${reported}` : ''} was available`,
      });
      continue;
    }
    claims[`${source}_rim`] = {
      version: v.rim.version,
      tag_id: v.rim.tagId,
      signer: v.chain.path[0]!.subject,
    };
    if (!reported || v.rim.version.toLowerCase() !== reported.toLowerCase()) {
      findings.push({
        check: `${source}-rim`,
        status: 'contraindicated',
        message: `the ${label} RIM is for version ${v.rim.version}, but the GPU runs ${reported ?? '(no version reported)'}`,
      });
      continue;
    }
    usable[source] = v.rim;
  }
  let comparison: MeasurementComparison | undefined;
  if (usable.driver || usable.vbios) {
    comparison = compareMeasurements(report, usable);
    claims['measurements_compared'] = comparison.compared;
    claims['measurements_mismatched'] = comparison.mismatches.map((m) => m.index);
    claims['measurements_skipped'] = comparison.skipped;
    if (comparison.mismatches.length > 0) {
      const list = comparison.mismatches.map((m) => `${m.index} (${m.source})`).join(', ');
      findings.push({
        check: 'measurements',
        status: 'contraindicated',
        message: `GPU measurements differ from the golden values at RIM indices ${list}`,
      });
    }
  }
  const bothJudged = usable.driver !== undefined && usable.vbios !== undefined;
  tv.executables =
    comparison && comparison.mismatches.length > 0 ? CONTRAINDICATED : bothJudged ? AFFIRMING : 0;
  if (configuration === 0 && bothJudged && comparison?.mismatches.length === 0) configuration = AFFIRMING;
  if (configuration === 0) {
    findings.push({
      check: 'cc-mode',
      status: 'none',
      message:
        'confidential-computing mode not proven: the report has no signed CC feature flag and the measurements were not fully judged',
    });
  }
  tv.configuration = configuration;

  for (const [name, accepted] of Object.entries(policy?.referenceValues ?? {})) {
    const actual = referenceClaim(claims, name);
    if (actual === undefined || !accepted.map((a) => a.toLowerCase()).includes(actual.toLowerCase())) {
      findings.push({
        check: `reference:${name}`,
        status: 'contraindicated',
        message: `${name} is ${actual ?? '(absent)'}, not one of the reference values ${accepted.join(', ')}`,
      });
      if (name.startsWith('measurement')) tv.executables = CONTRAINDICATED;
      else tv.configuration = CONTRAINDICATED;
    }
  }

  let status: EarStatus = 'affirming';
  for (const f of findings) status = worseStatus(status, f.status);
  return { kind: 'nvidia', status, trustVector: tv, claims, findings };
}

/** Reference-value names: any top-level string claim, or `measurement.<SPDM index>`. */
function referenceClaim(claims: Record<string, unknown>, name: string): string | undefined {
  const m = /^measurements?\.(\d+)$/.exec(name);
  if (m) return (claims['measurements'] as Record<string, string>)[m[1]!];
  const v = claims[name];
  return typeof v === 'string' ? v : undefined;
}
