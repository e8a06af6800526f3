/**
 * Intel DCAP ECDSA quotes: v3 (SGX), v4 (SGX or TDX with a TD 1.0 report) and v5 (a typed body: SGX
 * enclave report, TD 1.0 or TD 1.5 report). Layout per Intel's "SGX ECDSA Quote Library API" and
 * "TDX DCAP Quote Generation Library" specifications. Every length is checked; the signature data
 * must fit its declared length exactly, and the only bytes accepted after it are zero padding (quote
 * buffers from the kernel and from cloud metadata services are fixed-size and zero-filled).
 */
import { ByteReader, isAllZero, ParseError, toHex, utf8 } from '../../util/index.js';
import { type Certificate, parseCertificates } from '../common/pki.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';
import { checkSignedDer } from './der.js';
import { type PckExtensions, parsePckExtensions } from './pck.js';

export const TEE_TYPE_SGX = 0x00000000;
export const TEE_TYPE_TDX = 0x00000081;
export const ATTESTATION_KEY_ECDSA_P256 = 2;
export const INTEL_QE_VENDOR_ID = '939a7233f79c4ca9940a0db3957f0607';
/** Certification data types: 5 = PCK certificate chain (PEM), 6 = QE report certification data. */
export const CERT_DATA_PCK_CHAIN = 5;
export const CERT_DATA_QE_REPORT = 6;

export const ENCLAVE_REPORT_SIZE = 384;
export const TD_REPORT10_SIZE = 584;
export const TD_REPORT15_SIZE = 648;

export interface QuoteHeader {
  version: number;
  attestationKeyType: number;
  teeType: number;
  /** v3 only; reserved (zero) in later versions. */
  qeSvn: number;
  pceSvn: number;
  qeVendorId: Uint8Array;
  userData: Uint8Array;
}

/** SGX REPORT body (also the QE report). */
export interface EnclaveReport {
  raw: Uint8Array;
  cpuSvn: Uint8Array;
  /** MISCSELECT as its 4 little-endian bytes, compared bytewise with QE identity masks. */
  miscSelect: Uint8Array;
  isvExtProdId: Uint8Array;
  attributes: Uint8Array;
  mrEnclave: Uint8Array;
  mrSigner: Uint8Array;
  configId: Uint8Array;
  isvProdId: number;
  isvSvn: number;
  configSvn: number;
  isvFamilyId: Uint8Array;
  reportData: Uint8Array;
}

