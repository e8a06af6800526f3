/**
 * TEST ONLY — an AMD SEV-SNP test authority. It issues attestation reports in the real binary format,
 * signed by a VCEK or VLEK (ECDSA P-384) that carries AMD's TCB / hwID / productName extensions,
 * chained ASK/ASVK → ARK with RSA-PSS/SHA-384 exactly like AMD's chains, plus a CRL and a collateral
 * source that answers the verifier's KDS requests. Its root is trusted only when a caller passes it
 * in `options.trustAnchors`. Nothing outside src/attest/testing and the tests may import this file.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { bs, toHex } from '../../util/index.js';
import type { CollateralSource } from '../common/types.js';
import {
  OID_BL_SPL,
  OID_CSP_ID,
  OID_FMC_SPL,
  OID_HWID,
  OID_PRODUCT_NAME,
  OID_SNP_SPL,
  OID_STRUCT_VERSION,
  OID_TEE_SPL,
  OID_UCODE_SPL,
} from '../snp/certs.js';
import { REPORT_SIZE, SIGNED_SIZE, type SnpPolicy, type SnpProduct } from '../snp/report.js';
import { KDS_BASE } from '../snp/verify.js';

export interface TestTcb {
  fmc?: number;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

export interface TestReportOptions {
  /** Report version (2, 3, 4 or 5); default 3. */
  version?: number;
  guestSvn?: number;
  /** Policy bits to set; ABI 0.0, SMT allowed and the must-be-one bit 17 by default. */
  policy?: Partial<SnpPolicy>;
  /** Raw policy, overriding `policy` (for malformed-policy tests). */
  policyRaw?: bigint;
  familyId?: Uint8Array;
  imageId?: Uint8Array;
  vmpl?: number;
  reportData?: Uint8Array;
  measurement?: Uint8Array;
  hostData?: Uint8Array;
  idKeyDigest?: Uint8Array;
  authorKeyDigest?: Uint8Array;
  chipId?: Uint8Array;
  /** TCB used for reported, committed, current and launch TCB unless overridden. */
  tcb?: TestTcb;
  currentTcb?: TestTcb;
  committedTcb?: TestTcb;
  signingKey?: 'vcek' | 'vlek';
  /** Zero CHIP_ID, as the host's SNP_CONFIG MASK_CHIP_ID does. */
  maskChipId?: boolean;
  /** Set MASK_CHIP_KEY in the signer info. */
  maskChipKey?: boolean;
  platformInfo?: bigint;
  launchMitVector?: bigint;
  currentMitVector?: bigint;
  /** Issue the endorsement certificate for this TCB instead of the reported one (TCB-mismatch tests). */
  certificateTcb?: TestTcb;
  /** Issue the certificate for this hwID instead of chip_id (chip-id-mismatch tests). */
  certificateHwId?: Uint8Array;
}

export interface IssuedReport {
  report: Uint8Array;
  /** DER of the VCEK or VLEK that signed it. */
  endorsementKey: Uint8Array;
  signingKey: 'vcek' | 'vlek';
}

export interface TestCollateralOptions {
  /** Serve this CRL (DER) for the product, `false` to serve none; default a fresh empty CRL. */
  crl?: Uint8Array | false;
  /** Serve the ASK/ASVK + ARK as KDS cert_chain; default true. */
  certChain?: boolean;
}

const DEFAULT_TCB: TestTcb = { bootloader: 4, tee: 0, snp: 24, microcode: 219 };
const TURIN_DEFAULT_TCB: TestTcb = { fmc: 1, bootloader: 1, tee: 1, snp: 3, microcode: 72 };
const CPUID: Record<SnpProduct, [number, number, number]> = {
  Milan: [0x19, 0x01, 0x01],
  Genoa: [0x19, 0x11, 0x01],
  Turin: [0x1a, 0x02, 0x00],
};
const PSS: RsaPssParams & { hash: string } = { name: 'RSA-PSS', hash: 'SHA-384', saltLength: 48 };
const DAY = 86_400_000;

