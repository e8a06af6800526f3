import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type AzureEvidence,
  azSnpVtpmVerifier,
  createAzTdxVtpmVerifier,
  parseAzureEvidence,
  parseAzureVtpmEvidence,
  parseHclReport,
  type VerifyTdQuote,
  verifyAzureVtpmEvidence,
} from '../../../src/attest/azure/index.js';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { AttestationError, type VerifyOptions } from '../../../src/attest/common/types.js';
import { toHex, utf8 } from '../../../src/util/bytes.js';

const V = join(import.meta.dirname, '../../vectors');
const AZ = join(V, 'azure-vtpm');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(...p)));
const evidence = (folder: string) => read(AZ, folder, 'evidence.json');
const SNP_AT = new Date('2025-09-01T00:00:00Z');
const options = (extra: Partial<VerifyOptions> = {}): VerifyOptions => ({
  at: SNP_AT,
  collateral: folderCollateral(join(V, 'roots')),
  ...extra,
});

async function failure(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

/** Rewrites the JSON evidence with `edit` applied to its parsed form (byte strings re-encoded). */
function editEvidence(folder: string, edit: (ev: AzureEvidence) => void): Uint8Array {
  const ev = parseAzureEvidence(evidence(folder));
  edit(ev);
  const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));
  return utf8.encode(
    JSON.stringify({
      hcl_report: b64(ev.hclReport),
      tpm_quote: ev.tpmQuote && {
        message: toHex(ev.tpmQuote.message),
        signature: toHex(ev.tpmQuote.signature),
        pcrs: ev.tpmQuote.pcrs.map(toHex),
      },
      ...(ev.vcek
        ? {
            vcek: new TextDecoder().decode(ev.vcek).includes('BEGIN')
              ? new TextDecoder().decode(ev.vcek)
              : b64(ev.vcek),
          }
        : {}),
      ...(ev.tdQuote ? { td_quote: b64(ev.tdQuote) } : {}),
    }),
  );
}

/**
 * TEST STAND-IN for the TDX verifier: reads REPORT_DATA and MRTD out of a v4 TD quote without checking
 * anything. It only exercises the HCL binding; the real hook is the TDX module's quote verifier.
 */
const readTdQuoteUnverified: VerifyTdQuote = async (quote) => ({
  reportData: quote.slice(48 + 520, 48 + 584),
  mrtd: quote.slice(48 + 136, 48 + 184),
});

