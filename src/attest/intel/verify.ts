/**
 * DCAP quote verification (Intel QVL's "verify" steps): the quote signature by the attestation key,
 * the QE report signature by the PCK key and its binding to the attestation key, the PCK chain to
 * the Intel SGX Root CA with both CRLs, the signed TCB info and QE identity, and the identity checks
 * that tie them together (FMSPC, PCE-ID, QE identity, TDX module identity). TCB level matching is
 * appraisal and lives in tcb.ts.
 */
import { bs, concatBytes, equalBytes, sha256, toHex } from '../../util/index.js';
import { type Certificate, type Crl, parseCertificates, parseCrl, verifyChain } from '../common/pki.js';
import { AttestationError, type AttestationErrorCode, type CollateralSource } from '../common/types.js';
import { type ContextSlot, contextOf, type VerifierContext } from '../context.js';
import { BoundedCache, BytesMemo, digestHex, memoTimed, type Timed } from '../memo.js';
import {
  fetchCollateral,
  type PckCa,
  parseQeIdentity,
  parseTcbInfo,
  type QeIdentity,
  type SignedJson,
  type TcbInfo,
  type TdxModuleIdentity,
} from './collateral.js';
import { checkSignedDer } from './der.js';
import type { PckExtensions } from './pck.js';
import { type EnclaveReport, type ParsedQuote, parseCertificatesStrict, pckChainText } from './quote.js';
import { INTEL_SGX_ROOT_CA_PEM } from './roots.js';

export interface VerifyQuoteOptions {
  at: Date;
  collateral: CollateralSource;
  /** Replacement roots (PEM or DER); default: the bundled Intel SGX Root CA. */
  trustAnchors?: Uint8Array[];
  /** Where verified chains and collateral are remembered; default: the shared default context. */
  context?: VerifierContext;
}

export interface VerifiedQuote {
  quote: ParsedQuote;
  tcbInfo: TcbInfo;
  qeIdentity: QeIdentity;
  pck: PckExtensions;
  /** PCK leaf → … → trust anchor, as validated. */
  pckPath: Certificate[];
  /** TDX with TEE_TCB_SVN[1] > 0: the TDX module identity the module was matched against. */
  tdxModuleIdentity?: TdxModuleIdentity;
  /** When all collateral used is valid together (the tightest of every window involved). */
  collateralValidFrom: Date;
  collateralValidUntil: Date;
}

function fail(code: AttestationErrorCode, message: string, cause?: unknown): never {
  throw new AttestationError('verify', code, message, cause === undefined ? undefined : { cause });
}

// ---- trust anchors ------------------------------------------------------------------------------

interface Anchors {
  certs: Certificate[];
  key: string;
}

/** The bundled root, parsed once: a constant of this module, the same for every context. */
let intelAnchors: Anchors | undefined;

/** A parsed CRL with its issuer name, which @peculiar/x509 rebuilds as text on every read of a CRL. */
interface CheckedCrl {
  crl: Crl;
  issuer: string;
}

/**
 * What DCAP verification remembers in a VerifierContext: parsed trust anchors, checked CRLs, verified
 * collateral signatures and PCK chains (each with the interval in which it holds).
 */
class IntelState {
  readonly anchors = new BytesMemo<Anchors>();
  readonly crls = new BoundedCache<CheckedCrl>(64);
  readonly json = new BoundedCache<Promise<Timed<TcbInfo | QeIdentity>>>(256);
  readonly chains = new BoundedCache<Promise<Timed<Certificate[]>>>(1024);
  private readonly textIds = new Map<string, number>();
  private nextTextId = 0;

