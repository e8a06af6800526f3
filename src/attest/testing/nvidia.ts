/**
 * TEST AUTHORITY for NVIDIA GPU attestation — never trusted in production, imported only by tests.
 *
 * It plays NVIDIA twice: a device PKI (test root → identity CA → provisioner ICA → "GSP BROM" →
 * "GSP FMC LF" attestation key, all P-384, FWID bound into the leaf as real GPUs do) that issues SPDM
 * 1.1 GET_MEASUREMENTS request ‖ MEASUREMENTS response reports in the real byte layout, and a RIM PKI
 * (test RIM root → RIM signer) that signs SWID-tag RIMs with the same enveloped XML-signature profile
 * NVIDIA uses. Pass `authority.trustAnchors` as VerifyOptions.trustAnchors.
 */
import 'reflect-metadata';
import {
  BasicOCSPResponse,
  CertID,
  CertStatus,
  id_pkix_ocsp_basic,
  KeyHash,
  OCSPResponse,
  OCSPResponseStatus,
  ResponderID,
  ResponseBytes,
  ResponseData,
  RevokedInfo,
  SingleResponse,
} from '@peculiar/asn1-ocsp';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier, Certificate as AsnCertificate } from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import { bs, concatBytes, fromBase64, fromHex, toHex, utf8 } from '../../util/index.js';
import { canonicalizeDocument, canonicalizeSubtree } from '../nvidia/c14n.js';
import { encodeNvidiaEvidence, type ReportedCcMode } from '../nvidia/evidence.js';
import { OPAQUE_FIELD } from '../nvidia/opaque.js';
import {
  C14N11,
  DIGEST_SHA384,
  DSIG_NS,
  ECDSA_SHA384,
  ENVELOPED,
  SHA384_NS,
  SWID_NS,
} from '../nvidia/rim.js';
import { parseXml, type XmlElement } from '../nvidia/xml.js';

