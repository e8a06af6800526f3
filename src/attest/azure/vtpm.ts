/**
 * Azure confidential VMs with a paravisor-hosted vTPM (`az-snp-vtpm`, `az-tdx-vtpm`). Chain of trust:
 * hardware root → hardware report (SNP report, or TD report proven by a TD quote) → REPORT_DATA starts
 * with hash(runtime JSON) → HCLAkPub in that JSON → vTPM quote over the PCRs and the verifier's nonce.
 */
import { equalBytes, isAllZero, toHex } from '../../util/index.js';
import {
  type Appraisal,
  type AppraisalPolicy,
  AttestationError,
  type AttestationErrorCode,
  type CollateralSource,
  type EarStatus,
  type Finding,
  type KindVerifier,
  type TrustVector,
  type VerifyOptions,
  worseStatus,
} from '../common/types.js';
import { appraiseReport } from '../snp/appraise.js';
import { type ParsedReport, parseReport } from '../snp/report.js';
import { type VerifiedReport, verifyReport } from '../snp/verify.js';
import { type AzureEvidence, parseAzureEvidence } from './evidence.js';
import { hashLength, type ParsedHclReport, parseHclReport, runtimeDataHash, tdReportFields } from './hcl.js';
import { parseTpmQuote, type TpmQuoteInfo, verifyTpmQuote } from './tpm.js';

export interface ParsedTpmQuote {
  message: Uint8Array;
  signature: Uint8Array;
  pcrs: Uint8Array[];
  info: TpmQuoteInfo;
}

export interface ParsedAzureVtpmEvidence {
  kind: 'az-snp-vtpm' | 'az-tdx-vtpm';
  hcl: ParsedHclReport;
  /** The SEV-SNP report inside the HCL report (az-snp-vtpm). */
  snp?: ParsedReport;
  /** REPORT_DATA and MRTD of the TDREPORT inside the HCL report (az-tdx-vtpm). */
  tdReport?: { reportData: Uint8Array; mrtd: Uint8Array };
  tpmQuote?: ParsedTpmQuote;
  vcek?: Uint8Array;
  tdQuote?: Uint8Array;
}

/**
 * Verifies a TDX quote (signatures, PCK chain, collateral, TCB) and returns what it attests. Supplied by
 * the TDX verifier; this module only checks that the quote is the one the HCL report describes.
 */
export type VerifyTdQuote = (
  quote: Uint8Array,
  options: VerifyOptions,
) => Promise<{ reportData: Uint8Array; mrtd?: Uint8Array; appraisal?: Appraisal }>;

export interface VerifiedAzureVtpmEvidence {
  parsed: ParsedAzureVtpmEvidence;
  snp?: VerifiedReport;
  /** The TDX verifier's appraisal of the TD quote, when it gave one. */
  tdAppraisal?: Appraisal;
  /** Quoted PCR values by index; absent when the evidence carried no TPM quote. */
  pcrs?: Map<number, Uint8Array>;
}

export function parseAzureVtpmEvidence(
  input: Uint8Array | AzureEvidence,
  kind: 'az-snp-vtpm' | 'az-tdx-vtpm',
): ParsedAzureVtpmEvidence {
  const ev = input instanceof Uint8Array ? parseAzureEvidence(input) : input;
  const hcl = parseHclReport(ev.hclReport);
  const want = kind === 'az-snp-vtpm' ? 'snp' : 'tdx';
  if (hcl.runtime.reportType !== want) {
    throw new AttestationError(
      'parse',
      'wrong-report-type',
      `Azure HCL report holds a ${hcl.runtime.reportType.toUpperCase()} report, not ${want.toUpperCase()} (${kind})`,
    );
  }
  const out: ParsedAzureVtpmEvidence = { kind, hcl };
  if (want === 'snp') out.snp = parseReport(hcl.hwReport);
  else out.tdReport = tdReportFields(hcl.hwReport);
  if (ev.tpmQuote) out.tpmQuote = { ...ev.tpmQuote, info: parseTpmQuote(ev.tpmQuote.message) };
  if (ev.vcek) out.vcek = ev.vcek;
  if (ev.tdQuote) out.tdQuote = ev.tdQuote;
  return out;
}

function vfail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('verify', code, `Azure vTPM: ${message}`);
}