/** TDX TD report body (TDREPORT's TDINFO + TEE_TCB_INFO fields that a quote carries). */
export interface TdReport {
  raw: Uint8Array;
  teeTcbSvn: Uint8Array;
  mrSeam: Uint8Array;
  mrSignerSeam: Uint8Array;
  seamAttributes: Uint8Array;
  tdAttributes: Uint8Array;
  xfam: Uint8Array;
  mrTd: Uint8Array;
  mrConfigId: Uint8Array;
  mrOwner: Uint8Array;
  mrOwnerConfig: Uint8Array;
  rtmr: [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
  reportData: Uint8Array;
  /** TD 1.5 bodies only. */
  teeTcbSvn2?: Uint8Array;
  mrServiceTd?: Uint8Array;
}

export type QuoteBody =
  | { kind: 'sgx'; report: EnclaveReport }
  | { kind: 'td10'; report: TdReport }
  | { kind: 'td15'; report: TdReport };

export interface ParsedQuote {
  raw: Uint8Array;
  header: QuoteHeader;
  body: QuoteBody;
  tee: 'sgx' | 'tdx';
  /** Header and body exactly as the attestation key signed them. */
  signedData: Uint8Array;
  /** ECDSA P-256 signature r‖s over signedData. */
  signature: Uint8Array;
  /** Raw P-256 public key x‖y. */
  attestationKey: Uint8Array;
  qeReport: EnclaveReport;
  qeReportSignature: Uint8Array;
  qeAuthData: Uint8Array;
  /** The PCK chain text exactly as carried (certification data type 5). */
  pckChainBytes: Uint8Array;
  /** PCK leaf first, then the other certificates in the order they were carried. */
  pckChain: Certificate[];
  pck: PckExtensions;
  /** Zero bytes after the signature data. */
  paddingLength: number;
}

function parseEnclaveReport(r: ByteReader, what: string): EnclaveReport {
  const start = r.offset;
  const rep = {
    cpuSvn: r.bytesOf(16, `${what}.cpu_svn`),
    miscSelect: r.bytesOf(4, `${what}.misc_select`),
  } as Partial<EnclaveReport>;
  r.skip(12, `${what}.reserved1`);
  rep.isvExtProdId = r.bytesOf(16, `${what}.isv_ext_prod_id`);
  rep.attributes = r.bytesOf(16, `${what}.attributes`);
  rep.mrEnclave = r.bytesOf(32, `${what}.mr_enclave`);
  r.skip(32, `${what}.reserved2`);
  rep.mrSigner = r.bytesOf(32, `${what}.mr_signer`);
  r.skip(32, `${what}.reserved3`);
  rep.configId = r.bytesOf(64, `${what}.config_id`);
  rep.isvProdId = r.u16le(`${what}.isv_prod_id`);
  rep.isvSvn = r.u16le(`${what}.isv_svn`);
  rep.configSvn = r.u16le(`${what}.config_svn`);
  r.skip(42, `${what}.reserved4`);
  rep.isvFamilyId = r.bytesOf(16, `${what}.isv_family_id`);
  rep.reportData = r.bytesOf(64, `${what}.report_data`);
  rep.raw = r.bytes.subarray(start, r.offset);
  return rep as EnclaveReport;
}

function parseTdReport(r: ByteReader, v15: boolean): TdReport {
  const start = r.offset;
  const f = (n: number, name: string) => r.bytesOf(n, `body.${name}`);
  const rep: TdReport = {
    raw: new Uint8Array(0),
    teeTcbSvn: f(16, 'tee_tcb_svn'),
    mrSeam: f(48, 'mr_seam'),
    mrSignerSeam: f(48, 'mr_signer_seam'),
    seamAttributes: f(8, 'seam_attributes'),
    tdAttributes: f(8, 'td_attributes'),
    xfam: f(8, 'xfam'),
    mrTd: f(48, 'mr_td'),
    mrConfigId: f(48, 'mr_config_id'),
    mrOwner: f(48, 'mr_owner'),
    mrOwnerConfig: f(48, 'mr_owner_config'),
    rtmr: [f(48, 'rtmr0'), f(48, 'rtmr1'), f(48, 'rtmr2'), f(48, 'rtmr3')],
    reportData: f(64, 'report_data'),
  };
  if (v15) {
    rep.teeTcbSvn2 = f(16, 'tee_tcb_svn2');
    rep.mrServiceTd = f(48, 'mr_servicetd');
  }
  rep.raw = r.bytes.subarray(start, r.offset);
  return rep;
}

function fail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('parse', code, message);
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/**
 * Parsed PCK chains by their exact text: a platform sends the same chain in every quote. Shared by
 * every VerifierContext, bounded: parsing is a pure function of the text (no time, anchor or
 * collateral enters it; the chain is validated afresh per context in verify.ts).
 */
const chainCache = new Map<string, { chain: Certificate[]; pck: PckExtensions }>();
const CHAIN_CACHE_MAX = 1024;
const chainTexts = new WeakMap<Certificate[], string>();

/**
 * The text a parsed PCK chain came from: the very string the parse cache holds (so a map look-up
 * with it needs no re-hash), or the decoded bytes for a quote put together by other means.
 */
export function pckChainText(q: ParsedQuote): string {
  return chainTexts.get(q.pckChain) ?? utf8.decode(q.pckChainBytes);
}

/**
 * The PCK chain as carried: any order is accepted, because the chain is built by signature anyway.
 * The leaf is the one certificate that issued none of the others; it must carry the SGX extension.
 */
function parsePckChain(data: Uint8Array): { chain: Certificate[]; pck: PckExtensions } {
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    fail('bad-certification-data', 'PCK certificate chain (certification data type 5) is not UTF-8 PEM text');
  }
  const hit = chainCache.get(text);
  if (hit) return hit;
  const parsed = parsePckChainText(text);
  chainCache.set(text, parsed);
  chainTexts.set(parsed.chain, text);
  if (chainCache.size > CHAIN_CACHE_MAX) chainCache.delete(chainCache.keys().next().value as string);
  return parsed;
}

