/**
 * OCSP (RFC 6960) status of the certificates in GPU and RIM chains. NVIDIA publishes no CRLs for these
 * chains; its verifiers ask https://ocsp.ndis.nvidia.com/ about every certificate except the trust
 * anchor and, for GPU chains, the per-boot attestation key. Here OCSP responses are optional
 * collateral: stapled in the evidence or fetched through the CollateralSource. Each response used must
 * be signed by the certificate's issuer (or a delegate the issuer certified for OCSP signing), name
 * the certificate exactly (CertID), be current at `at`, and say "good". A certificate with no response
 * is reported as not checked, never as good.
 */
import 'reflect-metadata';
import {
  BasicOCSPResponse,
  CertID,
  id_pkix_ocsp_basic,
  OCSPRequest,
  OCSPResponse,
  OCSPResponseStatus,
  Request,
  TBSRequest,
} from '@peculiar/asn1-ocsp';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  Certificate as AsnCertificate,
  ExtendedKeyUsage,
  id_ce_extKeyUsage,
} from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import { bs, equalBytes, fromHex, toHex } from '../../util/index.js';
import type { Certificate } from '../common/pki.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';

export const NVIDIA_OCSP_URL = 'https://ocsp.ndis.nvidia.com/';
const ID_KP_OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';
const HASHES: Record<string, string> = {
  '1.3.14.3.2.26': 'SHA-1',
  '2.16.840.1.101.3.4.2.1': 'SHA-256',
  '2.16.840.1.101.3.4.2.2': 'SHA-384',
  '2.16.840.1.101.3.4.2.3': 'SHA-512',
};
const ECDSA_SIGS: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'SHA-256',
  '1.2.840.10045.4.3.3': 'SHA-384',
  '1.2.840.10045.4.3.4': 'SHA-512',
};
const SKEW_MS = 5 * 60_000;
/** A response without nextUpdate is taken as current for one day after thisUpdate. */
const NO_NEXT_UPDATE_MS = 86_400_000;

export interface OcspTarget {
  cert: Certificate;
  issuer: Certificate;
  /** 'GPU attestation-key chain', 'driver RIM signing chain', … for messages. */
  what: string;
}

export interface RevocationResult {
  /** Subjects whose status was checked and is good. */
  checked: string[];
  /** Subjects for which no OCSP response was available. */
  unchecked: string[];
}

/** The certificates NVIDIA checks: every non-anchor certificate, minus the GPU's per-boot leaf. */
export function ocspTargets(path: Certificate[], what: string, skipLeaf: boolean): OcspTarget[] {
  const out: OcspTarget[] = [];
  for (let i = skipLeaf ? 1 : 0; i + 1 < path.length; i++)
    out.push({ cert: path[i]!, issuer: path[i + 1]!, what });
  return out;
}

interface ParsedOcsp {
  basic: BasicOCSPResponse;
  raw: Uint8Array;
}

function fail(
  stage: 'parse' | 'verify',
  code: AttestationErrorCode,
  message: string,
  cause?: unknown,
): never {
  throw new AttestationError(stage, code, message, cause === undefined ? undefined : { cause });
}

export function parseOcspResponse(der: Uint8Array): ParsedOcsp {
  let resp: OCSPResponse;
  try {
    resp = AsnConvert.parse(bs(der), OCSPResponse);
  } catch (e) {
    return fail('parse', 'bad-ocsp', 'OCSP response is not DER OCSPResponse', e);
  }
  if (resp.responseStatus !== OCSPResponseStatus.successful || !resp.responseBytes) {
    fail(
      'verify',
      'ocsp-error',
      `OCSP responder answered status ${OCSPResponseStatus[resp.responseStatus] ?? resp.responseStatus}`,
    );
  }
  if (resp.responseBytes.responseType !== id_pkix_ocsp_basic) {
    fail(
      'parse',
      'bad-ocsp',
      `OCSP response type ${resp.responseBytes.responseType} is not id-pkix-ocsp-basic`,
    );
  }
  try {
    const basic = AsnConvert.parse(resp.responseBytes.response.buffer, BasicOCSPResponse);
    if (!basic.tbsResponseDataRaw) throw new Error('no tbsResponseData bytes');
    return { basic, raw: new Uint8Array(basic.tbsResponseDataRaw) };
  } catch (e) {
    return fail('parse', 'bad-ocsp', 'OCSP BasicOCSPResponse is malformed', e);
  }
}