/** Serves the VCEK the evidence carried for VCEK requests, everything else from `fallback`. */
function withVcek(vcek: Uint8Array | undefined, fallback: CollateralSource): CollateralSource {
  if (!vcek) return fallback;
  return {
    get: async (req) => (req.files.includes('vcek.der') ? { body: vcek, headers: {} } : fallback.get(req)),
  };
}

async function checkRuntimeBinding(
  hcl: ParsedHclReport,
  reportData: Uint8Array,
  where: string,
): Promise<void> {
  const h = await runtimeDataHash(hcl.runtime);
  const n = hashLength(hcl.runtime.hash);
  if (!equalBytes(reportData.subarray(0, n), h) || !isAllZero(reportData.subarray(n))) {
    vfail(
      'runtime-data-mismatch',
      `${where} REPORT_DATA ${toHex(reportData)} does not start with ${hcl.runtime.hash} of the runtime data (${toHex(h)}): the vTPM key is not the one the hardware attested`,
    );
  }
}

export interface AzureVerifyOptions {
  /** Verify the hardware part and the runtime binding only (evidence without a TPM quote). */
  allowMissingTpmQuote?: boolean;
  /** Required for az-tdx-vtpm. */
  verifyTdQuote?: VerifyTdQuote;
}

export async function verifyAzureVtpmEvidence(
  p: ParsedAzureVtpmEvidence,
  options: VerifyOptions,
  az: AzureVerifyOptions = {},
): Promise<VerifiedAzureVtpmEvidence> {
  if (!p.tpmQuote && !az.allowMissingTpmQuote) {
    vfail('tpm-quote-missing', 'the evidence has no vTPM quote: no PCRs and no nonce');
  }
  const out: VerifiedAzureVtpmEvidence = { parsed: p };
  if (p.snp) {
    out.snp = await verifyReport(p.snp, { ...options, collateral: withVcek(p.vcek, options.collateral) });
    await checkRuntimeBinding(p.hcl, p.snp.reportData, 'SNP report');
  } else {
    const td = p.tdReport!;
    if (!az.verifyTdQuote) {
      vfail(
        'td-quote-unverified',
        'no TDX quote verifier was wired (verifyTdQuote); the TD report cannot be trusted',
      );
    }
    if (!p.tdQuote) vfail('td-quote-missing', 'az-tdx-vtpm evidence needs the TD quote (td_quote)');
    const q = await az.verifyTdQuote(p.tdQuote, options);
    if (!equalBytes(q.reportData, td.reportData)) {
      vfail('td-quote-mismatch', 'the TD quote REPORT_DATA differs from the TD report in the HCL report');
    }
    if (q.mrtd && !equalBytes(q.mrtd, td.mrtd)) {
      vfail('td-quote-mismatch', 'the TD quote MRTD differs from the TD report in the HCL report');
    }
    if (q.appraisal) out.tdAppraisal = q.appraisal;
    await checkRuntimeBinding(p.hcl, td.reportData, 'TD report');
  }
  if (!p.tpmQuote) return out;
  out.pcrs = await verifyTpmQuote(
    p.tpmQuote.message,
    p.tpmQuote.signature,
    p.tpmQuote.info,
    p.hcl.runtime.akPub,
    p.tpmQuote.pcrs,
  );
  return out;
}

const WARN = 32;
const CONTRA = 96;

/**
 * Claims: the hardware claims (`snp` or `tdx`), the vTPM quote (`tpm`: nonce, PCRs), and the runtime
 * data (`hcl`). Reference values named `pcr0`..`pcr23` judge PCRs; the others go to the SNP appraiser.
 */
