import { describe, expect, it } from 'vitest';
import { parseSampleEvidence, sampleVerifier } from '../../../src/attest/sample/index.js';
import { InsecureSampleAttester } from '../../../src/tee/evidence/sample.js';

describe('InsecureSampleAttester', () => {
  it('is marked insecure, verifies with the sample verifier and keeps one key per process', async () => {
    const a = new InsecureSampleAttester();
    expect(a.insecure).toBe(true);
    expect(a.source).toMatch(/INSECURE/);
    const rd = new Uint8Array([1, 2, 3]);
    const one = await a.collect(rd);
    const two = await new InsecureSampleAttester().collect(new Uint8Array(64));
    expect(one.kind).toBe('sample');
    expect(parseSampleEvidence(one.evidence).body.public_key).toEqual(
      parseSampleEvidence(two.evidence).body.public_key,
    );
    const appraisal = await sampleVerifier.appraiseEvidence(one.evidence, {
      at: new Date(),
      collateral: { get: async () => undefined },
      expectedReportData: rd,
    });
    expect(appraisal.insecure).toBe(true);
    expect(appraisal.status).not.toBe('affirming');
  });

  it('refuses report data over 64 bytes', async () => {
    await expect(new InsecureSampleAttester().collect(new Uint8Array(65))).rejects.toMatchObject({
      code: 'report-data-too-long',
    });
  });
});