  /**
   * A short stand-in for a certificate chain's text inside cache keys: joining kilobytes of PEM into a
   * fresh key string for every quote made V8 hash all of it on each look-up. Equal texts get the same
   * id for as long as the id table lives; it is bounded, and renewing it empties the caches keyed by it.
   */
  textId(text: string): number {
    let id = this.textIds.get(text);
    if (id === undefined) {
      if (this.textIds.size >= 2048) {
        this.textIds.clear();
        this.json.clear();
        this.chains.clear();
      }
      id = this.nextTextId++;
      this.textIds.set(text, id);
    }
    return id;
  }
}

const INTEL: ContextSlot<IntelState> = { create: () => new IntelState() };

function anchorsOf(state: IntelState, trustAnchors: Uint8Array[] | undefined): Anchors {
  if (!trustAnchors) {
    intelAnchors ??= { certs: parseCertificates(INTEL_SGX_ROOT_CA_PEM, 'Intel SGX Root CA'), key: 'intel' };
    return intelAnchors;
  }
  const parts = trustAnchors.map((t) =>
    state.anchors.get(t, () => {
      const certs = parseCertificates(t, 'trust anchor');
      return { certs, key: certs.map((c) => toHex(new Uint8Array(c.rawData))).join(':') };
    }),
  );
  const certs = parts.flatMap((p) => p.certs);
  if (certs.length === 0) fail('untrusted-root', 'options.trustAnchors is empty: no chain can be trusted');
  return { certs, key: parts.map((p) => p.key).join(':') };
}

// ---- raw ECDSA ----------------------------------------------------------------------------------

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIG = { name: 'ECDSA', hash: 'SHA-256' } as const;
/**
 * Imported keys are shared by every context: a CryptoKey is a pure function of the key bytes (or of
 * the certificate object, which is itself only ever a parse of its DER), trusted by nothing; whether
 * the key may be trusted is decided by the chain checks, whose results live in the context.
 */
const rawKeys = new BoundedCache<Promise<CryptoKey>>(1024);
const certKeys = new WeakMap<Certificate, Promise<CryptoKey>>();

function rawP256Key(xy: Uint8Array): Promise<CryptoKey> {
  const k = toHex(xy);
  let p = rawKeys.get(k);
  if (!p) {
    p = crypto.subtle.importKey('raw', bs(concatBytes(new Uint8Array([4]), xy)), EC, false, ['verify']);
    p.catch(() => rawKeys.delete(k));
    rawKeys.set(k, p);
  }
  return p;
}

function certKey(cert: Certificate): Promise<CryptoKey> {
  let p = certKeys.get(cert);
  if (!p) {
    p = crypto.subtle.importKey('spki', cert.publicKey.rawData, EC, false, ['verify']);
    certKeys.set(cert, p);
  }
  return p;
}

async function ecdsaVerify(key: CryptoKey, sig: Uint8Array, data: Uint8Array): Promise<boolean> {
  return crypto.subtle.verify(SIG, key, bs(sig), bs(data));
}

// ---- quote-internal signatures ------------------------------------------------------------------

/**
 * The checks that need nothing but the quote: attestation key signs header‖body, the PCK key signs
 * the QE report, and the QE report binds the attestation key (report_data[0..32] = SHA-256(key ‖
 * QE auth data)). The PCK key is trusted only once verifyQuote has validated its chain.
 */
