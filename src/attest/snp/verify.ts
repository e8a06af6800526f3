/**
 * SEV-SNP verification: the endorsement key certificate (VCEK or VLEK) chains through the ASK / ASVK
 * to an AMD Root Key, the chain and the ARK-issued CRL are valid at `options.at`, the certificate was
 * issued for exactly this chip at exactly the reported TCB, and the report signature verifies with it.
 */
import { bs, concatBytes, equalBytes, isAllZero, sha256, toHex } from '../../util/index.js';
import { type Certificate, type Crl, parseCertificates, parseCrl, verifyChain } from '../common/pki.js';
import {
  AttestationError,
  type AttestationErrorCode,
  type CollateralItem,
  type CollateralRequest,
  type CollateralSource,
  type VerifyOptions,
} from '../common/types.js';
import { type ContextSlot, contextOf } from '../context.js';
import { BoundedCache, BytesMemo } from '../memo.js';
import { type EndorsementKeyInfo, readEndorsementKeyInfo } from './certs.js';
import {
  decodeTcb,
  type ParsedReport,
  PRODUCTS,
  SIG_ALGO_ECDSA_P384_SHA384,
  SIGNED_SIZE,
  type SnpProduct,
  TCB_COMPONENTS,
  type TcbVersion,
} from './report.js';
import {
  ARK_GENOA,
  ARK_MILAN,
  ARK_TURIN,
  ASK_GENOA,
  ASK_MILAN,
  ASK_TURIN,
  ASVK_GENOA,
  ASVK_MILAN,
  ASVK_TURIN,
} from './roots.js';

export const KDS_BASE = 'https://kdsintf.amd.com';

export interface VerifiedReport {
  report: ParsedReport;
  product: SnpProduct;
  signingKey: 'vcek' | 'vlek';
  endorsementKey: EndorsementKeyInfo;
  /** Endorsement key certificate → ASK/ASVK → ARK. */
  chain: Certificate[];
  /** False when no CRL was available: the ASK/ASVK revocation status is unknown. */
  revocationChecked: boolean;
  currentTcb: TcbVersion;
  reportedTcb: TcbVersion;
  committedTcb: TcbVersion;
  launchTcb: TcbVersion;
}

