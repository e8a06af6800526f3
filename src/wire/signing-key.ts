/**
 * The ES256 (P-256) key a TEE signs its receipts with, run receipts and inference response receipts
 * alike: made in the TEE's memory, not extractable unless replicas must share it.
 */
import type { JWK } from 'jose';

/** A fresh ES256 key whose private half cannot be exported; the public half as RFC 7638 members. */
export async function generateSigningKey(
  extractable = false,
): Promise<{ publicJwk: JWK; privateKey: CryptoKey }> {
  const pair = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, extractable, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
  const full = await crypto.subtle.exportKey('jwk', pair.publicKey);
  return { publicJwk: { kty: 'EC', crv: 'P-256', x: full.x!, y: full.y! }, privateKey: pair.privateKey };
}
