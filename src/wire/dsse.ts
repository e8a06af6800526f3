/**
 * DSSE v1 envelopes (github.com/secure-systems-lab/dsse, protocol.md and envelope.md) carrying in-toto
 * Statements v1 (github.com/in-toto/attestation, spec/v1): the one envelope every Cloister receipt
 * kind shares (training, and in time inference, federated and data lineage), so that a policy can
 * follow a chain from one receipt to the next and standard tools (cosign, in-toto, sigstore-js) can
 * read them. Web-standard.
 *
 * ECDSA signatures are ASN.1 DER (`SEQUENCE { r INTEGER, s INTEGER }`), as cosign, sigstore-js and
 * in-toto produce and expect for ECDSA in DSSE; Web Crypto speaks IEEE P1363 (`r ‖ s`), so signing
 * converts to DER and verifying accepts only strict, minimal DER (one signature, one encoding).
 */
import { concatBytes, fromBase64, toBase64, utf8 } from '../util/index.js';

/** The DSSE payload type of an in-toto Statement (in-toto attestation spec v1, envelope.md). */
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
/** `_type` of an in-toto Statement v1. */
export const IN_TOTO_STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';

export interface DsseSignature {
  /** Unauthenticated hint naming the key; never a reason to trust a signature. */
  keyid?: string;
  /** Base64 (standard or URL-safe) of the signature over PAE(payloadType, payload). */
  sig: string;
}

/** The DSSE JSON envelope. */
export interface DsseEnvelope {
  /** Base64 (standard or URL-safe) of the serialized body. */
  payload: string;
  payloadType: string;
  signatures: DsseSignature[];
}

/** A subject of a Statement: an artifact by name and digest (algorithm → lower-case hex). */
export interface InTotoSubject {
  name: string;
  digest: Record<string, string>;
}

/** An in-toto Statement v1 with its predicate. */
export interface InTotoStatement<P = unknown> {
  _type: typeof IN_TOTO_STATEMENT_TYPE;
  subject: InTotoSubject[];
  predicateType: string;
  predicate: P;
}

export type DsseErrorCode =
  /** Not a DSSE envelope: not JSON, a member missing or of the wrong type, bad base64. */
  | 'dsse-malformed'
  /** The envelope's payload type is not one the caller supports. */
  | 'dsse-payload-type'
  /** Fewer signatures verify under the trusted keys than the threshold asks for. */
  | 'dsse-signature'
  /** The payload is not an in-toto Statement v1. */
  | 'statement-malformed';

