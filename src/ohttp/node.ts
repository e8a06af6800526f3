/**
 * The Node backend for Oblivious HTTP (Node only: import it where Node code runs, never from code bundled
 * for browsers). RFC 9180 base mode for DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-128-GCM or
 * AES-256-GCM, written over synchronous node:crypto: X25519 with `diffieHellman`, HKDF as HMAC-SHA256
 * (`createHmac`), AES-GCM with `createCipheriv`. Web Crypto's promise per operation and @hpke/core's
 * ArrayBuffer copies cost far more than the cryptography for OHTTP's small messages; this path does not
 * pay them. Same bytes as webCryptoBackend (the RFC 9180 and RFC 9458 vectors pin both).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { bs, concatBytes, equalBytes, isAllZero, utf8 } from '../util/index.js';
import type { AeadKey, HpkeExporter, OhttpBackend } from './backend.js';
import {
  AEAD_AES_128_GCM,
  AEAD_AES_256_GCM,
  KDF_HKDF_SHA256,
  KEM_X25519_HKDF_SHA256,
  PKCS8_X25519_PREFIX,
} from './keyconfig.js';

const EMPTY = new Uint8Array(0);
const NH = 32;
const NN = 12;
const NSECRET = 32;
const TAG = 16;
const X25519_LENGTH = 32;
const VERSION = utf8.encode('HPKE-v1');
const MODE_BASE = 0x00;

const label = (s: string) => utf8.encode(s);
const EAE_PRK = label('eae_prk');
const SHARED_SECRET = label('shared_secret');
const PSK_ID_HASH = label('psk_id_hash');
const INFO_HASH = label('info_hash');
const SECRET = label('secret');
const KEY = label('key');
const BASE_NONCE = label('base_nonce');
const EXP = label('exp');
const SEC = label('sec');

const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff);

/** RFC 9180 §4: the suite_id prefix every labeled KDF call of one context uses ("HPKE-v1" || suite_id). */
function versioned(suiteId: Uint8Array): Uint8Array {
  return concatBytes(VERSION, suiteId);
}

const KEM_PREFIX = versioned(concatBytes(utf8.encode('KEM'), u16(KEM_X25519_HKDF_SHA256)));

function hkdfExtract(salt: Uint8Array, ...ikm: Uint8Array[]): Uint8Array {
  // An empty HMAC key is HashLen zeros (HMAC pads keys with zeros), as RFC 5869 wants for no salt.
  const h = createHmac('sha256', salt);
  for (const part of ikm) h.update(part);
  return plain(h.digest());
}

function hkdfExpand(prk: Uint8Array, info: Uint8Array[], length: number): Uint8Array {
  if (length > 255 * NH) throw new RangeError('HKDF-Expand length is at most 255 * HashLen');
  const out = new Uint8Array(length);
  let t: Uint8Array = EMPTY;
  for (let i = 1, at = 0; at < length; i++) {
    const h = createHmac('sha256', prk).update(t);
    for (const part of info) h.update(part);
    t = h.update(Uint8Array.of(i)).digest();
    out.set(t.subarray(0, length - at), at);
    at += t.length;
  }
  return out;
}

function labeledExtract(prefix: Uint8Array, salt: Uint8Array, l: Uint8Array, ikm: Uint8Array) {
  return hkdfExtract(salt, prefix, l, ikm);
}

function labeledExpand(prefix: Uint8Array, prk: Uint8Array, l: Uint8Array, info: Uint8Array, n: number) {
  return hkdfExpand(prk, [u16(n), prefix, l, info], n);
}

interface Suite {
  cipher: 'aes-128-gcm' | 'aes-256-gcm';
  nk: number;
  /** "HPKE-v1" || "HPKE" || kem_id || kdf_id || aead_id. */
  prefix: Uint8Array;
  /** LabeledExtract("", "psk_id_hash", "") is the same for every base-mode context of a suite. */
  pskIdHash: Uint8Array;
}

const SUITES: ReadonlyMap<number, Suite> = new Map(
  (
    [
      [AEAD_AES_128_GCM, 'aes-128-gcm', 16],
      [AEAD_AES_256_GCM, 'aes-256-gcm', 32],
    ] as const
  ).map(([id, cipher, nk]) => {
    const prefix = versioned(
      concatBytes(utf8.encode('HPKE'), u16(KEM_X25519_HKDF_SHA256), u16(KDF_HKDF_SHA256), u16(id)),
    );
    return [id, { cipher, nk, prefix, pskIdHash: labeledExtract(prefix, EMPTY, PSK_ID_HASH, EMPTY) }];
  }),
);