export async function checkQuoteSignatures(q: ParsedQuote): Promise<void> {
  const ak = rawP256Key(q.attestationKey).catch((e) =>
    fail('bad-attestation-key', 'the attestation key in the quote is not a P-256 point', e),
  );
  const pckKey = certKey(q.pckChain[0]!).catch((e) =>
    fail('invalid-pck-cert', 'PCK certificate key is not an ECDSA P-256 key', e),
  );
  // The three checks run side by side (Web Crypto works off the main thread); failures are reported
  // in this fixed order.
  const [quoteOk, qeOk, binding] = await Promise.allSettled([
    ak.then((k) => ecdsaVerify(k, q.signature, q.signedData)),
    pckKey.then((k) => ecdsaVerify(k, q.qeReportSignature, q.qeReport.raw)),
    sha256(concatBytes(q.attestationKey, q.qeAuthData)),
  ]);
  for (const r of [quoteOk, qeOk, binding]) if (r.status === 'rejected') throw r.reason;
  const value = <T>(r: PromiseSettledResult<T>) => (r as PromiseFulfilledResult<T>).value;
  if (!value(quoteOk)) {
    fail(
      'bad-signature',
      'quote signature does not verify with the attestation key: header or report body altered',
    );
  }
  if (!value(qeOk))
    fail('bad-qe-report-signature', 'QE report signature does not verify with the PCK certificate key');
  if (!equalBytes(value(binding), q.qeReport.reportData.subarray(0, 32))) {
    fail(
      'qe-report-data-mismatch',
      'QE report data is not SHA-256(attestation key ‖ QE auth data): the attestation key was not certified by this QE',
    );
  }
}

// ---- chains, CRLs and signed collateral ---------------------------------------------------------

async function checkedCrl(
  state: IntelState,
  der: Uint8Array,
  what: string,
): Promise<CheckedCrl & { digest: string }> {
  const digest = await digestHex(der);
  let checked = state.crls.get(digest);
  if (!checked) {
    try {
      const crl = parseCrl(der, what);
      checkSignedDer(new Uint8Array(crl.rawData), 'crl');
      void [crl.thisUpdate, crl.nextUpdate, crl.entries.map((x) => x.serialNumber)];
      checked = { crl, issuer: crl.issuer };
    } catch (e) {
      fail('bad-crl', `${what}: ${(e as Error).message}`, e);
    }
    state.crls.set(digest, checked);
  }
  return { ...checked, digest };
}

function windowOf(path: Certificate[], crls: Crl[], extra?: { from: Date; until: Date }) {
  let from = extra?.from ?? new Date(-8.64e15);
  let until = extra?.until ?? new Date(8.64e15);
  for (const c of path) {
    if (c.notBefore > from) from = c.notBefore;
    if (c.notAfter < until) until = c.notAfter;
  }
  for (const crl of crls) {
    if (crl.thisUpdate > from) from = crl.thisUpdate;
    if (crl.nextUpdate && crl.nextUpdate < until) until = crl.nextUpdate;
  }
  return { from, until };
}

function rejectForeignRoots(certs: Certificate[], anchors: Anchors, what: string): void {
  const roots = certs.filter((c) => c.subject === c.issuer);
  if (roots.length > 0 && !roots.some((r) => anchors.certs.some((a) => a.equal(r)))) {
    fail(
      'untrusted-root',
      `${what} ends at "${roots[0]!.subject}", which is not a trusted root (expected ${anchors.certs.map((a) => `"${a.subject}"`).join(' or ')})`,
    );
  }
}

/** Validates leaf → anchor with `crls`, of which the last must be the CRL of the anchor reached. */
async function validatePath(
  leaf: Certificate,
  others: Certificate[],
  anchors: Anchors,
  crls: Crl[],
  at: Date,
  what: string,
): Promise<Certificate[]> {
  rejectForeignRoots([leaf, ...others], anchors, what);
  const path = await verifyChain({
    leaf,
    intermediates: others.filter((c) => c.subject !== c.issuer),
    anchors: anchors.certs,
    at,
    crls,
    what,
  });
  // Everything carried must be on the path: a certificate that is not would be silently ignored.
  const stray = [leaf, ...others].find((c) => !path.some((p) => p.equal(c)));
  if (stray)
    fail('unexpected-certificate', `${what}: "${stray.subject}" is not part of the chain to the root`);
  // verifyChain applies a CRL only where its issuer name fits; with several anchors, make sure the
  // root CRL was the one of the root this chain reached.
  const top = path[path.length - 1]!;
  if (crls[crls.length - 1]!.issuer !== top.subject) {
    fail(
      'crl-mismatch',
      `${what}: the root CA CRL is from "${crls[crls.length - 1]!.issuer}", the chain ends at "${top.subject}"`,
    );
  }
  return path;
}

