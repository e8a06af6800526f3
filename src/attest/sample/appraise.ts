/**
 * Appraise stage of the `sample` TEE. A sample TEE is software pretending to be a TEE, so its appraisal
 * is never affirming: it always carries `insecure: true`, an `insecure` finding at `warning`, and a
 * hardware trust claim of 32 (AR4SI "unsafe hardware"). Every default policy downstream (key broker,
 * client SDK) refuses anything below affirming, hence refuses sample evidence.
 */
import { toHex } from '../../util/index.js';
import { judgeReferenceValues } from '../common/appraise.js';
import {
  type Appraisal,
  type AppraisalPolicy,
  type Finding,
  type TrustVector,
  worseStatus,
} from '../common/types.js';
import type { VerifiedSampleEvidence } from './verify.js';

/** AR4SI values used here (draft-ietf-rats-ar4si §2.3). */
const AFFIRMING = 2;
const HARDWARE_UNSAFE = 32;
const CONFIG_UNSAFE = 32;
const CONTRAINDICATED = 96;

export const INSECURE_MESSAGE =
  'sample is a software-only TEE for demos: its key lives in ordinary memory and nothing protects the ' +
  'workload; never release secrets to it';

export function appraiseSampleEvidence(
  verified: VerifiedSampleEvidence,
  policy: AppraisalPolicy = {},
): Appraisal {
  const { parsed } = verified;
  const findings: Finding[] = [{ check: 'insecure', status: 'warning', message: INSECURE_MESSAGE }];
  const trustVector: TrustVector = { hardware: HARDWARE_UNSAFE };

  if (!parsed.debug) {
    trustVector.configuration = AFFIRMING;
    findings.push({ check: 'debug', status: 'affirming', message: 'debug is off' });
  } else if (policy.allowDebug) {
    trustVector.configuration = CONFIG_UNSAFE;
    findings.push({
      check: 'debug',
      status: 'warning',
      message: 'debug is on (allowed by policy.allowDebug)',
    });
  } else {
    trustVector.configuration = CONTRAINDICATED;
    findings.push({
      check: 'debug',
      status: 'contraindicated',
      message: 'debug is on; set policy.allowDebug only for development',
    });
  }

  const accepted = policy.referenceValues?.measurement;
  if (accepted === undefined) {
    findings.push({
      check: 'measurement',
      status: 'none',
      message: `measurement ${parsed.measurement} not judged: no reference value for "measurement" in the policy`,
    });
  } else if (accepted.map((v) => v.toLowerCase()).includes(parsed.measurement)) {
    trustVector.executables = AFFIRMING;
    findings.push({
      check: 'measurement',
      status: 'affirming',
      message: 'measurement matches a reference value',
    });
  } else {
    trustVector.executables = CONTRAINDICATED;
    findings.push({
      check: 'measurement',
      status: 'contraindicated',
      message: `measurement ${parsed.measurement} is not among the ${accepted.length} reference value(s)`,
    });
  }

  // Other reference values (host_data, say) are judged as every hardware kind judges them: a name the
  // evidence does not carry is contraindicated rather than quietly passed over.
  judgeReferenceValues({
    refs: Object.fromEntries(
      Object.entries(policy.referenceValues ?? {}).filter(([name]) => name !== 'measurement'),
    ),
    claims: parsed.hostData !== undefined ? { host_data: parsed.hostData } : {},
    vectors: { host_data: 'configuration' },
    what: 'sample',
    judge: (check, status, message, vector) => {
      findings.push({ check, status, message });
      trustVector[vector] = CONTRAINDICATED;
    },
    findings,
    tv: trustVector,
  });

  if (!verified.reportDataChecked) {
    findings.push({
      check: 'report_data',
      status: 'none',
      message:
        'report data not compared: no expected report data was given, so freshness is up to the caller',
    });
  }

  const judged = findings.filter((f) => f.status !== 'none').map((f) => f.status);
  return {
    kind: 'sample',
    status: judged.reduce(worseStatus, 'none'),
    trustVector,
    claims: {
      tee: 'sample',
      insecure: true,
      report_data: toHex(verified.reportData),
      measurement: parsed.measurement,
      ...(parsed.hostData !== undefined ? { host_data: parsed.hostData } : {}),
      debug: parsed.debug,
      public_key_thumbprint: verified.keyThumbprint,
    },
    findings,
    insecure: true,
  };
}