function suiteOf(aeadId: number): Suite {
  const s = SUITES.get(aeadId);
  if (!s) throw new RangeError(`AEAD 0x${aeadId.toString(16)} is not implemented`);
  return s;
}

/** A Buffer as a plain Uint8Array, without a copy when it owns its memory (no pool slice). */
function plain(b: Buffer): Uint8Array {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength
    ? new Uint8Array(b.buffer, 0, b.byteLength)
    : new Uint8Array(b);
}

function gcmSeal(s: Suite, key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array) {
  const c = createCipheriv(s.cipher, key, nonce);
  if (aad.length > 0) c.setAAD(aad);
  const body = c.update(pt);
  c.final();
  const out = new Uint8Array(body.length + TAG);
  out.set(body);
  out.set(c.getAuthTag(), body.length);
  return out;
}

function gcmOpen(s: Suite, key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array) {
  if (ct.length < TAG) throw new RangeError('the ciphertext is shorter than an AES-GCM tag');
  const d = createDecipheriv(s.cipher, key, nonce);
  d.setAuthTag(ct.subarray(ct.length - TAG));
  if (aad.length > 0) d.setAAD(aad);
  const pt = d.update(ct.subarray(0, ct.length - TAG));
  d.final(); // throws when the tag does not match; nothing of `pt` leaves before that
  return plain(pt);
}

function publicKeyOf(raw: Uint8Array): KeyObject {
  if (raw.length !== X25519_LENGTH) throw new RangeError('an X25519 public key is 32 bytes');
  // JWK import is an order of magnitude faster than DER in Node 20 (no OpenSSL decoder lookup).
  const x = Buffer.from(raw.buffer, raw.byteOffset, raw.length).toString('base64url');
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x }, format: 'jwk' });
}

function rawPublicKey(k: KeyObject): Uint8Array {
  return plain(Buffer.from(k.export({ format: 'jwk' }).x!, 'base64url'));
}

function privateKeyOf(raw: Uint8Array): KeyObject {
  if (raw.length !== X25519_LENGTH) throw new RangeError('an X25519 private key is 32 bytes');
  return createPrivateKey({
    key: Buffer.from(concatBytes(PKCS8_X25519_PREFIX, raw)),
    format: 'der',
    type: 'pkcs8',
  });
}

/**
 * Keys parsed once per key, by the identity of the caller's bytes (a gateway's private key, a client's
 * key config); a copy of the bytes guards against the array being changed in place.
 */
function cached<T>(
  cache: WeakMap<Uint8Array, { raw: Uint8Array; value: T }>,
  raw: Uint8Array,
  make: () => T,
) {
  const hit = cache.get(raw);
  if (hit && equalBytes(hit.raw, raw)) return hit.value;
  const value = make();
  cache.set(raw, { raw: raw.slice(), value });
  return value;
}

const recipientKeys = new WeakMap<
  Uint8Array,
  { raw: Uint8Array; value: { sk: KeyObject; pk: Uint8Array } }
>();
const publicKeys = new WeakMap<Uint8Array, { raw: Uint8Array; value: KeyObject }>();

function dh(sk: KeyObject, pk: KeyObject): Uint8Array {
  const z = diffieHellman({ privateKey: sk, publicKey: pk });
  // RFC 9180 §7.1.4: an all-zero X25519 output (a low-order share) is refused; OpenSSL does too.
  if (isAllZero(z)) throw new RangeError('the X25519 shared secret is all zeros');
  return z;
}

/** RFC 9180 §4.1 ExtractAndExpand with kem_context = enc || pkRm. */
function extractAndExpand(z: Uint8Array, enc: Uint8Array, pkRm: Uint8Array): Uint8Array {
  const prk = labeledExtract(KEM_PREFIX, EMPTY, EAE_PRK, z);
  return labeledExpand(KEM_PREFIX, prk, SHARED_SECRET, concatBytes(enc, pkRm), NSECRET);
}

/** RFC 9180 §4.1 Decap: the KEM shared secret for `enc` and the raw private key `skRm`. */
export function dhkemDecap(enc: Uint8Array, skRm: Uint8Array): Uint8Array {
  const r = cached(recipientKeys, skRm, () => {
    const sk = privateKeyOf(skRm);
    return { sk, pk: rawPublicKey(createPublicKey(sk)) };
  });
  return extractAndExpand(dh(r.sk, publicKeyOf(enc)), enc, r.pk);
}

export interface BaseSchedule {
  key: Uint8Array;
  baseNonce: Uint8Array;
  exporterSecret: Uint8Array;
}

