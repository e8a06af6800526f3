/**
 * Oblivious HTTP message encapsulation (RFC 9458 §4). The client seals a request to a gateway's key
 * config with HPKE; the gateway opens it and seals the response under keys derived from an HPKE export
 * secret, a fresh response nonce and the request's `enc`, so only that client can read it.
 */
import { bs, concatBytes, fromBase64, utf8 } from '../util/index.js';
import {
  type AeadKey,
  type HpkeExporter,
  type HpkeRecipient,
  type HpkeSender,
  type OhttpBackend,
  webCryptoBackend,
} from './backend.js';
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
const EMPTY = new Uint8Array(0);
const KEY_INFO = utf8.encode('key');
const NONCE_INFO = utf8.encode('nonce');

/** What either side keeps of an exchange to seal or open its response. */
export interface ExchangeContext {
  keyId: number;
  aeadId: number;
  /** The request's encapsulated KEM share; part of the response key's salt. */
  enc: Uint8Array;
  exporter: HpkeExporter;
  /** The backend that set the exchange up; the response functions use it unless told otherwise. */
  backend?: OhttpBackend;
}

/** A gateway's key: the config it publishes and the X25519 private key behind it. */
export interface GatewayKey {
  config: KeyConfig;
  privateKey: Uint8Array;
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
  /** The crypto to use; default Web Crypto (webCryptoBackend). On Node, nodeBackend from ./node.js. */
  backend?: OhttpBackend;
}

/** A client's HPKE sender set up for one request: `header` (hdr || enc) starts the encapsulated request. */
export interface RequestSender {
  header: Uint8Array;
  sender: HpkeSender;
  context: ExchangeContext;
}

/** Client: the HPKE context for a request to the gateway that published `config` (RFC 9458 §4.3). */
export async function setupRequestSender(
  config: KeyConfig,
  options: EncapsulateOptions = {},
): Promise<RequestSender> {
  const chosen = options.suite ?? selectSuite(config);
  if (chosen.kdfId !== KDF_HKDF_SHA256) {
    throw new OhttpError('unsupported-kdf', `KDF 0x${chosen.kdfId.toString(16)} is not supported`);
  }
  if (!AEADS.has(chosen.aeadId)) {
    throw new OhttpError('unsupported-aead', `AEAD 0x${chosen.aeadId.toString(16)} is not supported`);
  }
  const backend = options.backend ?? webCryptoBackend;
  const hdr = requestHeader(config.keyId, chosen);
  let sender: HpkeSender;
  try {
    sender = await backend.setupSender({
      aeadId: chosen.aeadId,
      recipientPublicKey: config.publicKey,
      info: info(options.label ?? REQUEST_LABEL, hdr),
      ...(options.ephemeral ? { ephemeral: options.ephemeral } : {}),
    });
  } catch {
    throw new OhttpError('bad-key', `key ${config.keyId}'s public key is not a usable X25519 key`);
  }
  const { enc } = sender;
  return {
    header: concatBytes(hdr, enc),
    sender,
    context: { keyId: config.keyId, aeadId: chosen.aeadId, enc, exporter: sender.exporter, backend },
  };
}

