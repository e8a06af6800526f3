import { beforeAll, describe, expect, it } from 'vitest';
import { AttestationError } from '../../../src/attest/common/types.js';
import {
  encodeNvidiaEvidence,
  nvidiaVerifier,
  parseGpuReport,
  parseRim,
  verifyRim,
} from '../../../src/attest/nvidia/index.js';
import {
  createNvidiaTestAuthority,
  type NvidiaTestAuthority,
  testNonce,
} from '../../../src/attest/testing/nvidia.js';
import { toHex, utf8 } from '../../../src/util/bytes.js';
import { noCollateral } from './helpers.js';

let hopper: NvidiaTestAuthority;
let blackwell: NvidiaTestAuthority;
beforeAll(async () => {
  hopper = await createNvidiaTestAuthority('HOPPER');
  blackwell = await createNvidiaTestAuthority('BLACKWELL');
});

const now = () => new Date();

async function appraise(authority: NvidiaTestAuthority, evidence: Uint8Array, nonce?: Uint8Array) {
  return nvidiaVerifier.appraiseEvidence(evidence, {
    at: now(),
    collateral: noCollateral,
    trustAnchors: authority.trustAnchors,
    expectedReportData: nonce,
  });
}

async function rejection(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

/** Golden RIMs that match the authority's default measurements: driver owns 0..31, VBIOS 32..63. */
async function goldenRims(a: NvidiaTestAuthority, version = '550.00') {
  const m = a.defaultMeasurements();
  const entries = (from: number, to: number) =>
    Array.from({ length: to - from }, (_, k) => ({ index: from + k, alternatives: [m.get(from + k + 1)!] }));
  return {
    driverRim: await a.issueRim({ version, measurements: entries(0, 32) }),
    vbiosRim: await a.issueRim({ version: '96.00.5E.00.01', measurements: entries(32, 64) }),
  };
}

describe('NVIDIA test authority end to end', () => {
  it('a fresh Hopper report with matching RIMs and a signed CC flag is affirming', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce, featureFlag: 0, nvdec0Status: 0xaa });
    const a = await appraise(hopper, hopper.envelope(report, await goldenRims(hopper)), nonce);
    expect(a.status).toBe('affirming');
    expect(a.trustVector).toEqual({ hardware: 2, instance_identity: 2, executables: 2, configuration: 2 });
    expect(a.claims['cc_feature']).toBe('spt');
    expect(a.claims['measurements_compared']).toHaveLength(64);
    expect(a.claims['nonce']).toBe(toHex(nonce));
  });

  it('a Blackwell report (DICE TcbInfo FWID) verifies', async () => {
    const nonce = testNonce();
    const report = await blackwell.issueReport({ nonce });
    const a = await appraise(blackwell, blackwell.envelope(report), nonce);
    expect(a.claims['arch']).toBe('BLACKWELL');
    expect(a.claims['fwid']).toBe(toHex(blackwell.fwid));
  });

  it('an alternative golden value matches', async () => {
    const nonce = testNonce();
    const m = hopper.defaultMeasurements();
    m.set(5, new Uint8Array(48).fill(0xee));
    const report = await hopper.issueReport({ nonce, measurements: m, featureFlag: 1 });
    const rims = await goldenRims(hopper);
    const driverRim = await hopper.issueRim({
      version: '550.00',
      measurements: [{ index: 4, alternatives: [new Uint8Array(48).fill(5), new Uint8Array(48).fill(0xee)] }],
    });
    const a = await appraise(hopper, hopper.envelope(report, { ...rims, driverRim }), nonce);
    expect(a.claims['measurements_mismatched']).toEqual([]);
    expect(a.status).toBe('affirming');
  });

  it('wrong nonce → nonce-mismatch', async () => {
    const report = await hopper.issueReport({ nonce: testNonce() });
    const e = await rejection(appraise(hopper, hopper.envelope(report), testNonce()));
    expect([e.stage, e.code]).toEqual(['verify', 'nonce-mismatch']);
  });

  it('measurement mismatch → contraindicated, listed by RIM index', async () => {
    const nonce = testNonce();
    const m = hopper.defaultMeasurements();
    m.set(8, new Uint8Array(48).fill(0xab)); // SPDM 8 = RIM 7
    m.set(40, new Uint8Array(48).fill(0xcd)); // SPDM 40 = RIM 39
    const report = await hopper.issueReport({ nonce, measurements: m, featureFlag: 0 });
    const a = await appraise(hopper, hopper.envelope(report, await goldenRims(hopper)), nonce);
    expect(a.status).toBe('contraindicated');
    expect(a.trustVector.executables).toBe(96);
    expect(a.claims['measurements_mismatched']).toEqual([7, 39]);
    expect(a.findings.find((f) => f.check === 'measurements')!.message).toMatch(/7 \(driver\), 39 \(vbios\)/);
  });

  it('a golden measurement with no block in the report is a mismatch', async () => {
    const nonce = testNonce();
    const m = hopper.defaultMeasurements();
    m.delete(64);
    const report = await hopper.issueReport({ nonce, measurements: m });
    const a = await appraise(hopper, hopper.envelope(report, await goldenRims(hopper)), nonce);
    expect(a.claims['measurements_mismatched']).toEqual([63]);
  });

  it('CC off (reported by NVML) → contraindicated', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce });
    for (const ccMode of ['off', 'devtools']) {
      const a = await appraise(hopper, hopper.envelope(report, { ccMode }), nonce);
      expect(a.status).toBe('contraindicated');
      expect(a.trustVector.configuration).toBe(96);
      expect(a.findings.find((f) => f.check === 'cc-mode')?.status).toBe('contraindicated');
    }
  });

  it('unknown signed CC feature flag → contraindicated', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce, featureFlag: 9 });
    const a = await appraise(hopper, hopper.envelope(report), nonce);
    expect(a.status).toBe('contraindicated');
    expect(a.claims['cc_feature']).toBe('unknown(9)');
  });

  it('NVDEC0 enabled → index 35 is compared; disabled → skipped', async () => {
    const m = hopper.defaultMeasurements();
    m.set(36, new Uint8Array(48).fill(0x99)); // RIM 35
    for (const [status, mismatched] of [
      [0xaa, [35]],
      [0x55, []],
    ] as const) {
      const nonce = testNonce();
      const report = await hopper.issueReport({ nonce, measurements: m, nvdec0Status: status });
      const a = await appraise(hopper, hopper.envelope(report, await goldenRims(hopper)), nonce);
      expect(a.claims['measurements_mismatched']).toEqual(mismatched);
    }
  });

  it('driver and VBIOS RIMs claiming one index → rim-index-conflict', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce });
    const one = [{ index: 3, alternatives: [new Uint8Array(48).fill(4)] }];
    const driverRim = await hopper.issueRim({ version: '550.00', measurements: one });
    const vbiosRim = await hopper.issueRim({ version: '96.00.5E.00.01', measurements: one });
    const e = await rejection(appraise(hopper, hopper.envelope(report, { driverRim, vbiosRim }), nonce));
    expect([e.stage, e.code]).toEqual(['appraise', 'rim-index-conflict']);
  });

  it('report FWID differing from the key certificate → fwid-mismatch', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce, fwid: new Uint8Array(48).fill(1) });
    const e = await rejection(appraise(hopper, hopper.envelope(report), nonce));
    expect(e.code).toBe('fwid-mismatch');
  });

  it('a report from another authority → bad-signature; that authority as anchor only → untrusted-root', async () => {
    const nonce = testNonce();
    const report = await blackwell.issueReport({ nonce });
    const mixed = encodeNvidiaEvidence({ report, certChain: utf8.encode(hopper.certChainPem) });
    expect((await rejection(appraise(hopper, mixed, nonce))).code).toBe('bad-signature');
    expect((await rejection(appraise(hopper, blackwell.envelope(report), nonce))).code).toBe(
      'untrusted-root',
    );
  });

  it('an arch field that disagrees with the key certificate → arch-mismatch', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce });
    const lying = encodeNvidiaEvidence({
      report,
      certChain: utf8.encode(hopper.certChainPem),
      arch: 'BLACKWELL',
    });
    expect((await rejection(appraise(hopper, lying, nonce))).code).toBe('arch-mismatch');
  });

  it('real NVIDIA roots do not accept test evidence', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce });
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(hopper.envelope(report), { at: now(), collateral: noCollateral }),
    );
    expect(e.code).toBe('untrusted-root');
  });

  it('test RIMs sign and verify, and a one-character edit is detected', async () => {
    const { driverRim } = await goldenRims(hopper);
    await verifyRim(parseRim(driverRim), { at: now(), trustAnchors: hopper.trustAnchors });
    const edited = driverRim.replace('colloquialVersion="550.00"', 'colloquialVersion="550.01"');
    const e = await rejection(verifyRim(parseRim(edited), { at: now(), trustAnchors: hopper.trustAnchors }));
    expect(e.code).toBe('rim-digest-mismatch');
  });

  it('opaque data with an unknown field type or a repeated field → bad-opaque-data', async () => {
    const nonce = testNonce();
    for (const extra of [[[200, new Uint8Array([1])]], [[3, utf8.encode('1.0\0')]]] as [
      number,
      Uint8Array,
    ][][]) {
      const report = await hopper.issueReport({ nonce, extraOpaque: extra });
      expect(() => parseGpuReport(report)).toThrow(expect.objectContaining({ code: 'bad-opaque-data' }));
    }
  });

  it('reference values: a wrong driver version is contraindicated', async () => {
    const nonce = testNonce();
    const report = await hopper.issueReport({ nonce });
    const a = await nvidiaVerifier.appraiseEvidence(hopper.envelope(report), {
      at: now(),
      collateral: noCollateral,
      trustAnchors: hopper.trustAnchors,
      policy: {
        referenceValues: { driver_version: ['560.00'], 'measurement.2': [toHex(new Uint8Array(48).fill(2))] },
      },
    });
    expect(a.status).toBe('contraindicated');
    expect(a.findings.filter((f) => f.check.startsWith('reference:')).map((f) => f.check)).toEqual([
      'reference:driver_version',
    ]);
  });
});
