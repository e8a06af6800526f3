import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AttestationError, type VerifyOptions } from '../../../src/attest/common/types.js';
import {
  createSampleAttester,
  parseSampleEvidence,
  sampleVerifier,
} from '../../../src/attest/sample/index.js';
import { createSampleForgery } from '../../../src/attest/testing/sample.js';
import { fromBase64, fromHex, toBase64Url, utf8 } from '../../../src/util/bytes.js';

const options = (more: Partial<VerifyOptions> = {}): VerifyOptions => ({
  at: new Date('2026-01-01T00:00:00Z'),
  collateral: { get: async () => undefined },
  ...more,
});

async function refusal(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

const nonce = fromHex('aa'.repeat(32));

describe('sample TEE', () => {
  it('round-trips: attester evidence verifies, is insecure and at best a warning', async () => {
    const attester = await createSampleAttester({ measurement: 'ab'.repeat(48) });
    const evidence = await attester.attest(nonce);
    const a = await sampleVerifier.appraiseEvidence(evidence, options({ expectedReportData: nonce }));
    expect(a.kind).toBe('sample');
    expect(a.insecure).toBe(true);
    expect(a.status).toBe('warning');
    expect(a.trustVector.hardware).toBe(32);
    expect(a.findings).toContainEqual(expect.objectContaining({ check: 'insecure', status: 'warning' }));
    expect(a.findings).toContainEqual(expect.objectContaining({ check: 'measurement', status: 'none' }));
    expect(a.claims).toMatchObject({
      tee: 'sample',
      insecure: true,
      measurement: 'ab'.repeat(48),
      report_data: 'aa'.repeat(32) + '00'.repeat(32),
      debug: false,
    });
  });

  it('stays a warning even when every measurement matches', async () => {
    const attester = await createSampleAttester({ measurement: 'ab'.repeat(48) });
    const a = await sampleVerifier.appraiseEvidence(
      await attester.attest(nonce),
      options({ expectedReportData: nonce, policy: { referenceValues: { measurement: ['AB'.repeat(48)] } } }),
    );
    expect(a.status).toBe('warning');
    expect(a.trustVector.executables).toBe(2);
    expect(a.trustVector.hardware).not.toBeLessThan(32);
  });

  it('refuses a tampered signature (verify/bad-signature)', async () => {
    const evidence = await (await createSampleAttester()).attest(nonce);
    const json = JSON.parse(utf8.decode(evidence));
    const sig = fromBase64(json.signature);
    sig[10]! ^= 1;
    json.signature = toBase64Url(sig);
    const e = await refusal(sampleVerifier.appraiseEvidence(utf8.encode(JSON.stringify(json)), options()));
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });

  it('refuses a tampered body (measurement swapped after signing)', async () => {
    const evidence = await (await createSampleAttester()).attest(nonce);
    const json = JSON.parse(utf8.decode(evidence));
    json.measurement = '11'.repeat(48);
    const e = await refusal(sampleVerifier.appraiseEvidence(utf8.encode(JSON.stringify(json)), options()));
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });

  it('refuses wrong report data (verify/report-data-mismatch)', async () => {
    const evidence = await (await createSampleAttester()).attest(nonce);
    const e = await refusal(
      sampleVerifier.appraiseEvidence(evidence, options({ expectedReportData: fromHex('bb'.repeat(32)) })),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'report-data-mismatch']);
    expect(e.message).toMatch(/another challenge/);
  });

  it('contraindicates debug unless allowed, and a measurement mismatch', async () => {
    const debug = await (await createSampleAttester({ debug: true })).attest(nonce);
    const a = await sampleVerifier.appraiseEvidence(debug, options());
    expect(a.status).toBe('contraindicated');
    expect(a.findings).toContainEqual(expect.objectContaining({ check: 'debug', status: 'contraindicated' }));
    const allowed = await sampleVerifier.appraiseEvidence(debug, options({ policy: { allowDebug: true } }));
    expect(allowed.status).toBe('warning');
    const m = await sampleVerifier.appraiseEvidence(
      await (await createSampleAttester()).attest(nonce),
      options({ policy: { referenceValues: { measurement: ['cd'.repeat(48)] } } }),
    );
    expect(m.status).toBe('contraindicated');
    expect(m.trustVector.executables).toBe(96);
  });

  it('refuses malformed evidence at parse with a stable code', async () => {
    const forge = await createSampleForgery();
    const cases: [Record<string, unknown>, string][] = [
      [{ tee: 'tdx' }, 'wrong-tee'],
      [{ extra: 1 }, 'bad-structure'],
      [{ debug: undefined }, 'bad-structure'],
      [{ debug: 'no' }, 'bad-structure'],
      [{ report_data: toBase64Url(new Uint8Array(65)) }, 'bad-report-data'],
      [{ report_data: 'a+b/' }, 'bad-structure'],
      [{ report_data: 'AB' }, 'bad-structure'],
      [{ measurement: 'ABCD' }, 'bad-measurement'],
      [{ measurement: '' }, 'bad-measurement'],
      [{ host_data: 'AB'.repeat(32) }, 'bad-structure'],
      [{ host_data: 'ab'.repeat(31) }, 'bad-structure'],
      [{ host_data: 7 }, 'bad-structure'],
      [{ public_key: { ...forge.publicJwk, d: 'AAAA' } }, 'private-key-in-evidence'],
      [{ public_key: { ...forge.publicJwk, crv: 'P-384' } }, 'bad-public-key'],
      [{ public_key: { kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' } }, 'bad-public-key'],
    ];
    for (const [overrides, code] of cases) {
      const e = await refusal(sampleVerifier.appraiseEvidence(await forge.sign(overrides), options()));
      expect([e.stage, e.code], JSON.stringify(overrides)).toEqual(['parse', code]);
    }
    expect((await refusal(sampleVerifier.appraiseEvidence(utf8.encode('{'), options()))).code).toBe(
      'not-json',
    );
    expect(() => parseSampleEvidence(new Uint8Array(20_000))).toThrow(/at most/);
  });

  it('carries the host data the attester was given, signed, as the host_data claim', async () => {
    const attester = await createSampleAttester({ hostData: 'cd'.repeat(20) });
    const evidence = await attester.attest(nonce);
    const hostData = 'cd'.repeat(20) + '00'.repeat(12);
    expect(parseSampleEvidence(evidence).hostData).toBe(hostData);
    const a = await sampleVerifier.appraiseEvidence(evidence, options({ expectedReportData: nonce }));
    expect(a.claims.host_data).toBe(hostData);
    // Swapped after signing: the signature no longer holds.
    const json = JSON.parse(utf8.decode(evidence));
    json.host_data = '00'.repeat(32);
    const e = await refusal(sampleVerifier.appraiseEvidence(utf8.encode(JSON.stringify(json)), options()));
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
    // Without host data the member is absent, as in evidence made before it existed.
    const plain = await (await createSampleAttester()).attest(nonce);
    expect('host_data' in JSON.parse(utf8.decode(plain))).toBe(false);
    await expect(createSampleAttester({ hostData: new Uint8Array(33) })).rejects.toThrow(/at most 32/);
  });

  it('judges host_data and other reference values, and contraindicates names it does not carry', async () => {
    const evidence = await (await createSampleAttester({ hostData: 'cd'.repeat(32) })).attest(nonce);
    const judged = (referenceValues: Record<string, string[]>) =>
      sampleVerifier.appraiseEvidence(evidence, options({ policy: { referenceValues } }));
    const match = await judged({ host_data: ['CD'.repeat(32)] });
    expect(match.status).toBe('warning');
    expect(match.findings).toContainEqual(
      expect.objectContaining({ check: 'reference.host_data', status: 'affirming' }),
    );
    const miss = await judged({ host_data: ['ef'.repeat(32)] });
    expect(miss.status).toBe('contraindicated');
    expect(miss.trustVector.configuration).toBe(96);
    const absent = await sampleVerifier.appraiseEvidence(
      await (await createSampleAttester()).attest(nonce),
      options({ policy: { referenceValues: { host_data: ['cd'.repeat(32)] } } }),
    );
    expect(absent.status).toBe('contraindicated');
    expect((await judged({ mr_td: ['00'.repeat(48)] })).findings).toContainEqual(
      expect.objectContaining({ check: 'reference.mr_td', status: 'contraindicated' }),
    );
  });

  it('refuses a signature by a key other than the embedded one', async () => {
    const forge = await createSampleForgery();
    const other = await createSampleForgery();
    const e = await refusal(
      sampleVerifier.appraiseEvidence(await forge.sign({ public_key: other.publicJwk }), options()),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });

  it('never accepts or crashes on mutated evidence (fuzz)', async () => {
    const evidence = await (await createSampleAttester()).attest(nonce);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(evidence.length - 1), fc.integer({ min: 1, max: 255 })), {
          minLength: 1,
          maxLength: 4,
        }),
        async (flips) => {
          const m = evidence.slice();
          for (const [i, x] of flips) m[i]! ^= x;
          const r = await sampleVerifier.appraiseEvidence(m, options()).then(
            (a) => a,
            (e: unknown) => e,
          );
          // Every byte of the canonical text is signed or is the canonical signature encoding.
          expect(r).toBeInstanceOf(AttestationError);
        },
      ),
      { numRuns: 150 },
    );
  });
});
