/**
 * Certificate chains for GPU attestation keys and RIM signers. A chain must be given in order
 * (leaf first, each certificate issued by the next, the root optional at the end), as the GPU returns
 * it and as nvtrust checks it; a reordered or truncated chain is refused. Verified chains are cached by
 * their exact bytes and trust anchors, so repeated verification of the same GPU only re-checks the
 * validity window and the report signature.
 */

import { sha256, toHex } from '../../util/index.js';
import { type Certificate, parseCertificates, verifyChain } from '../common/pki.js';
import { AttestationError } from '../common/types.js';
import type { ContextSlot, VerifierContext } from '../context.js';
import { BoundedCache } from '../memo.js';

export interface VerifiedChain {
  /** Leaf → anchor. */
  path: Certificate[];
  leafKey: CryptoKey;
  /** The interval in which every certificate of the path is valid. */
  notBefore: Date;
  notAfter: Date;
}

/**
 * What chain verification remembers in a VerifierContext: verified chains by their bytes and anchors,
 * and trust anchors parsed once per distinct input (the bundled roots on every call).
 */
class ChainState {
  readonly chains = new BoundedCache<VerifiedChain>(256);
  readonly anchors = new BoundedCache<Certificate[]>(256);
}

const CHAINS: ContextSlot<ChainState> = { create: () => new ChainState() };

export async function verifyOrderedChain(
  context: VerifierContext,
  chainBytes: Uint8Array,
  anchors: Certificate[],
  at: Date,
  what: string,
): Promise<VerifiedChain> {
  const key = `${what}|${toHex(await sha256(chainBytes))}|${(await Promise.all(anchors.map(anchorId))).join(',')}`;
  const cache = context.state(CHAINS).chains;
  const hit = cache.get(key);
  if (hit && at >= hit.notBefore && at <= hit.notAfter) return hit;
  const certs = parseCertificates(chainBytes, what);
  for (const c of certs) wellFormed(c, what);
  const verified = await verifyCerts(certs, anchors, at, what);
  cache.set(key, verified);
  return verified;
}

export async function verifyCerts(
  certs: Certificate[],
  anchors: Certificate[],
  at: Date,
  what: string,
): Promise<VerifiedChain> {
  if (certs.length === 0)
    throw new AttestationError('verify', 'chain-incomplete', `${what}: no certificates`);
  const last = certs[certs.length - 1]!;
  if (last.subject === last.issuer && !anchors.some((a) => a.equal(last))) {
    throw new AttestationError(
      'verify',
      'untrusted-root',
      `${what}: root "${last.subject}" is not a trusted anchor`,
    );
  }
  const path = await verifyChain({ leaf: certs[0]!, intermediates: certs.slice(1), anchors, at, what });
  const withRoot = certs.length === path.length;
  if (!(withRoot || certs.length === path.length - 1) || certs.some((c, i) => !c.equal(path[i]!))) {
    throw new AttestationError(
      'verify',
      'chain-order',
      `${what}: certificates must be in order leaf → issuer → … → root, each issued by the next, with nothing else`,
    );
  }
  const leaf = path[0]!;
  const alg = leaf.publicKey.algorithm as EcKeyAlgorithm;
  if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-384') {
    throw new AttestationError('verify', 'bad-key', `${what}: leaf key is not ECDSA P-384`);
  }
  const leafKey = await leaf.publicKey.export({ name: 'ECDSA', namedCurve: 'P-384' }, ['verify']);
  return {
    path,
    leafKey,
    notBefore: new Date(Math.max(...path.map((c) => c.notBefore.getTime()))),
    notAfter: new Date(Math.min(...path.map((c) => c.notAfter.getTime()))),
  };
}

/**
 * A certificate must be exactly one DER structure (bytes after it are an error, not ignored) whose
 * extensions all decode; @peculiar/x509 decodes extensions lazily, so they are forced here, at parse
 * time, rather than failing with a bare Error in the middle of path building.
 */
