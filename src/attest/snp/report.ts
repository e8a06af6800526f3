/**
 * SEV-SNP ATTESTATION_REPORT (AMD SEV Secure Nested Paging Firmware ABI Specification, "Attestation
 * Report" table; report versions 2, 3, 4 and 5). Parse only: structure, reserved fields and the
 * policy / signer-info bitfields. Nothing here is trusted until verifyReport has checked the signature.
 */
import { ByteReader, isAllZero, ParseError, toHex } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';

/** The report is a fixed 1184-byte structure; the signature covers bytes 0x000..0x29F. */
export const REPORT_SIZE = 0x4a0;
export const SIGNED_SIZE = 0x2a0;
/** SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384, the only algorithm the ABI defines. */
export const SIG_ALGO_ECDSA_P384_SHA384 = 1;

export type SnpProduct = 'Milan' | 'Genoa' | 'Turin';
export const PRODUCTS: readonly SnpProduct[] = ['Milan', 'Genoa', 'Turin'];

/** SIGNING_KEY in the signer info: which endorsement key signed the report. */
export type SigningKey = 'vcek' | 'vlek' | 'none';

/** Guest policy, chosen by the guest owner at launch and enforced by the firmware. */
export interface SnpPolicy {
  abiMinor: number;
  abiMajor: number;
  smt: boolean;
  migrateMa: boolean;
  debug: boolean;
  singleSocket: boolean;
  cxlAllowed: boolean;
  memAes256Xts: boolean;
  raplDis: boolean;
  ciphertextHiding: boolean;
  pageSwapDisable: boolean;
}

export interface SnpPlatformInfo {
  smtEnabled: boolean;
  tsmeEnabled: boolean;
  eccEnabled: boolean;
  raplDisabled: boolean;
  ciphertextHidingEnabled: boolean;
  aliasCheckComplete: boolean;
  tioEnabled: boolean;
}

export interface SignerInfo {
  authorKeyEn: boolean;
  maskChipKey: boolean;
  signingKey: SigningKey;
}

/** A decoded TCB_VERSION. Turin adds the FMC SPL and moves the other fields (see decodeTcb). */
export interface TcbVersion {
  /** The 8 raw bytes as a little-endian u64, lower-case hex (16 digits, most significant first). */
  raw: string;
  fmc?: number;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

export interface FirmwareVersion {
  major: number;
  minor: number;
  build: number;
}

export interface ParsedReport {
  /** Copy of the 1184 input bytes. */
  bytes: Uint8Array;
  version: number;
  guestSvn: number;
  policyRaw: bigint;
  policy: SnpPolicy;
  familyId: Uint8Array;
  imageId: Uint8Array;
  vmpl: number;
  signatureAlgo: number;
  currentTcb: Uint8Array;
  platformInfoRaw: bigint;
  platformInfo: SnpPlatformInfo;
  signerInfo: SignerInfo;
  reportData: Uint8Array;
  measurement: Uint8Array;
  hostData: Uint8Array;
  idKeyDigest: Uint8Array;
  authorKeyDigest: Uint8Array;
  reportId: Uint8Array;
  reportIdMa: Uint8Array;
  reportedTcb: Uint8Array;
  /** CPUID(1) family / model / stepping, reports v3 and later. */
  cpuid?: { family: number; model: number; stepping: number };
  /** Product generation named by the CPUID fields (v3+), when recognised. */
  cpuidProduct?: SnpProduct;
  chipId: Uint8Array;
  committedTcb: Uint8Array;
  currentVersion: FirmwareVersion;
  committedVersion: FirmwareVersion;
  launchTcb: Uint8Array;
  /** Mitigation vectors, reports v5 and later. */
  launchMitVector?: bigint;
  currentMitVector?: bigint;
  /** R and S as big-endian 48-byte integers (the report stores them little-endian in 72-byte fields). */
  signatureR: Uint8Array;
  signatureS: Uint8Array;
}

const POLICY_RESERVED_MB1 = 1n << 17n;
/** Bits 26..63 are reserved in every published ABI revision. */
const POLICY_KNOWN_MASK = (1n << 26n) - 1n;
/** PLATFORM_INFO bits 0..5 and 7 are defined; bit 6 and bits 8..63 are reserved. */
const PLATFORM_INFO_KNOWN_MASK = 0xbfn;

function fail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('parse', code, `SEV-SNP report: ${message}`);
}

/**
 * Parses one attestation report of exactly 1184 bytes. Reserved (MBZ) fields must be zero and
 * reserved policy / signer-info / platform-info bits must be clear: the firmware writes zeros there,
 * so anything else is a malformed or forged structure, or a newer ABI we do not yet understand and
 * must not half-interpret.
 */
