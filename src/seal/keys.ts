/**
 * Keys of a sealed file. A random 32-byte data key per file is wrapped once per recipient:
 *   kbs  — AES-256 Key Wrap (RFC 3394) under a key-encryption key held by the key broker, named by the
 *          resource URI `kbs:///<repo>/<type>/<tag>`;
 *   hpke — RFC 9180 HPKE base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, to a
 *          public key, so a data owner can seal for a broker-held key without holding its private part.
 * From the data key, HKDF-SHA256 derives the payload key (chunks) and the header key (header MAC).
 * Keys on disk are JWKs (RFC 7517): `oct` for KEKs, `OKP`/X25519 for HPKE.
 */
import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import { bs, equalBytes, fromBase64, sha256, toBase64Url, utf8 } from '../util/index.js';
import { KEY_ID_SYNTAX, type RecipientStanza, SealFormatError } from './format.js';

export const HPKE_INFO = utf8.encode('cloister-seal-v1 data key');
const PAYLOAD_INFO = utf8.encode('cloister-seal-v1 payload key');
const HEADER_INFO = utf8.encode('cloister-seal-v1 header key');

export interface KekKey {
  kind: 'kek';
  /** Resource URI the broker knows the key by. */
  uri?: string;
  secret: Uint8Array;
}

export interface HpkePublicKey {
  kind: 'hpke-public';
  publicKey: Uint8Array;
}

export interface HpkePrivateKey {
  kind: 'hpke-private';
  privateKey: Uint8Array;
  publicKey: Uint8Array;
}

export type UnsealKey = KekKey | HpkePrivateKey;

/** A recipient to seal to. */
export type Recipient =
  | { type: 'kbs'; uri: string; kek: Uint8Array }
  | { type: 'hpke'; publicKey: Uint8Array };

const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Aes256Gcm(),
});

export function checkKbsUri(uri: string): string {
  if (!KEY_ID_SYNTAX.kbs.test(uri)) {
    throw new SealFormatError(
      'bad-key',
      `"${uri}" is not a key broker resource URI (kbs:///<repo>/<type>/<tag>)`,
    );
  }
  return uri;
}

export async function hpkeKeyId(publicKey: Uint8Array): Promise<string> {
  return `hpke:${toBase64Url(await sha256(publicKey))}`;
}

/** Wraps `dataKey` for one recipient. `ekm` fixes the HPKE ephemeral key (test vectors only). */
export async function wrapDataKey(
  dataKey: Uint8Array,
  r: Recipient,
  ekm?: Uint8Array,
): Promise<RecipientStanza> {
  if (r.type === 'kbs') {
    checkKbsUri(r.uri);
    const kek = await importKek(r.kek, ['wrapKey']);
    const dk = await crypto.subtle.importKey('raw', bs(dataKey), 'AES-GCM', true, ['encrypt']);
    const wrapped = new Uint8Array(await crypto.subtle.wrapKey('raw', dk, kek, 'AES-KW'));
    return { type: 'kbs', keyId: r.uri, wrappedKey: wrapped };
  }
  const keyId = await hpkeKeyId(r.publicKey);
  let sealed: { enc: ArrayBuffer; ct: ArrayBuffer };
  try {
    const pk = await suite.kem.deserializePublicKey(bs(r.publicKey).buffer);
    sealed = await suite.seal(
      { recipientPublicKey: pk, info: bs(HPKE_INFO).buffer, ...(ekm ? { ekm: bs(ekm).buffer } : {}) },
      bs(dataKey).buffer,
      bs(utf8.encode(keyId)).buffer,
    );
  } catch {
    // X25519 refuses low-order points (an all-zero key, say): no shared secret could be derived.
    throw new SealFormatError('bad-key', `HPKE recipient ${keyId} is not a usable X25519 public key`);
  }
  const enc = new Uint8Array(sealed.enc);
  const ct = new Uint8Array(sealed.ct);
  const wrapped = new Uint8Array(enc.length + ct.length);
  wrapped.set(enc, 0);
  wrapped.set(ct, enc.length);
  return { type: 'hpke', keyId, wrappedKey: wrapped };
}

/**
 * Finds the stanza this key opens and returns the data key. For a KEK every kbs stanza is tried, since
 * the same secret may be known under another URI; AES-KW's integrity check tells which one fits.
 */
export async function unwrapDataKey(stanzas: RecipientStanza[], key: UnsealKey): Promise<Uint8Array> {
  if (key.kind === 'kek') {
    const kek = await importKek(key.secret, ['unwrapKey']);
    const candidates = stanzas.filter((s) => s.type === 'kbs');
    for (const s of candidates) {
      try {
        const k = await crypto.subtle.unwrapKey('raw', bs(s.wrappedKey), kek, 'AES-KW', 'AES-GCM', true, [
          'encrypt',
        ]);
        return new Uint8Array(await crypto.subtle.exportKey('raw', k));
      } catch {
        // not this stanza
      }
    }
    const names = candidates.map((s) => s.keyId).join(', ') || 'none';
    throw new SealFormatError(
      'no-matching-key',
      `the key does not open this file (key-broker recipients: ${names})`,
    );
  }
  const keyId = await hpkeKeyId(key.publicKey);
  const s = stanzas.find((x) => x.type === 'hpke' && x.keyId === keyId);
  if (!s) {
    const ids = stanzas.map((x) => x.keyId).join(', ');
    throw new SealFormatError('no-matching-key', `this file is not sealed to ${keyId} (recipients: ${ids})`);
  }
  try {
    const sk = await suite.kem.deserializePrivateKey(bs(key.privateKey).buffer);
    const enc = s.wrappedKey.subarray(0, 32);
    const ct = s.wrappedKey.subarray(32);
    const pt = await suite.open(
      { recipientKey: sk, enc: bs(enc.slice()).buffer, info: bs(HPKE_INFO).buffer },
      bs(ct.slice()).buffer,
      bs(utf8.encode(keyId)).buffer,
    );
    return new Uint8Array(pt);
  } catch {
    throw new SealFormatError(
      'no-matching-key',
      `the HPKE key ${keyId} cannot unwrap this file's data key (corrupted stanza)`,
    );
  }
}

