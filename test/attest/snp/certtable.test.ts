import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseCertificates } from '../../../src/attest/common/pki.js';
import type { AttestationError } from '../../../src/attest/common/types.js';
import { certTableCollateral, parseCertTable, snpVerifier } from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import { fromHex } from '../../../src/util/bytes.js';

const V = join(import.meta.dirname, '../../vectors');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(V, ...p)));
const der = (pemFile: string) => new Uint8Array(parseCertificates(read('roots', pemFile))[0]!.rawData);

const GUID = {
  vcek: '63da758de6644564adc5f4b93be8accd',
  ask: '4ab7b379bbac4fe4a02f05aef327c782',
  ark: 'c0b406a4a803495297433fb6014cd0ae',
  crl: '92f81bc358114d3d97ffd19f88dc67ea',
};

/** Builds a GHCB certificate table: 24-byte entries, an all-zero terminator, then the blobs. */
function table(entries: [string, Uint8Array][]): Uint8Array {
  const header = 24 * (entries.length + 1);
  const total = header + entries.reduce((n, [, d]) => n + d.length, 0);
  const out = new Uint8Array(total + 100); // page padding after the data is allowed
  const dv = new DataView(out.buffer);
  let off = header;
  entries.forEach(([guid, data], i) => {
    out.set(fromHex(guid), 24 * i);
    dv.setUint32(24 * i + 16, off, true);
    dv.setUint32(24 * i + 20, data.length, true);
    out.set(data, off);
    off += data.length;
  });
  return out;
}

describe('SEV-SNP extended report certificate table', () => {
  it('serves a real VCEK, ASK, ARK and CRL to the verifier', async () => {
    const t = table([
      [GUID.vcek, read('sev-snp', 'virtee_milan_v2', 'vcek.der')],
      [GUID.ask, der('amd_ask_milan.pem')],
      [GUID.ark, der('amd_ark_milan.pem')],
      [GUID.crl, read('roots', 'amd_ark_milan_crl.der')],
    ]);
    expect(parseCertTable(t).map((e) => e.guid)).toEqual([
      '63da758d-e664-4564-adc5-f4b93be8accd',
      '4ab7b379-bbac-4fe4-a02f-05aef327c782',
      'c0b406a4-a803-4952-9743-3fb6014cd0ae',
      '92f81bc3-5811-4d3d-97ff-d19f88dc67ea',
    ]);
    const a = await snpVerifier.appraiseEvidence(read('sev-snp', 'virtee_milan_v2', 'report.bin'), {
      at: new Date('2025-09-01T00:00:00Z'),
      collateral: certTableCollateral(t),
    });
    expect([a.status, a.claims['revocation_checked']]).toEqual(['affirming', true]);
  });

  it('carries a test-authority chain (ASK from the table, root from trustAnchors only)', async () => {
    const ca = await SnpTestAuthority.create();
    const issued = await ca.issue();
    const t = table([
      [GUID.vcek, issued.endorsementKey],
      [GUID.ask, new Uint8Array(ca.ask.rawData)],
      [GUID.ark, new Uint8Array(ca.ark.rawData)],
    ]);
    const a = await snpVerifier.appraiseEvidence(issued.report, {
      at: new Date(),
      collateral: certTableCollateral(t),
      trustAnchors: [ca.trustAnchor],
    });
    expect(a.claims['revocation_checked']).toBe(false);
    // The ARK in the table is not trusted by being there.
    const e = await snpVerifier
      .appraiseEvidence(issued.report, { at: new Date(), collateral: certTableCollateral(t) })
      .catch((x: unknown) => x);
    expect((e as AttestationError).code).toBe('untrusted-root');
  });

  it('rejects a table without terminator or with an entry outside the buffer', () => {
    const vcek = read('sev-snp', 'virtee_milan_v2', 'vcek.der');
    const good = table([[GUID.vcek, vcek]]);
    const code = (b: Uint8Array) => {
      try {
        parseCertTable(b);
      } catch (e) {
        return (e as AttestationError).code;
      }
      return 'parsed';
    };
    expect(code(good.subarray(0, 30))).toBe('bad-cert-table');
    const outside = good.slice();
    new DataView(outside.buffer).setUint32(20, 1_000_000, true);
    expect(code(outside)).toBe('bad-cert-table');
    const overlapsHeader = good.slice();
    new DataView(overlapsHeader.buffer).setUint32(16, 8, true);
    expect(code(overlapsHeader)).toBe('bad-cert-table');
  });
});
