/** Shared by the unit and slow fuzz tests: mutated real reports are never accepted and never crash. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { expect } from 'vitest';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import { snpVerifier } from '../../../src/attest/snp/index.js';

const V = join(import.meta.dirname, '../../vectors');

/** Samples whose full verification succeeds at `at`, so any refusal comes from the mutation. */
const SAMPLES = [
  ['virtee_milan_v2', '2025-09-01T00:00:00Z'],
  ['trustee_milan_v3_vlek_aws', '2025-09-01T00:00:00Z'],
  ['openpcc_genoa_v3_azure', '2025-09-01T00:00:00Z'],
] as const;

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(1183), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(1183) }),
  fc.record({ kind: fc.constant('append' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  fc.record({
    kind: fc.constant('splice' as const),
    at: fc.nat(1183),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
);

export async function fuzzReports(numRuns: number): Promise<void> {
  const samples = SAMPLES.map(([folder, at]) => ({
    report: new Uint8Array(readFileSync(join(V, 'sev-snp', folder, 'report.bin'))),
    options: { at: new Date(at), collateral: folderCollateral(join(V, 'sev-snp', folder), join(V, 'roots')) },
  }));
  await fc.assert(
    fc.asyncProperty(fc.nat(samples.length - 1), mutation, async (i, m) => {
      const { report, options } = samples[i]!;
      let bytes: Uint8Array;
      if (m.kind === 'flip') {
        bytes = report.slice();
        bytes[m.at] ^= m.xor;
      } else if (m.kind === 'truncate') {
        bytes = report.subarray(0, m.at);
      } else if (m.kind === 'append') {
        bytes = new Uint8Array([...report, ...m.extra]);
      } else {
        bytes = report.slice();
        bytes.set(m.bytes.subarray(0, bytes.length - m.at), m.at);
        if (bytes.every((b, k) => b === report[k])) return; // no change, nothing to refuse
      }
      const outcome = await snpVerifier.appraiseEvidence(bytes, options).then(
        () => 'accepted',
        (e: unknown) => e,
      );
      expect(outcome).toBeInstanceOf(AttestationError);
    }),
    { numRuns },
  );
}