function fail(code: AttestationErrorCode, message: string, cause?: unknown): never {
  throw new AttestationError(
    'verify',
    code,
    `SEV-SNP: ${message}`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The KDS request for a VCEK (online URL with the TCB as query parameters, offline file names). The
 * first name, one per chip and reported TCB (`vcek_<hwid>_<reported_tcb>.der`), lets one folder hold the
 * VCEKs of many machines; `cloister collateral fetch` writes it.
 */
export function vcekRequest(report: ParsedReport, product: SnpProduct): CollateralRequest {
  const tcb = decodeTcb(report.reportedTcb, product);
  const hwid = toHex(product === 'Turin' ? report.chipId.subarray(0, 8) : report.chipId);
  const two = (n: number) => n.toString().padStart(2, '0');
  let q = `blSPL=${two(tcb.bootloader)}&teeSPL=${two(tcb.tee)}&snpSPL=${two(tcb.snp)}&ucodeSPL=${two(tcb.microcode)}`;
  if (product === 'Turin') q += `&fmcSPL=${two(tcb.fmc ?? 0)}`;
  return {
    url: `${KDS_BASE}/vcek/v1/${product}/${hwid}?${q}`,
    files: [`vcek_${hwid}_${tcb.raw}.der`, 'vcek.der', 'vcek.pem'],
  };
}

/**
 * A VLEK is provisioned by the cloud provider (KDS serves it only to the provider), so there is no
 * public URL: it comes from an offline file or the extended report's certificate table. The empty
 * url tells an online source there is nothing to fetch.
 */
export function vlekRequest(): CollateralRequest {
  return { url: '', files: ['vlek.der', 'vlek.pem'] };
}

export function crlRequest(kind: 'vcek' | 'vlek', product: SnpProduct): CollateralRequest {
  const files =
    kind === 'vcek'
      ? // The product's own name first: a folder may hold the CRLs of several products.
        [`amd_ark_${product.toLowerCase()}_crl.der`, 'crl.der', 'crl.pem']
      : ['vlek_crl.der', 'vlek_crl.pem'];
  return { url: `${KDS_BASE}/${kind}/v1/${product}/crl`, files };
}

export function certChainRequest(kind: 'vcek' | 'vlek', product: SnpProduct): CollateralRequest {
  return {
    url: `${KDS_BASE}/${kind}/v1/${product}/cert_chain`,
    files:
      kind === 'vcek'
        ? [`amd_${product.toLowerCase()}_cert_chain.pem`, 'cert_chain.pem']
        : ['vlek_cert_chain.pem'],
  };
}

async function fetchCollateral(
  source: CollateralSource,
  req: CollateralRequest,
  what: string,
): Promise<CollateralItem | undefined> {
  try {
    return await source.get(req);
  } catch (e) {
    fail(
      'collateral-unavailable',
      `cannot fetch ${what} (${req.url || req.files.join(', ')}): ${(e as Error).message}`,
      e,
    );
  }
}

/** AMD's roots and intermediates as bundled, parsed once: constants, the same for every context. */
let bundled: { arks: Certificate[]; intermediates: Certificate[] } | undefined;
function bundledCerts(): { arks: Certificate[]; intermediates: Certificate[] } {
  bundled ??= {
    arks: [ARK_MILAN, ARK_GENOA, ARK_TURIN].flatMap((p) => parseCertificates(p, 'bundled ARK')),
    intermediates: [ASK_MILAN, ASK_GENOA, ASK_TURIN, ASVK_MILAN, ASVK_GENOA, ASVK_TURIN].flatMap((p) =>
      parseCertificates(p, 'bundled ASK/ASVK'),
    ),
  };
  return bundled;
}

interface CachedChain {
  chain: Certificate[];
  key: CryptoKey;
  /** The instants for which every certificate (and the CRL, if any) is valid. */
  from: Date;
  until: Date;
}

/**
 * What SEV-SNP verification remembers in a VerifierContext: parsed trust anchors, and verified chains
 * keyed by SHA-256 over the leaf, anchor and CRL bytes. A chain hit within its validity window skips
 * path building and the RSA-PSS checks, leaving only the report signature.
 */
class SnpState {
  readonly anchors = new BytesMemo<Certificate[]>();
  readonly chains = new BoundedCache<CachedChain>(256);
}

const SNP: ContextSlot<SnpState> = { create: () => new SnpState() };

/**
 * Parsed endorsement keys and CRLs per collateral buffer: X.509/CRL decoding costs several times the
 * report signature check, and a caching collateral source hands back the same buffers. Shared by every
 * VerifierContext: decoding is a pure function of the bytes (nothing parsed here is trusted until the
 * chain, whose result lives in the context, is checked), and the entries go with their buffers.
 */
const parsedLeaves = {
  VCEK: new BytesMemo<{ leaf: Certificate; ek: EndorsementKeyInfo }>(),
  VLEK: new BytesMemo<{ leaf: Certificate; ek: EndorsementKeyInfo }>(),
};
const parsedCrls = new BytesMemo<Crl>();

/** SHA-256 of a certificate's or CRL's DER, once per parsed object (pure, so shared like the above). */
const derDigests = new WeakMap<Certificate | Crl, Promise<string>>();
function derDigest(x: Certificate | Crl): Promise<string> {
  let d = derDigests.get(x);
  if (!d) {
    d = sha256(new Uint8Array(x.rawData)).then(toHex);
    derDigests.set(x, d);
  }
  return d;
}

async function cacheKey(leaf: Certificate, anchors: Certificate[], crl: Crl | undefined): Promise<string> {
  const parts = [leaf, ...anchors, ...(crl ? [crl] : [])];
  return `${anchors.length}:${(await Promise.all(parts.map(derDigest))).join(':')}`;
}

export async function verifyReport(report: ParsedReport, options: VerifyOptions): Promise<VerifiedReport> {
  if (report.signatureAlgo !== SIG_ALGO_ECDSA_P384_SHA384) {
    fail(
      'unsupported-signature-algo',
      `signature algorithm ${report.signatureAlgo} is not ECDSA P-384/SHA-384 (1)`,
    );
  }
  const kind = report.signerInfo.signingKey;
  if (kind === 'none') fail('no-signing-key', 'the report is unsigned (SIGNING_KEY 7)');

  // Which product generation's KDS path and TCB layout apply: CPUID (v3+) when present, otherwise
  // each generation in turn until a certificate is found, then the certificate's productName decides.
  const cpuidSet = report.cpuid && (report.cpuid.family !== 0 || report.cpuid.model !== 0);
  if (cpuidSet && !report.cpuidProduct) {
    fail(
      'unsupported-product',
      `CPUID family 0x${report.cpuid!.family.toString(16)} model 0x${report.cpuid!.model.toString(16)} is not Milan, Genoa or Turin`,
    );
  }
  // A VLEK has no per-product URL, so one request covers every candidate.
  const candidates: readonly SnpProduct[] = report.cpuidProduct
    ? [report.cpuidProduct]
    : kind === 'vlek'
      ? PRODUCTS.slice(0, 1)
      : PRODUCTS;
  const keyName = kind.toUpperCase();
  let item: CollateralItem | undefined;
  for (const p of candidates) {
    item = await fetchCollateral(
      options.collateral,
      kind === 'vcek' ? vcekRequest(report, p) : vlekRequest(),
      keyName,
    );
    if (item) break;
  }
  if (!item) {
    fail(
      'collateral-missing',
      `no ${keyName} certificate: supply ${kind}.der or ${kind}.pem${kind === 'vcek' ? ' or reach AMD KDS' : ''}`,
    );
  }
  const body = item.body;
  const { leaf, ek } = parsedLeaves[kind === 'vcek' ? 'VCEK' : 'VLEK'].get(body, () => {
    const leaf = parseCertificates(body, keyName)[0]!;
    return { leaf, ek: readEndorsementKeyInfo(leaf, keyName) };
  });
  const product = ek.product;
  if (report.cpuidProduct && report.cpuidProduct !== product) {
    fail(
      'product-mismatch',
      `the report's CPUID says ${report.cpuidProduct} but the ${keyName} is for ${ek.productName}`,
    );
  }
  if (kind === 'vcek' && !ek.hwId) fail('bad-endorsement-certificate', 'VCEK has no hwID extension');
  if (kind === 'vlek' && ek.hwId)
    fail('bad-endorsement-certificate', 'a VLEK must not carry a hwID extension');

  const state = contextOf(options).state(SNP);
  const anchors = options.trustAnchors
    ? options.trustAnchors.flatMap((a) => state.anchors.get(a, () => parseCertificates(a, 'trust anchor')))
    : bundledCerts().arks;
  const crlItem = await fetchCollateral(
    options.collateral,
    crlRequest(kind, product),
    `${product} ${keyName} CRL`,
  );
  const crl = crlItem
    ? parsedCrls.get(crlItem.body, () => parseCrl(crlItem.body, `${product} ARK CRL`))
    : undefined;

  const ck = await cacheKey(leaf, anchors, crl);
  let cached = state.chains.get(ck);
  if (!cached || options.at < cached.from || options.at > cached.until) {
    const chain = await buildChain(leaf, anchors, crl, options, kind, product);
    // verifyChain applies a CRL only where its issuer is in the path; one from another root would
    // otherwise be ignored while revocation counted as checked.
    const root = chain[chain.length - 1]!;
    if (crl && crl.issuer !== root.subject) {
      fail(
        'crl-wrong-issuer',
        `the ${product} CRL is issued by "${crl.issuer}", not by this chain's root "${root.subject}"`,
      );
    }
    cached = { chain, key: await importLeafKey(leaf, keyName), ...validityWindow(chain, crl) };
    state.chains.set(ck, cached);
  }
  // Which intermediate issued the key must match the key kind: VCEKs come from the ASK, VLEKs from
  // the ASVK. A VLEK passed off as a VCEK (or the reverse) is refused here.
  const issuerCn = cached.chain[1]?.subjectName.getField('CN')[0] ?? '';
  if ((kind === 'vlek') !== issuerCn.includes('VLEK')) {
    fail('wrong-key-kind', `the report says ${keyName} but the certificate was issued by "${issuerCn}"`);
  }

  await checkSignature(report, cached.key);

  const reportedTcb = decodeTcb(report.reportedTcb, product);
  for (const c of TCB_COMPONENTS) {
    if (c === 'fmc' && product !== 'Turin') continue;
    if (reportedTcb[c] !== ek.tcb[c]) {
      fail(
        'tcb-mismatch',
        `REPORTED_TCB ${c} SPL is ${reportedTcb[c]} but the ${keyName} was issued for ${ek.tcb[c]}: the certificate does not belong to this TCB`,
      );
    }
  }
  // With the host's MASK_CHIP_ID setting (or MASK_CHIP_KEY) CHIP_ID is zero and the binding rests on
  // the VCEK signature alone, which is per chip anyway.
  if (kind === 'vcek' && !report.signerInfo.maskChipKey && !isAllZero(report.chipId)) {
    const hw = ek.hwId!;
    if (!equalBytes(report.chipId.subarray(0, hw.length), hw)) {
      fail('chip-id-mismatch', `CHIP_ID ${toHex(report.chipId)} is not the VCEK hwID ${toHex(hw)}`);
    }
  }
  return {
    report,
    product,
    signingKey: kind,
    endorsementKey: ek,
    chain: cached.chain,
    revocationChecked: crl !== undefined,
    currentTcb: decodeTcb(report.currentTcb, product),
    reportedTcb,
    committedTcb: decodeTcb(report.committedTcb, product),
    launchTcb: decodeTcb(report.launchTcb, product),
  };
}

async function buildChain(
  leaf: Certificate,
  anchors: Certificate[],
  crl: Crl | undefined,
  options: VerifyOptions,
  kind: 'vcek' | 'vlek',
  product: SnpProduct,
): Promise<Certificate[]> {
  const what = `${kind.toUpperCase()} chain`;
  const base = { leaf, anchors, at: options.at, crls: crl ? [crl] : [], what };
  try {
    return await verifyChain({ ...base, intermediates: bundledCerts().intermediates });
  } catch (e) {
    // The bundled ASK/ASVK are AMD's; another issuer (a rotated ASK, a test authority) comes from KDS.
    if (!(e instanceof AttestationError) || e.code !== 'chain-incomplete') throw e;
    const extra = await fetchCollateral(
      options.collateral,
      certChainRequest(kind, product),
      `${product} cert_chain`,
    );
    if (!extra) throw e;
    // KDS's cert_chain is ASK/ASVK then ARK. Only the intermediates join the pool: a root is trusted
    // because it is an anchor, never because it arrived with the collateral.
    const served = parseCertificates(extra.body, `${product} cert_chain`);
    const roots = served.filter((c) => c.subject === c.issuer);
    const intermediates = served.filter((c) => c.subject !== c.issuer);
    try {
      return await verifyChain({
        ...base,
        intermediates: [...intermediates, ...bundledCerts().intermediates],
      });
    } catch (e2) {
      const root = roots.find((r) => intermediates.some((i) => i.issuer === r.subject));
      if (e2 instanceof AttestationError && e2.code === 'chain-incomplete' && root) {
        fail(
          'untrusted-root',
          `${what}: the chain ends at "${root.subject}", which is not a trusted AMD ARK or configured trust anchor`,
        );
      }
      throw e2;
    }
  }
}

function validityWindow(chain: Certificate[], crl: Crl | undefined): { from: Date; until: Date } {
  let from = Math.max(...chain.map((c) => c.notBefore.getTime()));
  let until = Math.min(...chain.map((c) => c.notAfter.getTime()));
  if (crl) {
    from = Math.max(from, crl.thisUpdate.getTime());
    if (crl.nextUpdate) until = Math.min(until, crl.nextUpdate.getTime());
  }
  return { from: new Date(from), until: new Date(until) };
}

async function importLeafKey(leaf: Certificate, what: string): Promise<CryptoKey> {
  const alg = leaf.publicKey.algorithm as EcKeyAlgorithm;
  if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-384') {
    fail(
      'bad-endorsement-certificate',
      `${what} key is ${alg.name} ${alg.namedCurve ?? ''}, not ECDSA P-384`,
    );
  }
  return crypto.subtle.importKey(
    'spki',
    bs(new Uint8Array(leaf.publicKey.rawData)),
    { name: 'ECDSA', namedCurve: 'P-384' },
    false,
    ['verify'],
  );
}

async function checkSignature(report: ParsedReport, key: CryptoKey): Promise<void> {
  const { signatureR: r, signatureS: s } = report;
  let ok = false;
  if (r.length === 48 && s.length === 48) {
    ok = await crypto.subtle.verify(
      { name: 'ECDSA', hash: 'SHA-384' },
      key,
      bs(concatBytes(r, s)),
      bs(report.bytes.subarray(0, SIGNED_SIZE)),
    );
  }
  if (!ok) fail('bad-signature', 'the report signature does not verify with the endorsement key');
}