function importKek(secret: Uint8Array, usages: KeyUsage[]): Promise<CryptoKey> {
  if (secret.length !== 32)
    throw new SealFormatError('bad-key', 'a key-encryption key must be 32 bytes (AES-256)');
  return crypto.subtle.importKey('raw', bs(secret), 'AES-KW', false, usages);
}

export interface FileKeys {
  payloadKey: Uint8Array;
  headerKey: Uint8Array;
}

export async function deriveFileKeys(dataKey: Uint8Array): Promise<FileKeys> {
  const ikm = await crypto.subtle.importKey('raw', bs(dataKey), 'HKDF', false, ['deriveBits']);
  const derive = async (info: Uint8Array) =>
    new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: bs(info) },
        ikm,
        256,
      ),
    );
  return { payloadKey: await derive(PAYLOAD_INFO), headerKey: await derive(HEADER_INFO) };
}

export async function headerMac(headerKey: Uint8Array, authenticated: Uint8Array): Promise<Uint8Array> {
  const k = await crypto.subtle.importKey('raw', bs(headerKey), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, bs(authenticated)));
}

export async function checkHeaderMac(
  headerKey: Uint8Array,
  authenticated: Uint8Array,
  mac: Uint8Array,
): Promise<void> {
  if (!equalBytes(await headerMac(headerKey, authenticated), mac)) {
    throw new SealFormatError('header-tampered', 'sealed header was modified (header MAC mismatch)');
  }
}

// ── key generation and JWK files ─────────────────────────────────────────────────────────────────

export function generateKek(uri?: string): KekKey {
  return { kind: 'kek', secret: crypto.getRandomValues(new Uint8Array(32)), ...(uri ? { uri } : {}) };
}

export async function generateHpkeKeyPair(): Promise<HpkePrivateKey> {
  const kp = await suite.kem.generateKeyPair();
  return {
    kind: 'hpke-private',
    privateKey: new Uint8Array(await suite.kem.serializePrivateKey(kp.privateKey)),
    publicKey: new Uint8Array(await suite.kem.serializePublicKey(kp.publicKey)),
  };
}

export interface Jwk {
  kty: string;
  crv?: string;
  k?: string;
  d?: string;
  x?: string;
  alg?: string;
  kid?: string;
  use?: string;
}

export function kekToJwk(k: KekKey): Jwk {
  return { kty: 'oct', alg: 'A256KW', k: toBase64Url(k.secret), ...(k.uri ? { kid: k.uri } : {}) };
}

export async function hpkePrivateToJwk(k: HpkePrivateKey): Promise<Jwk> {
  return {
    kty: 'OKP',
    crv: 'X25519',
    d: toBase64Url(k.privateKey),
    x: toBase64Url(k.publicKey),
    kid: await hpkeKeyId(k.publicKey),
  };
}

export async function hpkePublicToJwk(publicKey: Uint8Array): Promise<Jwk> {
  return { kty: 'OKP', crv: 'X25519', x: toBase64Url(publicKey), kid: await hpkeKeyId(publicKey) };
}

/** Parses a key file (a JWK) into whichever key it holds; errors name what is wrong with it. */
export function keyFromJwk(text: string, what = 'key file'): KekKey | HpkePrivateKey | HpkePublicKey {
  let jwk: Jwk;
  try {
    jwk = JSON.parse(text) as Jwk;
  } catch {
    throw new SealFormatError('bad-key', `${what} is not a JSON Web Key (JSON parse failed)`);
  }
  if (typeof jwk !== 'object' || jwk === null)
    throw new SealFormatError('bad-key', `${what} is not a JSON Web Key`);
  const b = (v: string | undefined, field: string, len: number): Uint8Array => {
    let out: Uint8Array;
    try {
      out = fromBase64(v ?? '');
    } catch {
      throw new SealFormatError('bad-key', `${what}: "${field}" is not base64url`);
    }
    if (out.length !== len) throw new SealFormatError('bad-key', `${what}: "${field}" must be ${len} bytes`);
    return out;
  };
  if (jwk.kty === 'oct') {
    return { kind: 'kek', secret: b(jwk.k, 'k', 32), ...(jwk.kid ? { uri: jwk.kid } : {}) };
  }
  if (jwk.kty === 'OKP' && jwk.crv === 'X25519') {
    const publicKey = b(jwk.x, 'x', 32);
    if (jwk.d === undefined) return { kind: 'hpke-public', publicKey };
    return { kind: 'hpke-private', privateKey: b(jwk.d, 'd', 32), publicKey };
  }
  throw new SealFormatError('bad-key', `${what}: unsupported key type (want kty "oct" or OKP/X25519)`);
}
