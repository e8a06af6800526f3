import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseSampleEvidence, sampleVerifier } from '../../../src/attest/sample/index.js';
import { InsecureSampleAttester, sampleHostData } from '../../../src/tee/evidence/sample.js';

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

  it('reports the measurement and host data it was launched with, under the process key', async () => {
    const a = new InsecureSampleAttester({ measurement: 'ab'.repeat(48), hostData: 'cd'.repeat(32) });
    const parsed = parseSampleEvidence((await a.collect(new Uint8Array(64))).evidence);
    expect(parsed.measurement).toBe('ab'.repeat(48));
    expect(parsed.hostData).toBe('cd'.repeat(32));
    const plain = parseSampleEvidence(
      (await new InsecureSampleAttester().collect(new Uint8Array(64))).evidence,
    );
    expect(plain.publicKey).toEqual(parsed.publicKey);
    expect(plain.hostData).toBeUndefined();
  });
});

describe('sampleHostData', () => {
  const digest = (alg: string, s: string) => createHash(alg).update(s).digest('hex');

  it("hashes the body with the init-data's own algorithm and cuts it to 32 bytes, as an SNP host does", async () => {
    const toml = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"a" = "b"\n';
    expect(await sampleHostData({ format: 'toml', body: toml })).toBe(digest('sha384', toml).slice(0, 64));
    const json = JSON.stringify({ version: '0.1.0', algorithm: 'SHA-256', data: {} });
    expect(await sampleHostData({ format: 'json', body: json })).toBe(digest('sha256', json));
  });

  it('refuses init-data it cannot read an algorithm from', async () => {
    for (const [format, body, message] of [
      ['toml', 'algorithm = ', /not valid TOML/],
      ['json', '{', /not valid JSON/],
      ['toml', 'algorithm = "md5"', /algorithm must be sha256, sha384 or sha512, got "md5"/],
      ['json', '[]', /got undefined/],
    ] as const) {
      await expect(sampleHostData({ format, body })).rejects.toMatchObject({
        code: 'bad-init-data',
        message: expect.stringMatching(message),
      });
    }
  });
});