export function parseReport(input: Uint8Array): ParsedReport {
  if (input.length !== REPORT_SIZE) {
    fail(
      input.length < REPORT_SIZE ? 'truncated' : 'trailing-bytes',
      `expected exactly ${REPORT_SIZE} bytes, got ${input.length}`,
    );
  }
  const bytes = input.slice();
  const r = new ByteReader(bytes, 'SEV-SNP report');
  try {
    const version = r.u32le('version');
    if (version < 2 || version > 5) {
      fail('unsupported-version', `version ${version} is not supported (2, 3, 4 and 5 are)`);
    }
    const guestSvn = r.u32le('guest_svn');
    const policyRaw = r.u64le('policy');
    const policy = decodePolicy(policyRaw);
    const familyId = r.bytesOf(16, 'family_id');
    const imageId = r.bytesOf(16, 'image_id');
    const vmpl = r.u32le('vmpl');
    const signatureAlgo = r.u32le('signature_algo');
    const currentTcb = r.bytesOf(8, 'current_tcb');
    const platformInfoRaw = r.u64le('platform_info');
    const platformInfo = decodePlatformInfo(platformInfoRaw);
    const signerInfo = decodeSignerInfo(r.u32le('signer_info'));
    mbz(r.bytesOf(4, 'reserved_0x4c'), 0x4c);
    const reportData = r.bytesOf(64, 'report_data');
    const measurement = r.bytesOf(48, 'measurement');
    const hostData = r.bytesOf(32, 'host_data');
    const idKeyDigest = r.bytesOf(48, 'id_key_digest');
    const authorKeyDigest = r.bytesOf(48, 'author_key_digest');
    const reportId = r.bytesOf(32, 'report_id');
    const reportIdMa = r.bytesOf(32, 'report_id_ma');
    const reportedTcb = r.bytesOf(8, 'reported_tcb');
    let cpuid: ParsedReport['cpuid'];
    if (version >= 3) {
      cpuid = { family: r.u8('cpuid_fam_id'), model: r.u8('cpuid_mod_id'), stepping: r.u8('cpuid_step') };
      mbz(r.bytesOf(0x15, 'reserved_0x18b'), 0x18b);
    } else {
      mbz(r.bytesOf(0x18, 'reserved_0x188'), 0x188);
    }
    const chipId = r.bytesOf(64, 'chip_id');
    const committedTcb = r.bytesOf(8, 'committed_tcb');
    const currentVersion = firmwareVersion(r, 'current');
    mbz(r.bytesOf(1, 'reserved_0x1eb'), 0x1eb);
    const committedVersion = firmwareVersion(r, 'committed');
    mbz(r.bytesOf(1, 'reserved_0x1ef'), 0x1ef);
    const launchTcb = r.bytesOf(8, 'launch_tcb');
    let launchMitVector: bigint | undefined;
    let currentMitVector: bigint | undefined;
    if (version >= 5) {
      launchMitVector = r.u64le('launch_mit_vector');
      currentMitVector = r.u64le('current_mit_vector');
      mbz(r.bytesOf(SIGNED_SIZE - 0x208, 'reserved_0x208'), 0x208);
    } else {
      mbz(r.bytesOf(SIGNED_SIZE - 0x1f8, 'reserved_0x1f8'), 0x1f8);
    }
    const sigR = r.bytesOf(72, 'signature.r');
    const sigS = r.bytesOf(72, 'signature.s');
    const sigRest = r.bytesOf(REPORT_SIZE - SIGNED_SIZE - 144, 'signature.reserved');
    if (signatureAlgo === SIG_ALGO_ECDSA_P384_SHA384) mbz(sigRest, SIGNED_SIZE + 144);
    r.end();
    const cpuidProduct = cpuid ? productFromCpuid(cpuid.family, cpuid.model) : undefined;
    return {
      bytes,
      version,
      guestSvn,
      policyRaw,
      policy,
      familyId,
      imageId,
      vmpl,
      signatureAlgo,
      currentTcb,
      platformInfoRaw,
      platformInfo,
      signerInfo,
      reportData,
      measurement,
      hostData,
      idKeyDigest,
      authorKeyDigest,
      reportId,
      reportIdMa,
      reportedTcb,
      ...(cpuid ? { cpuid } : {}),
      ...(cpuidProduct ? { cpuidProduct } : {}),
      chipId,
      committedTcb,
      currentVersion,
      committedVersion,
      launchTcb,
      ...(launchMitVector !== undefined ? { launchMitVector, currentMitVector } : {}),
      signatureR: littleToBig(sigR),
      signatureS: littleToBig(sigS),
    };
  } catch (e) {
    if (e instanceof ParseError) fail('truncated', e.message);
    throw e;
  }
}

