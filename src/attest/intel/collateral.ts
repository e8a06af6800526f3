/**
 * Intel DCAP collateral: where it lives (Intel PCS v4 URLs, offline file names) and what it says
 * (TCB info v3, QE identity v2, CRLs). Two offline layouts are understood: the separate PCS files
 * (tcb_info.json, qe_identity.json, pck_crl.der, root_ca_crl.der, *_issuer_chain.pem) and a dcap-qvl
 * style collateral.json bundle holding all of them; each item is asked for under both names, and what
 * came back is recognised by its content. The first name of each is the one `cloister collateral fetch`
 * writes: TCB info and QE identity are named by TEE (`tdx_tcb_info_<fmspc>.json`, `sgx_qe_identity.json`),
 * so that one folder holds SGX and TDX collateral for many platforms.
 */
import { fromHex, utf8 } from '../../util/index.js';
import {
  AttestationError,
  type AttestationErrorCode,
  type CollateralRequest,
  type CollateralSource,
} from '../common/types.js';
import { BytesMemo } from '../memo.js';
import { topLevelSpans } from './json.js';

export const PCS_BASE = 'https://api.trustedservices.intel.com';
export const ROOT_CA_CRL_URL = 'https://certificates.trustedservices.intel.com/IntelSGXRootCA.der';

export type Tee = 'sgx' | 'tdx';
export type PckCa = 'processor' | 'platform';

export const TCB_STATUSES = [
  'UpToDate',
  'SWHardeningNeeded',
  'ConfigurationNeeded',
  'ConfigurationAndSWHardeningNeeded',
  'OutOfDate',
  'OutOfDateConfigurationNeeded',
  'Revoked',
] as const;
export type TcbLevelStatus = (typeof TCB_STATUSES)[number];

export interface TcbLevel {
  /** SGX TCB component SVNs 1..16. */
  sgxComponents: number[];
  pcesvn: number;
  /** TDX TCB info only: TEE_TCB_SVN components 1..16. */
  tdxComponents?: number[];
  tcbDate: string;
  tcbStatus: TcbLevelStatus;
  advisoryIds: string[];
}

export interface IsvTcbLevel {
  isvsvn: number;
  tcbDate: string;
  tcbStatus: TcbLevelStatus;
  advisoryIds: string[];
}

export interface TdxModule {
  mrsigner: Uint8Array;
  attributes: Uint8Array;
  attributesMask: Uint8Array;
}

export interface TdxModuleIdentity extends TdxModule {
  id: string;
  tcbLevels: IsvTcbLevel[];
}

export interface TcbInfo {
  id: 'SGX' | 'TDX';
  version: number;
  issueDate: Date;
  nextUpdate: Date;
  fmspc: Uint8Array;
  pceId: Uint8Array;
  tcbType: number;
  tcbEvaluationDataNumber: number;
  tdxModule?: TdxModule;
  tdxModuleIdentities?: TdxModuleIdentity[];
  /** Ordered as Intel's QVL orders them: highest TCB first. */
  tcbLevels: TcbLevel[];
}

export interface QeIdentity {
  id: string;
  version: number;
  issueDate: Date;
  nextUpdate: Date;
  tcbEvaluationDataNumber: number;
  miscselect: Uint8Array;
  miscselectMask: Uint8Array;
  attributes: Uint8Array;
  attributesMask: Uint8Array;
  mrsigner: Uint8Array;
  isvprodid: number;
  tcbLevels: IsvTcbLevel[];
}

/** A signed JSON value exactly as signed, its raw r‖s signature and the PEM issuer chain. */
export interface SignedJson {
  signed: Uint8Array;
  signature: Uint8Array;
  chainPem: string;
}

export interface RawCollateral {
  tcbInfo: SignedJson;
  qeIdentity: SignedJson;
  pckCrl: Uint8Array;
  rootCaCrl: Uint8Array;
}

export function tcbInfoRequest(tee: Tee, fmspc: string): CollateralRequest {
  return {
    url: `${PCS_BASE}/${tee}/certification/v4/tcb?fmspc=${fmspc}`,
    files: [`${tee}_tcb_info_${fmspc}.json`, `tcb_info_${fmspc}.json`, 'tcb_info.json', 'collateral.json'],
  };
}

