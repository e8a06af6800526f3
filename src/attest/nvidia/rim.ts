/**
 * NVIDIA reference integrity manifests (RIMs): ISO/IEC 19770-2 SWID tags listing the golden
 * measurements of a driver or VBIOS build, signed with an enveloped XML signature by a chain to the
 * NVIDIA CoRIM signing Root CA. The accepted signature profile is the one NVIDIA ships and nvtrust
 * verifies: Canonical XML 1.1 for SignedInfo, ECDSA P-384 / SHA-384, exactly one Reference with URI=""
 * and the transforms enveloped-signature then Canonical XML 1.1, digest SHA-384. Anything else (other
 * algorithms, several references, XPath, signatures elsewhere in the tree) is refused, which also
 * closes the signature-wrapping tricks: the measurements are read from the same tree that is digested.
 */

import { bs, equalBytes, fromBase64, sha384, toHex, utf8 } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';
import { contextOf, type VerifierContext } from '../context.js';
import { canonicalizeDocument, canonicalizeSubtree } from './c14n.js';
import { parseAnchors, type VerifiedChain, verifyOrderedChain } from './chain.js';
import { NVIDIA_RIM_ROOT_CA_PEM } from './roots.js';
import {
  childElements,
  getAttribute,
  isElement,
  parseXml,
  textContent,
  type XmlDocument,
  type XmlElement,
  XmlError,
} from './xml.js';

export const SWID_NS = 'http://standards.iso.org/iso/19770/-2/2015/schema.xsd';
export const DSIG_NS = 'http://www.w3.org/2000/09/xmldsig#';
/** The namespace of the HashN attributes of a Resource (nvtrust: HashFunctionNamespace). */
export const SHA384_NS = 'http://www.w3.org/2001/04/xmlenc#sha384';
export const C14N11 = 'http://www.w3.org/2006/12/xml-c14n11';
export const ENVELOPED = 'http://www.w3.org/2000/09/xmldsig#enveloped-signature';
export const ECDSA_SHA384 = 'http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384';
export const DIGEST_SHA384 = [
  'http://www.w3.org/2001/04/xmldsig-more#sha384',
  'http://www.w3.org/2001/04/xmlenc#sha384',
];

export interface RimMeasurement {
  /** RIM index, 0-based: compares with SPDM measurement block index + 1. */
  index: number;
  name: string;
  active: boolean;
  /** Size in bytes of each value. */
  size: number;
  /** Acceptable values (any one may match), lower-case hex. */
  alternatives: string[];
}

export interface ParsedRim {
  doc: XmlDocument;
  /** SWID Meta colloquialVersion: the driver version (545.00) or VBIOS version (96.00.5E.00.01). */
  version: string;
  product: string;
  tagId: string;
  manufacturerId: string | undefined;
  measurements: RimMeasurement[];
  signature: XmlElement;
}

export interface VerifiedRim {
  rim: ParsedRim;
  chain: VerifiedChain;
}

function parseFail(message: string, cause?: unknown): never {
  throw new AttestationError('parse', 'bad-rim', message, cause === undefined ? undefined : { cause });
}

export function parseRim(input: Uint8Array | string): ParsedRim {
  let doc: XmlDocument;
  try {
    doc = parseXml(typeof input === 'string' ? input : utf8.decode(input));
  } catch (e) {
    if (e instanceof XmlError || e instanceof TypeError)
      parseFail(`RIM is not well-formed XML: ${(e as Error).message}`, e);
    throw e;
  }
  const root = doc.root;
  if (!isElement(root, SWID_NS, 'SoftwareIdentity'))
    parseFail('RIM root is not a SWID SoftwareIdentity element');
  const meta = only(root, SWID_NS, 'Meta');
  const payload = only(root, SWID_NS, 'Payload');
  const signature = only(root, DSIG_NS, 'Signature');
  const version = getAttribute(meta, 'colloquialVersion');
  if (!version) parseFail('RIM Meta has no colloquialVersion (driver or VBIOS version)');

  const measurements: RimMeasurement[] = [];
  const seen = new Set<number>();
  for (const child of payload.children) {
    if (child.type === 'text' && /^[ \t\n]*$/.test(child.value)) continue;
    if (child.type === 'comment') continue;
    if (!isElement(child, SWID_NS, 'Resource'))
      parseFail('RIM Payload contains something other than Resource elements');
    const m = parseResource(child);
    if (seen.has(m.index)) parseFail(`RIM has two measurements at index ${m.index}`);
    seen.add(m.index);
    measurements.push(m);
  }
  if (measurements.length === 0) parseFail('RIM Payload has no measurements');
  return {
    doc,
    version,
    product: getAttribute(meta, 'product') ?? '',
    tagId: getAttribute(root, 'tagId') ?? '',
    manufacturerId: getAttribute(
      meta,
      'FirmwareManufacturerId',
      'https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/',
    ),
    measurements,
    signature,
  };
}

function parseResource(el: XmlElement): RimMeasurement {
  const attr = (name: string): string =>
    getAttribute(el, name) ?? parseFail(`RIM Resource lacks attribute ${name}`);
  if (attr('type') !== 'Measurement') parseFail(`RIM Resource type "${attr('type')}" is not Measurement`);
  const index = int(attr('index'), 'index', 0, 255);
  const active = attr('active');
  if (active !== 'True' && active !== 'False')
    parseFail(`RIM measurement ${index}: active is "${active}", not True/False`);
  const count = int(attr('alternatives'), 'alternatives', 1, 64);
  const size = int(attr('size'), 'size', 1, 1024);
  const alternatives: string[] = [];
  for (let i = 0; i < count; i++) {
    const h = getAttribute(el, `Hash${i}`, SHA384_NS);
    if (h === undefined) parseFail(`RIM measurement ${index} lacks Hash${i} (of ${count} alternatives)`);
    if (!/^[0-9a-fA-F]*$/.test(h) || h.length !== 2 * size) {
      parseFail(`RIM measurement ${index} Hash${i} is not ${size} bytes of hex`);
    }
    alternatives.push(h.toLowerCase());
  }
  return { index, name: getAttribute(el, 'name') ?? '', active: active === 'True', size, alternatives };
}