function tcbBytes(t: TestTcb, product: SnpProduct): Uint8Array {
  const b = new Uint8Array(8);
  if (product === 'Turin') {
    b.set([t.fmc ?? 0, t.bootloader, t.tee, t.snp]);
  } else {
    b.set([t.bootloader, t.tee, 0, 0, 0, 0, t.snp]);
  }
  b[7] = t.microcode;
  return b;
}

function derInteger(n: number): Uint8Array {
  return n >= 0x80 ? new Uint8Array([2, 2, 0, n]) : new Uint8Array([2, 1, n]);
}

function derIa5(s: string): Uint8Array {
  const b = new TextEncoder().encode(s);
  return new Uint8Array([0x16, b.length, ...b]);
}

function ext(oid: string, value: Uint8Array): x509.Extension {
  return new x509.Extension(oid, false, bs(value));
}

function pem(c: x509.X509Certificate): string {
  return c.toString('pem');
}

export class SnpTestAuthority {
  /** One CRL per authority, like KDS: stable bytes let the verifier's chain cache work. */
  private defaultCrl: Promise<Uint8Array> | undefined;

  private constructor(
    readonly product: SnpProduct,
    readonly ark: x509.X509Certificate,
    private readonly arkKeys: CryptoKeyPair,
    readonly ask: x509.X509Certificate,
    private readonly askKeys: CryptoKeyPair,
    readonly asvk: x509.X509Certificate,
    private readonly asvkKeys: CryptoKeyPair,
    private readonly notBefore: Date,
    private readonly notAfter: Date,
  ) {}