export class DsseError extends Error {
  override name = 'DsseError';
  constructor(
    readonly code: DsseErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const SP = 0x20;
const PAE_PREFIX = utf8.encode('DSSEv1');
const ascii = (n: number) => utf8.encode(String(n));

/**
 * PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, where LEN is the decimal byte
 * length: what is signed, so that the type is authenticated and no (type, body) pair reads as another.
 */
export function preAuthEncoding(payloadType: string, body: Uint8Array): Uint8Array {
  const type = utf8.encode(payloadType);
  const sp = Uint8Array.of(SP);
  return concatBytes(PAE_PREFIX, sp, ascii(type.length), sp, type, sp, ascii(body.length), sp, body);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/**
 * Base64 in either alphabet (protocol.md: verifiers MUST accept both), padded or not, but canonical:
 * one alphabet per string, no whitespace, zero unused bits. Then an envelope with any one character
 * changed (outside the alphabet switch the spec allows) is another envelope, not the same in disguise.
 */
function base64(s: unknown, what: string): Uint8Array {
  if (typeof s !== 'string') throw new DsseError('dsse-malformed', `${what} must be a base64 string`);
  const bad = () => new DsseError('dsse-malformed', `${what} is not base64 (standard or URL-safe)`);
  if (/[-_]/.test(s) && /[+/]/.test(s)) throw bad();
  let bytes: Uint8Array;
  try {
    bytes = fromBase64(s);
  } catch {
    throw bad();
  }
  const std = s.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, '');
  if (toBase64(bytes).replace(/=+$/, '') !== std) throw bad();
  return bytes;
}

/** Refuses members a DSSE envelope (or one of its signatures) does not have. */
function onlyMembers(v: Record<string, unknown>, allowed: readonly string[], what: string): void {
  const extra = Object.keys(v).filter((k) => !allowed.includes(k));
  if (extra.length > 0)
    throw new DsseError('dsse-malformed', `${what} has members DSSE does not define: ${extra.join(', ')}`);
}

/**
 * Reads a DSSE envelope from its JSON text (string or UTF-8 bytes) or from parsed JSON, checking its
 * shape and that payload and signatures are base64. Signatures are not checked here.
 */
export function parseEnvelope(input: string | Uint8Array | unknown): DsseEnvelope {
  let v: unknown = input;
  if (typeof input === 'string' || input instanceof Uint8Array) {
    try {
      v = JSON.parse(typeof input === 'string' ? input : utf8.decode(input));
    } catch (e) {
      throw new DsseError('dsse-malformed', `not a DSSE envelope (not JSON: ${(e as Error).message})`);
    }
  }
  if (!isRecord(v)) throw new DsseError('dsse-malformed', 'not a DSSE envelope (not a JSON object)');
  // Unknown members are refused rather than ignored: nothing unsigned rides along unnoticed.
  onlyMembers(v, ['payload', 'payloadType', 'signatures'], 'the envelope');
  if (typeof v.payloadType !== 'string')
    throw new DsseError('dsse-malformed', 'not a DSSE envelope: payloadType must be a string');
  base64(v.payload, 'payload');
  if (!Array.isArray(v.signatures) || v.signatures.length === 0)
    throw new DsseError('dsse-malformed', 'not a DSSE envelope: signatures must be a non-empty list');
  const signatures = v.signatures.map((s, i): DsseSignature => {
    if (!isRecord(s)) throw new DsseError('dsse-malformed', `signatures[${i}] must be an object`);
    onlyMembers(s, ['sig', 'keyid'], `signatures[${i}]`);
    base64(s.sig, `signatures[${i}].sig`);
    if (s.keyid !== undefined && typeof s.keyid !== 'string')
      throw new DsseError('dsse-malformed', `signatures[${i}].keyid must be a string`);
    // An empty keyid means none (envelope.md: empty fields may be omitted).
    return s.keyid ? { keyid: s.keyid, sig: s.sig as string } : { sig: s.sig as string };
  });
  return { payload: v.payload as string, payloadType: v.payloadType, signatures };
}

/** The serialized body of an envelope, decoded. */
export function envelopePayload(envelope: DsseEnvelope): Uint8Array {
  return base64(envelope.payload, 'payload');
}

/** Something that signs PAE bytes: an ES256 key (es256Signer), an HSM, a KMS. */
export interface DsseSigner {
  keyid?: string;
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/** A trusted public key: answers whether `signature` is its signature over `message`. */
export interface DsseVerifier {
  keyid?: string;
  verify(message: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

/** Signs `body` as `payloadType` by each signer; the envelope's base64 is the standard alphabet. */
export async function signEnvelope(
  payloadType: string,
  body: Uint8Array,
  signers: readonly DsseSigner[],
): Promise<DsseEnvelope> {
  const message = preAuthEncoding(payloadType, body);
  const signatures: DsseSignature[] = [];
  for (const s of signers) {
    const sig = toBase64(await s.sign(message));
    signatures.push(s.keyid ? { keyid: s.keyid, sig } : { sig });
  }
  return { payload: toBase64(body), payloadType, signatures };
}

export interface VerifyEnvelopeOptions {
  /** Payload types the caller can interpret; any other is refused (protocol.md, "To verify"). */
  payloadTypes: readonly string[];
  /** How many distinct trusted keys must have signed (protocol.md, "Multi-signature"); default 1. */
  threshold?: number;
}

export interface VerifiedEnvelope {
  payloadType: string;
  payload: Uint8Array;
  /** The trusted keys that signed, each once. */
  accepted: DsseVerifier[];
}

/**
 * DSSE verification (protocol.md): each signature is tried against the trusted keys (narrowed by
 * keyid only when both name one), each key counts once, at least `threshold` keys must have signed;
 * then the payload type must be supported. The payload is returned, not parsed.
 */
export async function verifyEnvelope(
  input: DsseEnvelope | string | Uint8Array,
  verifiers: readonly DsseVerifier[],
  options: VerifyEnvelopeOptions,
): Promise<VerifiedEnvelope> {
  const envelope = parseEnvelope(input);
  const threshold = options.threshold ?? 1;
  if (!Number.isInteger(threshold) || threshold < 1)
    throw new RangeError(`threshold must be a positive integer, got ${threshold}`);
  const payload = envelopePayload(envelope);
  const message = preAuthEncoding(envelope.payloadType, payload);
  const accepted = new Set<DsseVerifier>();
  for (const s of envelope.signatures) {
    const sig = base64(s.sig, 'sig');
    for (const v of verifiers) {
      if (accepted.has(v)) continue;
      if (s.keyid && v.keyid && s.keyid !== v.keyid) continue;
      if (await v.verify(message, sig)) {
        accepted.add(v);
        break;
      }
    }
    if (accepted.size >= threshold) break;
  }
  if (accepted.size < threshold) {
    throw new DsseError(
      'dsse-signature',
      threshold === 1
        ? 'no signature in the envelope verifies under a trusted key'
        : `signatures by ${accepted.size} trusted key(s) verify; ${threshold} are required`,
    );
  }
  if (!options.payloadTypes.includes(envelope.payloadType)) {
    throw new DsseError(
      'dsse-payload-type',
      `payload type ${JSON.stringify(envelope.payloadType)} is not supported (expected ${options.payloadTypes.map((t) => JSON.stringify(t)).join(' or ')})`,
    );
  }
  return { payloadType: envelope.payloadType, payload, accepted: [...accepted] };
}

// --- ECDSA P-256 (ES256) with DER signatures ---------------------------------------------------

const P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const ES256 = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** Bytes of a P-256 scalar. */
const SCALAR = 32;

function derInteger(x: Uint8Array): Uint8Array {
  let i = 0;
  while (i < x.length - 1 && x[i] === 0) i++;
  const v = x.subarray(i);
  // A set top bit would read as negative: INTEGER is two's complement.
  const body = v[0]! & 0x80 ? concatBytes(Uint8Array.of(0), v) : v;
  return concatBytes(Uint8Array.of(0x02, body.length), body);
}

/** IEEE P1363 `r ‖ s` (Web Crypto's form) → DER `SEQUENCE { INTEGER r, INTEGER s }`. */
export function ecdsaRawToDer(raw: Uint8Array): Uint8Array {
  if (raw.length === 0 || raw.length % 2 !== 0)
    throw new RangeError(`an r‖s signature has an even, non-zero length; got ${raw.length}`);
  const half = raw.length / 2;
  const body = concatBytes(derInteger(raw.subarray(0, half)), derInteger(raw.subarray(half)));
  // Short-form length suffices up to 127 bytes, i.e. scalars of up to 61 bytes: P-256 and P-384.
  if (body.length > 127) throw new RangeError('signature too long for this encoder');
  return concatBytes(Uint8Array.of(0x30, body.length), body);
}

/**
 * Strict DER `SEQUENCE { INTEGER r, INTEGER s }` → `r ‖ s` of `size`-byte scalars; null when the bytes
 * are not minimal DER of two positive integers that fit (so one signature has exactly one encoding).
 */
export function ecdsaDerToRaw(der: Uint8Array, size = SCALAR): Uint8Array | null {
  if (der.length < 8 || der[0] !== 0x30 || der[1]! > 127 || der[1] !== der.length - 2) return null;
  const out = new Uint8Array(2 * size);
  let at = 2;
  for (let k = 0; k < 2; k++) {
    if (der[at] !== 0x02) return null;
    const len = der[at + 1]!;
    const start = at + 2;
    if (len === 0 || len > 127 || start + len > der.length) return null;
    let v = der.subarray(start, start + len);
    if (v[0]! & 0x80) return null; // negative
    if (v[0] === 0) {
      if (v.length === 1 || !(v[1]! & 0x80)) return null; // a zero, or a needless leading zero byte
      v = v.subarray(1);
    }
    if (v.length > size) return null;
    out.set(v, k * size + size - v.length);
    at = start + len;
  }
  return at === der.length ? out : null;
}

/** Signs with an ECDSA P-256 private key (Web Crypto), giving DER signatures. */
export function es256Signer(privateKey: CryptoKey, keyid?: string): DsseSigner {
  return {
    ...(keyid ? { keyid } : {}),
    async sign(message) {
      const raw = new Uint8Array(await crypto.subtle.sign(ES256, privateKey, message.slice()));
      return ecdsaRawToDer(raw);
    },
  };
}

/** Verifies DER ECDSA P-256/SHA-256 signatures under a public key (CryptoKey or JWK). */
export async function es256Verifier(
  publicKey: CryptoKey | JsonWebKey,
  keyid?: string,
): Promise<DsseVerifier> {
  const key =
    publicKey instanceof CryptoKey
      ? publicKey
      : await crypto.subtle.importKey(
          'jwk',
          // Only the key's own members: an `alg`, `use` or `key_ops` beside them must not change its use.
          { kty: publicKey.kty, crv: publicKey.crv, x: publicKey.x, y: publicKey.y, ext: true },
          P256,
          false,
          ['verify'],
        );
  return {
    ...(keyid ? { keyid } : {}),
    async verify(message, signature) {
      const raw = ecdsaDerToRaw(signature);
      if (raw === null) return false;
      return crypto.subtle.verify(ES256, key, raw.slice(), message.slice());
    },
  };
}

// --- in-toto Statement v1 ----------------------------------------------------------------------

const HEX = /^[0-9a-f]+$/;

/**
 * Parses an in-toto Statement v1 from a payload: `_type`, a non-empty subject list whose digests are
 * lower-case hex, a predicateType and an object predicate. The predicate's own shape is the caller's.
 */
export function parseStatement(payload: Uint8Array): InTotoStatement<Record<string, unknown>> {
  let v: unknown;
  try {
    v = JSON.parse(utf8.decode(payload));
  } catch (e) {
    throw new DsseError('statement-malformed', `the payload is not JSON: ${(e as Error).message}`);
  }
  const bad = (why: string) => new DsseError('statement-malformed', `not an in-toto Statement v1: ${why}`);
  if (!isRecord(v)) throw bad('not a JSON object');
  if (v._type !== IN_TOTO_STATEMENT_TYPE) throw bad(`_type is ${JSON.stringify(v._type)}`);
  if (!Array.isArray(v.subject) || v.subject.length === 0) throw bad('subject must be a non-empty list');
  v.subject.forEach((s, i) => {
    if (!isRecord(s) || typeof s.name !== 'string') throw bad(`subject[${i}].name must be a string`);
    if (!isRecord(s.digest) || Object.keys(s.digest).length === 0)
      throw bad(`subject[${i}].digest must be a non-empty object`);
    for (const [alg, d] of Object.entries(s.digest))
      if (typeof d !== 'string' || !HEX.test(d))
        throw bad(`subject[${i}].digest.${alg} must be lower-case hex`);
  });
  if (typeof v.predicateType !== 'string' || v.predicateType === '')
    throw bad('predicateType must be a non-empty string');
  if (!isRecord(v.predicate)) throw bad('predicate must be an object');
  return v as unknown as InTotoStatement<Record<string, unknown>>;
}

/**
 * The predicate type of Cloister's training receipts (src/tee/training-receipt.ts). Here, below both the
 * trainer that signs them and the key broker that records them. A new version (a field changing
 * meaning) gets a new URI; added optional fields keep v1.
 */
export const TRAINING_PREDICATE_TYPE = 'https://cloister.dev/attestation/training/v1';
