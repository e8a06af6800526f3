/**
 * The cryptography under Oblivious HTTP, behind one small interface so each platform gets its fast path:
 * `webCryptoBackend` here (the default: @hpke/core over Web Crypto, runs in browsers) and `nodeBackend`
 * in node.ts (synchronous node:crypto, Node only, never imported by code bundled for browsers).
 *
 * Only what RFC 9458 needs: HPKE base mode (RFC 9180 §5.1) for DHKEM(X25519, HKDF-SHA256), HKDF-SHA256
 * and AES-128-GCM or AES-256-GCM, messages in sequence (§5.2: one for RFC 9458, one per chunk for a
 * chunked request) and Export (§5.3);
 * HKDF-SHA256 Extract and Expand for the response keys; AES-GCM under a prepared key for response bodies
 * and chunks. Backends throw whatever their platform throws; the ohttp layer turns it into OhttpError
 * codes, so every backend refuses the same inputs with the same codes.
 */
import { Aes128Gcm, Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import { bs } from '../util/index.js';
import { OhttpError } from './errors.js';
import { AEAD_AES_128_GCM } from './keyconfig.js';

export type MaybePromise<T> = T | Promise<T>;

/** HPKE secret export (RFC 9180 §5.3); the shape @hpke/core's contexts already have. */
export interface HpkeExporter {
  export(exporterContext: ArrayBuffer, length: number): Promise<ArrayBuffer>;
}

/** A base-mode sender context; each seal takes the next sequence number (0, 1, 2, … RFC 9180 §5.2). */
export interface HpkeSender {
  enc: Uint8Array;
  seal(aad: Uint8Array, pt: Uint8Array): MaybePromise<Uint8Array>;
  exporter: HpkeExporter;
}

/** A base-mode recipient context; each open takes the next sequence number (RFC 9180 §5.2). */
export interface HpkeRecipient {
  /** Throws when `ct` does not authenticate (and the sequence number then stays where it was). */
  open(aad: Uint8Array, ct: Uint8Array): MaybePromise<Uint8Array>;
  exporter: HpkeExporter;
}

/** An AES-GCM key made ready once and used for many messages, each under the nonce given. */
export interface AeadKey {
  seal(nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array): MaybePromise<Uint8Array>;
  /** Throws when `ct` (ciphertext and 16-byte tag) does not authenticate. */
  open(nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array): MaybePromise<Uint8Array>;
}

export interface SenderSetup {
  aeadId: number;
  /** The recipient's raw X25519 public key (pkRm). */
  recipientPublicKey: Uint8Array;
  info: Uint8Array;
  /** Fixes the ephemeral X25519 key pair: known-answer tests only, never in production. */
  ephemeral?: { privateKey: Uint8Array; publicKey: Uint8Array };
}

export interface RecipientSetup {
  aeadId: number;
  /** The recipient's raw X25519 private key (skRm). */
  privateKey: Uint8Array;
  enc: Uint8Array;
  info: Uint8Array;
}

export interface OhttpBackend {
  readonly name: string;
  /** SetupBaseS (RFC 9180 §5.1.1); throws when the recipient key is not a usable X25519 key. */
  setupSender(s: SenderSetup): MaybePromise<HpkeSender>;
  /** SetupBaseR; throws when `enc` or the private key is unusable (a low-order share, say). */
  setupRecipient(s: RecipientSetup): MaybePromise<HpkeRecipient>;
  /** HKDF-SHA256-Extract (RFC 5869 §2.2). */
  extract(salt: Uint8Array, ikm: Uint8Array): MaybePromise<Uint8Array>;
  /** HKDF-SHA256-Expand (RFC 5869 §2.3), `length` at most 255 * 32. */
  expand(prk: Uint8Array, info: Uint8Array, length: number): MaybePromise<Uint8Array>;
  /** AES-128-GCM or AES-256-GCM (by HPKE AEAD id) under `key`. */
  aeadKey(aeadId: number, key: Uint8Array): MaybePromise<AeadKey>;
}

const HASH_LEN = 32;

/** An ArrayBuffer holding exactly `u` (a subarray's `.buffer` would hold its whole parent). */
function ab(u: Uint8Array): ArrayBuffer {
  return bs(u.slice()).buffer;
}

export function hpkeSuite(aeadId: number): CipherSuite {
  return new CipherSuite({
    kem: new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: aeadId === AEAD_AES_128_GCM ? new Aes128Gcm() : new Aes256Gcm(),
  });
}

export async function aeadSeal(k: CryptoKey, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array) {
  return new Uint8Array(
    await crypto.subtle.encrypt({ name: 'AES-GCM', iv: bs(nonce), additionalData: bs(aad) }, k, bs(pt)),
  );
}

export async function aeadOpen(
  k: CryptoKey,
  nonce: Uint8Array,
  aad: Uint8Array,
  ct: Uint8Array,
  what: string,
) {
  try {
    return new Uint8Array(
      await crypto.subtle.decrypt({ name: 'AES-GCM', iv: bs(nonce), additionalData: bs(aad) }, k, bs(ct)),
    );
  } catch {
    throw new OhttpError(
      'decrypt-failed',
      `${what} does not decrypt (tampered, truncated or not for this request)`,
    );
  }
}

async function hmac(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  // Web Crypto refuses an empty HMAC key; HMAC pads keys with zeros, so HashLen zeros is the same key.
  const raw = key.length === 0 ? new Uint8Array(HASH_LEN) : key;
  const k = await crypto.subtle.importKey('raw', bs(raw), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, bs(data)));
}