  /**
   * A fresh ARK with an ASK and an ASVK for one product. RSA-2048 rather than AMD's RSA-4096 keeps
   * key generation fast; the signature scheme (RSASSA-PSS, SHA-384, salt 48) is AMD's.
   */
  static async create(
    opts: { product?: SnpProduct; notBefore?: Date; notAfter?: Date } = {},
  ): Promise<SnpTestAuthority> {
    const product = opts.product ?? 'Milan';
    const notBefore = opts.notBefore ?? new Date(Date.now() - DAY);
    const notAfter = opts.notAfter ?? new Date(Date.now() + 365 * DAY);
    const gen = () =>
      crypto.subtle.generateKey(
        { name: 'RSA-PSS', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-384' },
        true,
        ['sign', 'verify'],
      ) as Promise<CryptoKeyPair>;
    const [arkKeys, askKeys, asvkKeys] = await Promise.all([gen(), gen(), gen()]);
    const base = 'OU=Engineering, O=Cloister Test Authority';
    const ark = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '010000',
      name: `${base}, CN=ARK-${product}-Test`,
      notBefore,
      notAfter,
      keys: arkKeys,
      signingAlgorithm: PSS,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      ],
    });
    const intermediate = (serial: string, cn: string, keys: CryptoKeyPair) =>
      x509.X509CertificateGenerator.create({
        serialNumber: serial,
        subject: `${base}, CN=${cn}`,
        issuer: ark.subject,
        notBefore,
        notAfter,
        publicKey: keys.publicKey,
        signingKey: arkKeys.privateKey,
        signingAlgorithm: PSS,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
        ],
      });
    const ask = await intermediate('010001', `SEV-${product}-Test`, askKeys);
    const asvk = await intermediate('010101', `SEV-VLEK-${product}-Test`, asvkKeys);
    return new SnpTestAuthority(product, ark, arkKeys, ask, askKeys, asvk, asvkKeys, notBefore, notAfter);
  }

  /** The root to pass as `options.trustAnchors`. */
  get trustAnchor(): Uint8Array {
    return new Uint8Array(this.ark.rawData);
  }

  /** An ARK-signed CRL; `revoke` lists the intermediates to revoke. */
  async crl(
    opts: { revoke?: ('ask' | 'asvk')[]; thisUpdate?: Date; nextUpdate?: Date } = {},
  ): Promise<Uint8Array> {
    const thisUpdate = opts.thisUpdate ?? this.notBefore;
    const nextUpdate = opts.nextUpdate ?? this.notAfter;
    const crl = await x509.X509CrlGenerator.create({
      issuer: this.ark.subject,
      thisUpdate,
      nextUpdate,
      entries: (opts.revoke ?? []).map((w) => ({
        serialNumber: (w === 'ask' ? this.ask : this.asvk).serialNumber,
        revocationDate: thisUpdate,
      })),
      signingKey: this.arkKeys.privateKey,
      signingAlgorithm: PSS,
    });
    return new Uint8Array(crl.rawData);
  }

  /** Issues a signed report and the endorsement key certificate (VCEK or VLEK) for it. */
  async issue(o: TestReportOptions = {}): Promise<IssuedReport> {
    const product = this.product;
    const version = o.version ?? 3;
    const signingKey = o.signingKey ?? 'vcek';
    const tcb = o.tcb ?? (product === 'Turin' ? TURIN_DEFAULT_TCB : DEFAULT_TCB);
    const chipId = o.chipId ?? crypto.getRandomValues(new Uint8Array(64));
    if (product === 'Turin' && !o.chipId) chipId.fill(0, 8);
    const reportedChipId = o.maskChipId ? new Uint8Array(64) : chipId;

    const keys = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const certTcb = o.certificateTcb ?? tcb;
    const extensions = [
      ext(OID_STRUCT_VERSION, derInteger(signingKey === 'vcek' ? 1 : 0)),
      ext(OID_PRODUCT_NAME, derIa5(product === 'Turin' ? product : `${product}-B0`)),
      ext(OID_BL_SPL, derInteger(certTcb.bootloader)),
      ext(OID_TEE_SPL, derInteger(certTcb.tee)),
      ext(OID_SNP_SPL, derInteger(certTcb.snp)),
      ext(OID_UCODE_SPL, derInteger(certTcb.microcode)),
    ];
    if (product === 'Turin') extensions.push(ext(OID_FMC_SPL, derInteger(certTcb.fmc ?? 0)));
    if (signingKey === 'vcek') {
      const hw = o.certificateHwId ?? (product === 'Turin' ? chipId.subarray(0, 8) : chipId);
      extensions.push(ext(OID_HWID, hw));
    } else {
      extensions.push(ext(OID_CSP_ID, derIa5('CN=test-csp.example')));
    }
    const issuer = signingKey === 'vcek' ? this.ask : this.asvk;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: '00',
      subject: `OU=Engineering, O=Cloister Test Authority, CN=SEV-${signingKey.toUpperCase()}`,
      issuer: issuer.subject,
      notBefore: this.notBefore,
      notAfter: this.notAfter,
      publicKey: keys.publicKey,
      signingKey: (signingKey === 'vcek' ? this.askKeys : this.asvkKeys).privateKey,
      signingAlgorithm: PSS,
      extensions,
    });

    const b = new Uint8Array(REPORT_SIZE);
    const dv = new DataView(b.buffer);
    dv.setUint32(0x00, version, true);
    dv.setUint32(0x04, o.guestSvn ?? 0, true);
    dv.setBigUint64(0x08, o.policyRaw ?? policyBits(o.policy ?? {}), true);
    if (o.familyId) b.set(o.familyId, 0x10);
    if (o.imageId) b.set(o.imageId, 0x20);
    dv.setUint32(0x30, o.vmpl ?? 0, true);
    dv.setUint32(0x34, 1, true);
    b.set(tcbBytes(o.currentTcb ?? tcb, product), 0x38);
    dv.setBigUint64(0x40, o.platformInfo ?? 1n, true);
    const signerInfo =
      (o.maskChipId ? 2 : 0) | ((signingKey === 'vlek' ? 1 : 0) << 2) | (o.authorKeyDigest ? 1 : 0);
    dv.setUint32(0x48, signerInfo, true);
    b.set(o.reportData ?? new Uint8Array(64), 0x50);
    b.set(o.measurement ?? new Uint8Array(48).fill(0xa5), 0x90);
    if (o.hostData) b.set(o.hostData, 0xc0);
    if (o.idKeyDigest) b.set(o.idKeyDigest, 0xe0);
    if (o.authorKeyDigest) b.set(o.authorKeyDigest, 0x110);
    b.set(crypto.getRandomValues(new Uint8Array(32)), 0x140);
    b.fill(0xff, 0x160, 0x180);
    b.set(tcbBytes(tcb, product), 0x180);
    if (version >= 3) b.set(CPUID[product], 0x188);
    b.set(reportedChipId, 0x1a0);
    b.set(tcbBytes(o.committedTcb ?? tcb, product), 0x1e0);
    b.set([29, 55, 1], 0x1e8);
    b.set([29, 55, 1], 0x1ec);
    b.set(tcbBytes(tcb, product), 0x1f0);
    if (version >= 5) {
      dv.setBigUint64(0x1f8, o.launchMitVector ?? 0n, true);
      dv.setBigUint64(0x200, o.currentMitVector ?? 0n, true);
    }
    const sig = new Uint8Array(
      await crypto.subtle.sign(
        { name: 'ECDSA', hash: 'SHA-384' },
        keys.privateKey,
        b.subarray(0, SIGNED_SIZE),
      ),
    );
    // The report stores R and S little-endian, each in a 72-byte field.
    b.set(sig.subarray(0, 48).reverse(), SIGNED_SIZE);
    b.set(sig.subarray(48, 96).reverse(), SIGNED_SIZE + 72);
    return { report: b, endorsementKey: new Uint8Array(cert.rawData), signingKey };
  }

  /**
   * Answers the verifier's requests like AMD KDS would: the VCEK at its exact KDS URL (so the test
   * also proves the URL is built right), the VLEK by file name, cert_chain and the CRL.
   */
  collateral(issued: IssuedReport, opts: TestCollateralOptions = {}): CollateralSource {
    const product = this.product;
    this.defaultCrl ??= this.crl();
    const crl = opts.crl === undefined ? this.defaultCrl : Promise.resolve(opts.crl);
    return {
      get: async (req) => {
        const body = (b: Uint8Array | string) => ({
          body: typeof b === 'string' ? new TextEncoder().encode(b) : b,
          headers: {},
        });
        const kind = issued.signingKey;
        if (
          kind === 'vcek' &&
          req.url.startsWith(`${KDS_BASE}/vcek/v1/${product}/`) &&
          !req.url.endsWith('/crl')
        ) {
          if (req.url.endsWith('/cert_chain')) {
            return opts.certChain === false ? undefined : body(pem(this.ask) + pem(this.ark));
          }
          const cert = new x509.X509Certificate(bs(issued.endorsementKey));
          const hw = cert.getExtension(OID_HWID);
          const asked = req.url.slice(req.url.lastIndexOf('/') + 1).split('?')[0]!;
          // A masked CHIP_ID gives KDS nothing to look up; such guests ship the VCEK themselves.
          const served = hw && (asked === toHex(new Uint8Array(hw.value)) || /^0+$/.test(asked));
          return served ? body(issued.endorsementKey) : undefined;
        }
        if (kind === 'vlek' && req.files.includes('vlek.der')) return body(issued.endorsementKey);
        if (kind === 'vlek' && req.url === `${KDS_BASE}/vlek/v1/${product}/cert_chain`) {
          return opts.certChain === false ? undefined : body(pem(this.asvk) + pem(this.ark));
        }
        if (req.url === `${KDS_BASE}/${kind}/v1/${product}/crl`) {
          const c = await crl;
          return c ? body(c) : undefined;
        }
        return undefined;
      },
    };
  }
}

function policyBits(p: Partial<SnpPolicy>): bigint {
  let v = BigInt(p.abiMinor ?? 0) | (BigInt(p.abiMajor ?? 0) << 8n) | (1n << 17n);
  const flags: [keyof SnpPolicy, number][] = [
    ['smt', 16],
    ['migrateMa', 18],
    ['debug', 19],
    ['singleSocket', 20],
    ['cxlAllowed', 21],
    ['memAes256Xts', 22],
    ['raplDis', 23],
    ['ciphertextHiding', 24],
    ['pageSwapDisable', 25],
  ];
  for (const [name, bit] of flags) if (p[name] ?? name === 'smt') v |= 1n << BigInt(bit);
  return v;
}