function int(s: string, what: string, min: number, max: number): number {
  if (!/^\d{1,5}$/.test(s) || Number(s) < min || Number(s) > max)
    parseFail(`RIM ${what} "${s}" is not an integer in ${min}..${max}`);
  return Number(s);
}

function only(parent: XmlElement, ns: string, local: string): XmlElement {
  const found = childElements(parent, ns, local);
  if (found.length !== 1)
    parseFail(`RIM <${parent.name}> must have exactly one ${local} element, has ${found.length}`);
  return found[0]!;
}

export interface RimVerifyOptions {
  at: Date;
  /** Replaces the bundled NVIDIA RIM root (test authority). */
  trustAnchors?: Uint8Array[];
  /** 'driver RIM' / 'VBIOS RIM', for messages. */
  what?: string;
  /** Where verified signing chains are remembered; default: the shared default context. */
  context?: VerifierContext;
}

function verifyFail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('verify', code, message);
}

export async function verifyRim(rim: ParsedRim, opts: RimVerifyOptions): Promise<VerifiedRim> {
  const what = opts.what ?? 'RIM';
  const sig = rim.signature;
  const signedInfo = onlyDs(sig, 'SignedInfo', what);
  const algorithm = (el: XmlElement) => getAttribute(el, 'Algorithm') ?? '';
  const c14n = onlyDs(signedInfo, 'CanonicalizationMethod', what);
  if (algorithm(c14n) !== C14N11) unsupported(what, 'canonicalization', algorithm(c14n));
  const method = onlyDs(signedInfo, 'SignatureMethod', what);
  if (algorithm(method) !== ECDSA_SHA384) unsupported(what, 'signature method', algorithm(method));
  const reference = onlyDs(signedInfo, 'Reference', what);
  if (getAttribute(reference, 'URI') !== '') {
    verifyFail(
      'rim-unsupported-algorithm',
      `${what}: the signature must cover the whole document (Reference URI="")`,
    );
  }
  const transforms = childElements(onlyDs(reference, 'Transforms', what), DSIG_NS, 'Transform').map(
    algorithm,
  );
  if (transforms.length !== 2 || transforms[0] !== ENVELOPED || transforms[1] !== C14N11) {
    unsupported(what, 'transform list', transforms.join(', '));
  }
  const digestMethod = algorithm(onlyDs(reference, 'DigestMethod', what));
  if (!DIGEST_SHA384.includes(digestMethod)) unsupported(what, 'digest method', digestMethod);
  const digestValue = base64Field(onlyDs(reference, 'DigestValue', what), what, 'DigestValue');
  const signatureValue = base64Field(onlyDs(sig, 'SignatureValue', what), what, 'SignatureValue');
  const x509Data = onlyDs(onlyDs(sig, 'KeyInfo', what), 'X509Data', what);
  const certs = childElements(x509Data, DSIG_NS, 'X509Certificate').map((c) =>
    textContent(c).replace(/[ \t\n]/g, ''),
  );
  if (certs.length === 0) verifyFail('chain-incomplete', `${what}: KeyInfo has no signing certificate`);
  const pem = certs.map((b64) => `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`).join('');

  const context = contextOf(opts);
  const anchors = parseAnchors(context, opts.trustAnchors ?? [NVIDIA_RIM_ROOT_CA_PEM], 'RIM trust anchor');
  const chain = await verifyOrderedChain(
    context,
    utf8.encode(pem),
    anchors,
    opts.at,
    `${what} signing chain`,
  );

  const ok =
    signatureValue.length === 96 &&
    (await crypto.subtle.verify(
      { name: 'ECDSA', hash: 'SHA-384' },
      chain.leafKey,
      bs(signatureValue),
      bs(utf8.encode(canonicalizeSubtree(signedInfo))),
    ));
  if (!ok) {
    verifyFail(
      'rim-bad-signature',
      `${what}: the SignedInfo signature does not verify with "${chain.path[0]!.subject}"`,
    );
  }
  const digest = await sha384(utf8.encode(canonicalizeDocument(rim.doc, sig)));
  if (!equalBytes(digest, digestValue)) {
    verifyFail(
      'rim-digest-mismatch',
      `${what}: the document was changed after signing (SHA-384 ${toHex(digest)} ≠ signed digest ${toHex(digestValue)})`,
    );
  }
  return { rim, chain };
}

function onlyDs(parent: XmlElement, local: string, what: string): XmlElement {
  const found = childElements(parent, DSIG_NS, local);
  if (found.length !== 1) {
    verifyFail(
      'rim-bad-signature',
      `${what}: <${parent.name}> must have exactly one ds:${local}, has ${found.length}`,
    );
  }
  return found[0]!;
}

function unsupported(what: string, which: string, value: string): never {
  verifyFail(
    'rim-unsupported-algorithm',
    `${what}: ${which} "${value}" is not the NVIDIA RIM profile (C14N 1.1, ECDSA-SHA384)`,
  );
}

function base64Field(el: XmlElement, what: string, name: string): Uint8Array {
  try {
    return fromBase64(textContent(el).replace(/[ \t\n]/g, ''));
  } catch {
    return verifyFail('rim-bad-signature', `${what}: ${name} is not base64`);
  }
}
