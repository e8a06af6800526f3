/**
 * The sealed container header (docs/format.md is the normative description; keep them in step).
 *
 *   offset size
 *   0      8   magic 89 43 4C 53 45 41 4C 0A ("\x89CLSEAL\n": a high byte and a newline catch text-mode damage)
 *   8      2   format version (1)
 *   10     2   suite (1 = AES-256-GCM STREAM, HKDF-SHA256 key schedule, HMAC-SHA256 header MAC)
 *   12     4   header length H (all header bytes, magic through MAC)
 *   16     4   chunk size C (plaintext bytes per chunk)
 *   20     8   plaintext length (2^64-1 = not known when sealing began, e.g. from a pipe)
 *   28     7   nonce prefix (random per file)
 *   35     1   flags (must be 0)
 *   36     2+n content type (UTF-8, may be empty)
 *          2+n original name (UTF-8, may be empty)
 *          1   recipient count R (1..64)
 *          R × { 1 type, 2+n key id (UTF-8), 2+n wrapped data key }
 *   H-32   32  HMAC-SHA256(header key, bytes 0 .. H-32)
 *
 * All integers big-endian. The body follows at offset H: chunk i is at H + i·(C+16).
 */
import { ByteReader, ParseError } from '../util/index.js';

export const RecipientType = { kbs: 1, hpke: 2 } as const;
export type RecipientTypeName = keyof typeof RecipientType;

export const MAGIC = new Uint8Array([0x89, 0x43, 0x4c, 0x53, 0x45, 0x41, 0x4c, 0x0a]);
export const FORMAT_VERSION = 1;
export const SUITE_AES256GCM_STREAM = 1;
export const FIXED_HEADER_BYTES = 36;
export const MAC_BYTES = 32;
export const UNKNOWN_LENGTH = 0xffff_ffff_ffff_ffffn;
export const MIN_CHUNK_SIZE = 16;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
export const MAX_RECIPIENTS = 64;
export const MAX_HEADER_BYTES = 1024 * 1024;
/** Fixed part, two empty strings, the count, one recipient with empty fields, and the MAC. */
export const MIN_HEADER_BYTES = FIXED_HEADER_BYTES + 2 + 2 + 1 + 5 + MAC_BYTES;
/** Exact wrapped-key sizes: AES-KW of 32 bytes; HPKE enc (32) ‖ sealed 32-byte key with its tag. */
export const WRAPPED_KEY_BYTES: Record<RecipientTypeName, number> = { kbs: 40, hpke: 80 };
export const KEY_ID_SYNTAX: Record<RecipientTypeName, RegExp> = {
  kbs: /^kbs:\/\/\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+$/,
  hpke: /^hpke:[A-Za-z0-9_-]{43}$/,
};
/** Chunk indices are 32-bit in the nonce; the STREAM bound on a file is 2^32 chunks. */
export const MAX_CHUNKS = 2 ** 32;

export interface RecipientStanza {
  type: RecipientTypeName;
  /** `kbs:///repo/type/tag` for kbs; `hpke:<base64url SHA-256 of the public key>` for hpke. */
  keyId: string;
  wrappedKey: Uint8Array;
}

export interface Header {
  version: number;
  suite: number;
  headerLength: number;
  chunkSize: number;
  /** undefined when unknown at sealing time. */
  plaintextLength: number | undefined;
  noncePrefix: Uint8Array;
  contentType: string;
  name: string;
  recipients: RecipientStanza[];
  /** Header bytes covered by the MAC (everything before it). */
  authenticated: Uint8Array;
  mac: Uint8Array;
  /** The complete header bytes; their SHA-256 is every chunk's AAD. */
  raw: Uint8Array;
}

/** A clear "what is wrong with this file" error for sealed-format problems. */
export class SealFormatError extends Error {
  override name = 'SealFormatError';
  constructor(
    readonly code:
      | 'not-sealed'
      | 'unsupported-version'
      | 'unsupported-suite'
      | 'bad-header'
      | 'header-tampered'
      | 'truncated'
      | 'trailing-data'
      | 'chunk-tampered'
      | 'no-matching-key'
      | 'bad-key'
      | 'range',
    message: string,
  ) {
    super(message);
  }
}

