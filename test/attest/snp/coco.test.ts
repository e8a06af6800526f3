/**
 * guest-components' SEV-SNP evidence ({attestation_report, cert_chain}, serde_json of virtee/sev's
 * AttestationReport and CertTableEntry): real reports from test/vectors re-wrapped exactly as its snp
 * attester serialises them must rebuild byte for byte and verify as the raw reports do; every
 * malformed shape is refused with a clear message.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { parseCertificates } from '../../../src/attest/common/pki.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import { GUID_VCEK, GUID_VLEK } from '../../../src/attest/snp/certtable.js';
import {
  type CertTableEntry,
  certTableCollateral,
  fromCocoSnpEvidence,
  parseReport,
  snpVerifier,
  toCocoSnpEvidence,
} from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';

const V = join(import.meta.dirname, '../../vectors');
const SNP = join(V, 'sev-snp');
const ROOTS = join(V, 'roots');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(...p)));
const der = (folder: string, name: string) => {
  const b = read(SNP, folder, name);
  return name.endsWith('.pem') ? new Uint8Array(parseCertificates(b, name)[0]!.rawData) : b;
};

/** Sent over the wire: JSON text, parsed back as the broker's body parser does. */
const wire = (v: unknown) => JSON.parse(JSON.stringify(v)) as Record<string, unknown>;

/** `crl: false`: the only Milan CRL has expired before dstack's VCEK is valid (see vectors.test.ts). */
const REAL: { folder: string; key: string; guid: string; at: string; crl?: false }[] = [
  { folder: 'go-sev-guest_milan_v2', key: 'vcek.der', guid: GUID_VCEK, at: '2025-09-01T00:00:00Z' },
  { folder: 'virtee_milan_v2', key: 'vcek.der', guid: GUID_VCEK, at: '2025-09-01T00:00:00Z' },
  { folder: 'trustee_milan_v2_idblock', key: 'vcek.der', guid: GUID_VCEK, at: '2025-09-01T00:00:00Z' },
  { folder: 'trustee_milan_v3_vlek_aws', key: 'vlek.der', guid: GUID_VLEK, at: '2025-09-01T00:00:00Z' },
  { folder: 'dstack_milan_v3', key: 'vcek.pem', guid: GUID_VCEK, at: '2026-07-01T00:00:00Z', crl: false },
  { folder: 'openpcc_genoa_v3_azure', key: 'vcek.pem', guid: GUID_VCEK, at: '2025-09-01T00:00:00Z' },
];