function firmwareVersion(r: ByteReader, which: string): FirmwareVersion {
  const build = r.u8(`${which}_build`);
  const minor = r.u8(`${which}_minor`);
  const major = r.u8(`${which}_major`);
  return { major, minor, build };
}

function mbz(b: Uint8Array, offset: number): void {
  if (!isAllZero(b)) {
    fail(
      'reserved-nonzero',
      `reserved bytes at 0x${offset.toString(16)}..0x${(offset + b.length - 1).toString(16)} must be zero, found ${toHex(b)}`,
    );
  }
}

/**
 * A 72-byte little-endian ECDSA component: the P-384 value fits in the low 48 bytes, and the high 24
 * must be zero. A component that does not fit is left over-long so that verification rejects it.
 */
function littleToBig(field: Uint8Array): Uint8Array {
  const fits = isAllZero(field.subarray(48));
  const n = fits ? 48 : field.length;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = field[n - 1 - i]!;
  return out;
}

export function decodePolicy(p: bigint): SnpPolicy {
  if ((p & POLICY_RESERVED_MB1) === 0n)
    fail('reserved-policy-bit', 'policy bit 17 is reserved and must be 1');
  if ((p & ~POLICY_KNOWN_MASK) !== 0n) {
    fail('reserved-policy-bit', `policy bits 26..63 are reserved, found 0x${p.toString(16)}`);
  }
  const bit = (n: number) => (p & (1n << BigInt(n))) !== 0n;
  return {
    abiMinor: Number(p & 0xffn),
    abiMajor: Number((p >> 8n) & 0xffn),
    smt: bit(16),
    migrateMa: bit(18),
    debug: bit(19),
    singleSocket: bit(20),
    cxlAllowed: bit(21),
    memAes256Xts: bit(22),
    raplDis: bit(23),
    ciphertextHiding: bit(24),
    pageSwapDisable: bit(25),
  };
}

function decodePlatformInfo(p: bigint): SnpPlatformInfo {
  if ((p & ~PLATFORM_INFO_KNOWN_MASK) !== 0n) {
    fail('reserved-platform-info-bit', `platform_info 0x${p.toString(16)} sets reserved or unknown bits`);
  }
  const bit = (n: number) => (p & (1n << BigInt(n))) !== 0n;
  return {
    smtEnabled: bit(0),
    tsmeEnabled: bit(1),
    eccEnabled: bit(2),
    raplDisabled: bit(3),
    ciphertextHidingEnabled: bit(4),
    aliasCheckComplete: bit(5),
    tioEnabled: bit(7),
  };
}

function decodeSignerInfo(v: number): SignerInfo {
  if (v >>> 5 !== 0)
    fail('reserved-nonzero', `signer_info bits 5..31 are reserved, found 0x${v.toString(16)}`);
  const key = (v >>> 2) & 7;
  const signingKey: SigningKey | undefined =
    key === 0 ? 'vcek' : key === 1 ? 'vlek' : key === 7 ? 'none' : undefined;
  if (!signingKey) fail('reserved-nonzero', `signer_info SIGNING_KEY ${key} is reserved`);
  return { authorKeyEn: (v & 1) !== 0, maskChipKey: (v & 2) !== 0, signingKey };
}

/** Product generation from CPUID(1) family/model, as AMD's KDS product names. */
export function productFromCpuid(family: number, model: number): SnpProduct | undefined {
  if (family === 0x19) {
    if (model <= 0x0f) return 'Milan';
    if ((model >= 0x10 && model <= 0x1f) || (model >= 0xa0 && model <= 0xaf)) return 'Genoa';
  }
  if (family === 0x1a && model <= 0x11) return 'Turin';
  return undefined;
}

/**
 * TCB_VERSION layout: Milan and Genoa are [BOOT_LOADER, TEE, reserved×4, SNP, MICROCODE]; Turin is
 * [FMC, BOOT_LOADER, TEE, SNP, reserved×3, MICROCODE]. The same 8 bytes mean different SPLs, so the
 * product must be known before a TCB can be compared with a certificate.
 */
export function decodeTcb(raw: Uint8Array, product: SnpProduct): TcbVersion {
  const hex = toHex(raw.slice().reverse());
  if (product === 'Turin') {
    return { raw: hex, fmc: raw[0]!, bootloader: raw[1]!, tee: raw[2]!, snp: raw[3]!, microcode: raw[7]! };
  }
  return { raw: hex, bootloader: raw[0]!, tee: raw[1]!, snp: raw[6]!, microcode: raw[7]! };
}

/** Component names compared between TCBs, in KDS order. */
export const TCB_COMPONENTS = ['fmc', 'bootloader', 'tee', 'snp', 'microcode'] as const;
