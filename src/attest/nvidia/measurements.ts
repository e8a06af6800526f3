/**
 * Golden-measurement comparison, as nvtrust's Verifier and nvat's generate_set_measurement_claims do
 * it: every active measurement of the driver and VBIOS RIMs must equal (in size and value) one of its
 * alternatives in the report block at the same position (RIM index i ↔ SPDM block i + 1). Index 35
 * (NVDEC0) is skipped when the report says NVDEC0 is disabled. The two RIMs may not both claim an index.
 */

import { toHex } from '../../util/index.js';
import { AttestationError } from '../common/types.js';
import { NVDEC0_DISABLED } from './opaque.js';
import type { ParsedGpuReport } from './report.js';
import type { ParsedRim } from './rim.js';

export type RimSource = 'driver' | 'vbios';

export interface MeasurementMismatch {
  /** RIM index (SPDM block index − 1). */
  index: number;
  source: RimSource;
  expected: string[];
  /** Lower-case hex of the report value; undefined when the report has no block there. */
  actual: string | undefined;
}

export interface MeasurementComparison {
  /** RIM indices compared, ascending. */
  compared: number[];
  mismatches: MeasurementMismatch[];
  /** RIM indices skipped by rule (35 with NVDEC0 disabled). */
  skipped: number[];
}

const NVDEC0_INDEX = 35;

export function compareMeasurements(
  report: ParsedGpuReport,
  rims: { driver?: ParsedRim; vbios?: ParsedRim },
): MeasurementComparison {
  const golden = new Map<number, { source: RimSource; size: number; alternatives: string[] }>();
  for (const source of ['driver', 'vbios'] as const) {
    for (const m of rims[source]?.measurements ?? []) {
      if (!m.active) continue;
      if (golden.has(m.index)) {
        throw new AttestationError(
          'appraise',
          'rim-index-conflict',
          `the driver and VBIOS RIMs both have an active measurement at index ${m.index}`,
        );
      }
      golden.set(m.index, { source, size: m.size, alternatives: m.alternatives });
    }
  }
  const runtime = new Map(report.response.blocks.map((b) => [b.index - 1, b.value]));
  const skipNvdec = report.response.opaqueData.nvdec0Status === NVDEC0_DISABLED;
  const out: MeasurementComparison = { compared: [], mismatches: [], skipped: [] };
  for (const index of [...golden.keys()].sort((a, b) => a - b)) {
    const g = golden.get(index)!;
    if (index === NVDEC0_INDEX && skipNvdec) {
      out.skipped.push(index);
      continue;
    }
    out.compared.push(index);
    const value = runtime.get(index);
    const actual = value ? toHex(value) : undefined;
    if (value === undefined || value.length !== g.size || !g.alternatives.includes(actual!)) {
      out.mismatches.push({ index, source: g.source, expected: g.alternatives, actual });
    }
  }
  return out;
}