export function qeIdentityRequest(tee: Tee): CollateralRequest {
  return {
    url: `${PCS_BASE}/${tee}/certification/v4/qe/identity`,
    files: [`${tee}_qe_identity.json`, 'qe_identity.json', 'collateral.json'],
  };
}

export function pckCrlRequest(ca: PckCa): CollateralRequest {
  return {
    url: `${PCS_BASE}/sgx/certification/v4/pckcrl?ca=${ca}&encoding=der`,
    files: [`pck_crl_${ca}.der`, 'pck_crl.der', 'collateral.json'],
  };
}

export function rootCaCrlRequest(): CollateralRequest {
  return { url: ROOT_CA_CRL_URL, files: ['root_ca_crl.der', 'collateral.json'] };
}

const HEX_TEXT = /^[0-9a-fA-F]+$/;
const TCB_CHAIN_HEADERS = ['tcb-info-issuer-chain', 'sgx-tcb-info-issuer-chain'];
const QE_CHAIN_HEADERS = ['sgx-enclave-identity-issuer-chain'];

function bad(code: AttestationErrorCode, message: string, cause?: unknown): AttestationError {
  return new AttestationError('verify', code, message, cause === undefined ? undefined : { cause });
}

/** A dcap-qvl QuoteCollateralV3 JSON object, recognised by its string member "tcb_info". */
function asBundle(body: Uint8Array): Record<string, unknown> | undefined {
  if (body[0] !== 0x7b) return undefined;
  try {
    const v = JSON.parse(utf8.decode(body)) as unknown;
    if (v && typeof v === 'object' && typeof (v as Record<string, unknown>)['tcb_info'] === 'string') {
      return v as Record<string, unknown>;
    }
  } catch {
    // Not a bundle; the caller parses it as the item it asked for.
  }
  return undefined;
}

/**
 * Values derived from a bundle, per bundle object, so repeated verifications reuse the same buffers.
 * Like the parse memos below, this is shared by every VerifierContext: it only decodes bytes (no time,
 * anchor or signature enters it), and its entries go with the bundle objects they belong to.
 */
const bundleDerived = new WeakMap<Record<string, unknown>, Map<string, unknown>>();

function derived<T>(b: Record<string, unknown>, key: string, make: () => T): T {
  let m = bundleDerived.get(b);
  if (!m) {
    m = new Map();
    bundleDerived.set(b, m);
  }
  if (!m.has(key)) m.set(key, make());
  return m.get(key) as T;
}

function bundleString(b: Record<string, unknown>, key: string, what: string): string {
  const v = b[key];
  if (typeof v !== 'string') throw bad('bad-collateral', `collateral bundle: "${key}" (${what}) is missing`);
  return v;
}

function hexBytes(s: string, what: string, len?: number): Uint8Array {
  let out: Uint8Array;
  try {
    out = fromHex(s);
  } catch (e) {
    throw bad('bad-collateral', `${what} is not hex`, e);
  }
  if (len !== undefined && out.length !== len)
    throw bad('bad-collateral', `${what} is ${out.length} bytes, expected ${len}`);
  return out;
}

async function must(source: CollateralSource, req: CollateralRequest, what: string) {
  let item: Awaited<ReturnType<CollateralSource['get']>>;
  try {
    item = await source.get(req);
  } catch (e) {
    throw bad('collateral-unavailable', `${what}: fetching ${req.url} failed: ${(e as Error).message}`, e);
  }
  if (!item) {
    throw bad(
      'collateral-missing',
      `${what} is not available (${req.url}, or offline one of ${req.files.join(', ')}); fetch it from Intel PCS or a PCCS`,
    );
  }
  return item;
}

function headerChain(headers: Record<string, string>, names: string[]): string | undefined {
  for (const n of names) {
    const v = headers[n];
    if (v) {
      try {
        return decodeURIComponent(v);
      } catch (e) {
        throw bad('bad-collateral', `response header ${n} is not URL-encoded PEM`, e);
      }
    }
  }
  return undefined;
}

