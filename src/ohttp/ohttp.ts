/**
 * Oblivious HTTP message encapsulation (RFC 9458 §4). The client seals a request to a gateway's key
 * config with HPKE; the gateway opens it and seals the response under keys derived from an HPKE export
 * secret, a fresh response nonce and the request's `enc`, so only that client can read it.
 */
import { Aes128Gcm, Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import { bs, concatBytes, utf8 } from '../util/bytes.js';
import { OhttpError } from './errors.js';
import {
  AEAD_AES_128_GCM,
  AEAD_AES_256_GCM,
  AEADS,
  encodeKeyConfig,
  KDF_HKDF_SHA256,
  KEM_X25519_HKDF_SHA256,
  type KeyConfig,
  type SymmetricSuite,
  selectSuite,
} from './keyconfig.js';
import { VarReader } from './varint.js';

export const REQUEST_LABEL = 'message/bhttp request';
export const RESPONSE_LABEL = 'message/bhttp response';
/** key id (1) + KEM (2) + KDF (2) + AEAD (2). */
export const HEADER_LENGTH = 7;
const NENC = 32;
const TAG = 16;

/** What either side keeps of an exchange to seal or open its response. */
export interface ExchangeContext {
  keyId: number;
  aeadId: number;
  /** The request's encapsulated KEM share; part of the response key's salt. */
  enc: Uint8Array;
  exporter: { export(exporterContext: ArrayBuffer, len: number): Promise<ArrayBuffer> };
}

/** A gateway's key: the config it publishes and the X25519 private key behind it. */
export interface GatewayKey {
  config: KeyConfig;
  privateKey: Uint8Array;
}

export function hpkeSuite(aeadId: number): CipherSuite {
  return new CipherSuite({
    kem: new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: aeadId === AEAD_AES_128_GCM ? new Aes128Gcm() : new Aes256Gcm(),
  });
}

export function requestHeader(keyId: number, suite: SymmetricSuite): Uint8Array {
  return Uint8Array.of(
    keyId,
    0,
    KEM_X25519_HKDF_SHA256,
    suite.kdfId >> 8,
    suite.kdfId & 0xff,
    suite.aeadId >> 8,
    suite.aeadId & 0xff,
  );
}

/** An ArrayBuffer holding exactly `u` (a subarray's `.buffer` would hold its whole parent). */
function ab(u: Uint8Array): ArrayBuffer {
  return bs(u.slice()).buffer;
}

function info(label: string, header: Uint8Array): Uint8Array {
  return concatBytes(utf8.encode(label), Uint8Array.of(0), header);
}

export interface EncapsulateOptions {
  suite?: SymmetricSuite;
  /** Fixes the ephemeral X25519 key pair: known-answer tests only, never in production. */
  ephemeral?: { privateKey: Uint8Array; publicKey: Uint8Array };
  /** Label bound into the HPKE info; chunked OHTTP uses its own. */
  label?: string;
}

/** Client: seals `request` (usually a binary HTTP message) to the gateway that published `config`. */
export async function encapsulateRequest(
  config: KeyConfig,
  request: Uint8Array,
  options: EncapsulateOptions = {},
): Promise<{ encapsulated: Uint8Array; context: ExchangeContext }> {
  const chosen = options.suite ?? selectSuite(config);
  if (chosen.kdfId !== KDF_HKDF_SHA256) {
    throw new OhttpError('unsupported-kdf', `KDF 0x${chosen.kdfId.toString(16)} is not supported`);
  }
  if (!AEADS.has(chosen.aeadId)) {
    throw new OhttpError('unsupported-aead', `AEAD 0x${chosen.aeadId.toString(16)} is not supported`);
  }
  const suite = hpkeSuite(chosen.aeadId);
  const header = requestHeader(config.keyId, chosen);
  let sender: Awaited<ReturnType<CipherSuite['createSenderContext']>>;
  try {
    const recipientPublicKey = await suite.kem.deserializePublicKey(ab(config.publicKey));
    const ekm = options.ephemeral
      ? {
          privateKey: await suite.kem.deserializePrivateKey(ab(options.ephemeral.privateKey)),
          publicKey: await suite.kem.deserializePublicKey(ab(options.ephemeral.publicKey)),
        }
      : undefined;
    sender = await suite.createSenderContext({
      recipientPublicKey,
      info: ab(info(options.label ?? REQUEST_LABEL, header)),
      ...(ekm ? { ekm } : {}),
    });
  } catch {
    throw new OhttpError('bad-key', `key ${config.keyId}'s public key is not a usable X25519 key`);
  }
  const ct = new Uint8Array(await sender.seal(ab(request)));
  const enc = new Uint8Array(sender.enc);
  return {
    encapsulated: concatBytes(header, enc, ct),
    context: { keyId: config.keyId, aeadId: chosen.aeadId, enc, exporter: sender },
  };
}

export interface RequestHeader {
  keyId: number;
  kemId: number;
  kdfId: number;
  aeadId: number;
}

/** Reads the header and finds the key; refuses unknown keys and suites the key does not offer. */
export function parseRequestHeader(
  r: VarReader,
  keys: readonly GatewayKey[],
): { header: RequestHeader; key: GatewayKey } {
  const header = {
    keyId: r.u8('key id'),
    kemId: r.u16('kem id'),
    kdfId: r.u16('kdf id'),
    aeadId: r.u16('aead id'),
  };
  const key = keys.find((k) => k.config.keyId === header.keyId);
  if (!key) throw new OhttpError('unknown-key-id', `no gateway key has id ${header.keyId}`);
  if (header.kemId !== KEM_X25519_HKDF_SHA256 || key.config.kemId !== header.kemId) {
    throw new OhttpError(
      'unsupported-kem',
      `KEM 0x${header.kemId.toString(16)} is not offered by key ${header.keyId}`,
    );
  }
  if (header.kdfId !== KDF_HKDF_SHA256 || !key.config.suites.some((s) => s.kdfId === header.kdfId)) {
    throw new OhttpError(
      'unsupported-kdf',
      `KDF 0x${header.kdfId.toString(16)} is not offered by key ${header.keyId}`,
    );
  }
  const offered = key.config.suites.some((s) => s.kdfId === header.kdfId && s.aeadId === header.aeadId);
  if (!offered || !AEADS.has(header.aeadId)) {
    throw new OhttpError(
      'unsupported-aead',
      `AEAD 0x${header.aeadId.toString(16)} is not offered by key ${header.keyId}`,
    );
  }
  return { header, key };
}

/** Gateway: opens an encapsulated request (`message/ohttp-req`). */
export async function decapsulateRequest(
  encapsulated: Uint8Array,
  keys: readonly GatewayKey[],
  label = REQUEST_LABEL,
): Promise<{ request: Uint8Array; context: ExchangeContext }> {
  const r = new VarReader(encapsulated, 'encapsulated request');
  const { header, key } = parseRequestHeader(r, keys);
  const enc = r.take(NENC, 'enc').slice();
  const ct = r.take(r.remaining, 'ciphertext');
  if (ct.length < TAG) throw new OhttpError('truncated', 'encapsulated request is shorter than an AEAD tag');
  const suite = hpkeSuite(header.aeadId);
  let recipient: Awaited<ReturnType<CipherSuite['createRecipientContext']>>;
  try {
    recipient = await suite.createRecipientContext({
      recipientKey: await suite.kem.deserializePrivateKey(ab(key.privateKey)),
      enc: ab(enc),
      info: ab(info(label, encapsulated.subarray(0, HEADER_LENGTH))),
    });
  } catch {
    // A low-order or otherwise unusable `enc` fails in the KEM, before any AEAD.
    throw new OhttpError('decrypt-failed', 'the request encapsulation (enc) is not usable with this key');
  }
  let request: Uint8Array;
  try {
    request = new Uint8Array(await recipient.open(ab(ct)));
  } catch {
    throw new OhttpError(
      'decrypt-failed',
      'the encapsulated request does not decrypt (tampered or wrong key)',
    );
  }
  return { request, context: { keyId: header.keyId, aeadId: header.aeadId, enc, exporter: recipient } };
}

export interface ResponseKeys {
  key: CryptoKey;
  nonce: Uint8Array;
}

/** RFC 9458 §4.4: secret = Export(label, max(Nn, Nk)); salt = enc || response_nonce; HKDF to key and nonce. */
export async function deriveResponseKeys(
  ctx: ExchangeContext,
  responseNonce: Uint8Array,
  label = RESPONSE_LABEL,
): Promise<ResponseKeys> {
  const { nk, nn } = AEADS.get(ctx.aeadId)!;
  const secret = new Uint8Array(await ctx.exporter.export(ab(utf8.encode(label)), Math.max(nk, nn)));
  const ikm = await crypto.subtle.importKey('raw', bs(secret), 'HKDF', false, ['deriveBits']);
  const salt = bs(concatBytes(ctx.enc, responseNonce));
  // Web Crypto's HKDF is Expand(Extract(salt, secret), info, L): the RFC's prk step included.
  const expand = async (what: string, n: number) =>
    new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: 'HKDF', hash: 'SHA-256', salt, info: bs(utf8.encode(what)) },
        ikm,
        n * 8,
      ),
    );
  const rawKey = await expand('key', nk);
  const nonce = await expand('nonce', nn);
  const key = await crypto.subtle.importKey('raw', bs(rawKey), 'AES-GCM', false, ['encrypt', 'decrypt']);
  return { key, nonce };
}