function wellFormed(cert: Certificate, what: string): void {
  const raw = new Uint8Array(cert.rawData);
  let end = -1;
  try {
    end = der(raw, 0).end;
  } catch {
    // reported below
  }
  if (end !== raw.length) {
    throw new AttestationError(
      'parse',
      'bad-certificate',
      `${what}: a certificate has bytes after its DER encoding`,
    );
  }
  try {
    void cert.extensions.length;
  } catch (e) {
    throw new AttestationError(
      'parse',
      'bad-certificate',
      `${what}: "${cert.subject}" has a malformed extension`,
      {
        cause: e,
      },
    );
  }
}

/** An anchor's digest per Certificate object: pure, so shared by every context. */
const anchorIds = new WeakMap<Certificate, string>();

async function anchorId(a: Certificate): Promise<string> {
  let id = anchorIds.get(a);
  if (!id) {
    id = toHex(await sha256(new Uint8Array(a.rawData)));
    anchorIds.set(a, id);
  }
  return id;
}

/** Trust anchors from PEM/DER, parsed once per distinct input in `context`. */
export function parseAnchors(
  context: VerifierContext,
  pems: (Uint8Array | string)[],
  what: string,
): Certificate[] {
  const parsed = context.state(CHAINS).anchors;
  const key = pems.map((p) => (typeof p === 'string' ? p : toHex(p))).join('|');
  let certs = parsed.get(key);
  if (!certs) {
    certs = pems.flatMap((p) => parseCertificates(p, what));
    parsed.set(key, certs);
  }
  return certs;
}

/** TCG DICE extensions that carry the firmware id of the attestation key's layer. */
const OID_DICE_FWID = '2.23.133.5.4.1';
const OID_DICE_TCB_INFO = '2.23.133.5.4.1.1';

/**
 * The FWID NVIDIA binds into the attestation-key certificate. Blackwell: DiceTcbInfo (2.23.133.5.4.1.1)
 * `fwids[0].digest`. Hopper: an NVIDIA structure under 2.23.133.5.4.1 whose last element is
 * SEQUENCE { hashAlg, digest } (nvtrust takes its last 48 bytes).
 */
export function certificateFwid(cert: Certificate): Uint8Array | undefined {
  try {
    const tcb = cert.getExtension(OID_DICE_TCB_INFO);
    if (tcb) {
      const info = der(new Uint8Array(tcb.value), 0);
      for (const field of children(info)) {
        if (field.tag !== 0xa6) continue; // fwids [6] IMPLICIT SEQUENCE OF FWID
        const first = children(field)[0];
        return first ? digestOf(first) : undefined;
      }
      return undefined;
    }
    const ext = cert.getExtension(OID_DICE_FWID);
    if (!ext) return undefined;
    const top = der(new Uint8Array(ext.value), 0);
    const last = children(top).at(-1);
    return last ? digestOf(last) : undefined;
  } catch {
    throw new AttestationError(
      'verify',
      'bad-certificate',
      'the attestation-key certificate has a malformed FWID extension',
    );
  }
}

function digestOf(fwid: Tlv): Uint8Array {
  const [alg, digest] = children(fwid);
  if (fwid.tag !== 0x30 || alg?.tag !== 0x06 || digest?.tag !== 0x04) throw new Error('not an FWID');
  return digest.value;
}

interface Tlv {
  tag: number;
  value: Uint8Array;
  end: number;
}

/** One DER TLV at `off` (definite lengths only, as DER requires). */
function der(b: Uint8Array, off: number): Tlv {
  const tag = b[off];
  let len = b[off + 1];
  if (tag === undefined || len === undefined) throw new Error('truncated DER');
  let p = off + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3) throw new Error('unsupported DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | (b[p++] ?? Number.NaN);
  }
  if (!Number.isFinite(len) || p + len > b.length) throw new Error('truncated DER');
  return { tag, value: b.subarray(p, p + len), end: p + len };
}

function children(t: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let off = 0; off < t.value.length; ) {
    const c = der(t.value, off);
    out.push(c);
    off = c.end;
  }
  return out;
}

/** The CN of a certificate subject. */
export function commonName(cert: Certificate): string | undefined {
  return cert.subjectName.getField('CN')[0];
}

/** NVIDIA's UEID claim: the leaf certificate serial number in decimal. */
export function certificateUeid(cert: Certificate): string {
  return BigInt(`0x${cert.serialNumber || '0'}`).toString(10);
}