/**
 * Extracted signed values and parsed bundles by response body (see BytesMemo: checked by content).
 * Shared by every VerifierContext: these are pure functions of the bytes (nothing here is trusted
 * until verify.ts checks the signatures, and those results live in the context), and the entries go
 * with the buffers they were read from.
 */
const extracted = {
  tcbInfo: new BytesMemo<{ signed: Uint8Array; signature: Uint8Array }>(),
  enclaveIdentity: new BytesMemo<{ signed: Uint8Array; signature: Uint8Array }>(),
};
const bundles = new BytesMemo<Record<string, unknown> | undefined>();

function bundleOf(body: Uint8Array): Record<string, unknown> | undefined {
  return bundles.get(body, () => asBundle(body));
}

function extractSigned(
  body: Uint8Array,
  member: 'tcbInfo' | 'enclaveIdentity',
  what: string,
): { signed: Uint8Array; signature: Uint8Array } {
  return extracted[member].get(body, () => {
    let spans: Map<string, Uint8Array>;
    try {
      spans = topLevelSpans(body);
    } catch (e) {
      throw bad('bad-collateral', `${what} is not a PCS JSON response: ${(e as Error).message}`, e);
    }
    const signed = spans.get(member);
    const sig = spans.get('signature');
    if (!signed || !sig) throw bad('bad-collateral', `${what}: response lacks "${member}" or "signature"`);
    // A copy, so the value verified can never change with the caller's buffer.
    return {
      signed: signed.slice(),
      signature: hexBytes(JSON.parse(utf8.decode(sig)) as string, `${what} signature`, 64),
    };
  });
}

async function signedJson(
  source: CollateralSource,
  req: CollateralRequest,
  member: 'tcbInfo' | 'enclaveIdentity',
  chainHeaders: string[],
  chainFiles: string[],
  what: string,
): Promise<SignedJson> {
  const item = await must(source, req, what);
  const bundle = bundleOf(item.body);
  if (bundle) {
    const k = member === 'tcbInfo' ? 'tcb_info' : 'qe_identity';
    return derived(bundle, k, () => ({
      signed: utf8.encode(bundleString(bundle, k, what)),
      signature: hexBytes(
        bundleString(bundle, `${k}_signature`, `${what} signature`),
        `${what} signature`,
        64,
      ),
      chainPem: bundleString(bundle, `${k}_issuer_chain`, `${what} issuer chain`),
    }));
  }
  const { signed, signature } = extractSigned(item.body, member, what);
  let chainPem = headerChain(item.headers, chainHeaders);
  if (!chainPem) {
    // Offline the chain is a file of its own; online the same URL answers again with the header.
    const chainItem = await must(source, { url: req.url, files: chainFiles }, `${what} issuer chain`);
    chainPem = headerChain(chainItem.headers, chainHeaders) ?? utf8.decode(chainItem.body);
  }
  return { signed, signature, chainPem };
}

async function crl(
  source: CollateralSource,
  req: CollateralRequest,
  key: string,
  what: string,
): Promise<Uint8Array> {
  const item = await must(source, req, what);
  const bundle = bundleOf(item.body);
  if (!bundle) {
    // PCS sends DER (or PEM, which parseCrl reads); a PCCS answers rootcacrl with the DER as hex text.
    if (item.body[0] === 0x30) return item.body;
    const text = new TextDecoder().decode(item.body).trim();
    return HEX_TEXT.test(text) ? hexBytes(text, what) : item.body;
  }
  // dcap-qvl stores CRLs as hex of the DER (or of the PEM) bytes.
  return derived(bundle, key, () => hexBytes(bundleString(bundle, key, what), what));
}

