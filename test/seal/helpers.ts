import { generateHpkeKeyPair, generateKek, type HpkePrivateKey, type KekKey } from '../../src/seal/keys.js';

export const URI = 'kbs:///owner/models/kek1';

export function kek(uri = URI): KekKey {
  return generateKek(uri);
}

export function hpke(): Promise<HpkePrivateKey> {
  return generateHpkeKeyPair();
}

/** Deterministic pseudo-random bytes, so failures reproduce. */
export function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
