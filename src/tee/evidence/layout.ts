/**
 * Where each evidence format keeps its report data, so an attester can check that the evidence it
 * got back answers the report data it asked for (a stale or raced report is refused before it leaves
 * the TEE). Only an early, cheap consistency check: the verifier checks the same field again under the
 * signature.
 */
import type { CpuKind } from './types.js';

const SNP_REPORT_DATA = 0x50;
/** DCAP quote header (48 bytes), then the report body. */
const QUOTE_HEADER = 48;
/** SGX report body: report_data at byte 320. */
const SGX_REPORT_DATA = QUOTE_HEADER + 320;
/** TDX TD report body v4 (TD 1.0): report_data after TEE_TCB_SVN … RTMR3, at byte 520. */
const TDX_V4_REPORT_DATA = QUOTE_HEADER + 520;
/** Quote v5 puts a body descriptor (u16 type, u32 size) before the same body. */
const TDX_V5_REPORT_DATA = QUOTE_HEADER + 6 + 520;

function u16le(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

/**
 * The 64 report-data bytes of `evidence`, or undefined when the layout is not one this function knows
 * (e.g. a future TDX quote version); callers then leave the check to the verifier.
 */
export function evidenceReportData(kind: CpuKind, evidence: Uint8Array): Uint8Array | undefined {
  const at = (o: number) => (evidence.length >= o + 64 ? evidence.subarray(o, o + 64) : undefined);
  switch (kind) {
    case 'snp':
      return at(SNP_REPORT_DATA);
    case 'sgx':
      return evidence.length >= QUOTE_HEADER && u16le(evidence, 0) === 3 ? at(SGX_REPORT_DATA) : undefined;
    case 'tdx': {
      if (evidence.length < QUOTE_HEADER) return undefined;
      const version = u16le(evidence, 0);
      if (version === 4) return at(TDX_V4_REPORT_DATA);
      if (version === 5) return at(TDX_V5_REPORT_DATA);
      return undefined;
    }
    default:
      return undefined;
  }
}
