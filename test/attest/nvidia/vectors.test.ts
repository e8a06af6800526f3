import { beforeEach, describe, expect, it } from 'vitest';
import { AttestationError } from '../../../src/attest/common/types.js';
import { createVerifierContext, type VerifierContext } from '../../../src/attest/context.js';
import {
  compareMeasurements,
  nvidiaVerifier,
  parseGpuReport,
  parseRim,
  verifyGpuReport,
  verifyRim,
} from '../../../src/attest/nvidia/index.js';
import { fromHex, utf8 } from '../../../src/util/bytes.js';
import {
  options as baseOptions,
  envelope,
  folderSource,
  reportBytes,
  vector,
  vectorText,
} from './helpers.js';

const H545 = 'nvtrust_hopper_545.00_complete';
const H535 = 'nvat-sdk_hopper_535.86.09';
const B575 = 'nvat-sdk_blackwell_575.32';
const IN_WINDOW = '2024-06-01T00:00:00Z';

async function rejection(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

// Every test starts from a fresh context: nothing verified by an earlier test is remembered.
let context: VerifierContext;
beforeEach(() => {
  context = createVerifierContext();
});
const options = (at: string, extra: Parameters<typeof baseOptions>[1] = {}) =>
  baseOptions(at, { context, ...extra });

describe('NVIDIA vectors: parse', () => {
  it('parses the Hopper 545.00 report as PROVENANCE.md describes it', () => {
    const r = parseGpuReport(reportBytes(H545));
    expect(r.request.version).toBe(0x11);
    expect(r.request.param1).toBe(1);
    expect(r.request.param2).toBe(0xff);
    expect(Buffer.from(r.request.nonce).toString('hex')).toBe(
      '4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e',
    );
    expect(r.response.blocks).toHaveLength(64);
    expect(r.response.blocks.every((b) => b.value.length === 48 && b.dmtfType === 1)).toBe(true);
    expect(r.response.blocks.filter((b) => b.value.some((x) => x !== 0))).toHaveLength(26);
    expect(Buffer.from(r.response.responderNonce).toString('hex')).toBe(
      '1020ecb8f64dcfd50dabb760fc6a24210ba77d9f43a3a4db170a1f560283566f',
    );
    const o = r.response.opaqueData;
    expect([o.driverVersion, o.vbiosVersion, o.project, o.projectSku, o.chipSku]).toEqual([
      '545.00',
      '96.00.5E.00.01',
      '1010',
      '0200',
      '882',
    ]);
    expect(r.response.signature).toHaveLength(96);
  });

  it('parses the Blackwell report with its FWID and 31 non-zero measurements', () => {
    const r = parseGpuReport(reportBytes(B575));
    const o = r.response.opaqueData;
    expect([o.driverVersion, o.vbiosVersion, o.project, o.projectSku, o.chipSku]).toEqual([
      '575.32',
      '97.00.88.00.0F',
      'G525',
      '0220',
      '886',
    ]);
    expect(o.fwid).toHaveLength(48);
    expect(r.response.blocks.filter((b) => b.value.some((x) => x !== 0))).toHaveLength(31);
  });

  it('parses every RIM with the active-measurement counts PROVENANCE.md lists', () => {
    const counts: [string, string, number][] = [
      [`${H545}/driver_rim.swidtag`, '545.00', 21],
      [`${H545}/vbios_rim.swidtag`, '96.00.5E.00.01', 12],
      [`${H535}/vbios_rim.swidtag`, '96.00.5E.00.01', 12],
      [`${H535}/driver_rim_measurement_mismatch.xml`, '535.86.09', 22],
      ['rims/NV_GPU_DRIVER_GH100_550.144.03.xml', '550.144.03', 21],
    ];
    for (const [file, version, active] of counts) {
      const rim = parseRim(vector(file));
      expect(rim.version).toBe(version);
      expect(rim.product).toBe('GH100');
      expect(rim.measurements.filter((m) => m.active)).toHaveLength(active);
    }
  });
});

describe('NVIDIA vectors: verify and appraise', () => {
  it('nvtrust Hopper 545.00 (complete): signature, chain, both RIMs, all 33 measurements match → affirming', async () => {
    const a = await nvidiaVerifier.appraiseEvidence(
      envelope(H545),
      options(IN_WINDOW, {
        collateral: folderSource(H545),
        expectedReportData: fromHex('4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e'),
      }),
    );
    expect(a.status).toBe('affirming');
    expect(a.trustVector).toEqual({ hardware: 2, instance_identity: 2, executables: 2, configuration: 2 });
    // 21 driver + 12 VBIOS active measurements; index 35 (NVDEC0) is skipped because NVDEC0 is disabled.
    expect(a.claims['measurements_compared']).toHaveLength(32);
    expect(a.claims['measurements_mismatched']).toEqual([]);
    expect(a.claims['hwmodel']).toBe('GH100 A01 GSP BROM');
    expect(a.claims['driver_version']).toBe('545.00');
    expect(a.claims['vbios_version']).toBe('96.00.5E.00.01');
    expect(a.findings.map((f) => [f.check, f.status])).toEqual([['revocation', 'none']]);
  });

  it('Hopper 545.00 is refused outside the RIM signer window (RIM signer expired 2025-06-22)', async () => {
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(
        envelope(H545),
        options('2026-01-01T00:00:00Z', { collateral: folderSource(H545) }),
      ),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'certificate-expired']);
    expect(e.message).toMatch(/RIM signing chain/);
  });

  it('nvat Hopper 535.86.09: VBIOS RIM matches, driver not judged (no genuine driver RIM)', async () => {
    const a = await nvidiaVerifier.appraiseEvidence(
      envelope(H535),
      options(IN_WINDOW, { collateral: folderSource(H535) }),
    );
    expect(a.status).toBe('affirming');
    expect(a.claims['measurements_compared']).toHaveLength(12);
    expect(a.claims['measurements_mismatched']).toEqual([]);
    expect(a.findings.find((f) => f.check === 'driver-rim')?.status).toBe('none');
    expect(a.trustVector.executables).toBe(0);
  });

  it('nvat Hopper 535.86.09 with driver_rim_measurement_mismatch.xml: refused, edited after signing', async () => {
    const driverRim = vectorText(`${H535}/driver_rim_measurement_mismatch.xml`);
    // Both RIM signers are valid on 2025-06-01; the signed SignedInfo verifies, the content digest does not.
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(envelope(H535, { driverRim }), options('2025-06-01T00:00:00Z')),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'rim-digest-mismatch']);
    // Its measurements (compared without the signature, as the source project's test does): of 22 active
    // ones, 35 is skipped (NVDEC0 disabled) and 15 of the other 21 differ.
    const cmp = compareMeasurements(parseGpuReport(reportBytes(H535)), { driver: parseRim(driverRim) });
    expect(cmp.compared).toHaveLength(21);
    expect(cmp.skipped).toEqual([35]);
    expect(cmp.mismatches.map((m) => m.index)).toEqual([
      7, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 37, 39, 40, 41,
    ]);
    expect(cmp.mismatches.every((m) => m.source === 'driver')).toBe(true);
  });

  it('nvat Hopper 590.12 SDK evidence JSON: signature, chain, FWID bound; no RIMs → measurements not judged', async () => {
    const a = await nvidiaVerifier.appraiseEvidence(
      vector('nvat-sdk_hopper_590.12_evidence/hopper_evidence.json'),
      options(IN_WINDOW, {
        expectedReportData: fromHex('e97b23a1718095a0e9e35edca810768c70a6a5a389b705e753b197912bc11576'),
      }),
    );
    expect(a.status).toBe('affirming');
    expect(a.claims['driver_version']).toBe('590.12');
    expect(a.claims['vbios_version']).toBe('96.00.A5.00.01');
    expect(a.claims['cc_feature']).toBe('ppcie');
    expect(a.trustVector.configuration).toBe(2);
    expect(a.findings.filter((f) => f.status !== 'none')).toEqual([]);
    expect(a.findings.map((f) => f.check)).toEqual(expect.arrayContaining(['driver-rim', 'vbios-rim']));
  });

  it('nvat Blackwell 575.32: signature, chain and FWID verify; no RIMs → not judged', async () => {
    const a = await nvidiaVerifier.appraiseEvidence(envelope(B575), options('2030-01-01T00:00:00Z'));
    expect(a.status).toBe('affirming');
    expect(a.claims['arch']).toBe('BLACKWELL');
    expect(a.claims['hwmodel']).toBe('GB100 A01 GSP BROM');
    expect(a.claims['fwid']).toBe(
      'd090cab1b6e6ffddca83d1781e25b3f040fa1f3c7608230cb5f41b1c1b99f5f748349e59d0ef8eb830c9bc79ccf77502',
    );
    expect(a.findings.find((f) => f.check === 'cc-mode')?.status).toBe('none');
  });

  it('stand-alone RIM 550.144.03 verifies in its signer window and not before', async () => {
    const rim = parseRim(vector('rims/NV_GPU_DRIVER_GH100_550.144.03.xml'));
    const v = await verifyRim(rim, { context, at: new Date('2025-06-01T00:00:00Z') });
    expect(v.chain.path.at(-1)!.subject).toMatch(/NVIDIA CoRIM signing Root CA/);
    const e = await rejection(verifyRim(rim, { context, at: new Date('2024-06-01T00:00:00Z') }));
    expect(e.code).toBe('certificate-expired');
  });

  it('a RIM for another driver version is contraindicated, not compared', async () => {
    const a = await nvidiaVerifier.appraiseEvidence(
      envelope(H545, { driverRim: vectorText('rims/NV_GPU_DRIVER_GH100_550.144.03.xml') }),
      options('2025-06-01T00:00:00Z', { collateral: folderSource(H545) }),
    );
    expect(a.status).toBe('contraindicated');
    expect(a.findings.find((f) => f.check === 'driver-rim')).toMatchObject({ status: 'contraindicated' });
    expect(a.findings.find((f) => f.check === 'driver-rim')!.message).toMatch(/550\.144\.03.*545\.00/);
  });
});