async function certIdMatches(id: CertID, t: OcspTarget): Promise<boolean> {
  const hash = HASHES[id.hashAlgorithm.algorithm];
  if (!hash) return false;
  if (stripZeros(toHex(new Uint8Array(id.serialNumber))) !== stripZeros(t.cert.serialNumber.toLowerCase()))
    return false;
  const { name, key } = issuerIdentity(t.issuer);
  const nameHash = new Uint8Array(await crypto.subtle.digest(hash, bs(name)));
  const keyHash = new Uint8Array(await crypto.subtle.digest(hash, bs(key)));
  return (
    equalBytes(nameHash, new Uint8Array(id.issuerNameHash.buffer)) &&
    equalBytes(keyHash, new Uint8Array(id.issuerKeyHash.buffer))
  );
}

function stripZeros(h: string): string {
  return h.replace(/^0+/, '');
}

/** DER of the issuer's subject Name and the bits of its public key, what CertID hashes. */
function issuerIdentity(issuer: Certificate): { name: Uint8Array; key: Uint8Array } {
  const c = AsnConvert.parse(issuer.rawData, AsnCertificate);
  return {
    name: new Uint8Array(AsnConvert.serialize(c.tbsCertificate.subject)),
    key: new Uint8Array(c.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey),
  };
}

/**
 * Requests per (certificate, issuer) object: the chain caches hand back the same Certificate objects
 * for every verification of a GPU, and building a request (ASN.1 decode of the issuer, two digests,
 * DER encoding) cost more than the report signature check. Shared by every VerifierContext: a request
 * is a pure function of the two certificates (it asks; it trusts nothing), and the entries go with the
 * Certificate objects they hang on.
 */
const requests = new WeakMap<Certificate, WeakMap<Certificate, Promise<{ url: string; files: string[] }>>>();

/** An OCSP request for `t` (SHA-384 CertID, as nvtrust sends), and where to find its answer. */
export function ocspRequest(t: OcspTarget): Promise<{ url: string; files: string[] }> {
  let byIssuer = requests.get(t.cert);
  if (!byIssuer) {
    byIssuer = new WeakMap();
    requests.set(t.cert, byIssuer);
  }
  let r = byIssuer.get(t.issuer);
  if (!r) {
    r = buildOcspRequest(t);
    byIssuer.set(t.issuer, r);
    r.catch(() => byIssuer.delete(t.issuer));
  }
  return r;
}

async function buildOcspRequest(t: OcspTarget): Promise<{ url: string; files: string[] }> {
  const { name, key } = issuerIdentity(t.issuer);
  const certId = new CertID({
    hashAlgorithm: new AlgorithmIdentifier({ algorithm: '2.16.840.1.101.3.4.2.2' }),
    issuerNameHash: new OctetString(await crypto.subtle.digest('SHA-384', bs(name))),
    issuerKeyHash: new OctetString(await crypto.subtle.digest('SHA-384', bs(key))),
    serialNumber: bs(
      fromHex(t.cert.serialNumber.length % 2 ? `0${t.cert.serialNumber}` : t.cert.serialNumber),
    ).buffer,
  });
  const der = new Uint8Array(
    AsnConvert.serialize(
      new OCSPRequest({ tbsRequest: new TBSRequest({ requestList: [new Request({ reqCert: certId })] }) }),
    ),
  );
  let bin = '';
  for (const b of der) bin += String.fromCharCode(b);
  // RFC 6960 appendix A.1: GET {url}/{url-encoding of base-64 encoding of the DER request}.
  return {
    url: NVIDIA_OCSP_URL + encodeURIComponent(btoa(bin)),
    files: [`ocsp_${stripZeros(t.cert.serialNumber.toLowerCase())}.der`],
  };
}

/**
 * Checks each target against the candidate responses; targets no candidate speaks about are returned
 * as unchecked. A response that speaks about a target but fails any check is an error.
 */
