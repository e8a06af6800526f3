/**
 * The `sample` TEE: software-only, for demos and tests, insecure by construction. Its verifier checks
 * the evidence's own signature and report data and then always reports it as insecure (status at best
 * `warning`), so that no default policy ever treats it as a real TEE.
 */
import type { Appraisal, KindVerifier, VerifyOptions } from '../common/types.js';
import { appraiseSampleEvidence } from './appraise.js';
import { appraiseCocoSampleEvidence, asCocoSampleEvidence, parseCocoSampleEvidence } from './coco.js';
import { parseSampleEvidence } from './evidence.js';
import { verifySampleEvidence } from './verify.js';

export { appraiseSampleEvidence, INSECURE_MESSAGE } from './appraise.js';
export { createSampleAttester, type SampleAttester, type SampleAttesterOptions } from './attester.js';
export {
  asCocoSampleEvidence,
  COCO_SAMPLE_REPORT_DATA_SIZE,
  cocoSampleEvidence,
  type ParsedCocoSampleEvidence,
  parseCocoSampleEvidence,
} from './coco.js';
export {
  type ParsedSampleEvidence,
  parseSampleEvidence,
  SAMPLE_HOST_DATA_SIZE,
  type SampleEvidenceBody,
  type SamplePublicJwk,
} from './evidence.js';
export { type VerifiedSampleEvidence, verifySampleEvidence } from './verify.js';

export const sampleVerifier: KindVerifier = {
  kind: 'sample',
  async appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal> {
    // guest-components' sample attester sends {svn, report_data}; Cloister's own form is signed.
    const coco = asCocoSampleEvidence(evidence);
    if (coco) return appraiseCocoSampleEvidence(parseCocoSampleEvidence(coco), options);
    const parsed = parseSampleEvidence(evidence);
    const verified = await verifySampleEvidence(parsed, options);
    return appraiseSampleEvidence(verified, options.policy);
  },
};
