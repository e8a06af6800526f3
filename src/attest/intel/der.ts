/**
 * Minimal DER reader for the Intel SGX PCK certificate extension (OID 1.2.840.113741.1.13.1).
 * Only what that extension uses: definite lengths, SEQUENCE, OID, INTEGER, ENUMERATED, OCTET STRING,
 * BOOLEAN. Every length is checked against its enclosing element.
 */

export interface DerElement {
  tag: number;
  /** Content octets (a view into the input). */
  value: Uint8Array;
}

export class DerError extends Error {
  override name = 'DerError';
}

/** Splits `bytes` into consecutive TLV elements; the elements must cover the input exactly. */
export function derChildren(bytes: Uint8Array): DerElement[] {
  const out: DerElement[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    const tag = bytes[pos++]!;
    if ((tag & 0x1f) === 0x1f) throw new DerError('multi-byte DER tags are not used here');
    if (pos >= bytes.length) throw new DerError('DER element truncated before its length');
    let len = bytes[pos++]!;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 4) throw new DerError('unsupported DER length form');
      if (pos + n > bytes.length) throw new DerError('DER length truncated');
      len = 0;
      if (bytes[pos] === 0) throw new DerError('DER length has a leading zero byte');
      for (let i = 0; i < n; i++) len = len * 256 + bytes[pos++]!;
      if (len < 128) throw new DerError('DER length in long form below 128');
    }
    if (pos + len > bytes.length) throw new DerError(`DER element of ${len} bytes overruns its container`);
    out.push({ tag, value: bytes.subarray(pos, pos + len) });
    pos += len;
  }
  return out;
}

/** The single element that makes up `bytes`. */
export function derSingle(bytes: Uint8Array): DerElement {
  const els = derChildren(bytes);
  if (els.length !== 1) throw new DerError(`expected one DER element, found ${els.length}`);
  return els[0]!;
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  OCTET_STRING: 0x04,
  OID: 0x06,
  ENUMERATED: 0x0a,
  SEQUENCE: 0x30,
} as const;

export function expectTag(el: DerElement, tag: number, what: string): Uint8Array {
  if (el.tag !== tag) {
    throw new DerError(`${what}: expected DER tag 0x${tag.toString(16)}, found 0x${el.tag.toString(16)}`);
  }
  return el.value;
}

/** Dotted text of an OBJECT IDENTIFIER's content octets. */
export function oidText(value: Uint8Array): string {
  if (value.length === 0) throw new DerError('empty OID');
  const parts: number[] = [];
  let acc = 0;
  for (let i = 0; i < value.length; i++) {
    const b = value[i]!;
    acc = acc * 128 + (b & 0x7f);
    if (acc > Number.MAX_SAFE_INTEGER / 128) throw new DerError('OID arc too large');
    if (!(b & 0x80)) {
      parts.push(acc);
      acc = 0;
    } else if (i === value.length - 1) {
      throw new DerError('OID ends inside an arc');
    }
  }
  const first = parts.shift()!;
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80];
  return [...head, ...parts].join('.');
}

/** A small non-negative INTEGER/ENUMERATED (SVNs, types); larger or negative values are refused. */
export function derUint(value: Uint8Array, what: string): number {
  if (value.length === 0 || value.length > 4) throw new DerError(`${what}: INTEGER of ${value.length} bytes`);
  if (value[0]! & 0x80) throw new DerError(`${what}: negative INTEGER`);
  let v = 0;
  for (const b of value) v = v * 256 + b;
  return v;
}

/**
 * The envelope of a signed X.509 structure, Certificate or CertificateList: SEQUENCE { tbs SEQUENCE,
 * signatureAlgorithm SEQUENCE, signatureValue BIT STRING }, exactly, with the algorithm equal to the
 * one inside the TBS (RFC 5280 4.1.1.2, 5.1.1.2) and no unused bits in the signature. The X.509
 * reader accepts variants of these unsigned outer fields, which would make genuine bytes malleable.
 */
export function checkSignedDer(raw: Uint8Array, kind: 'certificate' | 'crl'): void {
  const parts = derChildren(expectTag(derSingle(raw), TAG.SEQUENCE, kind));
  const [tbs, alg, sig] = parts;
  const fields = tbs?.tag === TAG.SEQUENCE ? derChildren(tbs.value) : [];
  // Certificate: [0] version (explicit, optional), serial, signature. CRL: version INTEGER (optional), signature.
  const optionalVersion = kind === 'certificate' ? 0xa0 : TAG.INTEGER;
  const innerAlg =
    fields[
      fields[0]?.tag === optionalVersion ? (kind === 'certificate' ? 2 : 1) : kind === 'certificate' ? 1 : 0
    ];
  const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);
  if (
    parts.length !== 3 ||
    alg?.tag !== TAG.SEQUENCE ||
    innerAlg?.tag !== TAG.SEQUENCE ||
    !same(alg.value, innerAlg.value) ||
    sig?.tag !== 0x03 ||
    sig.value[0] !== 0
  ) {
    throw new DerError(
      `${kind} is not DER: TBS, the TBS signature algorithm, and a signature BIT STRING without unused bits`,
    );
  }
  const algOid = derChildren(alg.value)[0];
  if (algOid?.tag === TAG.OID && oidText(algOid.value).startsWith('1.2.840.10045.4.3.')) {
    checkEcdsaSignature(sig.value.subarray(1), kind);
  }
}

/** ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }, positive and minimally encoded. */
function checkEcdsaSignature(bytes: Uint8Array, kind: string): void {
  const ints = derChildren(expectTag(derSingle(bytes), TAG.SEQUENCE, `${kind} signature`));
  const minimalPositive = (v: Uint8Array) =>
    v.length > 0 && (v[0]! & 0x80) === 0 && !(v.length > 1 && v[0] === 0 && (v[1]! & 0x80) === 0);
  if (ints.length !== 2 || ints.some((i) => i.tag !== TAG.INTEGER || !minimalPositive(i.value))) {
    throw new DerError(`${kind} signature is not a DER ECDSA-Sig-Value`);
  }
}