export function appraiseAzureVtpmEvidence(
  v: VerifiedAzureVtpmEvidence,
  options: { policy?: AppraisalPolicy; expectedReportData?: Uint8Array } = {},
): Appraisal {
  const p = v.parsed;
  const refs = options.policy?.referenceValues ?? {};
  const pcrRefs = Object.entries(refs).filter(([k]) => /^pcr\d+$/.test(k));
  const hwRefs = Object.fromEntries(Object.entries(refs).filter(([k]) => !/^pcr\d+$/.test(k)));
  const quote = p.tpmQuote?.info;
  if (options.expectedReportData) {
    const pad = (b: Uint8Array) => {
      const o = new Uint8Array(Math.max(64, b.length));
      o.set(b);
      return o;
    };
    if (!quote || !equalBytes(pad(quote.extraData), pad(options.expectedReportData))) {
      throw new AttestationError(
        'appraise',
        'report-data-mismatch',
        `Azure vTPM: the quote's qualifying data ${quote ? toHex(quote.extraData) : '(no quote)'} is not the expected nonce ${toHex(options.expectedReportData)}`,
      );
    }
  }
  let hw: Appraisal;
  if (v.snp) {
    const policy: AppraisalPolicy = { ...options.policy, referenceValues: hwRefs };
    hw = appraiseReport(v.snp, { policy });
  } else {
    hw = v.tdAppraisal ?? {
      kind: 'tdx',
      status: 'affirming',
      trustVector: {},
      claims: {},
      findings: [{ check: 'tdx', status: 'none', message: 'the TDX verifier returned no appraisal' }],
    };
  }
  const findings: Finding[] = [...hw.findings];
  const tv: TrustVector = { ...hw.trustVector };
  let status: EarStatus = hw.status;
  const judge = (check: string, s: EarStatus, message: string, vector: keyof TrustVector) => {
    findings.push({ check, status: s, message });
    status = worseStatus(status, s);
    tv[vector] = Math.max(tv[vector] ?? 0, s === 'warning' ? WARN : CONTRA);
  };
  const vm = p.hcl.runtime.vmConfiguration ?? {};
  if (vm['secure-boot'] === false)
    judge('vm.secure_boot', 'warning', 'the VM booted with Secure Boot disabled', 'configuration');
  if (!v.pcrs)
    judge('tpm', 'warning', 'no vTPM quote: PCRs and freshness were not checked', 'runtime_opaque');
  for (const [name, values] of pcrRefs) {
    const have = v.pcrs?.get(Number(name.slice(3)));
    if (have && values.some((x) => x.toLowerCase() === toHex(have))) {
      findings.push({
        check: `reference.${name}`,
        status: 'affirming',
        message: `${name} matches a reference value`,
      });
      tv.executables ??= 2;
    } else {
      judge(
        `reference.${name}`,
        'contraindicated',
        `${name} ${have ? toHex(have) : '(not quoted)'} matches no reference value`,
        'executables',
      );
    }
  }
  const claims: Record<string, unknown> = {
    [v.snp ? 'snp' : 'tdx']: hw.claims,
    hcl: {
      version: p.hcl.version,
      runtime_data_hash: p.hcl.runtime.hash,
      vm_configuration: p.hcl.runtime.vmConfiguration ?? null,
      user_data: p.hcl.runtime.userData ?? null,
      ak_pub: p.hcl.runtime.akPub,
      ...(p.tdReport
        ? { td_report_data: toHex(p.tdReport.reportData), td_mrtd: toHex(p.tdReport.mrtd) }
        : {}),
    },
  };
  if (quote && v.pcrs) {
    claims['tpm'] = {
      nonce: toHex(quote.extraData),
      clock: quote.clock.toString(),
      reset_count: quote.resetCount,
      restart_count: quote.restartCount,
      firmware_version: quote.firmwareVersion.toString(16).padStart(16, '0'),
      pcrs: Object.fromEntries([...v.pcrs].map(([i, d]) => [String(i), toHex(d)])),
    };
  }
  return { kind: p.kind, status, trustVector: tv, claims, findings };
}

async function run(
  kind: 'az-snp-vtpm' | 'az-tdx-vtpm',
  evidence: Uint8Array,
  options: VerifyOptions,
  verifyTdQuote?: VerifyTdQuote,
): Promise<Appraisal> {
  const parsed = parseAzureVtpmEvidence(evidence, kind);
  const verified = await verifyAzureVtpmEvidence(parsed, options, verifyTdQuote ? { verifyTdQuote } : {});
  return appraiseAzureVtpmEvidence(verified, {
    ...(options.policy ? { policy: options.policy } : {}),
    ...(options.expectedReportData ? { expectedReportData: options.expectedReportData } : {}),
  });
}

/** Evidence: the JSON document of evidence.ts with an HCL report (SNP), a vTPM quote and optionally the VCEK. */
export const azSnpVtpmVerifier: KindVerifier = {
  kind: 'az-snp-vtpm',
  appraiseEvidence: (evidence, options) => run('az-snp-vtpm', evidence, options),
};

/** az-tdx-vtpm needs the TDX quote verifier; wire it here once the TDX module provides one. */
export function createAzTdxVtpmVerifier(verifyTdQuote: VerifyTdQuote): KindVerifier {
  return {
    kind: 'az-tdx-vtpm',
    appraiseEvidence: (evidence, options) => run('az-tdx-vtpm', evidence, options, verifyTdQuote),
  };
}