async function verifySignedJson<T extends TcbInfo | QeIdentity>(
  state: IntelState,
  item: SignedJson,
  parse: (b: Uint8Array) => T,
  what: string,
  anchors: Anchors,
  rootCrl: Crl,
  rootCrlDigest: string,
  at: Date,
): Promise<T> {
  const key = [
    what,
    anchors.key,
    rootCrlDigest,
    await digestHex(item.signed),
    toHex(item.signature),
    state.textId(item.chainPem),
  ].join('|');
  const value = await memoTimed(state.json, key, at, async () => {
    const chain = parseCertificatesStrict(item.chainPem, `${what} issuer chain`, 'verify');
    const path = await validatePath(
      chain[0]!,
      chain.slice(1),
      anchors,
      [rootCrl],
      at,
      `${what} signing chain`,
    );
    // As Intel's QVL (TCBSigningChain.cpp): only a TCB Signing certificate issued by the root itself
    // may sign collateral; any other certificate under the root (a platform's PCK, say) may not.
    if (path.length !== 2 || !/SGX TCB Signing/.test(commonName(path[0]!.subject))) {
      fail(
        'invalid-tcb-signing-cert',
        `${what} is signed by "${path[0]!.subject}", not by an SGX TCB Signing certificate issued by the root`,
      );
    }
    const key = await certKey(path[0]!).catch((e) =>
      fail('bad-collateral', `${what} signing key is not P-256`, e),
    );
    if (!(await ecdsaVerify(key, item.signature, item.signed))) {
      fail('bad-collateral-signature', `${what} signature does not verify with "${path[0]!.subject}"`);
    }
    const parsed = parse(item.signed);
    if (at < parsed.issueDate || at > parsed.nextUpdate) {
      fail(
        'collateral-expired',
        `${what} is valid ${parsed.issueDate.toISOString()} .. ${parsed.nextUpdate.toISOString()}, not at ${at.toISOString()}; fetch current collateral`,
      );
    }
    return {
      value: parsed,
      ...windowOf(path, [rootCrl], { from: parsed.issueDate, until: parsed.nextUpdate }),
    };
  });
  return value as T;
}

function commonName(dn: string): string {
  return /(?:^|,\s*)CN=([^,]+)/.exec(dn)?.[1] ?? '';
}

function pckCaOf(leaf: Certificate): PckCa {
  const cn = commonName(leaf.issuer);
  if (/Processor/i.test(cn)) return 'processor';
  if (/Platform/i.test(cn)) return 'platform';
  fail(
    'invalid-pck-cert',
    `PCK certificate issuer "${leaf.issuer}" is neither a PCK Processor CA nor a PCK Platform CA`,
  );
}

function maskedEqual(value: Uint8Array, mask: Uint8Array, expected: Uint8Array): boolean {
  if (value.length !== mask.length || mask.length !== expected.length) return false;
  for (let i = 0; i < value.length; i++) if ((value[i]! & mask[i]!) !== expected[i]) return false;
  return true;
}

/** Intel QVL 4.1.2.9.5-8: the QE is the enclave Intel's QE identity describes. */
function checkQeIdentity(qe: EnclaveReport, id: QeIdentity): void {
  const mismatch = (field: string, have: string, want: string): never =>
    fail(
      'qe-identity-mismatch',
      `QE report ${field} ${have} does not match the QE identity (${want}): not Intel's quoting enclave`,
    );
  if (!maskedEqual(qe.miscSelect, id.miscselectMask, id.miscselect)) {
    mismatch(
      'MISCSELECT',
      toHex(qe.miscSelect),
      `${toHex(id.miscselect)} under mask ${toHex(id.miscselectMask)}`,
    );
  }
  if (!maskedEqual(qe.attributes, id.attributesMask, id.attributes)) {
    mismatch(
      'ATTRIBUTES',
      toHex(qe.attributes),
      `${toHex(id.attributes)} under mask ${toHex(id.attributesMask)}`,
    );
  }
  if (!equalBytes(qe.mrSigner, id.mrsigner)) mismatch('MRSIGNER', toHex(qe.mrSigner), toHex(id.mrsigner));
  if (qe.isvProdId !== id.isvprodid) mismatch('ISVPRODID', String(qe.isvProdId), String(id.isvprodid));
}

