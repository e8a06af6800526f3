/** Every SEV-SNP sample in test/vectors/sev-snp, judged as test/vectors/PROVENANCE.md says. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { parseCertificates, verifyChain } from '../../../src/attest/common/pki.js';
import { AttestationError, type CollateralSource } from '../../../src/attest/common/types.js';
import {
  parseReport,
  readEndorsementKeyInfo,
  snpVerifier,
  vcekRequest,
} from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import { toHex } from '../../../src/util/bytes.js';

const V = join(import.meta.dirname, '../../vectors');
const SNP = join(V, 'sev-snp');
const ROOTS = join(V, 'roots');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(...p)));
/** Only the folder itself: no CRL, so revocation cannot be checked. */
const withoutCrl = (folder: string) => folderCollateral(join(SNP, folder));
const withRoots = (folder: string) => folderCollateral(join(SNP, folder), ROOTS);

function appraise(folder: string, at: string, collateral: CollateralSource = withRoots(folder)) {
  return snpVerifier.appraiseEvidence(read(SNP, folder, 'report.bin'), { at: new Date(at), collateral });
}

async function failure(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

const checks = (a: { findings: { check: string; status: string }[] }) =>
  a.findings.filter((f) => f.status !== 'none').map((f) => `${f.check}:${f.status}`);

describe('SEV-SNP real vectors', () => {
  it('go-sev-guest_milan_v2: verifies with the Milan CRL; its policy has DEBUG set', async () => {
    const a = await appraise('go-sev-guest_milan_v2', '2025-09-01T00:00:00Z');
    expect(a.claims['measurement']).toBe(
      'b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01',
    );
    expect(a.claims['policy']).toBe('00000000000b0000');
    expect(a.claims['revocation_checked']).toBe(true);
    expect(a.status).toBe('contraindicated');
    expect(checks(a)).toEqual(['policy.debug:contraindicated']);
    const allowed = await snpVerifier.appraiseEvidence(read(SNP, 'go-sev-guest_milan_v2', 'report.bin'), {
      at: new Date('2025-09-01T00:00:00Z'),
      collateral: withRoots('go-sev-guest_milan_v2'),
      policy: { allowDebug: true },
      expectedReportData: new Uint8Array([1, 2, 3, 4, 5]),
    });
    expect(allowed.status).toBe('warning');
  });

  it('virtee_milan_v2: affirming with the Milan CRL', async () => {
    const a = await appraise('virtee_milan_v2', '2025-09-01T00:00:00Z');
    expect(a.status).toBe('affirming');
    expect(a.claims['reported_tcb']).toEqual({
      raw: '7308000000000003',
      bootloader: 3,
      tee: 0,
      snp: 8,
      microcode: 115,
    });
    expect(a.claims['current_firmware']).toBe('1.52.4');
  });

  it('trustee_milan_v2_idblock: verifies; running microcode is ahead of the committed TCB (warning)', async () => {
    const a = await appraise('trustee_milan_v2_idblock', '2025-09-01T00:00:00Z');
    expect(a.claims['guest_svn']).toBe(4);
    expect(a.claims['tcb_status']).toBe('ProvisionalFirmware');
    expect(checks(a)).toEqual(['tcb:warning']);
    expect(a.status).toBe('warning');
  });

  for (const bad of ['vcek_invalid_legacy.der', 'vcek_invalid_new.der']) {
    it(`trustee_milan_v2_idblock with ${bad} (NEGATIVE): the altered VCEK does not chain to SEV-Milan`, async () => {
      const collateral: CollateralSource = {
        get: async (req) =>
          req.files.includes('vcek.der')
            ? { body: read(SNP, 'trustee_milan_v2_idblock', bad), headers: {} }
            : withRoots('trustee_milan_v2_idblock').get(req),
      };
      const e = await failure(appraise('trustee_milan_v2_idblock', '2025-09-01T00:00:00Z', collateral));
      expect([e.stage, e.code]).toEqual(['verify', 'chain-incomplete']);
    });
  }

  it('trustee_milan_v3_vlek_aws: VLEK chain via the ASVK; VMPL 1, older reported TCB, no VLEK CRL', async () => {
    const a = await appraise('trustee_milan_v3_vlek_aws', '2025-09-01T00:00:00Z');
    expect(a.claims['signing_key']).toBe('vlek');
    expect(a.claims['csp_id']).toBe('CN=cc-us-east-2.amazonaws.com');
    expect(a.claims['chip_id']).toBe('00'.repeat(64));
    expect(checks(a)).toEqual(['vmpl:warning', 'tcb:warning', 'revocation:warning']);
    const e = await failure(appraise('trustee_milan_v3_vlek_aws', '2026-01-01T00:00:00Z'));
    expect(e.code).toBe('certificate-expired');
  });

  it('dstack_milan_v3: the only Milan CRL has expired before the VCEK is valid', async () => {
    const e = await failure(appraise('dstack_milan_v3', '2026-07-01T00:00:00Z'));
    expect([e.stage, e.code]).toEqual(['verify', 'crl-expired']);
    const early = await failure(appraise('dstack_milan_v3', '2026-03-01T00:00:00Z'));
    expect(early.code).toBe('certificate-expired');
    const a = await appraise('dstack_milan_v3', '2026-07-01T00:00:00Z', withoutCrl('dstack_milan_v3'));
    expect(
      new TextDecoder()
        .decode(parseReport(read(SNP, 'dstack_milan_v3', 'report.bin')).reportData)
        .slice(0, 24),
    ).toBe('attest-test-fixture-2026');
    expect(a.claims['tcb_status']).toBe('ReportedTcbOutOfDate');
    expect(checks(a)).toEqual(['tcb:warning', 'revocation:warning']);
  });

  it('openpcc_genoa_v3_azure: affirming with the Genoa CRL; the CRL is stale after 2025-11-03', async () => {
    const a = await appraise('openpcc_genoa_v3_azure', '2025-09-01T00:00:00Z');
    expect(a.status).toBe('affirming');
    expect(a.claims['product']).toBe('Genoa');
    expect(a.claims['cpuid']).toEqual({ family: 0x19, model: 0x11, stepping: 1 });
    expect(a.claims['guest_svn']).toBe(65545);
    const e = await failure(appraise('openpcc_genoa_v3_azure', '2025-12-01T00:00:00Z'));
    expect(e.code).toBe('crl-expired');
  });

  it('virtee_turin_vcek: Turin extensions (FMC SPL, 8-byte hwID) and chain to the Turin ARK', async () => {
    const [vcek] = parseCertificates(read(SNP, 'virtee_turin_vcek', 'vcek.der'));
    const info = readEndorsementKeyInfo(vcek!, 'VCEK');
    expect(info.product).toBe('Turin');
    expect(info.tcb).toEqual({ fmc: 0, bootloader: 0, tee: 0, snp: 0, microcode: 9 });
    expect(info.hwId?.length).toBe(8);
    const path = await verifyChain({
      leaf: vcek!,
      intermediates: parseCertificates(read(ROOTS, 'amd_ask_turin.pem')),
      anchors: parseCertificates(read(ROOTS, 'amd_ark_turin.pem')),
      at: new Date('2025-09-01T00:00:00Z'),
      what: 'Turin VCEK',
    });
    expect(path.length).toBe(3);
  });

  it('builds the AMD KDS VCEK URL from the report', () => {
    const r = parseReport(read(SNP, 'virtee_milan_v2', 'report.bin'));
    expect(vcekRequest(r, 'Milan').url).toBe(
      `https://kdsintf.amd.com/vcek/v1/Milan/${toHex(r.chipId)}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`,
    );
  });

  it('a real report is refused under another root: untrusted-root', async () => {
    const ca = await SnpTestAuthority.create();
    const folder = 'virtee_milan_v2';
    const chain = `${new TextDecoder().decode(read(ROOTS, 'amd_ask_milan.pem'))}${new TextDecoder().decode(read(ROOTS, 'amd_ark_milan.pem'))}`;
    const collateral: CollateralSource = {
      get: async (req) =>
        req.files.includes('cert_chain.pem')
          ? { body: new TextEncoder().encode(chain), headers: {} }
          : withRoots(folder).get(req),
    };
    const e = await failure(
      snpVerifier.appraiseEvidence(read(SNP, folder, 'report.bin'), {
        at: new Date('2025-09-01T00:00:00Z'),
        collateral,
        trustAnchors: [ca.trustAnchor],
      }),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'untrusted-root']);
  });

  it('a CRL from another root (Genoa CRL for a Milan chain) → crl-wrong-issuer', async () => {
    const collateral: CollateralSource = {
      get: async (req) =>
        req.files.includes('crl.der')
          ? { body: read(ROOTS, 'amd_ark_genoa_crl.der'), headers: {} }
          : withRoots('virtee_milan_v2').get(req),
    };
    const e = await failure(appraise('virtee_milan_v2', '2025-09-01T00:00:00Z', collateral));
    expect([e.stage, e.code]).toEqual(['verify', 'crl-wrong-issuer']);
  });

  it('report bound to the wrong VCEK (another chip) → bad-signature', async () => {
    const collateral: CollateralSource = {
      get: async (req) =>
        req.files.includes('vcek.der')
          ? { body: read(SNP, 'trustee_milan_v2_idblock', 'vcek.der'), headers: {} }
          : withRoots('virtee_milan_v2').get(req),
    };
    const e = await failure(appraise('virtee_milan_v2', '2025-09-01T00:00:00Z', collateral));
    // Same TCB (3/0/8/115), other chip: the signature is checked before the chip binding.
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
  });
});