/** Reads the header length from the first 16 bytes, so streaming readers know how much to buffer. */
export function headerLengthOf(prefix: Uint8Array): number {
  if (prefix.length < 16) throw new SealFormatError('not-sealed', 'not a Cloister sealed file (too short)');
  checkMagicAndVersion(prefix);
  const len = new DataView(prefix.buffer, prefix.byteOffset, 16).getUint32(12, false);
  if (len < MIN_HEADER_BYTES || len > MAX_HEADER_BYTES) {
    throw new SealFormatError('bad-header', `sealed header length ${len} is out of range`);
  }
  return len;
}

function checkMagicAndVersion(b: Uint8Array): void {
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) throw new SealFormatError('not-sealed', 'not a Cloister sealed file (bad magic)');
  }
  const version = (b[8]! << 8) | b[9]!;
  if (version !== FORMAT_VERSION) {
    throw new SealFormatError(
      'unsupported-version',
      `sealed format version ${version} is not supported (this Cloister reads version ${FORMAT_VERSION})`,
    );
  }
  const suite = (b[10]! << 8) | b[11]!;
  if (suite !== SUITE_AES256GCM_STREAM) {
    throw new SealFormatError('unsupported-suite', `cipher suite ${suite} is not supported`);
  }
}

export function encodeHeader(
  h: Omit<Header, 'headerLength' | 'authenticated' | 'mac' | 'raw' | 'version' | 'suite'>,
): Uint8Array {
  validateFields(h);
  const enc = new TextEncoder();
  const ct = enc.encode(h.contentType);
  const nm = enc.encode(h.name);
  const recips = h.recipients.map((r) => ({
    type: RecipientType[r.type],
    id: enc.encode(r.keyId),
    key: r.wrappedKey,
  }));
  let len = FIXED_HEADER_BYTES + 2 + ct.length + 2 + nm.length + 1 + MAC_BYTES;
  for (const r of recips) len += 1 + 2 + r.id.length + 2 + r.key.length;
  if (len > MAX_HEADER_BYTES) throw new SealFormatError('bad-header', 'header too large');
  const out = new Uint8Array(len);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint16(8, FORMAT_VERSION);
  dv.setUint16(10, SUITE_AES256GCM_STREAM);
  dv.setUint32(12, len);
  dv.setUint32(16, h.chunkSize);
  dv.setBigUint64(20, h.plaintextLength === undefined ? UNKNOWN_LENGTH : BigInt(h.plaintextLength));
  out.set(h.noncePrefix, 28);
  out[35] = 0;
  let o = FIXED_HEADER_BYTES;
  const put16 = (b: Uint8Array) => {
    if (b.length > 0xffff) throw new SealFormatError('bad-header', 'header field longer than 65535 bytes');
    dv.setUint16(o, b.length);
    out.set(b, o + 2);
    o += 2 + b.length;
  };
  put16(ct);
  put16(nm);
  out[o++] = recips.length;
  for (const r of recips) {
    out[o++] = r.type;
    put16(r.id);
    put16(r.key);
  }
  // The MAC (last 32 bytes) is filled in by the caller once the header key is known.
  return out;
}

function validateFields(h: {
  chunkSize: number;
  plaintextLength: number | undefined;
  noncePrefix: Uint8Array;
  recipients: RecipientStanza[];
}): void {
  if (!Number.isInteger(h.chunkSize) || h.chunkSize < MIN_CHUNK_SIZE || h.chunkSize > MAX_CHUNK_SIZE) {
    throw new SealFormatError(
      'bad-header',
      `chunk size ${h.chunkSize} outside ${MIN_CHUNK_SIZE}..${MAX_CHUNK_SIZE}`,
    );
  }
  if (h.noncePrefix.length !== 7) throw new SealFormatError('bad-header', 'nonce prefix must be 7 bytes');
  if (h.recipients.length < 1 || h.recipients.length > MAX_RECIPIENTS) {
    throw new SealFormatError('bad-header', `a sealed file needs 1..${MAX_RECIPIENTS} recipients`);
  }
  if (h.plaintextLength !== undefined) {
    if (!Number.isSafeInteger(h.plaintextLength) || h.plaintextLength < 0) {
      throw new SealFormatError('bad-header', `plaintext length ${h.plaintextLength} is not a valid size`);
    }
    if (chunkCount(h.plaintextLength, h.chunkSize) > MAX_CHUNKS) {
      throw new SealFormatError('bad-header', 'too many chunks for one file; use a larger chunk size');
    }
  }
}

