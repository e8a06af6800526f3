/**
 * Resources leave the broker as a flattened JWE (RFC 7516 §7.2.2) encrypted to the TEE's ephemeral
 * key from the attestation: `enc` A256GCM; `alg` ECDH-ES+A256KW for EC P-256/P-384/P-521 keys, RSA-OAEP-256 for
 * RSA keys. Only the TEE that holds the private key — generated inside it and bound into its evidence
 * — can decrypt; TLS terminators and the network see ciphertext.
 */
import { FlattenedEncrypt, type FlattenedJWE, flattenedDecrypt, importJWK } from 'jose';
import { bs } from '../util/index.js';
import type { TeePubkey } from '../wire/index.js';
import { KbsError } from './errors.js';

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
    // A refused import must not stay cached: the next request for this key would fail without trying.
    k.catch(() => keyCache.delete(id));
    keyCache.set(id, k);
    if (keyCache.size > 10_000) keyCache.delete(keyCache.keys().next().value!);
  }
  return k;
}

/**
 * Refuses, at attestation, a key the broker could not encrypt to later (a point off the curve, an
 * RSA key Web Crypto rejects): otherwise the TEE would attest fine and every release would fail.
 */
export async function checkUsableKey(key: TeePubkey): Promise<void> {
  const { alg: _ignored, ...jwk } = key;
  try {
    if (key.kty === 'EC')
      await crypto.subtle.importKey('jwk', jwk, { name: 'ECDH', namedCurve: key.crv }, false, []);
    else await crypto.subtle.importKey('jwk', jwk, { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['encrypt']);
  } catch (e) {
    throw new KbsError('unusable-key', `tee-pubkey cannot be used: ${(e as Error).message}`);
  }
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