/** Gathers every collateral item a quote needs; a missing item is 'collateral-missing'. */
export async function fetchCollateral(
  source: CollateralSource,
  tee: Tee,
  fmspc: string,
  ca: PckCa,
): Promise<RawCollateral> {
  const settled = await Promise.allSettled([
    signedJson(
      source,
      tcbInfoRequest(tee, fmspc),
      'tcbInfo',
      TCB_CHAIN_HEADERS,
      ['tcb_info_issuer_chain.pem'],
      `${tee.toUpperCase()} TCB info for FMSPC ${fmspc}`,
    ),
    signedJson(
      source,
      qeIdentityRequest(tee),
      'enclaveIdentity',
      QE_CHAIN_HEADERS,
      ['qe_identity_issuer_chain.pem', 'tcb_info_issuer_chain.pem'],
      `${tee === 'tdx' ? 'TD_QE' : 'QE'} identity`,
    ),
    crl(source, pckCrlRequest(ca), 'pck_crl', `PCK ${ca} CA CRL`),
    crl(source, rootCaCrlRequest(), 'root_ca_crl', 'Intel SGX Root CA CRL'),
  ] as const);
  // Fetched together, reported in a fixed order so one missing item always gives the same error.
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
  const [tcbInfo, qeIdentity, pckCrl, rootCaCrl] = settled.map(
    (r) => (r as PromiseFulfilledResult<unknown>).value,
  ) as [SignedJson, SignedJson, Uint8Array, Uint8Array];
  return { tcbInfo, qeIdentity, pckCrl, rootCaCrl };
}

// ---- JSON structure ----------------------------------------------------------------------------

type Obj = Record<string, unknown>;

class Fields {
  constructor(
    readonly o: Obj,
    readonly what: string,
  ) {}
  private err(k: string, want: string): AttestationError {
    return bad('bad-collateral', `${this.what}: "${k}" must be ${want}`);
  }
  str(k: string): string {
    const v = this.o[k];
    if (typeof v !== 'string') throw this.err(k, 'a string');
    return v;
  }
  uint(k: string): number {
    const v = this.o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw this.err(k, 'a non-negative integer');
    return v;
  }
  hex(k: string, len: number): Uint8Array {
    const s = this.str(k);
    if (s.length !== len * 2) throw this.err(k, `${len} bytes of hex`);
    return hexBytes(s, `${this.what}: "${k}"`, len);
  }
  date(k: string): Date {
    const s = this.str(k);
    const d = new Date(s);
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(s) || Number.isNaN(d.getTime())) {
      throw this.err(k, 'an ISO 8601 UTC time');
    }
    return d;
  }
  obj(k: string): Fields {
    const v = this.o[k];
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw this.err(k, 'an object');
    return new Fields(v as Obj, `${this.what}.${k}`);
  }
  arr(k: string): Fields[] {
    const v = this.o[k];
    if (!Array.isArray(v)) throw this.err(k, 'an array');
    return v.map((x, i) => {
      if (!x || typeof x !== 'object' || Array.isArray(x)) throw this.err(`${k}[${i}]`, 'an object');
      return new Fields(x as Obj, `${this.what}.${k}[${i}]`);
    });
  }
  has(k: string): boolean {
    return this.o[k] !== undefined;
  }
  status(k: string): TcbLevelStatus {
    const s = this.str(k);
    if (!(TCB_STATUSES as readonly string[]).includes(s))
      throw this.err(k, `one of ${TCB_STATUSES.join(', ')}`);
    return s as TcbLevelStatus;
  }
  advisories(): string[] {
    if (!this.has('advisoryIDs')) return [];
    const v = this.o['advisoryIDs'];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
      throw this.err('advisoryIDs', 'an array of strings');
    return v as string[];
  }
}

function parseObject(signed: Uint8Array, what: string): Fields {
  let v: unknown;
  try {
    v = JSON.parse(utf8.decode(signed));
  } catch (e) {
    throw bad('bad-collateral', `${what} is not JSON: ${(e as Error).message}`, e);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v))
    throw bad('bad-collateral', `${what} is not a JSON object`);
  return new Fields(v as Obj, what);
}

function components(f: Fields, k: string): number[] {
  const list = f.arr(k).map((c) => c.uint('svn'));
  if (list.length !== 16)
    throw bad('bad-collateral', `${f.what}: "${k}" has ${list.length} components, expected 16`);
  if (list.some((x) => x > 255)) throw bad('bad-collateral', `${f.what}: "${k}" has an SVN above 255`);
  return list;
}

/** Highest ISVSVN first, so the first level at or below an ISVSVN is the level it is at. */
function isvLevels(f: Fields, k: string): IsvTcbLevel[] {
  return f
    .arr(k)
    .map((l) => ({
      isvsvn: l.obj('tcb').uint('isvsvn'),
      tcbDate: l.str('tcbDate'),
      tcbStatus: l.status('tcbStatus'),
      advisoryIds: l.advisories(),
    }))
    .sort((a, b) => b.isvsvn - a.isvsvn);
}

