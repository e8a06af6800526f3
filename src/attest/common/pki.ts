/**
 * X.509 path validation for vendor chains (Intel PCK/TCB signing, AMD ARK/ASK/VCEK, NVIDIA device and
 * RIM chains), on Web Crypto through @peculiar/x509. Validation time is always explicit: evidence is
 * judged at the time the caller chooses, never silently at "now".
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { AttestationError } from './types.js';

export type Certificate = x509.X509Certificate;
export type Crl = x509.X509Crl;

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Parses one DER certificate or every certificate in a PEM text (in order). */
export function parseCertificates(input: Uint8Array | string, what = 'certificate'): Certificate[] {
  try {
    if (typeof input !== 'string') {
      const asText = new TextDecoder().decode(input.subarray(0, 64));
      if (!asText.includes('-----BEGIN'))
        return [strictSignature(new x509.X509Certificate(toArrayBuffer(input)))];
      input = new TextDecoder().decode(input);
    }
    const blocks = input.match(PEM_CERT) ?? [];
    if (blocks.length === 0) throw new Error('no PEM certificate block found');
    return blocks.map((b) => strictSignature(new x509.X509Certificate(b)));
  } catch (e) {
    throw new AttestationError('parse', 'bad-certificate', `cannot parse ${what}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/**
 * Refuses an ECDSA signature that is not DER (RFC 5480 §2.2 / X.690): the ASN.1 library verifies
 * (r, s) however loosely the Ecdsa-Sig-Value around them is encoded, so a certificate whose signature
 * SEQUENCE length was altered still verified — a second encoding, with another fingerprint, of the
 * same signed certificate (found by the NVIDIA envelope fuzz).
 */
function strictSignature<T extends Certificate | Crl>(signed: T): T {
  if (signed.signatureAlgorithm.name === 'ECDSA' && !isDerEcdsaSignature(new Uint8Array(signed.signature))) {
    throw new Error('its ECDSA signature is not DER-encoded');
  }
  return signed;
}

/** SEQUENCE { INTEGER r, INTEGER s }, definite minimal lengths, positive minimal integers, nothing after. */
export function isDerEcdsaSignature(sig: Uint8Array): boolean {
  let at = 0;
  const length = (): number => {
    const first = sig[at++];
    if (first === undefined) return -1;
    if (first < 0x80) return first;
    // Long form only where the short form cannot say it (an Ecdsa-Sig-Value is below 256 bytes).
    if (first !== 0x81) return -1;
    const n = sig[at++];
    return n === undefined || n < 0x80 ? -1 : n;
  };
  const integer = (): boolean => {
    if (sig[at++] !== 0x02) return false;
    const n = length();
    if (n < 1 || at + n > sig.length) return false;
    const [a = 0, b = 0] = [sig[at]!, sig[at + 1]];
    const minimal = n === 1 || !(a === 0 && b < 0x80);
    at += n;
    return a < 0x80 && minimal;
  };
  if (sig[at++] !== 0x30) return false;
  const n = length();
  if (n < 0 || at + n !== sig.length) return false;
  return integer() && integer() && at === sig.length;
}

export function parseCrl(input: Uint8Array | string, what = 'CRL'): Crl {
  try {
    if (typeof input !== 'string') {
      const asText = new TextDecoder().decode(input.subarray(0, 32));
      if (!asText.includes('-----BEGIN')) return strictSignature(new x509.X509Crl(toArrayBuffer(input)));
      input = new TextDecoder().decode(input);
    }
    return strictSignature(new x509.X509Crl(input));
  } catch (e) {
    throw new AttestationError('parse', 'bad-crl', `cannot parse ${what}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

function toArrayBuffer(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

export function sameCertificate(a: Certificate, b: Certificate): boolean {
  return a.equal(b);
}

export interface ChainOptions {
  /** The certificate to validate (end entity). */
  leaf: Certificate;
  /** Candidate intermediates, in any order. */
  intermediates?: Certificate[];
  /** Trust anchors: a chain must end in one of these, compared by exact certificate bytes. */
  anchors: Certificate[];
  at: Date;
  /** CRLs to apply: each is applied to the certificates its issuer signed. */
  crls?: Crl[];
  /** Short name for messages ("PCK chain", "VCEK chain"). */
  what: string;
}

/**
 * Builds and checks leaf → … → anchor: each signature, each validity period at `at`, CA flags on
 * issuers, and every supplied CRL (signature by the issuer, fresh at `at`, serial not listed).
 * Returns the path from leaf to anchor.
 */
export async function verifyChain(opts: ChainOptions): Promise<Certificate[]> {
  const { what, at } = opts;
  const pool = [...(opts.intermediates ?? []), ...opts.anchors];
  const path: Certificate[] = [opts.leaf];
  for (let depth = 0; depth < 8; depth++) {
    const cur = path[path.length - 1]!;
    checkValidity(cur, at, what);
    const anchor = opts.anchors.find((a) => a.equal(cur));
    if (anchor) {
      await checkCrls(path, opts.crls ?? [], at, what);
      return path;
    }
    // A self-signed certificate that is not an anchor ends the path: it would otherwise "issue" itself.
    const issuer = cur.subject === cur.issuer ? undefined : await findIssuer(cur, pool);
    if (!issuer) {
      const selfSigned = cur.subject === cur.issuer;
      throw new AttestationError(
        'verify',
        selfSigned ? 'untrusted-root' : 'chain-incomplete',
        selfSigned
          ? `${what}: root "${cur.subject}" is not a trusted anchor`
          : `${what}: no valid issuer for "${cur.subject}" (issuer "${cur.issuer}")`,
      );
    }
    if (!isCa(issuer)) {
      throw new AttestationError(
        'verify',
        'issuer-not-ca',
        `${what}: issuer "${issuer.subject}" is not a CA`,
      );
    }
    if (path.some((p) => p.equal(issuer))) {
      throw new AttestationError('verify', 'chain-loop', `${what}: certificate loop at "${issuer.subject}"`);
    }
    path.push(issuer);
  }
  throw new AttestationError('verify', 'chain-too-long', `${what}: chain longer than 8 certificates`);
}

async function findIssuer(cert: Certificate, pool: Certificate[]): Promise<Certificate | undefined> {
  for (const cand of pool) {
    if (cand.subject !== cert.issuer) continue;
    if (cand.equal(cert) && cert.subject !== cert.issuer) continue;
    if (await cert.verify({ publicKey: cand, signatureOnly: true }).catch(() => false)) return cand;
  }
  return undefined;
}

function checkValidity(cert: Certificate, at: Date, what: string): void {
  if (at < cert.notBefore || at > cert.notAfter) {
    throw new AttestationError(
      'verify',
      'certificate-expired',
      `${what}: "${cert.subject}" is valid ${cert.notBefore.toISOString()} .. ${cert.notAfter.toISOString()}, not at ${at.toISOString()}`,
    );
  }
}

function isCa(cert: Certificate): boolean {
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  // Some vendor roots predate strict profiles; a self-signed anchor is a CA by configuration.
  return bc ? bc.ca : cert.subject === cert.issuer;
}

async function checkCrls(path: Certificate[], crls: Crl[], at: Date, what: string): Promise<void> {
  for (let i = 0; i + 1 < path.length; i++) {
    const cert = path[i]!;
    const issuer = path[i + 1]!;
    for (const crl of crls) {
      if (crl.issuer !== issuer.subject) continue;
      if (!(await crl.verify({ publicKey: issuer }).catch(() => false))) {
        throw new AttestationError(
          'verify',
          'crl-signature',
          `${what}: CRL from "${crl.issuer}" has a bad signature`,
        );
      }
      if (at < crl.thisUpdate || (crl.nextUpdate && at > crl.nextUpdate)) {
        throw new AttestationError(
          'verify',
          'crl-expired',
          `${what}: CRL from "${crl.issuer}" is valid ${crl.thisUpdate.toISOString()} .. ${crl.nextUpdate?.toISOString() ?? '∞'}, not at ${at.toISOString()}`,
        );
      }
      const serial = cert.serialNumber.toLowerCase().replace(/^0+/, '');
      const hit = crl.entries.find((e) => e.serialNumber.toLowerCase().replace(/^0+/, '') === serial);
      if (hit) {
        throw new AttestationError(
          'verify',
          'certificate-revoked',
          `${what}: "${cert.subject}" (serial ${cert.serialNumber}) is revoked since ${hit.revocationDate.toISOString()}`,
        );
      }
    }
  }
}
