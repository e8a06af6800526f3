/**
 * The `sample` TEE in Confidential Containers' form: what guest-components' sample attester sends and
 * Trustee's sample verifier reads, `{"svn": "1", "report_data": standard base64}`. It is not signed and
 * carries no measurement, so it proves even less than Cloister's own sample evidence (evidence.ts):
 * it is accepted so that an unmodified CoCo guest can run the protocol against a dev-mode broker, and
 * is appraised as insecure like every sample evidence.
 *
 * Report data: guest-components passes the 48-byte SHA-384 runtime-data digest unpadded, and Trustee
 * compares it byte for byte with the digest; Cloister pads report data to the 64-byte field every
 * hardware TEE has. Both spellings are accepted here (compared after zero-padding to 64 bytes), and
 * `cocoSampleEvidence` writes the 48-byte form Trustee's verifier requires.
 */
import { fromBase64, toBase64, toHex, utf8 } from '../../util/index.js';
import {
  type Appraisal,
  type AppraisalPolicy,
  AttestationError,
  type AttestationErrorCode,
  type Finding,
  REPORT_DATA_SIZE,
} from '../common/types.js';
import { INSECURE_MESSAGE } from './appraise.js';
import { MAX_EVIDENCE_SIZE } from './evidence.js';
import { padReportData } from './verify.js';

/** The svn guest-components' sample attester reports. */
export const COCO_SAMPLE_SVN = '1';
/** The digest size of the runtime data (SHA-384) that Trustee's sample verifier compares exactly. */
export const COCO_SAMPLE_REPORT_DATA_SIZE = 48;

export interface ParsedCocoSampleEvidence {
  svn: string;
  /** Report data as carried (not yet zero-padded). */
  reportData: Uint8Array;
}

function fail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('parse', code, message);
}

const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The JSON object, when `bytes` is CoCo-form sample evidence (an object with `svn` and no `tee`). */
export function asCocoSampleEvidence(bytes: Uint8Array): Record<string, unknown> | undefined {
  if (bytes.length > MAX_EVIDENCE_SIZE) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return undefined;
  const o = json as Record<string, unknown>;
  return 'svn' in o && !('tee' in o) ? o : undefined;
}

export function parseCocoSampleEvidence(o: Record<string, unknown>): ParsedCocoSampleEvidence {
  const extra = Object.keys(o).filter((k) => k !== 'svn' && k !== 'report_data');
  if (extra.length > 0)
    fail('bad-structure', `CoCo sample evidence has only svn and report_data, not ${extra.join(', ')}`);
  if (typeof o.svn !== 'string' || o.svn.length === 0 || o.svn.length > 64)
    fail('bad-structure', 'CoCo sample evidence svn must be a short non-empty string');
  // Trustee's verifier defaults a missing report_data to "" (which then matches no digest).
  const rd = o.report_data ?? '';
  if (typeof rd !== 'string' || !STD_BASE64.test(rd))
    fail('bad-structure', 'CoCo sample evidence report_data must be standard (padded) base64');
  const reportData = fromBase64(rd);
  if (reportData.length > REPORT_DATA_SIZE)
    fail('bad-report-data', `sample report_data is ${reportData.length} bytes; at most 64 are allowed`);
  return { svn: o.svn, reportData };
}

export function appraiseCocoSampleEvidence(
  parsed: ParsedCocoSampleEvidence,
  options: { expectedReportData?: Uint8Array; policy?: AppraisalPolicy },
): Appraisal {
  const reportData = padReportData(parsed.reportData, 'sample report_data');
  const findings: Finding[] = [{ check: 'insecure', status: 'warning', message: INSECURE_MESSAGE }];
  if (options.expectedReportData !== undefined) {
    const expected = padReportData(options.expectedReportData, 'expected report data');
    if (toHex(expected) !== toHex(reportData)) {
      throw new AttestationError(
        'verify',
        'report-data-mismatch',
        `sample report_data ${toHex(reportData)} is not the expected ${toHex(expected)}: the evidence answers ` +
          'another challenge (replayed or produced for another session)',
      );
    }
  } else {
    findings.push({
      check: 'report_data',
      status: 'none',
      message:
        'report data not compared: no expected report data was given, so freshness is up to the caller',
    });
  }
  const accepted = options.policy?.referenceValues?.measurement;
  if (accepted !== undefined) {
    findings.push({
      check: 'measurement',
      status: 'contraindicated',
      message: 'CoCo sample evidence carries no measurement, and the policy names reference values for one',
    });
  }
  const judged = findings.filter((f) => f.status !== 'none').map((f) => f.status);
  return {
    kind: 'sample',
    status: judged.includes('contraindicated') ? 'contraindicated' : 'warning',
    // AR4SI 32: unsafe hardware. Nothing else is known about a CoCo sample "TEE".
    trustVector: { hardware: 32 },
    claims: {
      tee: 'sample',
      insecure: true,
      format: 'coco',
      svn: parsed.svn,
      report_data: toHex(reportData),
    },
    findings,
    insecure: true,
  };
}

/**
 * CoCo-form sample evidence for report data, as guest-components' sample attester writes it and
 * Trustee's sample verifier requires it: the 48-byte digest, unpadded, in standard base64. Longer
 * report data (Cloister's 64-byte field) is cut back to the digest, which must be followed by zeros.
 */
export function cocoSampleEvidence(reportData: Uint8Array): { svn: string; report_data: string } {
  if (reportData.length > COCO_SAMPLE_REPORT_DATA_SIZE) {
    if (reportData.subarray(COCO_SAMPLE_REPORT_DATA_SIZE).some((b) => b !== 0))
      throw new RangeError('CoCo sample report data is a 48-byte digest; the bytes after it must be zero');
  }
  return {
    svn: COCO_SAMPLE_SVN,
    report_data: toBase64(reportData.subarray(0, COCO_SAMPLE_REPORT_DATA_SIZE)),
  };
}