function lexCompare(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Intel QVL keeps levels in a set ordered by SGX components, then PCESVN, then (TDX) TDX components. */
function intelOrder(a: TcbLevel, b: TcbLevel): number {
  const sgx = lexCompare(b.sgxComponents, a.sgxComponents);
  if (sgx !== 0) return sgx;
  if (a.pcesvn !== b.pcesvn) return b.pcesvn - a.pcesvn;
  return lexCompare(b.tdxComponents ?? [], a.tdxComponents ?? []);
}

export function parseTcbInfo(signed: Uint8Array): TcbInfo {
  const f = parseObject(signed, 'TCB info');
  const id = f.str('id');
  const version = f.uint('version');
  if ((id !== 'SGX' && id !== 'TDX') || version !== 3) {
    throw bad(
      'unsupported-collateral',
      `TCB info id "${id}" version ${version} is not supported (SGX or TDX, version 3)`,
    );
  }
  // tcbType 0 is the only one Intel defines: it says how SVNs compare (each component ≥ the level's).
  if (f.uint('tcbType') !== 0)
    throw bad('unsupported-collateral', `TCB info tcbType ${f.o['tcbType']} is not supported (0)`);
  const isTdx = id === 'TDX';
  const levels: TcbLevel[] = f.arr('tcbLevels').map((l) => {
    const tcb = l.obj('tcb');
    return {
      sgxComponents: components(tcb, 'sgxtcbcomponents'),
      pcesvn: tcb.uint('pcesvn'),
      ...(isTdx ? { tdxComponents: components(tcb, 'tdxtcbcomponents') } : {}),
      tcbDate: l.str('tcbDate'),
      tcbStatus: l.status('tcbStatus'),
      advisoryIds: l.advisories(),
    };
  });
  const module = (m: Fields): TdxModule => ({
    mrsigner: m.hex('mrsigner', 48),
    attributes: m.hex('attributes', 8),
    attributesMask: m.hex('attributesMask', 8),
  });
  const info: TcbInfo = {
    id,
    version,
    issueDate: f.date('issueDate'),
    nextUpdate: f.date('nextUpdate'),
    fmspc: f.hex('fmspc', 6),
    pceId: f.hex('pceId', 2),
    tcbType: 0,
    tcbEvaluationDataNumber: f.uint('tcbEvaluationDataNumber'),
    tcbLevels: levels
      .map((l, i) => ({ l, i }))
      .sort((x, y) => intelOrder(x.l, y.l) || x.i - y.i)
      .map((x) => x.l),
  };
  if (isTdx) {
    info.tdxModule = module(f.obj('tdxModule'));
    if (f.has('tdxModuleIdentities')) {
      info.tdxModuleIdentities = f.arr('tdxModuleIdentities').map((m) => ({
        id: m.str('id'),
        ...module(m),
        tcbLevels: isvLevels(m, 'tcbLevels'),
      }));
    }
  }
  return info;
}

export function parseQeIdentity(signed: Uint8Array): QeIdentity {
  const f = parseObject(signed, 'QE identity');
  const id = f.str('id');
  const version = f.uint('version');
  if (version !== 2)
    throw bad('unsupported-collateral', `QE identity "${id}" version ${version} is not supported (2)`);
  const levels = isvLevels(f, 'tcbLevels');
  if (levels.length === 0) throw bad('bad-collateral', 'QE identity has no TCB levels');
  return {
    id,
    version,
    issueDate: f.date('issueDate'),
    nextUpdate: f.date('nextUpdate'),
    tcbEvaluationDataNumber: f.uint('tcbEvaluationDataNumber'),
    miscselect: f.hex('miscselect', 4),
    miscselectMask: f.hex('miscselectMask', 4),
    attributes: f.hex('attributes', 16),
    attributesMask: f.hex('attributesMask', 16),
    mrsigner: f.hex('mrsigner', 32),
    isvprodid: f.uint('isvprodid'),
    tcbLevels: levels,
  };
}