/** Client: seals `request` (usually a binary HTTP message) to the gateway that published `config`. */
export async function encapsulateRequest(
  config: KeyConfig,
  request: Uint8Array,
  options: EncapsulateOptions = {},
): Promise<{ encapsulated: Uint8Array; context: ExchangeContext }> {
  const { header, sender, context } = await setupRequestSender(config, options);
  const ct = await sender.seal(EMPTY, request);
  return { encapsulated: concatBytes(header, ct), context };
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

export interface DecapsulateOptions {
  /** Label bound into the HPKE info; chunked OHTTP uses its own. */
  label?: string;
  /** The crypto to use; default Web Crypto (webCryptoBackend). On Node, nodeBackend from ./node.js. */
  backend?: OhttpBackend;
}

/** The length of hdr || enc, what a gateway needs before it can set up the HPKE context. */
export const REQUEST_PREFIX_LENGTH = HEADER_LENGTH + NENC;

/**
 * Gateway: reads hdr || enc from `r` (REQUEST_PREFIX_LENGTH bytes), finds the key and sets up the HPKE
 * recipient context; the ciphertext that follows is opened with `recipient`.
 */
export async function setupRequestRecipient(
  r: VarReader,
  keys: readonly GatewayKey[],
  options: DecapsulateOptions | string = {},
): Promise<{ recipient: HpkeRecipient; context: ExchangeContext }> {
  const { label = REQUEST_LABEL, backend = webCryptoBackend } =
    typeof options === 'string' ? { label: options } : options;
  const start = r.offset;
  const { header, key } = parseRequestHeader(r, keys);
  const hdr = r.bytes.subarray(start, start + HEADER_LENGTH);
  const enc = r.take(NENC, 'enc').slice();
  let recipient: HpkeRecipient;
  try {
    recipient = await backend.setupRecipient({
      aeadId: header.aeadId,
      privateKey: key.privateKey,
      enc,
      info: info(label, hdr),
    });
  } catch {
    // A low-order or otherwise unusable `enc` fails in the KEM, before any AEAD.
    throw new OhttpError('decrypt-failed', 'the request encapsulation (enc) is not usable with this key');
  }
  return {
    recipient,
    context: { keyId: header.keyId, aeadId: header.aeadId, enc, exporter: recipient.exporter, backend },
  };
}

/** Gateway: opens an encapsulated request (`message/ohttp-req`). A string third argument is the label. */
export async function decapsulateRequest(
  encapsulated: Uint8Array,
  keys: readonly GatewayKey[],
  options: DecapsulateOptions | string = {},
): Promise<{ request: Uint8Array; context: ExchangeContext }> {
  const r = new VarReader(encapsulated, 'encapsulated request');
  if (encapsulated.length < REQUEST_PREFIX_LENGTH + TAG) {
    // Refused before any key work; a header naming an unknown key is still reported as such.
    parseRequestHeader(new VarReader(encapsulated, 'encapsulated request'), keys);
    throw new OhttpError('truncated', 'encapsulated request is shorter than a header, enc and an AEAD tag');
  }
  const { recipient, context } = await setupRequestRecipient(r, keys, options);
  const ct = r.take(r.remaining, 'ciphertext');
  let request: Uint8Array;
  try {
    request = await recipient.open(EMPTY, ct);
  } catch {
    throw new OhttpError(
      'decrypt-failed',
      'the encapsulated request does not decrypt (tampered or wrong key)',
    );
  }
  return { request, context };
}

export interface ResponseOptions {
  /** The crypto to use; default the backend that set `ctx` up, else Web Crypto. */
  backend?: OhttpBackend;
}

export interface ResponseKeys {
  /** AES-GCM under the response key, prepared by the backend. */
  key: AeadKey;
  nonce: Uint8Array;
}

/** RFC 9458 §4.4: secret = Export(label, max(Nn, Nk)); salt = enc || response_nonce; HKDF to key and nonce. */
export async function deriveResponseKeys(
  ctx: ExchangeContext,
  responseNonce: Uint8Array,
  label = RESPONSE_LABEL,
  options: ResponseOptions = {},
): Promise<ResponseKeys> {
  const backend = options.backend ?? ctx.backend ?? webCryptoBackend;
  const { nk, nn } = AEADS.get(ctx.aeadId)!;
  const secret = new Uint8Array(await ctx.exporter.export(ab(utf8.encode(label)), Math.max(nk, nn)));
  const prk = await backend.extract(concatBytes(ctx.enc, responseNonce), secret);
  const key = await backend.aeadKey(ctx.aeadId, await backend.expand(prk, KEY_INFO, nk));
  return { key, nonce: await backend.expand(prk, NONCE_INFO, nn) };
}

export function responseNonceLength(aeadId: number): number {
  const { nk, nn } = AEADS.get(aeadId)!;
  return Math.max(nk, nn);
}

/** Opens under a prepared key, turning any backend failure into the one refusal callers map. */
export async function openWith(
  key: AeadKey,
  nonce: Uint8Array,
  aad: Uint8Array,
  ct: Uint8Array,
  what: string,
): Promise<Uint8Array> {
  try {
    return await key.open(nonce, aad, ct);
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
  options: ResponseOptions = {},
): Promise<Uint8Array> {
  const n = responseNonceLength(ctx.aeadId);
  const nonce = responseNonce ?? crypto.getRandomValues(new Uint8Array(n));
  if (nonce.length !== n) throw new OhttpError('bad-message', `the response nonce must be ${n} bytes`);
  const keys = await deriveResponseKeys(ctx, nonce, RESPONSE_LABEL, options);
  return concatBytes(nonce, await keys.key.seal(keys.nonce, EMPTY, response));
}

/** Client: opens the gateway's encapsulated response to the request of `ctx`. */
export async function decapsulateResponse(
  ctx: ExchangeContext,
  encapsulated: Uint8Array,
  options: ResponseOptions = {},
): Promise<Uint8Array> {
  const r = new VarReader(encapsulated, 'encapsulated response');
  const nonce = r.take(responseNonceLength(ctx.aeadId), 'response nonce');
  const ct = r.take(r.remaining, 'ciphertext');
  if (ct.length < TAG) throw new OhttpError('truncated', 'encapsulated response is shorter than an AEAD tag');
  const keys = await deriveResponseKeys(ctx, nonce, RESPONSE_LABEL, options);
  return openWith(keys.key, keys.nonce, EMPTY, ct, 'the encapsulated response');
}

/** The suites a gateway key offers unless told otherwise: AES-128-GCM (RFC 9458's), then AES-256-GCM. */
export const GATEWAY_SUITES: readonly SymmetricSuite[] = [
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM },
  { kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_256_GCM },
];

/** A fresh gateway key: X25519 made with Web Crypto, offering `suites` (default GATEWAY_SUITES). */
export async function generateGatewayKey(
  keyId: number,
  suites: SymmetricSuite[] = [...GATEWAY_SUITES],
): Promise<GatewayKey> {
  const pair = (await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const d = (await crypto.subtle.exportKey('jwk', pair.privateKey)).d!;
  const privateKey = fromBase64(d);
  const config: KeyConfig = { keyId, kemId: KEM_X25519_HKDF_SHA256, publicKey, suites };
  encodeKeyConfig(config); // refuses an out-of-range key id or an empty suite list now, not at publish time
  return { config, privateKey };
}