const EC = { name: 'ECDSA', namedCurve: 'P-384' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-384' } as const;
const DAY = 86_400_000;

export type TestArch = 'HOPPER' | 'BLACKWELL';

export interface TestReportOptions {
  /** The requester nonce (32 bytes). */
  nonce: Uint8Array;
  /** SPDM measurement values by SPDM index (1-based); default: 64 blocks of a fixed pattern. */
  measurements?: Map<number, Uint8Array>;
  driverVersion?: string;
  /** As NVIDIA prints it, e.g. 96.00.5E.00.01. */
  vbiosVersion?: string;
  /** FEATURE_FLAG value (0 SPT, 1 MPT, 2 PPCIE); omitted → no flag and opaque data version 0. */
  featureFlag?: number;
  /** NVDEC0 status byte (0x55 disabled, 0xaa enabled); default 0x55. */
  nvdec0Status?: number;
  /** Put the leaf's FWID into the opaque data (default true); a Uint8Array puts that value instead. */
  fwid?: boolean | Uint8Array;
  /** Extra raw opaque fields [type, value], appended after the usual ones. */
  extraOpaque?: [number, Uint8Array][];
}

export interface TestRimMeasurement {
  /** RIM index (SPDM index − 1). */
  index: number;
  alternatives: Uint8Array[];
  active?: boolean;
}

export interface NvidiaTestAuthority {
  arch: TestArch;
  /** PEM of the device root and the RIM root: VerifyOptions.trustAnchors. */
  trustAnchors: Uint8Array[];
  /** GPU chain, PEM, leaf first, root last (as NVML returns it). */
  certChainPem: string;
  certChain: x509.X509Certificate[];
  fwid: Uint8Array;
  defaultMeasurements(): Map<number, Uint8Array>;
  issueReport(opts: TestReportOptions): Promise<Uint8Array>;
  issueRim(opts: { version: string; measurements: TestRimMeasurement[]; product?: string }): Promise<string>;
  /** The RIM signing chain (signer, root). */
  rimChain: x509.X509Certificate[];
  /** A DER OCSP response about `cert`, signed by its issuer (or by `signWithKeyOf`, to test refusals). */
  ocspResponse(cert: x509.X509Certificate, opts?: TestOcspOptions): Promise<Uint8Array>;
  /** Evidence as the agent sends it (NVIDIA SDK shape plus Cloister's optional fields). */
  envelope(
    report: Uint8Array,
    extra?: { ccMode?: string; driverRim?: string; vbiosRim?: string; nonce?: string; ocsp?: string[] },
  ): Uint8Array;
}

export interface TestOcspOptions {
  status?: 'good' | 'revoked' | 'unknown';
  thisUpdate?: Date;
  nextUpdate?: Date;
  /** Sign with this CA's key instead of the issuer's (a wrong responder). */
  signWithKeyOf?: x509.X509Certificate;
}

async function keyPair(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function caCert(
  subject: string,
  keys: CryptoKeyPair,
  issuer: { name: string; key: CryptoKey } | undefined,
  ca: boolean,
  extensions: x509.Extension[] = [],
): Promise<x509.X509Certificate> {
  const now = Date.now();
  const common = {
    serialNumber: toHex(crypto.getRandomValues(new Uint8Array(16))).replace(/^[89a-f]/, '1'),
    notBefore: new Date(now - 365 * DAY),
    notAfter: new Date(now + 3650 * DAY),
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(ca, undefined, true),
      new x509.KeyUsagesExtension(
        ca
          ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign
          : x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      ...extensions,
    ],
  };
  if (!issuer) {
    return x509.X509CertificateGenerator.createSelfSigned({ ...common, name: subject, keys });
  }
  return x509.X509CertificateGenerator.create({
    ...common,
    subject,
    issuer: issuer.name,
    publicKey: keys.publicKey,
    signingKey: issuer.key,
  });
}

/** Minimal DER for the FWID extensions. */
function tlv(tag: number, body: Uint8Array): Uint8Array {
  const n = body.length;
  const len = n < 128 ? [n] : n < 256 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return concatBytes(new Uint8Array([tag, ...len]), body);
}
const SHA384_OID = fromHex('0609608648016503040202');

async function fwidExtension(
  arch: TestArch,
  publicKey: CryptoKey,
  fwid: Uint8Array,
): Promise<x509.Extension> {
  const fwidSeq = tlv(0x30, concatBytes(SHA384_OID, tlv(0x04, fwid)));
  if (arch === 'HOPPER') {
    const spki = new Uint8Array(await crypto.subtle.exportKey('spki', publicKey));
    const value = tlv(0x30, concatBytes(fromHex('020101'), spki, fwidSeq));
    return new x509.Extension('2.23.133.5.4.1', false, bs(value));
  }
  const vendor = tlv(0x80, utf8.encode('NVIDIA'));
  const value = tlv(0x30, concatBytes(vendor, tlv(0xa6, fwidSeq)));
  return new x509.Extension('2.23.133.5.4.1.1', false, bs(value));
}

export async function createNvidiaTestAuthority(arch: TestArch = 'HOPPER'): Promise<NvidiaTestAuthority> {
  const chip = arch === 'HOPPER' ? 'GH100' : 'GB100';
  const names = [
    'CN=Cloister TEST NVIDIA Device Identity CA, O=Cloister Test',
    `CN=TEST NVIDIA ${chip} Identity, O=Cloister Test`,
    `CN=TEST NVIDIA ${chip} Provisioner ICA, O=Cloister Test`,
    `CN=${chip} A01 GSP BROM, O=Cloister Test`,
    `CN=${chip} A01 GSP FMC LF, O=Cloister Test`,
  ];
  const keys = await Promise.all(names.map(() => keyPair()));
  const fwid = crypto.getRandomValues(new Uint8Array(48));
  const certs: x509.X509Certificate[] = [];
  for (let i = 0; i < names.length; i++) {
    const issuer = i === 0 ? undefined : { name: names[i - 1]!, key: keys[i - 1]!.privateKey };
    const leaf = i === names.length - 1;
    const ext = leaf ? [await fwidExtension(arch, keys[i]!.publicKey, fwid)] : [];
    certs.push(await caCert(names[i]!, keys[i]!, issuer, !leaf, ext));
  }
  const attestationKey = keys[names.length - 1]!.privateKey;
  const chainLeafFirst = [...certs].reverse();
  const certChainPem = chainLeafFirst.map((c) => c.toString('pem')).join('\n');

  const rimNames = [
    'CN=Cloister TEST NVIDIA RIM Root CA, O=Cloister Test',
    'CN=TEST HCC RIM Signer, O=Cloister Test',
  ];
  const rimKeys = [await keyPair(), await keyPair()];
  const rimRoot = await caCert(rimNames[0]!, rimKeys[0]!, undefined, true);
  const rimSigner = await caCert(
    rimNames[1]!,
    rimKeys[1]!,
    { name: rimNames[0]!, key: rimKeys[0]!.privateKey },
    false,
  );

  const keyOf = new Map<string, CryptoKey>();
  for (const [i, c] of certs.entries()) keyOf.set(c.subject, keys[i]!.privateKey);
  keyOf.set(rimRoot.subject, rimKeys[0]!.privateKey);
  const all = [...certs, rimRoot, rimSigner];

  const defaultMeasurements = () => {
    const m = new Map<number, Uint8Array>();
    for (let i = 1; i <= 64; i++) m.set(i, new Uint8Array(48).fill(i));
    return m;
  };

  return {
    arch,
    trustAnchors: [utf8.encode(certs[0]!.toString('pem')), utf8.encode(rimRoot.toString('pem'))],
    certChainPem,
    certChain: chainLeafFirst,
    fwid,
    defaultMeasurements,
    async issueReport(opts) {
      if (opts.nonce.length !== 32) throw new Error('GPU nonces are 32 bytes');
      const request = concatBytes(new Uint8Array([0x11, 0xe0, 0x01, 0xff]), opts.nonce, new Uint8Array([0]));
      const measurements = opts.measurements ?? defaultMeasurements();
      const blocks: Uint8Array[] = [];
      for (const [index, value] of [...measurements].sort((a, b) => a[0] - b[0])) {
        const dmtf = concatBytes(new Uint8Array([0x01, value.length & 0xff, value.length >> 8]), value);
        blocks.push(concatBytes(new Uint8Array([index, 0x01, dmtf.length & 0xff, dmtf.length >> 8]), dmtf));
      }
      const record = concatBytes(...blocks);
      const fields: [number, Uint8Array][] = [
        [OPAQUE_FIELD.VBIOS_VERSION, vbiosBytes(opts.vbiosVersion ?? '96.00.5E.00.01')],
        [OPAQUE_FIELD.BOARD_ID, fromHex('b1030000')],
        [OPAQUE_FIELD.CHIP_SKU, utf8.encode('882\0')],
        [OPAQUE_FIELD.PROJECT, utf8.encode('1010\0')],
        [OPAQUE_FIELD.PROJECT_SKU, utf8.encode('0200\0')],
        [OPAQUE_FIELD.DRIVER_VERSION, utf8.encode(`${opts.driverVersion ?? '550.00'}\0`)],
        [OPAQUE_FIELD.NVDEC0_STATUS, new Uint8Array([opts.nvdec0Status ?? 0x55])],
      ];
      if (opts.fwid !== false)
        fields.push([OPAQUE_FIELD.FWID, opts.fwid instanceof Uint8Array ? opts.fwid : fwid]);
      if (opts.featureFlag !== undefined) {
        fields.push([OPAQUE_FIELD.OPAQUE_DATA_VERSION, new Uint8Array([1, 0])]);
        fields.push([OPAQUE_FIELD.FEATURE_FLAG, new Uint8Array([opts.featureFlag, 0])]);
      }
      fields.push(...(opts.extraOpaque ?? []));
      const opaque = concatBytes(
        ...fields.map(([t, v]) =>
          concatBytes(new Uint8Array([t & 0xff, t >> 8, v.length & 0xff, v.length >> 8]), v),
        ),
      );
      const response = concatBytes(
        new Uint8Array([0x11, 0x60, 0x00, 0x00, measurements.size]),
        new Uint8Array([record.length & 0xff, (record.length >> 8) & 0xff, record.length >> 16]),
        record,
        crypto.getRandomValues(new Uint8Array(32)),
        new Uint8Array([opaque.length & 0xff, opaque.length >> 8]),
        opaque,
      );
      const signed = concatBytes(request, response);
      const sig = new Uint8Array(await crypto.subtle.sign(SIGN, attestationKey, bs(signed)));
      return concatBytes(signed, sig);
    },
    async issueRim({ version, measurements, product }) {
      const resources = measurements
        .map(
          (m) =>
            `        <ns0:Resource type="Measurement" index="${m.index}" active="${m.active === false ? 'False' : 'True'}" alternatives="${m.alternatives.length}" ${m.alternatives
              .map((a, i) => `ns2:Hash${i}="${toHex(a)}"`)
              .join(' ')} name="Measurement_${m.index}" size="${m.alternatives[0]?.length ?? 48}"/>\n`,
        )
        .join('');
      const body =
        `<SoftwareIdentity xmlns="${SWID_NS}" xmlns:ns0="${SWID_NS}" xmlns:ns2="${SHA384_NS}" corpus="false" name="${product ?? 'GH100'}" patch="false" supplemental="false" tagId="${toHex(crypto.getRandomValues(new Uint8Array(24)))}" version="1.0" tagVersion="0">\n` +
        `    <ns0:Entity name="Cloister Test" role="softwareCreator tagCreator"/>\n` +
        `    <ns0:Meta colloquialVersion="${version}" edition="GPU" product="${product ?? 'GH100'}" revision="r1"/>\n` +
        `    <ns0:Payload>\n${resources}    </ns0:Payload>\n`;
      const unsigned = parseXml(`${body}</SoftwareIdentity>`);
      const digest = new Uint8Array(
        await crypto.subtle.digest('SHA-384', bs(utf8.encode(canonicalizeDocument(unsigned)))),
      );
      const der = (c: x509.X509Certificate) => btoa(String.fromCharCode(...new Uint8Array(c.rawData)));
      const signedInfo =
        `<ds:SignedInfo><ds:CanonicalizationMethod Algorithm="${C14N11}"/><ds:SignatureMethod Algorithm="${ECDSA_SHA384}"/>` +
        `<ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="${ENVELOPED}"/><ds:Transform Algorithm="${C14N11}"/></ds:Transforms>` +
        `<ds:DigestMethod Algorithm="${DIGEST_SHA384[0]}"/><ds:DigestValue>${btoa(String.fromCharCode(...digest))}</ds:DigestValue></ds:Reference></ds:SignedInfo>`;
      const keyInfo = `<ds:KeyInfo><ds:X509Data><ds:X509Certificate>${der(rimSigner)}</ds:X509Certificate><ds:X509Certificate>${der(rimRoot)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>`;
      const withInfo = `${body}<ds:Signature xmlns:ds="${DSIG_NS}">${signedInfo}<ds:SignatureValue></ds:SignatureValue>${keyInfo}</ds:Signature></SoftwareIdentity>`;
      const doc = parseXml(withInfo);
      const sigEl = doc.root.children.at(-1) as XmlElement;
      const si = sigEl.children[0] as XmlElement;
      const value = new Uint8Array(
        await crypto.subtle.sign(SIGN, rimKeys[1]!.privateKey, bs(utf8.encode(canonicalizeSubtree(si)))),
      );
      return withInfo.replace(
        '<ds:SignatureValue></ds:SignatureValue>',
        `<ds:SignatureValue>${btoa(String.fromCharCode(...value))}</ds:SignatureValue>`,
      );
    },
    rimChain: [rimSigner, rimRoot],
    async ocspResponse(cert, opts = {}) {
      const issuer = all.find((c) => c.subject === cert.issuer);
      if (!issuer) throw new Error(`no issuer for ${cert.subject} in this authority`);
      const ic = AsnConvert.parse(issuer.rawData, AsnCertificate);
      const name = AsnConvert.serialize(ic.tbsCertificate.subject);
      const keyBits = ic.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey;
      const status = opts.status ?? 'good';
      const now = Date.now();
      const single = new SingleResponse({
        certID: new CertID({
          hashAlgorithm: new AlgorithmIdentifier({ algorithm: '2.16.840.1.101.3.4.2.2' }),
          issuerNameHash: new OctetString(await crypto.subtle.digest('SHA-384', name)),
          issuerKeyHash: new OctetString(await crypto.subtle.digest('SHA-384', keyBits)),
          serialNumber: bs(
            fromHex(cert.serialNumber.length % 2 ? `0${cert.serialNumber}` : cert.serialNumber),
          ).buffer,
        }),
        certStatus: new CertStatus(
          status === 'good'
            ? { good: null }
            : status === 'revoked'
              ? { revoked: new RevokedInfo({ revocationTime: new Date(now - DAY) }) }
              : { unknown: null },
        ),
        thisUpdate: opts.thisUpdate ?? new Date(now - 3_600_000),
        nextUpdate: opts.nextUpdate ?? new Date(now + 7 * DAY),
      });
      const data = new ResponseData({
        responderID: new ResponderID({ byKey: new KeyHash(await crypto.subtle.digest('SHA-1', keyBits)) }),
        producedAt: new Date(now - 3_600_000),
        responses: [single],
      });
      const tbs = AsnConvert.serialize(data);
      const signingKey = keyOf.get((opts.signWithKeyOf ?? issuer).subject)!;
      const raw = new Uint8Array(await crypto.subtle.sign(SIGN, signingKey, tbs));
      const basic = new BasicOCSPResponse({
        tbsResponseData: data,
        signatureAlgorithm: new AlgorithmIdentifier({ algorithm: '1.2.840.10045.4.3.3' }),
        signature: bs(ecdsaDer(raw)).buffer,
      });
      const response = new OCSPResponse({
        responseStatus: OCSPResponseStatus.successful,
        responseBytes: new ResponseBytes({
          responseType: id_pkix_ocsp_basic,
          response: new OctetString(AsnConvert.serialize(basic)),
        }),
      });
      return new Uint8Array(AsnConvert.serialize(response));
    },
    envelope(report, extra = {}) {
      return encodeNvidiaEvidence({
        report,
        certChain: utf8.encode(certChainPem),
        arch,
        ...(extra.nonce ? { nonce: fromHex(extra.nonce) } : {}),
        ...(extra.ccMode ? { ccMode: extra.ccMode as ReportedCcMode } : {}),
        ...(extra.driverRim ? { driverRim: extra.driverRim } : {}),
        ...(extra.vbiosRim ? { vbiosRim: extra.vbiosRim } : {}),
        ...(extra.ocsp ? { ocsp: extra.ocsp.map(fromBase64) } : {}),
      });
    },
  };
}

/** Inverse of formatVbiosVersion: 96.00.5E.00.01 → 00 5e 00 96 01 00 00 00. */
function vbiosBytes(version: string): Uint8Array {
  const digits = version.replace(/\./g, '');
  if (!/^[0-9A-Fa-f]{10}$/.test(digits)) throw new Error(`VBIOS version ${version} is not five hex pairs`);
  return fromHex(`000000${digits.slice(8)}${digits.slice(0, 8)}`).reverse();
}

/** Raw r‖s → DER ECDSA-Sig-Value, as OCSP carries signatures. */
function ecdsaDer(raw: Uint8Array): Uint8Array {
  const int = (v: Uint8Array) => {
    let i = 0;
    while (i < v.length - 1 && v[i] === 0) i++;
    const t = v.subarray(i);
    return tlv(0x02, t[0]! & 0x80 ? concatBytes(new Uint8Array([0]), t) : t);
  };
  const half = raw.length / 2;
  return tlv(0x30, concatBytes(int(raw.subarray(0, half)), int(raw.subarray(half))));
}

/** A random nonce, as a verifier would issue. */
export function testNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}