/**
 * Certificates from PEM text, fully decoded now: @peculiar/x509 decodes names, keys and extensions
 * lazily, and a malformed extension must fail here as a parse error, not later as a bare Error.
 */
export function parseCertificatesStrict(
  text: string,
  what: string,
  stage: 'parse' | 'verify' = 'parse',
): Certificate[] {
  // Only PEM blocks, whitespace and NULs (the quoting library writes a C string): any other text
  // would be ignored by the PEM reader, so it is refused instead.
  if (text.replace(PEM_BLOCK, '').replace(/[\s\0]/g, '').length > 0) {
    throw new AttestationError(
      stage,
      'bad-certificate',
      `${what} holds text outside its PEM certificate blocks`,
    );
  }
  const certs = parseCertificates(text, what);
  try {
    for (const c of certs) {
      checkSignedDer(new Uint8Array(c.rawData), 'certificate');
      void [c.subject, c.issuer, c.notBefore, c.notAfter, c.serialNumber, c.publicKey.algorithm];
      for (const e of c.extensions) void e.type;
    }
  } catch (e) {
    throw new AttestationError(stage, 'bad-certificate', `cannot parse ${what}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return certs;
}

function parsePckChainText(text: string): { chain: Certificate[]; pck: PckExtensions } {
  const certs = parseCertificatesStrict(text, 'PCK certificate chain');
  if (certs.length < 2) {
    fail(
      'bad-certification-data',
      `PCK certificate chain has ${certs.length} certificate; expected leaf and issuers`,
    );
  }
  const leaves = certs.filter(
    (c) => !certs.some((o) => o !== c && o.issuer === c.subject && o.subject !== c.subject),
  );
  if (leaves.length !== 1) {
    fail(
      'bad-certification-data',
      `PCK certificate chain must have exactly one end-entity certificate, found ${leaves.length}`,
    );
  }
  const leaf = leaves[0]!;
  return { chain: [leaf, ...certs.filter((c) => c !== leaf)], pck: parsePckExtensions(leaf) };
}

/** Parses a DCAP quote; a structural problem is an AttestationError with stage 'parse'. */
export function parseQuote(raw: Uint8Array): ParsedQuote {
  try {
    return parseQuoteInner(raw);
  } catch (e) {
    if (e instanceof ParseError) {
      throw new AttestationError(
        'parse',
        e.field === 'trailing' ? 'trailing-bytes' : 'truncated',
        e.message,
        {
          cause: e,
        },
      );
    }
    throw e;
  }
}

function parseQuoteInner(raw: Uint8Array): ParsedQuote {
  const r = new ByteReader(raw, 'quote');
  const header: QuoteHeader = {
    version: r.u16le('header.version'),
    attestationKeyType: r.u16le('header.attestation_key_type'),
    teeType: r.u32le('header.tee_type'),
    qeSvn: r.u16le('header.qe_svn'),
    pceSvn: r.u16le('header.pce_svn'),
    qeVendorId: r.bytesOf(16, 'header.qe_vendor_id'),
    userData: r.bytesOf(20, 'header.user_data'),
  };
  if (header.version < 3 || header.version > 5) {
    fail('unsupported-version', `quote version ${header.version} is not supported (3, 4 and 5 are)`);
  }
  if (header.attestationKeyType !== ATTESTATION_KEY_ECDSA_P256) {
    fail(
      'unsupported-key-type',
      `attestation key type ${header.attestationKeyType} is not supported (2 = ECDSA-256 with P-256)`,
    );
  }
  if (header.teeType !== TEE_TYPE_SGX && header.teeType !== TEE_TYPE_TDX) {
    fail(
      'unsupported-tee-type',
      `TEE type 0x${header.teeType.toString(16)} is neither SGX (0) nor TDX (0x81)`,
    );
  }
  if (toHex(header.qeVendorId) !== INTEL_QE_VENDOR_ID) {
    fail(
      'unknown-qe-vendor',
      `QE vendor ID ${toHex(header.qeVendorId)} is not Intel's (${INTEL_QE_VENDOR_ID})`,
    );
  }
  const tee = header.teeType === TEE_TYPE_TDX ? 'tdx' : 'sgx';
  if (header.version === 3 && tee !== 'sgx')
    fail('unsupported-version', 'quote version 3 carries SGX enclaves only');

  let body: QuoteBody;
  if (header.version === 5) {
    const type = r.u16le('body.type');
    const size = r.u32le('body.size');
    const expected = (
      { 1: ENCLAVE_REPORT_SIZE, 2: TD_REPORT10_SIZE, 3: TD_REPORT15_SIZE } as Record<number, number>
    )[type];
    if (expected === undefined)
      fail('unsupported-body-type', `quote v5 body type ${type} is unknown (1, 2, 3)`);
    if (size !== expected)
      fail('bad-length', `quote v5 body type ${type} declares ${size} bytes, expected ${expected}`);
    if ((type === 1) !== (tee === 'sgx')) {
      fail('unsupported-body-type', `quote v5 body type ${type} does not fit TEE type ${tee.toUpperCase()}`);
    }
    body =
      type === 1
        ? { kind: 'sgx', report: parseEnclaveReport(r, 'body') }
        : type === 2
          ? { kind: 'td10', report: parseTdReport(r, false) }
          : { kind: 'td15', report: parseTdReport(r, true) };
  } else {
    body =
      tee === 'sgx'
        ? { kind: 'sgx', report: parseEnclaveReport(r, 'body') }
        : { kind: 'td10', report: parseTdReport(r, false) };
  }
  const signedData = raw.subarray(0, r.offset);

  const sigLen = r.u32le('signature_data_len');
  const sigData = new ByteReader(r.bytesOf(sigLen, 'signature_data'), 'quote signature data');
  const signature = sigData.bytesOf(64, 'signature_data.signature');
  const attestationKey = sigData.bytesOf(64, 'signature_data.attestation_key');

  // v3 carries the QE report inline; v4/v5 wrap it in certification data of type 6.
  let qe: ByteReader = sigData;
  if (header.version >= 4) {
    const type = sigData.u16le('certification_data.type');
    const size = sigData.u32le('certification_data.size');
    if (type !== CERT_DATA_QE_REPORT) {
      fail(
        'unsupported-certification-data',
        `certification data type ${type}; quote v4/v5 needs type 6 (QE report)`,
      );
    }
    qe = new ByteReader(sigData.bytesOf(size, 'certification_data'), 'QE report certification data');
    sigData.end();
  }
  const qeReport = parseEnclaveReport(qe, 'qe_report');
  const qeReportSignature = qe.bytesOf(64, 'qe_report_signature');
  const qeAuthData = qe.bytesOf(qe.u16le('qe_auth_data.size'), 'qe_auth_data');
  const certType = qe.u16le('pck_certification_data.type');
  const certSize = qe.u32le('pck_certification_data.size');
  const certData = qe.bytesOf(certSize, 'pck_certification_data');
  qe.end();
  if (certType !== CERT_DATA_PCK_CHAIN) {
    fail(
      'unsupported-certification-data',
      `certification data type ${certType} is not supported: only type 5 (PCK certificate chain in the quote) is; ` +
        'types 1-4 need the PCK certificate fetched from Intel PCS by encrypted PPID',
    );
  }

  const padding = raw.subarray(r.offset);
  if (!isAllZero(padding)) {
    throw new ParseError(
      `${padding.length} trailing bytes after the quote signature data are not zero padding`,
      'trailing',
    );
  }
  const { chain, pck } = parsePckChain(certData);
  return {
    raw,
    header,
    body,
    tee,
    signedData,
    signature,
    attestationKey,
    qeReport,
    qeReportSignature,
    qeAuthData,
    pckChainBytes: certData,
    pckChain: chain,
    pck,
    paddingLength: padding.length,
  };
}