/** Intel QVL 4.1.2.4.11: the TDX module that signed the TD report is one Intel lists. */
function checkTdxModule(q: ParsedQuote, info: TcbInfo): TdxModuleIdentity | undefined {
  if (q.body.kind === 'sgx' || !info.tdxModule) return undefined;
  const td = q.body.report;
  const version = td.teeTcbSvn[1]!;
  let expected = info.tdxModule;
  let identity: TdxModuleIdentity | undefined;
  if (version > 0) {
    const want = `TDX_${version.toString(16).padStart(2, '0').toUpperCase()}`;
    identity = info.tdxModuleIdentities?.find((m) => m.id.toUpperCase() === want);
    if (!identity) {
      fail(
        'tdx-module-mismatch',
        `TCB info lists no TDX module identity ${want} for TEE_TCB_SVN major version ${version}`,
      );
    }
    expected = identity;
  }
  if (!equalBytes(td.mrSignerSeam, expected.mrsigner)) {
    fail(
      'tdx-module-mismatch',
      `MRSIGNERSEAM ${toHex(td.mrSignerSeam)} is not the TDX module signer in the TCB info (${toHex(expected.mrsigner)})`,
    );
  }
  // As Intel's QVL: SEAMATTRIBUTES must be zero and equal to the listed attributes.
  if (!td.seamAttributes.every((b, i) => b === 0 && b === expected.attributes[i])) {
    fail(
      'tdx-module-mismatch',
      `SEAMATTRIBUTES ${toHex(td.seamAttributes)} are not the zero attributes the TCB info requires (${toHex(expected.attributes)})`,
    );
  }
  return identity;
}

/**
 * Verifies a parsed quote against collateral at `options.at`. Every failure is an AttestationError of
 * stage 'verify'; the result carries what appraisal needs (TCB info, QE identity, PCK TCB).
 */
export async function verifyQuote(q: ParsedQuote, options: VerifyQuoteOptions): Promise<VerifiedQuote> {
  const { at } = options;
  if (!(at instanceof Date) || Number.isNaN(at.getTime()))
    fail('bad-options', 'options.at must be a valid Date');
  const state = contextOf(options).state(INTEL);
  const anchors = anchorsOf(state, options.trustAnchors);
  // The signature checks run in Web Crypto's worker threads while this thread gathers and checks the
  // collateral; their failures still come first, as when they were awaited before everything else.
  const signatures = checkQuoteSignatures(q);
  signatures.catch(() => undefined);
  let result: VerifiedQuote;
  try {
    result = await verifyAgainstCollateral(state, q, options, anchors);
  } catch (e) {
    await signatures;
    throw e;
  }
  await signatures;
  return result;
}