/** RFC 9180 §5.1 KeySchedule in base mode (no PSK). */
export function keyScheduleBase(aeadId: number, sharedSecret: Uint8Array, info: Uint8Array): BaseSchedule {
  const s = suiteOf(aeadId);
  const infoHash = labeledExtract(s.prefix, EMPTY, INFO_HASH, info);
  const context = concatBytes(Uint8Array.of(MODE_BASE), s.pskIdHash, infoHash);
  const secret = labeledExtract(s.prefix, sharedSecret, SECRET, EMPTY);
  return {
    key: labeledExpand(s.prefix, secret, KEY, context, s.nk),
    baseNonce: labeledExpand(s.prefix, secret, BASE_NONCE, context, NN),
    exporterSecret: labeledExpand(s.prefix, secret, EXP, context, NH),
  };
}

function exporter(s: Suite, exporterSecret: Uint8Array): HpkeExporter {
  return {
    // RFC 9180 §5.3 Export; async only to keep the shape @hpke/core's contexts have.
    async export(exporterContext, length) {
      const ctx = new Uint8Array(exporterContext);
      return bs(labeledExpand(s.prefix, exporterSecret, SEC, ctx, length)).buffer;
    },
  };
}

/** RFC 9180 §5.2 ComputeNonce: base_nonce XOR the sequence number, big-endian in Nn bytes. */
function sequenceNonce(base: Uint8Array, seq: number): Uint8Array {
  if (seq === 0) return base;
  const out = base.slice();
  for (let i = out.length - 1, s = seq; i >= 0 && s > 0; i--, s = Math.floor(s / 256)) out[i]! ^= s & 0xff;
  return out;
}

/** Far below 2^96: a chunked request this long is an attack, not a prompt. */
const MAX_SEQUENCE = 2 ** 32;

/**
 * Seal or open under the context's key, each message with the next sequence number (§5.2); the number
 * moves only after success, so a chunk that fails to open does not shift the nonces of the next.
 */
function sequenced(
  f: (nonce: Uint8Array, aad: Uint8Array, data: Uint8Array) => Uint8Array,
  baseNonce: Uint8Array,
): (aad: Uint8Array, data: Uint8Array) => Uint8Array {
  let seq = 0;
  return (aad, data) => {
    if (seq >= MAX_SEQUENCE) throw new RangeError('the HPKE sequence number is exhausted');
    const out = f(sequenceNonce(baseNonce, seq), aad, data);
    seq++;
    return out;
  };
}

/** Synchronous node:crypto; every method returns its value, not a promise. */
export const nodeBackend = {
  name: 'node',

  setupSender({ aeadId, recipientPublicKey, info, ephemeral }) {
    const s = suiteOf(aeadId);
    const pkR = cached(publicKeys, recipientPublicKey, () => publicKeyOf(recipientPublicKey));
    let skE: KeyObject;
    let enc: Uint8Array;
    if (ephemeral) {
      skE = privateKeyOf(ephemeral.privateKey);
      enc = ephemeral.publicKey.slice();
    } else {
      const pair = generateKeyPairSync('x25519');
      skE = pair.privateKey;
      enc = rawPublicKey(pair.publicKey);
    }
    const shared = extractAndExpand(dh(skE, pkR), enc, recipientPublicKey);
    const ks = keyScheduleBase(aeadId, shared, info);
    return {
      enc,
      seal: sequenced((nonce, aad, pt) => gcmSeal(s, ks.key, nonce, aad, pt), ks.baseNonce),
      exporter: exporter(s, ks.exporterSecret),
    };
  },

  setupRecipient({ aeadId, privateKey, enc, info }) {
    const s = suiteOf(aeadId);
    const ks = keyScheduleBase(aeadId, dhkemDecap(enc, privateKey), info);
    return {
      open: sequenced((nonce, aad, ct) => gcmOpen(s, ks.key, nonce, aad, ct), ks.baseNonce),
      exporter: exporter(s, ks.exporterSecret),
    };
  },

  extract: (salt, ikm) => hkdfExtract(salt, ikm),

  expand: (prk, info, length) => hkdfExpand(prk, [info], length),

  aeadKey(aeadId, key): AeadKey {
    const s = suiteOf(aeadId);
    if (key.length !== s.nk) throw new RangeError(`${s.cipher} takes a ${s.nk}-byte key`);
    const k = key.slice();
    return {
      seal: (nonce, aad, pt) => gcmSeal(s, k, nonce, aad, pt),
      open: (nonce, aad, ct) => gcmOpen(s, k, nonce, aad, ct),
    };
  },
} satisfies OhttpBackend;
