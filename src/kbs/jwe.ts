/**
 * Resources leave the broker as a flattened JWE (RFC 7516 §7.2.2) encrypted to the TEE's ephemeral
 * key from the attestation: `enc` A256GCM; `alg` ECDH-ES+A256KW for EC P-256 keys, RSA-OAEP-256 for
 * RSA keys. Only the TEE that holds the private key — generated inside it and bound into its evidence
 * — can decrypt; TLS terminators and the network see ciphertext.
 */
import { FlattenedEncrypt, type FlattenedJWE, flattenedDecrypt, importJWK } from 'jose';
import { bs } from '../util/bytes.js';
import type { TeePubkey } from './protocol.js';

export function jweAlgFor(key: TeePubkey): 'ECDH-ES+A256KW' | 'RSA-OAEP-256' {
  return key.kty === 'EC' ? 'ECDH-ES+A256KW' : 'RSA-OAEP-256';
}

const keyCache = new Map<string, Promise<CryptoKey | Uint8Array>>();

/** Imported keys are cached by their JWK text: a session requests several resources with one key. */
function importTeeKey(key: TeePubkey): Promise<CryptoKey | Uint8Array> {
  const id = JSON.stringify(key);
  let k = keyCache.get(id);
  if (!k) {
    const { alg: _ignored, ...jwk } = key;
    k = importJWK(jwk, jweAlgFor(key));
    keyCache.set(id, k);
    if (keyCache.size > 10_000) keyCache.delete(keyCache.keys().next().value!);
  }
  return k;
}

export async function encryptResource(value: Uint8Array, key: TeePubkey): Promise<FlattenedJWE> {
  return new FlattenedEncrypt(bs(value))
    .setProtectedHeader({ alg: jweAlgFor(key), enc: 'A256GCM' })
    .encrypt(await importTeeKey(key));
}

/** The TEE side: decrypts a resource response with the ephemeral private key. */
export async function decryptResource(jwe: FlattenedJWE, privateKey: CryptoKey): Promise<Uint8Array> {
  const { plaintext } = await flattenedDecrypt(jwe, privateKey);
  return plaintext;
}
