import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseCertificates } from '../../../src/attest/common/pki.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import {
  decodeTcb,
  parseReport,
  productFromCpuid,
  readEndorsementKeyInfo,
} from '../../../src/attest/snp/index.js';
import { toHex } from '../../../src/util/bytes.js';

const SNP = join(import.meta.dirname, '../../vectors/sev-snp');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(SNP, ...p)));

function parseError(bytes: Uint8Array): AttestationError {
  try {
    parseReport(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(AttestationError);
    expect((e as AttestationError).stage).toBe('parse');
    return e as AttestationError;
  }
  throw new Error('parsed');
}

/** A real report with one little-endian u32/u64 field rewritten (the signature no longer matters here). */
function patched(offset: number, bytes: number[]): Uint8Array {
  const r = read('trustee_milan_v3_vlek_aws', 'report.bin');
  r.set(bytes, offset);
  return r;
}

describe('SEV-SNP report parsing', () => {
  it('reads every field of a v3 VLEK report', () => {
    const r = parseReport(read('trustee_milan_v3_vlek_aws', 'report.bin'));
    expect(r.version).toBe(3);
    expect(r.vmpl).toBe(1);
    expect(r.signerInfo).toEqual({ authorKeyEn: false, maskChipKey: false, signingKey: 'vlek' });
    expect(toHex(r.chipId)).toBe('00'.repeat(64));
    expect(r.platformInfoRaw).toBe(0x27n);
    expect(r.platformInfo.aliasCheckComplete).toBe(true);
    expect(r.cpuid).toEqual({ family: 0x19, model: 1, stepping: 1 });
    expect(r.cpuidProduct).toBe('Milan');
    expect(toHex(r.measurement)).toBe(
      '8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0',
    );
    expect(decodeTcb(r.reportedTcb, 'Milan')).toMatchObject({
      bootloader: 4,
      tee: 0,
      snp: 24,
      microcode: 217,
    });
    expect(decodeTcb(r.currentTcb, 'Milan').microcode).toBe(220);
    expect(r.currentVersion).toEqual({ major: 1, minor: 55, build: 29 });
    expect(r.signatureR.length).toBe(48);
    expect(r.launchMitVector).toBeUndefined();
  });

  it('reads an ID-block report (family/image id, id key digest, guest svn)', () => {
    const r = parseReport(read('trustee_milan_v2_idblock', 'report.bin'));
    expect([r.version, r.guestSvn, r.policyRaw]).toEqual([2, 4, 0x3001fn]);
    expect(r.policy).toMatchObject({
      abiMinor: 0x1f,
      abiMajor: 0,
      smt: true,
      debug: false,
      migrateMa: false,
    });
    expect(r.cpuid).toBeUndefined();
  });

  it('decodes Turin TCBs with the FMC byte first', () => {
    const raw = new Uint8Array([1, 2, 3, 4, 0, 0, 0, 5]);
    expect(decodeTcb(raw, 'Turin')).toEqual({
      raw: '0500000004030201',
      fmc: 1,
      bootloader: 2,
      tee: 3,
      snp: 4,
      microcode: 5,
    });
    expect(decodeTcb(raw, 'Genoa')).toEqual({
      raw: '0500000004030201',
      bootloader: 1,
      tee: 2,
      snp: 0,
      microcode: 5,
    });
    expect([
      productFromCpuid(0x19, 0x01),
      productFromCpuid(0x19, 0x11),
      productFromCpuid(0x19, 0xa0),
    ]).toEqual(['Milan', 'Genoa', 'Genoa']);
    expect([
      productFromCpuid(0x1a, 0x02),
      productFromCpuid(0x1a, 0x50),
      productFromCpuid(0x17, 0x31),
    ]).toEqual(['Turin', undefined, undefined]);
  });

  it('reads both hwID encodings (raw and DER OCTET STRING)', () => {
    const [legacy] = parseCertificates(read('trustee_milan_v2_idblock', 'vcek_invalid_legacy.der'));
    const [wrapped] = parseCertificates(read('trustee_milan_v2_idblock', 'vcek_invalid_new.der'));
    const ids = Array.from({ length: 64 }, (_, i) => i);
    expect(Array.from(readEndorsementKeyInfo(legacy!, 'VCEK').hwId!)).toEqual(ids);
    const info = readEndorsementKeyInfo(wrapped!, 'VCEK');
    expect(Array.from(info.hwId!)).toEqual(ids);
    expect(info.tcb).toEqual({ bootloader: 0, tee: 0, snp: 0, microcode: 30 });
  });

  it('rejects a truncated report and trailing bytes', () => {
    const r = read('virtee_milan_v2', 'report.bin');
    expect(parseError(r.subarray(0, 1183)).code).toBe('truncated');
    expect(parseError(new Uint8Array(0)).code).toBe('truncated');
    const longer = new Uint8Array(1185);
    longer.set(r);
    expect(parseError(longer).code).toBe('trailing-bytes');
  });

  it('rejects unsupported versions', () => {
    expect(parseError(patched(0, [1, 0, 0, 0])).code).toBe('unsupported-version');
    expect(parseError(patched(0, [6, 0, 0, 0])).code).toBe('unsupported-version');
  });

  it('rejects non-zero reserved bytes (MBZ) wherever the ABI reserves them', () => {
    for (const off of [0x4c, 0x18b, 0x19f, 0x1eb, 0x1ef, 0x1f8, 0x29f, 0x2a0 + 144, 0x49f]) {
      expect(parseError(patched(off, [1])).code, `offset 0x${off.toString(16)}`).toBe('reserved-nonzero');
    }
    // v2 reserves the CPUID bytes too.
    const v2 = read('virtee_milan_v2', 'report.bin');
    v2[0x188] = 0x19;
    expect(parseError(v2).code).toBe('reserved-nonzero');
    // v5 makes 0x1f8..0x207 the mitigation vectors.
    const v5 = patched(0, [5]);
    v5[0x1f8] = 3;
    v5[0x200] = 7;
    const r5 = parseReport(v5);
    expect([r5.launchMitVector, r5.currentMitVector]).toEqual([3n, 7n]);
  });

  it('rejects reserved policy, signer-info and platform-info bits', () => {
    expect(parseError(patched(0x08, [0x00, 0x00, 0x01])).code).toBe('reserved-policy-bit'); // bit 17 clear
    expect(parseError(patched(0x0b, [0x04])).code).toBe('reserved-policy-bit'); // bit 26
    expect(parseError(patched(0x48, [0x20])).code).toBe('reserved-nonzero'); // signer_info bit 5
    expect(parseError(patched(0x48, [0x08])).code).toBe('reserved-nonzero'); // SIGNING_KEY 2
    expect(parseError(patched(0x40, [0x40])).code).toBe('reserved-platform-info-bit'); // bit 6
    expect(parseError(patched(0x41, [0x01])).code).toBe('reserved-platform-info-bit'); // bit 8
  });

  it('decodes every policy flag', () => {
    const r = parseReport(patched(0x08, [0x02, 0x01, 0xff, 0x03]));
    expect(r.policy).toEqual({
      abiMinor: 2,
      abiMajor: 1,
      smt: true,
      migrateMa: true,
      debug: true,
      singleSocket: true,
      cxlAllowed: true,
      memAes256Xts: true,
      raplDis: true,
      ciphertextHiding: true,
      pageSwapDisable: true,
    });
  });
});