async function failure(f: () => unknown): Promise<AttestationError> {
  let e: unknown;
  try {
    await f();
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

describe('guest-components SEV-SNP evidence, real reports', () => {
  for (const v of REAL) {
    it(`${v.folder}: the JSON rebuilds the report byte for byte and verifies with its cert_chain`, async () => {
      const raw = read(SNP, v.folder, 'report.bin');
      const certTable: CertTableEntry[] = [{ guid: v.guid, data: der(v.folder, v.key) }];
      const json = wire(toCocoSnpEvidence(raw, certTable));
      const back = fromCocoSnpEvidence(json);
      expect(back.report).toEqual(raw);
      expect(back.certTable).toEqual(certTable);
      // The endorsement key comes from cert_chain only; the folder supplies nothing but AMD's roots.
      const collateral = certTableCollateral(
        back.certTable!,
        v.crl === false ? undefined : folderCollateral(ROOTS),
      );
      const options = { at: new Date(v.at), collateral, policy: { allowDebug: true } };
      const coco = await snpVerifier.appraiseEvidence(back.report, options);
      const direct = await snpVerifier.appraiseEvidence(raw, options);
      expect(coco.claims).toEqual(direct.claims);
      expect(coco.claims['report_data']).toBe(Buffer.from(raw.subarray(0x50, 0x90)).toString('hex'));
      // The binding is checked on the rebuilt report like on a raw one.
      const e = await failure(() =>
        snpVerifier.appraiseEvidence(back.report, {
          ...options,
          expectedReportData: new Uint8Array(64).fill(7),
        }),
      );
      expect(e.code).toBe('report-data-mismatch');
    });
  }

  it('serialises as sev does: field order, null for absent fields, arrays of numbers, Milan TCB without fmc', () => {
    const raw = read(SNP, 'virtee_milan_v2', 'report.bin');
    const json = toCocoSnpEvidence(raw);
    const r = json.attestation_report;
    expect(Object.keys(json)).toEqual(['attestation_report', 'cert_chain']);
    expect(json.cert_chain).toBeNull();
    expect(Object.keys(r).slice(0, 4)).toEqual(['version', 'guest_svn', 'policy', 'family_id']);
    expect(r['version']).toBe(2);
    expect(r['cpuid_fam_id']).toBeNull();
    expect(r['launch_mit_vector']).toBeNull();
    expect(r['current_tcb']).toMatchObject({ fmc: null });
    expect((r['report_data'] as number[]).length).toBe(64);
    expect(Object.keys(r['signature'] as object)).toEqual(['r', 's']);
    const p = parseReport(raw);
    expect(r['policy']).toBe(Number(p.policyRaw));
    expect(r['current']).toEqual(p.currentVersion);
  });

  it('cert_chain null: the endorsement key comes from the broker collateral', async () => {
    const raw = read(SNP, 'virtee_milan_v2', 'report.bin');
    const back = fromCocoSnpEvidence(wire(toCocoSnpEvidence(raw)));
    expect(back.certTable).toBeUndefined();
    const a = await snpVerifier.appraiseEvidence(back.report, {
      at: new Date('2025-09-01T00:00:00Z'),
      collateral: folderCollateral(join(SNP, 'virtee_milan_v2'), ROOTS),
    });
    expect(a.status).toBe('affirming');
  });

  it('a field changed in the JSON breaks the signature', async () => {
    const raw = read(SNP, 'virtee_milan_v2', 'report.bin');
    const json = wire(
      toCocoSnpEvidence(raw, [{ guid: GUID_VCEK, data: der('virtee_milan_v2', 'vcek.der') }]),
    );
    const r = json['attestation_report'] as Record<string, number[]>;
    r['measurement']![0] = r['measurement']![0]! ^ 1;
    const back = fromCocoSnpEvidence(json);
    const e = await failure(() =>
      snpVerifier.appraiseEvidence(back.report, {
        at: new Date('2025-09-01T00:00:00Z'),
        collateral: certTableCollateral(back.certTable!, folderCollateral(ROOTS)),
      }),
    );
    expect(e.code).toBe('bad-signature');
  });

  it('a VCEK of another chip in cert_chain is refused', async () => {
    const raw = read(SNP, 'virtee_milan_v2', 'report.bin');
    const other = der('go-sev-guest_milan_v2', 'vcek.der');
    const back = fromCocoSnpEvidence(wire(toCocoSnpEvidence(raw, [{ guid: GUID_VCEK, data: other }])));
    const e = await failure(() =>
      snpVerifier.appraiseEvidence(back.report, {
        at: new Date('2025-09-01T00:00:00Z'),
        collateral: certTableCollateral(back.certTable!, folderCollateral(ROOTS)),
      }),
    );
    expect(e.stage).toBe('verify');
  });
});

describe('guest-components SEV-SNP evidence, test authority (v3, v5, Turin)', () => {
  for (const [product, version] of [
    ['Genoa', 3],
    ['Milan', 5],
    ['Turin', 3],
    ['Turin', 5],
  ] as const) {
    it(`${product} v${version}: rebuilds byte for byte and verifies`, async () => {
      const snp = await SnpTestAuthority.create({ product });
      const issued = await snp.issue({
        version,
        reportData: new Uint8Array(64).fill(5),
        ...(version === 5 ? { launchMitVector: 3n, currentMitVector: 7n } : {}),
      });
      const json = wire(toCocoSnpEvidence(issued.report, [{ guid: GUID_VCEK, data: issued.endorsementKey }]));
      const r = json['attestation_report'] as Record<string, unknown>;
      expect((r['reported_tcb'] as { fmc: unknown }).fmc === null).toBe(product !== 'Turin');
      expect(r['launch_mit_vector']).toBe(version === 5 ? 3 : null);
      const back = fromCocoSnpEvidence(json);
      expect(back.report).toEqual(issued.report);
      const a = await snpVerifier.appraiseEvidence(back.report, {
        at: new Date(),
        collateral: certTableCollateral(back.certTable!, snp.collateral(issued)),
        trustAnchors: [snp.trustAnchor],
        expectedReportData: new Uint8Array(64).fill(5),
      });
      expect(a.kind).toBe('snp');
    });
  }
});

describe('guest-components SEV-SNP evidence, malformed shapes', () => {
  const raw = read(SNP, 'trustee_milan_v3_vlek_aws', 'report.bin');
  const good = () =>
    wire(toCocoSnpEvidence(raw, [{ guid: GUID_VLEK, data: der('trustee_milan_v3_vlek_aws', 'vlek.der') }]));
  /** A mutation of the report object inside otherwise good evidence. */
  const inReport =
    (f: (r: Record<string, unknown>) => void) =>
    (j: Record<string, unknown>): unknown => {
      f(j['attestation_report'] as Record<string, unknown>);
      return j;
    };
  const cases: [string, (j: Record<string, unknown>) => unknown, RegExp][] = [
    ['not an object', () => [], /must be an object \{attestation_report, cert_chain\}/],
    ['unknown top-level field', (j) => ({ ...j, quote: 'x' }), /unknown fields quote/],
    [
      'report not an object',
      (j) => ({ ...j, attestation_report: 'AAAA' }),
      /attestation_report must be an object/,
    ],
    [
      'unknown report field',
      inReport((r) => {
        r['tee_ext'] = 1;
      }),
      /unknown fields tee_ext/,
    ],
    [
      'version 6',
      inReport((r) => {
        r['version'] = 6;
      }),
      /version 6 is not supported/,
    ],
    [
      'version as a string',
      inReport((r) => {
        r['version'] = '3';
      }),
      /version must be an unsigned 32-bit integer/,
    ],
    [
      'v3 without CPUID',
      inReport((r) => {
        r['cpuid_step'] = null;
      }),
      /must carry cpuid_fam_id/,
    ],
    [
      'v3 with mitigation vectors',
      inReport((r) => {
        r['launch_mit_vector'] = 0;
      }),
      /no mitigation vectors/,
    ],
    [
      'v2 with CPUID',
      inReport((r) => {
        r['version'] = 2;
      }),
      /version 2 report has no CPUID/,
    ],
    [
      'short byte array',
      inReport((r) => {
        (r['report_data'] as number[]).pop();
      }),
      /report_data must be an array of 64/,
    ],
    [
      'byte out of range',
      inReport((r) => {
        (r['measurement'] as number[])[3] = 256;
      }),
      /measurement\[3\] must be an unsigned 8-bit/,
    ],
    [
      'u64 beyond 2^53',
      inReport((r) => {
        r['policy'] = 2 ** 60;
      }),
      /policy .* beyond 2\^53/,
    ],
    [
      'negative integer',
      inReport((r) => {
        r['vmpl'] = -1;
      }),
      /vmpl must be an unsigned 32-bit/,
    ],
    [
      'TCB not an object',
      inReport((r) => {
        r['launch_tcb'] = 7;
      }),
      /launch_tcb must be a TCB version object/,
    ],
    [
      'fmc on one TCB only',
      inReport((r) => {
        (r['current_tcb'] as Record<string, unknown>)['fmc'] = 1;
      }),
      /every TCB version carries fmc/,
    ],
    [
      'unknown CPUID',
      inReport((r) => {
        r['cpuid_fam_id'] = 0x17;
      }),
      /not a known SEV-SNP product/,
    ],
    [
      'version object missing build',
      inReport((r) => {
        r['current'] = { major: 1, minor: 55 };
      }),
      /current.build must be/,
    ],
    [
      'signature missing',
      inReport((r) => {
        delete r['signature'];
      }),
      /signature must be an object/,
    ],
    [
      'signature r short',
      inReport((r) => {
        (r['signature'] as Record<string, number[]>)['r']!.pop();
      }),
      /signature.r must be an array of 72/,
    ],
    ['cert_chain not a list', (j) => ({ ...j, cert_chain: {} }), /cert_chain must be null or a list/],
    [
      'unknown cert_type',
      (j) => ({ ...j, cert_chain: [{ cert_type: 'PEK', data: [1] }] }),
      /cert_type "PEK" is not one of/,
    ],
    [
      'OTHER with a bad uuid',
      (j) => ({ ...j, cert_chain: [{ cert_type: { OTHER: 'x' }, data: [1] }] }),
      /is not one of/,
    ],
    [
      'cert data as base64',
      (j) => ({ ...j, cert_chain: [{ cert_type: 'VLEK', data: 'MII=' }] }),
      /cert_chain\[0\].data must be a non-empty array/,
    ],
    [
      'too many certificates',
      (j) => ({ ...j, cert_chain: Array(17).fill({ cert_type: 'ARK', data: [1] }) }),
      /at most 16/,
    ],
  ];
  for (const [name, mutate, message] of cases) {
    it(`refuses ${name}`, async () => {
      const e = await failure(() => fromCocoSnpEvidence(mutate(good())));
      expect(e.code).toBe('bad-coco-evidence');
      expect(e.stage).toBe('parse');
      expect(e.message).toMatch(message);
    });
  }

  it('skips Empty terminators and keeps OTHER entries by their GUID', () => {
    const j = good();
    const other = '11111111-2222-3333-4444-555555555555';
    const back = fromCocoSnpEvidence({
      ...j,
      cert_chain: [
        ...(j['cert_chain'] as unknown[]),
        { cert_type: { OTHER: other }, data: [9] },
        { cert_type: 'Empty', data: [] },
      ],
    });
    expect(back.certTable!.map((e) => e.guid)).toEqual([GUID_VLEK, other]);
  });
});