export function responseNonceLength(aeadId: number): number {
  const { nk, nn } = AEADS.get(aeadId)!;
  return Math.max(nk, nn);
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

/** Gateway: seals `response` for the client of `ctx` (`message/ohttp-res`). */
export async function encapsulateResponse(
  ctx: ExchangeContext,
  response: Uint8Array,
  responseNonce?: Uint8Array,
): Promise<Uint8Array> {
  const n = responseNonceLength(ctx.aeadId);
  const nonce = responseNonce ?? crypto.getRandomValues(new Uint8Array(n));
  if (nonce.length !== n) throw new OhttpError('bad-message', `the response nonce must be ${n} bytes`);
  const keys = await deriveResponseKeys(ctx, nonce);
  return concatBytes(nonce, await aeadSeal(keys.key, keys.nonce, new Uint8Array(0), response));
}

/** Client: opens the gateway's encapsulated response to the request of `ctx`. */
export async function decapsulateResponse(
  ctx: ExchangeContext,
  encapsulated: Uint8Array,
): Promise<Uint8Array> {
  const r = new VarReader(encapsulated, 'encapsulated response');
  const nonce = r.take(responseNonceLength(ctx.aeadId), 'response nonce');
  const ct = r.take(r.remaining, 'ciphertext');
  if (ct.length < TAG) throw new OhttpError('truncated', 'encapsulated response is shorter than an AEAD tag');
  const keys = await deriveResponseKeys(ctx, nonce);
  return aeadOpen(keys.key, keys.nonce, new Uint8Array(0), ct, 'the encapsulated response');
}

/** A fresh gateway key: X25519 made with Web Crypto, offering `suites` (default AES-128-GCM, then AES-256-GCM). */
export async function generateGatewayKey(
  keyId: number,
  suites: SymmetricSuite[] = [
    { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM },
    { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_256_GCM },
  ],
): Promise<GatewayKey> {
  const pair = (await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const d = (await crypto.subtle.exportKey('jwk', pair.privateKey)).d!;
  const privateKey = Uint8Array.from(atob(d.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  const config: KeyConfig = { keyId, kemId: KEM_X25519_HKDF_SHA256, publicKey, suites };
  encodeKeyConfig(config); // refuses an out-of-range key id or an empty suite list now, not at publish time
  return { config, privateKey };
}