export async function checkRevocation(
  targets: OcspTarget[],
  candidates: Uint8Array[],
  at: Date,
): Promise<RevocationResult> {
  const parsed = candidates.map(parseOcspResponse);
  const result: RevocationResult = { checked: [], unchecked: [] };
  for (const t of targets) {
    let used = false;
    for (const p of parsed) {
      for (const single of p.basic.tbsResponseData.responses) {
        if (!(await certIdMatches(single.certID, t))) continue;
        await verifyResponseSignature(p, t, at);
        const subject = t.cert.subject;
        const next = single.nextUpdate?.getTime() ?? single.thisUpdate.getTime() + NO_NEXT_UPDATE_MS;
        if (at.getTime() + SKEW_MS < single.thisUpdate.getTime() || at.getTime() > next) {
          fail(
            'verify',
            'ocsp-stale',
            `${t.what}: OCSP response for "${subject}" is valid ${single.thisUpdate.toISOString()} .. ${new Date(next).toISOString()}, not at ${at.toISOString()}`,
          );
        }
        if (single.certStatus.revoked) {
          const reason = single.certStatus.revoked.revocationReason;
          fail(
            'verify',
            'certificate-revoked',
            `${t.what}: "${subject}" is revoked since ${single.certStatus.revoked.revocationTime.toISOString()}${reason === undefined ? '' : ` (reason ${reason})`}`,
          );
        }
        if (single.certStatus.good === undefined) {
          fail('verify', 'ocsp-unknown', `${t.what}: the OCSP responder does not know "${subject}"`);
        }
        used = true;
      }
    }
    (used ? result.checked : result.unchecked).push(t.cert.subject);
  }
  return result;
}

async function verifyResponseSignature(p: ParsedOcsp, t: OcspTarget, at: Date): Promise<void> {
  const hash = ECDSA_SIGS[p.basic.signatureAlgorithm.algorithm];
  if (!hash) {
    fail(
      'verify',
      'ocsp-bad-signature',
      `${t.what}: OCSP signature algorithm ${p.basic.signatureAlgorithm.algorithm} is not ECDSA`,
    );
  }
  const signers: Certificate[] = [t.issuer];
  for (const c of p.basic.certs ?? []) {
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(AsnConvert.serialize(c));
    } catch {
      continue; // an undecodable extra certificate cannot authorize anything
    }
    if (cert.subject !== t.issuer.subject && !isDelegate(c)) continue;
    if (at < cert.notBefore || at > cert.notAfter) continue;
    if (!(await cert.verify({ publicKey: t.issuer, signatureOnly: true }).catch(() => false))) continue;
    signers.push(cert);
  }
  for (const s of signers) {
    const alg = s.publicKey.algorithm as EcKeyAlgorithm;
    if (alg.name !== 'ECDSA') continue;
    const key = await s.publicKey.export({ name: 'ECDSA', namedCurve: alg.namedCurve }, ['verify']);
    const size = alg.namedCurve === 'P-521' ? 66 : alg.namedCurve === 'P-384' ? 48 : 32;
    const raw = derSignatureToRaw(new Uint8Array(p.basic.signature), size);
    if (raw && (await crypto.subtle.verify({ name: 'ECDSA', hash }, key, bs(raw), bs(p.raw)))) return;
  }
  fail(
    'verify',
    'ocsp-bad-signature',
    `${t.what}: OCSP response for "${t.cert.subject}" is not signed by its issuer or an authorized delegate`,
  );
}

function isDelegate(c: AsnCertificate): boolean {
  const ext = c.tbsCertificate.extensions?.find((e) => e.extnID === id_ce_extKeyUsage);
  if (!ext) return false;
  try {
    return AsnConvert.parse(ext.extnValue.buffer, ExtendedKeyUsage).includes(ID_KP_OCSP_SIGNING);
  } catch {
    return false;
  }
}

/** ECDSA-Sig-Value (DER SEQUENCE of r, s) → r‖s of `size` bytes each, as Web Crypto wants. */
function derSignatureToRaw(sig: Uint8Array, size: number): Uint8Array | undefined {
  if (sig[0] !== 0x30) return undefined;
  let p = 2;
  if (sig[1]! & 0x80) p = 2 + (sig[1]! & 0x7f);
  const out = new Uint8Array(2 * size);
  for (let k = 0; k < 2; k++) {
    if (sig[p] !== 0x02) return undefined;
    const len = sig[p + 1]!;
    let v = sig.subarray(p + 2, p + 2 + len);
    p += 2 + len;
    while (v.length > size && v[0] === 0) v = v.subarray(1);
    if (v.length > size) return undefined;
    out.set(v, k * size + size - v.length);
  }
  return p === sig.length ? out : undefined;
}