describe('NVIDIA vectors: refusals', () => {
  const at = new Date(IN_WINDOW);
  const chain = () => vector(`${H545}/cert_chain.pem`);
  const pemBlocks = () =>
    vectorText(`${H545}/cert_chain.pem`).match(/-----BEGIN[\s\S]*?END CERTIFICATE-----\n?/g)!;

  it('flipped signature byte → bad-signature (verify)', async () => {
    const bytes = reportBytes(H545);
    bytes[bytes.length - 10]! ^= 0x01;
    const e = await rejection(verifyGpuReport(parseGpuReport(bytes), { context, certChain: chain(), at }));
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });

  it('flipped measurement byte → bad-signature', async () => {
    const bytes = reportBytes(H545);
    bytes[37 + 8 + 7 + 20]! ^= 0x80;
    const e = await rejection(verifyGpuReport(parseGpuReport(bytes), { context, certChain: chain(), at }));
    expect(e.code).toBe('bad-signature');
  });

  it('wrong nonce → nonce-mismatch', async () => {
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), {
        context,
        certChain: chain(),
        at,
        expectedNonce: new Uint8Array(32).fill(7),
      }),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'nonce-mismatch']);
  });

  it('another GPU chain (the 535.86.09 GPU) → bad-signature', async () => {
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), {
        context,
        certChain: vector(`${H535}/cert_chain.pem`),
        at,
      }),
    );
    expect(e.code).toBe('bad-signature');
  });

  it('wrong root (the RIM root as the only anchor) → untrusted-root', async () => {
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), {
        context,
        certChain: chain(),
        at,
        trustAnchors: [vector('../roots/nvidia_rim_root_ca.pem')],
      }),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'untrusted-root']);
  });

  it('reordered chain → chain-order', async () => {
    const b = pemBlocks();
    const reordered = [b[0], b[2], b[1], b[3], b[4]].join('');
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), { context, certChain: utf8.encode(reordered), at }),
    );
    expect(e.code).toBe('chain-order');
  });

  it('truncated chain (an intermediate missing) → chain-incomplete', async () => {
    const b = pemBlocks();
    const truncated = [b[0], b[1], b[3], b[4]].join('');
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), { context, certChain: utf8.encode(truncated), at }),
    );
    expect(e.code).toBe('chain-incomplete');
  });

  it('a certificate with bytes after its DER → bad-certificate (parse)', async () => {
    const b = pemBlocks();
    const padded = b[1]!.replace(/=\n-----END/, '9\n-----END'); // base64 "…I=" → "…I9": one extra byte
    expect(padded).not.toBe(b[1]);
    const e = await rejection(
      verifyGpuReport(parseGpuReport(reportBytes(H545)), {
        context,
        certChain: utf8.encode([b[0], padded, ...b.slice(2)].join('')),
        at,
      }),
    );
    expect([e.stage, e.code]).toEqual(['parse', 'bad-certificate']);
  });

  it('chain without its root is accepted (the anchor completes it)', async () => {
    const b = pemBlocks();
    const v = await verifyGpuReport(parseGpuReport(reportBytes(H545)), {
      context,
      certChain: utf8.encode(b.slice(0, 4).join('')),
      at,
    });
    expect(v.chain.path).toHaveLength(5);
  });

  it('truncated report → truncated (parse)', () => {
    const bytes = reportBytes(H545);
    for (const n of [0, 36, 37, 200, bytes.length - 97, bytes.length - 1]) {
      const e = (() => {
        try {
          parseGpuReport(bytes.subarray(0, n));
        } catch (x) {
          return x as AttestationError;
        }
      })();
      expect(e).toBeInstanceOf(AttestationError);
      expect(e!.stage).toBe('parse');
    }
  });

  it('trailing bytes → trailing-bytes (parse)', () => {
    const bytes = reportBytes(H545);
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    expect(() => parseGpuReport(longer)).toThrow(
      expect.objectContaining({ stage: 'parse', code: 'trailing-bytes' }),
    );
  });

  it('SPDM 1.2 version byte → unsupported-spdm-version', () => {
    const bytes = reportBytes(H545);
    bytes[37] = 0x12;
    expect(() => parseGpuReport(bytes)).toThrow(
      expect.objectContaining({ code: 'unsupported-spdm-version' }),
    );
  });

  it('tampered RIM (one golden hash changed) → rim-digest-mismatch', async () => {
    const xml = vectorText(`${H545}/vbios_rim.swidtag`).replace(
      /Hash0="([0-9a-f])/,
      (_m, c: string) => `Hash0="${c === '0' ? '1' : '0'}`,
    );
    const e = await rejection(verifyRim(parseRim(xml), { context, at }));
    expect([e.stage, e.code]).toEqual(['verify', 'rim-digest-mismatch']);
  });

  it('tampered RIM SignedInfo → rim-bad-signature', async () => {
    const xml = vectorText(`${H545}/vbios_rim.swidtag`).replace(/<ds:DigestValue>./, '<ds:DigestValue>A');
    const e = await rejection(verifyRim(parseRim(xml), { context, at }));
    expect(e.code).toBe('rim-bad-signature');
  });

  it('RIM with a DOCTYPE → bad-rim (parse)', () => {
    const xml = `<!DOCTYPE x [<!ENTITY a "b">]>${vectorText(`${H545}/vbios_rim.swidtag`)}`;
    expect(() => parseRim(xml)).toThrow(expect.objectContaining({ stage: 'parse', code: 'bad-rim' }));
  });

  it('RIM signed under exclusive c14n is refused as outside the NVIDIA profile', async () => {
    const xml = vectorText(`${H545}/vbios_rim.swidtag`).replace(
      '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2006/12/xml-c14n11"/>',
      '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>',
    );
    const e = await rejection(verifyRim(parseRim(xml), { context, at }));
    expect(e.code).toBe('rim-unsupported-algorithm');
  });

  it('RIM signed by a chain to another root → untrusted-root', async () => {
    const e = await rejection(
      verifyRim(parseRim(vector(`${H545}/vbios_rim.swidtag`)), {
        context,
        at,
        trustAnchors: [vector('../roots/nvidia_device_identity_ca.pem')],
      }),
    );
    expect(e.code).toBe('untrusted-root');
  });

  it('evidence envelope nonce disagreeing with the report → bad-evidence', async () => {
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(envelope(H545, { nonce: '00'.repeat(32) }), options(IN_WINDOW)),
    );
    expect([e.stage, e.code]).toEqual(['parse', 'bad-evidence']);
  });

  it('a bare report without its chain (binary or hex) → missing-certificate-chain', async () => {
    for (const bare of [reportBytes(H545), vector(`${H545}/attestation_report.hex`)]) {
      const e = await rejection(nvidiaVerifier.appraiseEvidence(bare, options(IN_WINDOW)));
      expect([e.stage, e.code]).toEqual(['parse', 'missing-certificate-chain']);
    }
  });

  it('unknown evidence fields are refused → bad-evidence', async () => {
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(envelope(H545, { extra: 1 }), options(IN_WINDOW)),
    );
    expect(e.code).toBe('bad-evidence');
  });
});

describe('chain cache', () => {
  it('re-verifies validity at each time even when the chain is cached', async () => {
    const report = parseGpuReport(reportBytes(H545));
    const certChain = vector(`${H545}/cert_chain.pem`);
    await verifyGpuReport(report, { context, certChain, at: new Date(IN_WINDOW) });
    const e = await rejection(
      verifyGpuReport(report, { context, certChain, at: new Date('2019-01-01T00:00:00Z') }),
    );
    expect(e.code).toBe('certificate-expired');
  });
});
