/** Certificates and CRLs whose ECDSA signature is not DER are refused when parsed. */
import { describe, expect, it } from 'vitest';
import { isDerEcdsaSignature } from '../../../src/attest/common/pki.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import { nvidiaVerifier } from '../../../src/attest/nvidia/index.js';
import { apply, envelope } from '../nvidia/helpers.js';

const hex = (h: string) => Uint8Array.from((h.match(/../g) ?? []).map((x) => Number.parseInt(x, 16)));

describe('isDerEcdsaSignature', () => {
  it('accepts SEQUENCE { INTEGER, INTEGER } in DER', () => {
    expect(isDerEcdsaSignature(hex('3006020101020101'))).toBe(true);
    // A high bit set needs one leading zero.
    expect(isDerEcdsaSignature(hex('30080202008002020080'))).toBe(true);
  });
  it('refuses every other encoding of the same numbers', () => {
    for (const bad of [
      '3007020101020101', // SEQUENCE length too long
      '3005020101020101', // too short
      '300602010102010100', // a byte after the SEQUENCE
      '308106020101020101', // long form where the short one fits
      '300702020001020101', // a needless leading zero
      '3006020180020101', // negative
      '3006020101030101', // not an INTEGER
      '30060200020101', // empty INTEGER
      '3103020101', // not a SEQUENCE
      '',
    ])
      expect(isDerEcdsaSignature(hex(bad)), bad).toBe(false);
  });
});

describe('a certificate with a re-encoded signature', () => {
  it('is refused, though its (r, s) still verify (NVIDIA envelope fuzz counterexample)', async () => {
    // Byte 6901 of the envelope lies in the base64 of the leaf certificate's signature: the flip turns
    // the Ecdsa-Sig-Value's SEQUENCE length 0x66 into 0x5e, which the ASN.1 library ignored.
    const bad = apply(envelope('nvtrust_hopper_545.00_complete'), { kind: 'flip', at: 6901, mask: 24 });
    const outcome = await nvidiaVerifier
      .appraiseEvidence(bad, {
        at: new Date('2024-06-01T00:00:00Z'),
        collateral: { get: async () => undefined },
      })
      .catch((e: unknown) => e);
    expect(outcome).toBeInstanceOf(AttestationError);
    expect(outcome).toMatchObject({ code: 'bad-certificate' });
    expect((outcome as Error).message).toMatch(/ECDSA signature is not DER-encoded/);
  });
});
