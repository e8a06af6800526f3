import { beforeAll, describe, expect, it, vi } from 'vitest';
import { AttestationError, type VerifyOptions } from '../../../src/attest/common/types.js';
import { createVerifierContext } from '../../../src/attest/context.js';
import { parseReport, snpVerifier, verifyReport } from '../../../src/attest/snp/index.js';
import {
  type IssuedReport,
  SnpTestAuthority,
  type TestReportOptions,
} from '../../../src/attest/testing/snp.js';

const AT = new Date();

async function failure(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

describe('SEV-SNP with the test authority (real formats, test root)', () => {
  let ca: SnpTestAuthority;
  let other: SnpTestAuthority;
  beforeAll(async () => {
    [ca, other] = await Promise.all([SnpTestAuthority.create(), SnpTestAuthority.create()]);
  });
  const opts = (issued: IssuedReport, extra: Partial<VerifyOptions> = {}, auth = ca): VerifyOptions => ({
    at: AT,
    collateral: auth.collateral(issued),
    trustAnchors: [auth.trustAnchor],
    ...extra,
  });
  const issue = (o: TestReportOptions = {}) => ca.issue(o);

  it('a v3 report verifies end to end and is affirming with matching reference values', async () => {
    const measurement = new Uint8Array(48).fill(7);
    const reportData = new Uint8Array(64).fill(9);
    const issued = await issue({ measurement, reportData });
    const a = await snpVerifier.appraiseEvidence(
      issued.report,
      opts(issued, {
        expectedReportData: reportData,
        policy: { referenceValues: { measurement: ['07'.repeat(48)] } },
      }),
    );
    expect(a.status).toBe('affirming');
    expect(a.trustVector).toEqual({ hardware: 2, instance_identity: 2, configuration: 2, executables: 2 });
    expect(a.claims['measurement']).toBe('07'.repeat(48));
    expect(a.claims['product']).toBe('Milan');
    expect(a.claims['signing_key']).toBe('vcek');
    expect(a.claims['revocation_checked']).toBe(true);
  });

  it('a v5 report carries the mitigation vectors', async () => {
    const issued = await issue({ version: 5, launchMitVector: 3n, currentMitVector: 7n });
    const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
    expect(a.claims['version']).toBe(5);
    expect(a.claims['launch_mit_vector']).toBe('0000000000000003');
    expect(a.claims['current_mit_vector']).toBe('0000000000000007');
  });

  it('a v2 report (no CPUID) finds its product from the VCEK', async () => {
    const issued = await issue({ version: 2 });
    const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
    expect(a.status).toBe('affirming');
    expect(a.claims['cpuid']).toBeUndefined();
  });

  it('Genoa and Turin (FMC SPL, 8-byte hwID) chains verify', async () => {
    for (const product of ['Genoa', 'Turin'] as const) {
      const auth = await SnpTestAuthority.create({ product });
      const issued = await auth.issue();
      const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued, {}, auth));
      expect(a.claims['product']).toBe(product);
      if (product === 'Turin') expect((a.claims['reported_tcb'] as { fmc: number }).fmc).toBe(1);
      const mismatch = await auth.issue({
        certificateTcb: { fmc: 2, bootloader: 1, tee: 1, snp: 3, microcode: 72 },
      });
      expect(
        (await failure(snpVerifier.appraiseEvidence(mismatch.report, opts(mismatch, {}, auth)))).code,
      ).toBe('tcb-mismatch');
    }
  });

  it('a VLEK-signed report with a masked chip id verifies', async () => {
    const issued = await issue({ signingKey: 'vlek', maskChipId: true });
    const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
    expect(a.claims['signing_key']).toBe('vlek');
    expect(a.claims['chip_id_masked']).toBe(true);
    expect(a.claims['csp_id']).toBe('CN=test-csp.example');
  });

  it('a VCEK report with CHIP_ID masked or MASK_CHIP_KEY set verifies on the signature alone', async () => {
    for (const o of [{ maskChipId: true }, { maskChipKey: true }]) {
      const issued = await issue(o);
      const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
      expect(a.status).toBe('affirming');
    }
  });

  it('a repeated verification checks only the report signature (chain cache)', async () => {
    const issued = await issue();
    const context = createVerifierContext();
    await snpVerifier.appraiseEvidence(issued.report, opts(issued, { context }));
    const spy = vi.spyOn(crypto.subtle, 'verify');
    try {
      await snpVerifier.appraiseEvidence(issued.report, opts(issued, { context }));
      expect(spy.mock.calls.map((c) => (c[0] as { name: string }).name)).toEqual(['ECDSA']);
      // Another context remembers nothing of this one: its first verification checks the chain too.
      spy.mockClear();
      await snpVerifier.appraiseEvidence(issued.report, opts(issued, { context: createVerifierContext() }));
      expect(spy.mock.calls.map((c) => (c[0] as { name: string }).name)).toContain('RSA-PSS');
      // Outside the cached validity window the chain is checked again (and fails).
      const late = opts(issued, { at: new Date(AT.getTime() + 400 * 86_400_000), context });
      expect((await failure(snpVerifier.appraiseEvidence(issued.report, late))).code).toBe(
        'certificate-expired',
      );
    } finally {
      spy.mockRestore();
    }
  });

  it('repeated verification reuses the cached chain and still checks the report signature', async () => {
    const issued = await issue();
    await snpVerifier.appraiseEvidence(issued.report, opts(issued));
    const flipped = issued.report.slice();
    flipped[0x2a0] ^= 1;
    const e = await failure(snpVerifier.appraiseEvidence(flipped, opts(issued)));
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });

  describe('refusals', () => {
    it('flipped signed byte → bad-signature', async () => {
      const issued = await issue();
      const bad = issued.report.slice();
      bad[0x90] ^= 0x80;
      const e = await failure(snpVerifier.appraiseEvidence(bad, opts(issued)));
      expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
    });

    it('a signature component that overflows its 48 bytes → bad-signature', async () => {
      const issued = await issue();
      const bad = issued.report.slice();
      bad[0x2a0 + 60] = 1;
      expect((await failure(snpVerifier.appraiseEvidence(bad, opts(issued)))).code).toBe('bad-signature');
    });

    it('another VCEK for the same chip and TCB → bad-signature', async () => {
      const chipId = new Uint8Array(64).fill(3);
      const a = await issue({ chipId });
      const b = await issue({ chipId });
      const e = await failure(snpVerifier.appraiseEvidence(a.report, opts(b)));
      expect(e.code).toBe('bad-signature');
    });

    it('a chain to a root that is not trusted → untrusted-root', async () => {
      const issued = await issue();
      const e = await failure(
        snpVerifier.appraiseEvidence(issued.report, opts(issued, { trustAnchors: undefined })),
      );
      expect([e.stage, e.code]).toEqual(['verify', 'untrusted-root']);
      const e2 = await failure(
        snpVerifier.appraiseEvidence(issued.report, opts(issued, { trustAnchors: [other.trustAnchor] })),
      );
      expect(e2.code).toBe('untrusted-root');
    });

    it('ASK revoked by the ARK CRL → certificate-revoked; VLEK path checks the ASVK', async () => {
      const issued = await issue();
      const crl = await ca.crl({ revoke: ['ask'] });
      const e = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { collateral: ca.collateral(issued, { crl }) }),
        ),
      );
      expect([e.stage, e.code]).toEqual(['verify', 'certificate-revoked']);
      const vlek = await issue({ signingKey: 'vlek' });
      const crl2 = await ca.crl({ revoke: ['asvk'] });
      const e2 = await failure(
        snpVerifier.appraiseEvidence(
          vlek.report,
          opts(vlek, { collateral: ca.collateral(vlek, { crl: crl2 }) }),
        ),
      );
      expect(e2.code).toBe('certificate-revoked');
    });

    it('a CRL that is stale at `at` → crl-expired; a forged CRL → crl-signature', async () => {
      const issued = await issue();
      const stale = await ca.crl({
        thisUpdate: new Date(AT.getTime() - 10 * 86_400_000),
        nextUpdate: new Date(AT.getTime() - 1000),
      });
      const e = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { collateral: ca.collateral(issued, { crl: stale }) }),
        ),
      );
      expect(e.code).toBe('crl-expired');
      // Same issuer name (every Milan test ARK is "ARK-Milan-Test"), another authority's key.
      const forged = await other.crl();
      const e2 = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { collateral: ca.collateral(issued, { crl: forged }) }),
        ),
      );
      expect(e2.code).toBe('crl-signature');
    });

    it('no CRL → verified, with a revocation warning', async () => {
      const issued = await issue();
      const a = await snpVerifier.appraiseEvidence(
        issued.report,
        opts(issued, { collateral: ca.collateral(issued, { crl: false }) }),
      );
      expect(a.status).toBe('warning');
      expect(a.findings.find((f) => f.check === 'revocation')?.status).toBe('warning');
      expect(a.trustVector.hardware).toBe(32);
    });

    it('verification time outside the certificate validity → certificate-expired', async () => {
      const issued = await issue();
      const e = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { at: new Date(AT.getTime() + 400 * 86_400_000) }),
        ),
      );
      expect(e.code).toBe('certificate-expired');
    });

    it('VCEK issued for another TCB → tcb-mismatch', async () => {
      const issued = await issue({ certificateTcb: { bootloader: 4, tee: 0, snp: 23, microcode: 219 } });
      const e = await failure(snpVerifier.appraiseEvidence(issued.report, opts(issued)));
      expect([e.stage, e.code]).toEqual(['verify', 'tcb-mismatch']);
    });

    it('VCEK for another chip → chip-id-mismatch', async () => {
      const issued = await issue({ certificateHwId: new Uint8Array(64).fill(1) });
      // The test KDS serves by the VCEK's own hwID, so hand the certificate over as a file.
      const collateral = {
        get: async (req: { url: string; files: string[] }) =>
          req.files.includes('vcek.der')
            ? { body: issued.endorsementKey, headers: {} }
            : ca.collateral(issued).get(req),
      };
      const e = await failure(snpVerifier.appraiseEvidence(issued.report, opts(issued, { collateral })));
      expect(e.code).toBe('chip-id-mismatch');
    });

    it('a VLEK offered for a report that claims VCEK (and the reverse) → bad-endorsement-certificate', async () => {
      const vlek = await issue({ signingKey: 'vlek' });
      const bytes = vlek.report.slice();
      bytes[0x48] = 0; // claim VCEK
      const e = await failure(
        verifyReport(
          parseReport(bytes),
          opts(vlek, { collateral: { get: async () => ({ body: vlek.endorsementKey, headers: {} }) } }),
        ),
      );
      expect([e.stage, e.code]).toEqual(['verify', 'bad-endorsement-certificate']);
      const vcek = await issue();
      const claimsVlek = vcek.report.slice();
      claimsVlek[0x48] = 4;
      const e2 = await failure(
        verifyReport(
          parseReport(claimsVlek),
          opts(vcek, { collateral: { get: async () => ({ body: vcek.endorsementKey, headers: {} }) } }),
        ),
      );
      expect(e2.code).toBe('bad-endorsement-certificate');
    });

    it('debug policy → contraindicated, unless allowDebug (then warning)', async () => {
      const issued = await issue({ policy: { debug: true } });
      const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
      expect(a.status).toBe('contraindicated');
      expect(a.trustVector.configuration).toBe(96);
      const b = await snpVerifier.appraiseEvidence(
        issued.report,
        opts(issued, { policy: { allowDebug: true } }),
      );
      expect(b.status).toBe('warning');
    });

    it('migrate_ma → warning; VMPL ≠ 0 → warning unless a reference value accepts it', async () => {
      const issued = await issue({ policy: { migrateMa: true }, vmpl: 2 });
      const a = await snpVerifier.appraiseEvidence(issued.report, opts(issued));
      expect(a.status).toBe('warning');
      expect(a.findings.map((f) => f.check)).toEqual(expect.arrayContaining(['policy.migrate_ma', 'vmpl']));
      const ok = await issue({ vmpl: 2 });
      const b = await snpVerifier.appraiseEvidence(
        ok.report,
        opts(ok, { policy: { referenceValues: { vmpl: ['2'] } } }),
      );
      expect(b.status).toBe('affirming');
    });

    it('TCB rules: provisional firmware and older reported TCB warn; newer-than-running is contraindicated', async () => {
      const t = { bootloader: 4, tee: 0, snp: 24, microcode: 219 };
      const prov = await issue({ currentTcb: { ...t, microcode: 220 } });
      const a = await snpVerifier.appraiseEvidence(prov.report, opts(prov));
      expect([a.status, a.claims['tcb_status']]).toEqual(['warning', 'ProvisionalFirmware']);
      const ok = await snpVerifier.appraiseEvidence(
        prov.report,
        opts(prov, { policy: { acceptTcbStatus: ['UpToDate', 'ProvisionalFirmware'] } }),
      );
      expect(ok.status).toBe('affirming');
      const old = await issue({ committedTcb: { ...t, snp: 25 }, currentTcb: { ...t, snp: 25 } });
      expect((await snpVerifier.appraiseEvidence(old.report, opts(old))).claims['tcb_status']).toBe(
        'ReportedTcbOutOfDate',
      );
      // Reporting the running (not yet committed) TCB is provisional, not inconsistent.
      const ahead = await issue({ committedTcb: { ...t, snp: 23 } });
      expect((await snpVerifier.appraiseEvidence(ahead.report, opts(ahead))).claims['tcb_status']).toBe(
        'ProvisionalFirmware',
      );
      const bad = await issue({ currentTcb: { ...t, snp: 23 } });
      const c = await snpVerifier.appraiseEvidence(bad.report, opts(bad));
      expect([c.status, c.claims['tcb_status']]).toEqual(['contraindicated', 'Inconsistent']);
    });

    it('report_data mismatch → report-data-mismatch (appraise)', async () => {
      const issued = await issue({ reportData: new Uint8Array(64).fill(1) });
      const e = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { expectedReportData: new Uint8Array(64).fill(2) }),
        ),
      );
      expect([e.stage, e.code]).toEqual(['appraise', 'report-data-mismatch']);
    });

    it('measurement not in the reference values → contraindicated; unknown reference claim → contraindicated', async () => {
      const issued = await issue();
      const a = await snpVerifier.appraiseEvidence(
        issued.report,
        opts(issued, { policy: { referenceValues: { measurement: ['00'.repeat(48)] } } }),
      );
      expect([a.status, a.trustVector.executables]).toEqual(['contraindicated', 96]);
      const b = await snpVerifier.appraiseEvidence(
        issued.report,
        opts(issued, { policy: { referenceValues: { mrtd: ['00'] } } }),
      );
      expect(b.status).toBe('contraindicated');
    });

    it('no VCEK anywhere → collateral-missing', async () => {
      const issued = await issue();
      const e = await failure(
        snpVerifier.appraiseEvidence(
          issued.report,
          opts(issued, { collateral: { get: async () => undefined } }),
        ),
      );
      expect(e.code).toBe('collateral-missing');
    });
  });
});