export function parseHeader(raw: Uint8Array): Header {
  const declared = headerLengthOf(raw);
  if (raw.length < declared) {
    throw new SealFormatError('truncated', `sealed header is truncated (${raw.length} of ${declared} bytes)`);
  }
  const bytes = raw.subarray(0, declared);
  const r = new ByteReader(bytes, 'sealed header');
  try {
    r.skip(8, 'magic');
    const version = r.u16be('version');
    const suite = r.u16be('suite');
    const headerLength = r.u32be('header_length');
    const chunkSize = r.u32be('chunk_size');
    const len = r.u64be('plaintext_length');
    const noncePrefix = r.bytesOf(7, 'nonce_prefix');
    const flags = r.u8('flags');
    if (flags !== 0) throw new SealFormatError('bad-header', `unknown header flags 0x${flags.toString(16)}`);
    const dec = new TextDecoder('utf-8', { fatal: true });
    const contentType = dec.decode(r.bytesOf(r.u16be('content_type.length'), 'content_type'));
    const name = dec.decode(r.bytesOf(r.u16be('name.length'), 'name'));
    const count = r.u8('recipient_count');
    const recipients: RecipientStanza[] = [];
    for (let i = 0; i < count; i++) {
      const t = r.u8(`recipient[${i}].type`);
      const type = (Object.keys(RecipientType) as RecipientTypeName[]).find((k) => RecipientType[k] === t);
      if (!type) throw new SealFormatError('bad-header', `recipient ${i} has unknown type ${t}`);
      const keyId = dec.decode(r.bytesOf(r.u16be(`recipient[${i}].key_id.length`), `recipient[${i}].key_id`));
      const wrappedKey = r.bytesOf(r.u16be(`recipient[${i}].wrapped.length`), `recipient[${i}].wrapped`);
      if (!KEY_ID_SYNTAX[type].test(keyId)) {
        throw new SealFormatError('bad-header', `recipient ${i}: "${keyId}" is not a valid ${type} key id`);
      }
      if (wrappedKey.length !== WRAPPED_KEY_BYTES[type]) {
        throw new SealFormatError(
          'bad-header',
          `recipient ${i}: wrapped key is ${wrappedKey.length} bytes, not ${WRAPPED_KEY_BYTES[type]}`,
        );
      }
      recipients.push({ type, keyId, wrappedKey });
    }
    const macAt = r.offset;
    const mac = r.bytesOf(MAC_BYTES, 'mac');
    r.end();
    const plaintextLength = len === UNKNOWN_LENGTH ? undefined : Number(len);
    if (len !== UNKNOWN_LENGTH && len > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new SealFormatError('bad-header', 'plaintext length too large');
    }
    validateFields({ chunkSize, plaintextLength, noncePrefix, recipients });
    return {
      version,
      suite,
      headerLength,
      chunkSize,
      plaintextLength,
      noncePrefix,
      contentType,
      name,
      recipients,
      authenticated: bytes.subarray(0, macAt),
      mac,
      raw: bytes,
    };
  } catch (e) {
    if (e instanceof SealFormatError) throw e;
    if (e instanceof ParseError || e instanceof TypeError) {
      throw new SealFormatError('bad-header', `malformed sealed header: ${e.message}`);
    }
    throw e;
  }
}

/** STREAM always has at least one chunk, so even an empty file ends in an authenticated final chunk. */
export function chunkCount(plaintextLength: number, chunkSize: number): number {
  return Math.max(1, Math.ceil(plaintextLength / chunkSize));
}

/** Size of a complete sealed file, from its header. */
export function sealedLength(headerLength: number, plaintextLength: number, chunkSize: number): number {
  return headerLength + plaintextLength + chunkCount(plaintextLength, chunkSize) * 16;
}

/** Plaintext length implied by a body of `bodyLength` bytes (for files sealed from a pipe). */
export function plaintextLengthFromBody(bodyLength: number, chunkSize: number): number {
  const stride = chunkSize + 16;
  const full = Math.floor(bodyLength / stride);
  const rest = bodyLength - full * stride;
  if (rest === 0) {
    if (full === 0) throw new SealFormatError('truncated', 'sealed file has no body (truncated)');
    return full * chunkSize;
  }
  if (rest < 16) throw new SealFormatError('truncated', 'sealed file ends inside a chunk tag (truncated)');
  // An empty chunk is only ever the sole chunk of an empty plaintext; after full chunks, 16 bytes are
  // what is left of a last chunk cut short.
  if (rest === 16 && full > 0)
    throw new SealFormatError('truncated', 'sealed file ends after a chunk tag (truncated)');
  return full * chunkSize + rest - 16;
}
