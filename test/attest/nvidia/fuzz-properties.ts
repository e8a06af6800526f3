import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseCertificates } from '../../../src/attest/common/pki.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import {
  nvidiaVerifier,
  parseGpuReport,
  parseNvidiaEvidence,
  parseRim,
  verifyGpuReport,
  verifyRim,
} from '../../../src/attest/nvidia/index.js';
import { toHex } from '../../../src/util/bytes.js';
import { apply, envelope, mutation, reportBytes, vector } from './helpers.js';

const H545 = 'nvtrust_hopper_545.00_complete';
const at = new Date('2024-06-01T00:00:00Z');

/** The fuzz properties, run briefly by fuzz.test.ts and at length by fuzz.slow.test.ts. */
export function nvidiaFuzz(runs: { report: number; rim: number; envelope: number }): void {
  describe('NVIDIA fuzz (real vectors)', () => {
    it('a mutated real report is never accepted and always fails with an AttestationError', async () => {
      const report = reportBytes(H545);
      const certChain = vector(`${H545}/cert_chain.pem`);
      await fc.assert(
        fc.asyncProperty(mutation(report.length), async (m) => {
          const bad = apply(report, m);
          const outcome = await (async () => verifyGpuReport(parseGpuReport(bad), { certChain, at }))().then(
            () => 'accepted',
            (e: unknown) => e,
          );
          // A "set" may rewrite bytes to their own value; only a real change must be refused.
          if (bad.length === report.length && bad.every((x, i) => x === report[i])) return;
          expect(outcome).toBeInstanceOf(AttestationError);
        }),
        { numRuns: runs.report },
      );
    });

    it('a mutated real RIM is never accepted and always fails with an AttestationError', async () => {
      const rim = vector(`${H545}/vbios_rim.swidtag`);
      await fc.assert(
        fc.asyncProperty(mutation(rim.length), async (m) => {
          const bad = apply(rim, m);
          if (bad.length === rim.length && bad.every((x, i) => x === rim[i])) return;
          const outcome = await (async () => verifyRim(parseRim(bad), { at }))().then(
            (v) => v,
            (e: unknown) => e,
          );
          if (outcome instanceof Error) expect(outcome).toBeInstanceOf(AttestationError);
          if (outcome instanceof AttestationError) return;
          // Canonicalization legitimately ignores some edits (white space inside tags, the trailing
          // newline, attribute order, quote style): such a RIM is accepted only if it means the same.
          const original = parseRim(rim);
          const accepted = parseRim(bad);
          expect(accepted.version).toBe(original.version);
          expect(accepted.measurements).toEqual(original.measurements);
        }),
        { numRuns: runs.rim },
      );
    });

    it('mutated evidence envelopes never crash the verifier', async () => {
      const env = envelope(H545);
      await fc.assert(
        fc.asyncProperty(mutation(env.length), async (m) => {
          const bad = apply(env, m);
          const outcome = await nvidiaVerifier
            .appraiseEvidence(bad, { at, collateral: { get: async () => undefined } })
            .then(
              (a) => a,
              (e: unknown) => e,
            );
          if (outcome instanceof Error) expect(outcome).toBeInstanceOf(AttestationError);
          if (outcome instanceof AttestationError) return;
          // Edits that JSON, hex or PEM parsing ignore (white space, hex case) may leave the same evidence:
          // an accepted envelope must carry exactly the original report and certificates.
          const original = parseNvidiaEvidence(env);
          const accepted = parseNvidiaEvidence(bad);
          expect(toHex(accepted.report)).toBe(toHex(original.report));
          const der = (b: Uint8Array) => parseCertificates(b).map((c) => toHex(new Uint8Array(c.rawData)));
          // A corrupted root block drops the root, which the bundled anchor then supplies (by design).
          const all = der(original.certChain);
          expect([all, all.slice(0, -1)]).toContainEqual(der(accepted.certChain));
        }),
        { numRuns: runs.envelope },
      );
    });
  });
}