async function verifyAgainstCollateral(
  state: IntelState,
  q: ParsedQuote,
  options: VerifyQuoteOptions,
  anchors: Anchors,
): Promise<VerifiedQuote> {
  const { at } = options;
  const leaf = q.pckChain[0]!;
  if (!/SGX PCK Certificate/.test(commonName(leaf.subject))) {
    fail('invalid-pck-cert', `PCK certificate subject "${leaf.subject}" is not an SGX PCK Certificate`);
  }
  // Before any collateral is fetched: a chain to another root is refused as such.
  rejectForeignRoots(q.pckChain, anchors, 'PCK chain');
  const fmspc = toHex(q.pck.fmspc);
  const raw = await fetchCollateral(options.collateral, q.tee, fmspc, pckCaOf(leaf));

  const [
    { crl: rootCrl, issuer: rootCrlIssuer, digest: rootCrlDigest },
    { crl: pckCrl, issuer: pckCrlIssuer, digest: pckCrlDigest },
  ] = await Promise.all([
    checkedCrl(state, raw.rootCaCrl, 'Intel SGX Root CA CRL'),
    checkedCrl(state, raw.pckCrl, 'PCK CRL'),
  ]);
  if (!anchors.certs.some((a) => a.subject === rootCrlIssuer)) {
    fail('crl-mismatch', `root CA CRL is issued by "${rootCrlIssuer}", not by the trusted root`);
  }
  if (pckCrlIssuer !== leaf.issuer) {
    fail(
      'crl-mismatch',
      `PCK CRL is issued by "${pckCrlIssuer}", but the PCK certificate by "${leaf.issuer}"`,
    );
  }

  // One after the other, so that with several stale items the error names the same one every time.
  const tcbInfo = await verifySignedJson(
    state,
    raw.tcbInfo,
    parseTcbInfo,
    'TCB info',
    anchors,
    rootCrl,
    rootCrlDigest,
    at,
  );
  const qeIdentity = await verifySignedJson(
    state,
    raw.qeIdentity,
    parseQeIdentity,
    'QE identity',
    anchors,
    rootCrl,
    rootCrlDigest,
    at,
  );
  const chainKey = [anchors.key, rootCrlDigest, pckCrlDigest, state.textId(pckChainText(q))].join('|');
  const pckPath = await memoTimed(state.chains, chainKey, at, async () => {
    const path = await validatePath(leaf, q.pckChain.slice(1), anchors, [pckCrl, rootCrl], at, 'PCK chain');
    if (path.length !== 3) {
      fail('invalid-pck-cert', `PCK chain has ${path.length} certificates; Intel's is PCK ← PCK CA ← root`);
    }
    return { value: path, ...windowOf(path, [pckCrl, rootCrl]) };
  });

  if (tcbInfo.id !== q.tee.toUpperCase()) {
    fail('tcb-info-mismatch', `TCB info is for ${tcbInfo.id} but the quote is ${q.tee.toUpperCase()}`);
  }
  if (!equalBytes(tcbInfo.fmspc, q.pck.fmspc)) {
    fail(
      'fmspc-mismatch',
      `TCB info is for FMSPC ${toHex(tcbInfo.fmspc)} but the PCK certificate has ${fmspc}`,
    );
  }
  if (!equalBytes(tcbInfo.pceId, q.pck.pceId)) {
    fail(
      'pceid-mismatch',
      `TCB info is for PCE-ID ${toHex(tcbInfo.pceId)} but the PCK certificate has ${toHex(q.pck.pceId)}`,
    );
  }
  const wantQe = q.tee === 'tdx' ? 'TD_QE' : 'QE';
  if (qeIdentity.id !== wantQe) {
    fail(
      'qe-identity-mismatch',
      `QE identity is for "${qeIdentity.id}" but a ${q.tee.toUpperCase()} quote needs "${wantQe}"`,
    );
  }
  checkQeIdentity(q.qeReport, qeIdentity);
  const tdxModuleIdentity = checkTdxModule(q, tcbInfo);

  const w = windowOf(pckPath, [pckCrl, rootCrl], {
    from: new Date(Math.max(tcbInfo.issueDate.getTime(), qeIdentity.issueDate.getTime())),
    until: new Date(Math.min(tcbInfo.nextUpdate.getTime(), qeIdentity.nextUpdate.getTime())),
  });
  return {
    quote: q,
    tcbInfo,
    qeIdentity,
    pck: q.pck,
    pckPath,
    ...(tdxModuleIdentity ? { tdxModuleIdentity } : {}),
    collateralValidFrom: w.from,
    collateralValidUntil: w.until,
  };
}