describe('az-snp-vtpm', () => {
  for (const [folder, nonce] of [
    ['trustee_az-snp_milan_v1', '6368616c6c656e6765'],
    [
      'trustee_az-snp_milan_v2',
      '982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef',
    ],
    [
      'trustee_az-snp_genoa',
      '0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f',
    ],
  ] as const) {
    it(`${folder}: SNP chain, runtime binding, AK quote and nonce verify`, async () => {
      const a = await azSnpVtpmVerifier.appraiseEvidence(
        evidence(folder),
        options({ expectedReportData: Buffer.from(nonce, 'hex') }),
      );
      expect(a.kind).toBe('az-snp-vtpm');
      expect(a.status).toBe('affirming');
      const tpm = a.claims['tpm'] as { nonce: string; pcrs: Record<string, string> };
      expect(tpm.nonce).toBe(nonce);
      expect(Object.keys(tpm.pcrs).length).toBe(24);
      expect((a.claims['snp'] as { vmpl: number }).vmpl).toBe(0);
    });
  }

  it('judges PCR reference values', async () => {
    const a = await azSnpVtpmVerifier.appraiseEvidence(evidence('trustee_az-snp_milan_v1'), options());
    const pcr0 = (a.claims['tpm'] as { pcrs: Record<string, string> }).pcrs['0']!;
    const ok = await azSnpVtpmVerifier.appraiseEvidence(
      evidence('trustee_az-snp_milan_v1'),
      options({ policy: { referenceValues: { pcr0: [pcr0] } } }),
    );
    expect([ok.status, ok.trustVector.executables]).toEqual(['affirming', 2]);
    const bad = await azSnpVtpmVerifier.appraiseEvidence(
      evidence('trustee_az-snp_milan_v1'),
      options({ policy: { referenceValues: { pcr0: ['00'.repeat(32)] } } }),
    );
    expect([bad.status, bad.trustVector.executables]).toEqual(['contraindicated', 96]);
  });

  it('wrong nonce → report-data-mismatch', async () => {
    const e = await failure(
      azSnpVtpmVerifier.appraiseEvidence(
        evidence('trustee_az-snp_milan_v1'),
        options({ expectedReportData: utf8.encode('other') }),
      ),
    );
    expect([e.stage, e.code]).toEqual(['appraise', 'report-data-mismatch']);
  });

  it('flipped quote signature → bad-signature; altered PCR → pcr-digest-mismatch; altered quote → bad-signature', async () => {
    const sig = editEvidence('trustee_az-snp_milan_v1', (ev) => {
      ev.tpmQuote!.signature[10] ^= 1;
    });
    expect((await failure(azSnpVtpmVerifier.appraiseEvidence(sig, options()))).code).toBe('bad-signature');
    const pcr = editEvidence('trustee_az-snp_milan_v1', (ev) => {
      ev.tpmQuote!.pcrs[7]![0] ^= 1;
    });
    expect((await failure(azSnpVtpmVerifier.appraiseEvidence(pcr, options()))).code).toBe(
      'pcr-digest-mismatch',
    );
    const msg = editEvidence('trustee_az-snp_milan_v1', (ev) => {
      ev.tpmQuote!.message[ev.tpmQuote!.message.length - 1]! ^= 1;
    });
    expect((await failure(azSnpVtpmVerifier.appraiseEvidence(msg, options()))).code).toBe('bad-signature');
  });

  it('runtime JSON changed (another AK would be trusted) → runtime-data-mismatch', async () => {
    const changed = editEvidence('trustee_az-snp_milan_v1', (ev) => {
      const text = new TextDecoder('latin1').decode(ev.hclReport); // one char per byte
      const at = text.indexOf('"', text.indexOf(':', text.indexOf('"vmUniqueId"') + 12)) + 1;
      ev.hclReport[at] = ev.hclReport[at] === 0x41 ? 0x42 : 0x41;
    });
    const e = await failure(azSnpVtpmVerifier.appraiseEvidence(changed, options()));
    expect([e.stage, e.code]).toEqual(['verify', 'runtime-data-mismatch']);
  });

  it('SNP report inside the HCL report altered → bad-signature (SNP verifier)', async () => {
    const changed = editEvidence('trustee_az-snp_milan_v1', (ev) => {
      ev.hclReport[32 + 0x90] ^= 1;
    });
    expect((await failure(azSnpVtpmVerifier.appraiseEvidence(changed, options()))).code).toBe(
      'bad-signature',
    );
  });

  it('evidence without a vTPM quote is refused by the kind verifier', async () => {
    const e = await failure(
      azSnpVtpmVerifier.appraiseEvidence(read(AZ, 'openpcc_az-snp_genoa', 'hcl_report.bin'), options()),
    );
    expect(e.code).toBe('tpm-quote-missing');
  });

  it('openpcc_az-snp_genoa: hardware part and runtime binding verify (no quote)', async () => {
    const p = parseAzureVtpmEvidence(read(AZ, 'openpcc_az-snp_genoa', 'hcl_report.bin'), 'az-snp-vtpm');
    const v = await verifyAzureVtpmEvidence(
      p,
      options({
        collateral: folderCollateral(join(V, 'sev-snp', 'openpcc_genoa_v3_azure'), join(V, 'roots')),
      }),
      { allowMissingTpmQuote: true },
    );
    expect(v.snp?.product).toBe('Genoa');
    expect(v.pcrs).toBeUndefined();
    expect(p.hcl.runtime.vmConfiguration?.['vmUniqueId']).toBe('3B09DD36-2237-4532-A5A6-C4624BE05DD6');
  });

  it('a TDX HCL report is not az-snp-vtpm', async () => {
    const e = await failure(azSnpVtpmVerifier.appraiseEvidence(evidence('trustee_az-tdx_v1'), options()));
    expect([e.stage, e.code]).toEqual(['parse', 'wrong-report-type']);
  });
});

