/** Parsed collateral is reused per buffer only while the buffer still holds the same bytes. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { AttestationError, type CollateralSource } from '../../../src/attest/common/types.js';
import { snpVerifier } from '../../../src/attest/snp/index.js';

const V = join(import.meta.dirname, '../../vectors');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(V, ...p)));

describe('SEV-SNP collateral reuse', () => {
  it('a VCEK buffer changed in place after a verification is judged by its new bytes', async () => {
    const vcek = read('sev-snp', 'virtee_milan_v2', 'vcek.der');
    const roots = folderCollateral(join(V, 'roots'));
    // The same buffer every time, as a caching source serves it.
    const collateral: CollateralSource = {
      get: async (req) => (req.files.includes('vcek.der') ? { body: vcek, headers: {} } : roots.get(req)),
    };
    const report = read('sev-snp', 'virtee_milan_v2', 'report.bin');
    const options = { at: new Date('2025-09-01T00:00:00Z'), collateral };
    expect((await snpVerifier.appraiseEvidence(report, options)).status).toBe('affirming');
    expect((await snpVerifier.appraiseEvidence(report, options)).status).toBe('affirming');
    vcek[vcek.length - 10]! ^= 0x01; // inside the certificate's signature
    const e = await snpVerifier.appraiseEvidence(report, options).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AttestationError);
    expect((e as AttestationError).stage).toBe('verify');
    vcek[vcek.length - 10]! ^= 0x01;
    expect((await snpVerifier.appraiseEvidence(report, options)).status).toBe('affirming');
  });
});