/** Web Crypto through @hpke/core: what browsers run, and the default everywhere. */
export const webCryptoBackend: OhttpBackend = {
  name: 'webcrypto',

  async setupSender(s) {
    const suite = hpkeSuite(s.aeadId);
    const ekm = s.ephemeral
      ? {
          privateKey: await suite.kem.deserializePrivateKey(ab(s.ephemeral.privateKey)),
          publicKey: await suite.kem.deserializePublicKey(ab(s.ephemeral.publicKey)),
        }
      : undefined;
    const sender = await suite.createSenderContext({
      recipientPublicKey: await suite.kem.deserializePublicKey(ab(s.recipientPublicKey)),
      info: ab(s.info),
      ...(ekm ? { ekm } : {}),
    });
    return {
      enc: new Uint8Array(sender.enc),
      seal: async (aad, pt) => new Uint8Array(await sender.seal(ab(pt), ab(aad))),
      exporter: sender,
    };
  },

  async setupRecipient(s) {
    const suite = hpkeSuite(s.aeadId);
    const recipient = await suite.createRecipientContext({
      recipientKey: await suite.kem.deserializePrivateKey(ab(s.privateKey)),
      enc: ab(s.enc),
      info: ab(s.info),
    });
    return {
      open: async (aad, ct) => new Uint8Array(await recipient.open(ab(ct), ab(aad))),
      exporter: recipient,
    };
  },

  extract: (salt, ikm) => hmac(salt, ikm),

  async expand(prk, info, length) {
    if (length > 255 * HASH_LEN) throw new RangeError('HKDF-Expand length is at most 255 * HashLen');
    const out = new Uint8Array(length);
    let t: Uint8Array = new Uint8Array(0);
    for (let i = 1, at = 0; at < length; i++) {
      const input = new Uint8Array(t.length + info.length + 1);
      input.set(t);
      input.set(info, t.length);
      input[input.length - 1] = i;
      t = await hmac(prk, input);
      out.set(t.subarray(0, length - at), at);
      at += t.length;
    }
    return out;
  },

  async aeadKey(_aeadId, key) {
    const k = await crypto.subtle.importKey('raw', bs(key), 'AES-GCM', false, ['encrypt', 'decrypt']);
    return {
      seal: (nonce, aad, pt) => aeadSeal(k, nonce, aad, pt),
      open: (nonce, aad, ct) => aeadOpen(k, nonce, aad, ct, 'the ciphertext'),
    };
  },
};