describe('az-tdx-vtpm (TD quote through the verifyTdQuote hook)', () => {
  const at = { at: new Date('2026-03-01T00:00:00Z') };

  it('without a TDX verifier the TD report is not trusted → td-quote-unverified', async () => {
    const p = parseAzureVtpmEvidence(evidence('trustee_az-tdx_v1'), 'az-tdx-vtpm');
    const e = await failure(verifyAzureVtpmEvidence(p, options(at)));
    expect(e.code).toBe('td-quote-unverified');
  });

  it('trustee_az-tdx_v1: TD quote ↔ TD report ↔ runtime data ↔ AK quote bindings hold', async () => {
    const verifier = createAzTdxVtpmVerifier(readTdQuoteUnverified);
    const a = await verifier.appraiseEvidence(
      evidence('trustee_az-tdx_v1'),
      options({ ...at, expectedReportData: utf8.encode('challenge') }),
    );
    expect(a.kind).toBe('az-tdx-vtpm');
    expect((a.claims['hcl'] as { td_mrtd: string }).td_mrtd).toBe(
      '024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b',
    );
  });

  it('a TD quote for other report data → td-quote-mismatch', async () => {
    const verifier = createAzTdxVtpmVerifier(async (q, o) => ({
      ...(await readTdQuoteUnverified(q, o)),
      reportData: new Uint8Array(64),
    }));
    const e = await failure(verifier.appraiseEvidence(evidence('trustee_az-tdx_v1'), options(at)));
    expect(e.code).toBe('td-quote-mismatch');
  });

  it('a failing TDX verifier fails the evidence', async () => {
    const verifier = createAzTdxVtpmVerifier(async () => {
      throw new AttestationError('verify', 'bad-signature', 'TD quote signature');
    });
    const e = await failure(verifier.appraiseEvidence(evidence('trustee_az-tdx_v1'), options(at)));
    expect(e.code).toBe('bad-signature');
  });

  it('openpcc_az-tdx: HCL report + td_quote.bin bind (no vTPM quote)', async () => {
    const p = parseAzureVtpmEvidence(
      {
        hclReport: read(AZ, 'openpcc_az-tdx', 'hcl_report.bin'),
        tdQuote: read(AZ, 'openpcc_az-tdx', 'td_quote.bin'),
      },
      'az-tdx-vtpm',
    );
    const v = await verifyAzureVtpmEvidence(p, options(at), {
      allowMissingTpmQuote: true,
      verifyTdQuote: readTdQuoteUnverified,
    });
    expect(toHex(p.tdReport!.reportData).slice(0, 64)).toBe(
      'c8dfc2ce46e21af1e4b9ac2983f1568a681c895eff97a2bcae1375bce926229b',
    );
    expect(v.pcrs).toBeUndefined();
  });
});

describe('HCL report parsing', () => {
  it('rejects bad magic, truncation, inconsistent sizes and non-zero padding', () => {
    const hcl = read(AZ, 'openpcc_az-snp_genoa', 'hcl_report.bin');
    const code = (b: Uint8Array) => {
      try {
        parseHclReport(b);
      } catch (e) {
        return (e as AttestationError).code;
      }
      return 'parsed';
    };
    expect(code(hcl)).toBe('parsed');
    const magic = hcl.slice();
    magic[0] = 0;
    expect(code(magic)).toBe('bad-magic');
    expect(code(hcl.subarray(0, 1300))).toBe('truncated');
    const size = hcl.slice();
    size[8]! += 1;
    expect(code(size)).toBe('bad-length');
    const pad = hcl.slice();
    pad[2599] = 1;
    expect(code(pad)).toBe('trailing-bytes');
  });

  it('fuzz: a mutated az-snp-vtpm evidence is never accepted and always fails with an AttestationError', async () => {
    const ev = parseAzureEvidence(evidence('trustee_az-snp_milan_v1'));
    const hcl = ev.hclReport;
    const reportSize = new DataView(hcl.buffer, hcl.byteOffset).getUint32(8, true);
    await fc.assert(
      // From byte 32: the 32-byte HCL header is not covered by any signature (see docs/attestation/azure.md).
      fc.asyncProperty(
        fc.integer({ min: 32, max: reportSize - 1 }),
        fc.integer({ min: 1, max: 255 }),
        async (at, x) => {
          const bytes = hcl.slice();
          bytes[at]! ^= x;
          const outcome = await parseAndVerify({ ...ev, hclReport: bytes });
          expect(outcome).toBeInstanceOf(AttestationError);
        },
      ),
      { numRuns: 100 },
    );
  });
});

async function parseAndVerify(ev: AzureEvidence): Promise<unknown> {
  try {
    await verifyAzureVtpmEvidence(parseAzureVtpmEvidence(ev, 'az-snp-vtpm'), options());
    return 'accepted';
  } catch (e) {
    return e;
  }
}
