/**
 * SEV-SNP evidence as Confidential Containers sends it. guest-components' snp attester
 * (attestation-agent/attester/src/snp/mod.rs) answers with serde_json of
 *
 *   struct SnpEvidence { attestation_report: sev::firmware::guest::AttestationReport,
 *                        cert_chain: Option<Vec<sev::firmware::host::CertTableEntry>> }
 *
 * (virtee/sev 6.3; Trustee's verifier, deps/verifier/src/snp, reads the same JSON with sev 7.1). The
 * report is not sent as bytes but field by field: integers as JSON numbers, byte arrays as arrays of
 * numbers, TCB versions as {fmc, bootloader, tee, snp, microcode}, firmware versions as
 * {major, minor, build}, the signature as {r, s} (72 little-endian bytes each), and the fields a
 * report version lacks (CPUID before v3, mitigation vectors before v5) as null. Reserved bytes are not
 * in the JSON at all.
 *
 * `fromCocoSnpEvidence` rebuilds the 1184-byte report (reserved bytes zero, as the firmware writes
 * them and as sev's own encoder does before Trustee checks the signature), so the binary parser and
 * verifier judge it exactly as they judge a raw report: nothing here is trusted, and a field changed
 * in the JSON breaks the signature. Certificates in `cert_chain` become a certificate table, which is
 * only collateral: they count once they chain to an AMD root.
 */

import { isObject } from '../../util/index.js';
import { AttestationError } from '../common/types.js';
import { type CertTableEntry, GUID_ARK, GUID_ASK, GUID_CRL, GUID_VCEK, GUID_VLEK } from './certtable.js';
import { productFromCpuid, REPORT_SIZE, SIGNED_SIZE } from './report.js';

/** Writes the report front to back; `zeros` skips reserved bytes (the buffer starts zeroed). */
class Writer {
  readonly buf = new Uint8Array(REPORT_SIZE);
  private readonly view = new DataView(this.buf.buffer);
  offset = 0;
  u32le(n: number): void {
    this.view.setUint32(this.offset, n, true);
    this.offset += 4;
  }
  u64le(n: number): void {
    this.view.setBigUint64(this.offset, BigInt(n), true);
    this.offset += 8;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.offset);
    this.offset += b.length;
  }
  zeros(n: number): void {
    this.offset += n;
  }
}

/** sev's CertType names (serde's unit variants) and their GHCB GUIDs; `OTHER` carries its own. */
const CERT_TYPES: Record<string, string> = {
  ARK: GUID_ARK,
  ASK: GUID_ASK,
  VCEK: GUID_VCEK,
  VLEK: GUID_VLEK,
  CRL: GUID_CRL,
};
const EMPTY_GUID = '00000000-0000-0000-0000-000000000000';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** AttestationReport's fields in sev's declaration order (serde writes them in this order). */
const REPORT_FIELDS = [
  'version',
  'guest_svn',
  'policy',
  'family_id',
  'image_id',
  'vmpl',
  'sig_algo',
  'current_tcb',
  'plat_info',
  'key_info',
  'report_data',
  'measurement',
  'host_data',
  'id_key_digest',
  'author_key_digest',
  'report_id',
  'report_id_ma',
  'reported_tcb',
  'cpuid_fam_id',
  'cpuid_mod_id',
  'cpuid_step',
  'chip_id',
  'committed_tcb',
  'current',
  'committed',
  'launch_tcb',
  'launch_mit_vector',
  'current_mit_vector',
  'signature',
] as const;
const TCB_FIELDS = ['fmc', 'bootloader', 'tee', 'snp', 'microcode'] as const;

export interface CocoSnpEvidence {
  /** The rebuilt 1184-byte ATTESTATION_REPORT, for parseReport / verifyReport. */
  report: Uint8Array;
  /** `cert_chain` as certificate-table entries; undefined when the guest sent none (null). */
  certTable?: CertTableEntry[];
}

function fail(message: string): never {
  throw new AttestationError('parse', 'bad-coco-evidence', `SEV-SNP CoCo evidence: ${message}`);
}

function onlyFields(o: Record<string, unknown>, allowed: readonly string[], where: string): void {
  const extra = Object.keys(o).filter((k) => !allowed.includes(k));
  if (extra.length > 0) {
    fail(`${where} has unknown fields ${extra.join(', ')} (a newer sev serialization is not understood)`);
  }
}

/**
 * An unsigned integer of at most `bits` bits. JSON numbers above 2^53 do not survive JSON.parse
 * exactly, so a u64 beyond that is refused rather than rebuilt wrong (the signature would fail).
 */
function uint(v: unknown, bits: 8 | 32 | 64, field: string): number {
  const max = bits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    fail(
      bits === 64 && typeof v === 'number' && v > max
        ? `${field} ${v} is beyond 2^53 and cannot be read exactly from JSON`
        : `${field} must be an unsigned ${bits}-bit integer, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

function byteArray(v: unknown, length: number, field: string): Uint8Array {
  if (!Array.isArray(v) || v.length !== length) {
    fail(`${field} must be an array of ${length} byte values`);
  }
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = uint(v[i], 8, `${field}[${i}]`);
  return out;
}

/** Data of any length (Vec<u8>): a JSON array of byte values. */
function byteVec(v: unknown, field: string): Uint8Array {
  if (!Array.isArray(v) || v.length === 0) fail(`${field} must be a non-empty array of byte values`);
  return byteArray(v, v.length, field);
}

function optional(v: unknown): v is null | undefined {
  return v === null || v === undefined;
}

interface Tcb {
  fmc: number | null;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

function tcb(v: unknown, field: string): Tcb {
  if (!isObject(v)) fail(`${field} must be a TCB version object {fmc, bootloader, tee, snp, microcode}`);
  onlyFields(v, TCB_FIELDS, field);
  return {
    fmc: optional(v.fmc) ? null : uint(v.fmc, 8, `${field}.fmc`),
    bootloader: uint(v.bootloader, 8, `${field}.bootloader`),
    tee: uint(v.tee, 8, `${field}.tee`),
    snp: uint(v.snp, 8, `${field}.snp`),
    microcode: uint(v.microcode, 8, `${field}.microcode`),
  };
}

/** sev's to_legacy_bytes (Milan, Genoa) and to_turin_bytes. */
function tcbBytes(t: Tcb, turin: boolean): Uint8Array {
  return turin
    ? new Uint8Array([t.fmc ?? 0, t.bootloader, t.tee, t.snp, 0, 0, 0, t.microcode])
    : new Uint8Array([t.bootloader, t.tee, 0, 0, 0, 0, t.snp, t.microcode]);
}

function firmwareVersion(v: unknown, field: string): Uint8Array {
  if (!isObject(v)) fail(`${field} must be a version object {major, minor, build}`);
  onlyFields(v, ['major', 'minor', 'build'], field);
  // Stored build, minor, major.
  return new Uint8Array([
    uint(v.build, 8, `${field}.build`),
    uint(v.minor, 8, `${field}.minor`),
    uint(v.major, 8, `${field}.major`),
  ]);
}

/** Rebuilds the binary report from sev's JSON form. */
export function reportFromCocoJson(v: unknown): Uint8Array {
  if (!isObject(v)) fail('attestation_report must be an object (sev AttestationReport)');
  onlyFields(v, REPORT_FIELDS, 'attestation_report');
  const version = uint(v.version, 32, 'version');
  if (version < 2 || version > 5) fail(`report version ${version} is not supported (2, 3, 4 and 5 are)`);

  const cpuidFields = ['cpuid_fam_id', 'cpuid_mod_id', 'cpuid_step'] as const;
  const cpuid = cpuidFields.map((f) => (optional(v[f]) ? null : uint(v[f], 8, f)));
  if (version >= 3 && cpuid.includes(null))
    fail(`a version ${version} report must carry ${cpuidFields.join(', ')}`);
  if (version < 3 && cpuid.some((c) => c !== null))
    fail('a version 2 report has no CPUID fields: they must be null');
  const mitFields = ['launch_mit_vector', 'current_mit_vector'] as const;
  const mit = mitFields.map((f) => (optional(v[f]) ? null : uint(v[f], 64, f)));
  if (version >= 5 && mit.includes(null))
    fail(`a version ${version} report must carry ${mitFields.join(', ')}`);
  if (version < 5 && mit.some((m) => m !== null))
    fail(`a version ${version} report has no mitigation vectors: they must be null`);

  const tcbs = {
    current_tcb: tcb(v.current_tcb, 'current_tcb'),
    reported_tcb: tcb(v.reported_tcb, 'reported_tcb'),
    committed_tcb: tcb(v.committed_tcb, 'committed_tcb'),
    launch_tcb: tcb(v.launch_tcb, 'launch_tcb'),
  };
  // sev writes FMC only for Turin, whose TCB layout differs; the four TCBs share one layout.
  const withFmc = Object.values(tcbs).filter((t) => t.fmc !== null).length;
  if (withFmc !== 0 && withFmc !== 4) fail('either every TCB version carries fmc (Turin) or none does');
  const turin = withFmc === 4;
  if (version >= 3) {
    const product = productFromCpuid(cpuid[0]!, cpuid[1]!);
    if (product === undefined) {
      fail(
        `CPUID family 0x${cpuid[0]!.toString(16)} model 0x${cpuid[1]!.toString(16)} is not a known SEV-SNP product`,
      );
    }
    if ((product === 'Turin') !== turin) {
      fail(`a ${product} report ${turin ? 'has no' : 'needs an'} fmc in its TCB versions`);
    }
  }

  const sig = v.signature;
  if (!isObject(sig)) fail('signature must be an object {r, s}');
  onlyFields(sig, ['r', 's'], 'signature');

  const w = new Writer();
  w.u32le(version);
  w.u32le(uint(v.guest_svn, 32, 'guest_svn'));
  w.u64le(uint(v.policy, 64, 'policy'));
  w.bytes(byteArray(v.family_id, 16, 'family_id'));
  w.bytes(byteArray(v.image_id, 16, 'image_id'));
  w.u32le(uint(v.vmpl, 32, 'vmpl'));
  w.u32le(uint(v.sig_algo, 32, 'sig_algo'));
  w.bytes(tcbBytes(tcbs.current_tcb, turin));
  w.u64le(uint(v.plat_info, 64, 'plat_info'));
  w.u32le(uint(v.key_info, 32, 'key_info'));
  w.zeros(4);
  w.bytes(byteArray(v.report_data, 64, 'report_data'));
  w.bytes(byteArray(v.measurement, 48, 'measurement'));
  w.bytes(byteArray(v.host_data, 32, 'host_data'));
  w.bytes(byteArray(v.id_key_digest, 48, 'id_key_digest'));
  w.bytes(byteArray(v.author_key_digest, 48, 'author_key_digest'));
  w.bytes(byteArray(v.report_id, 32, 'report_id'));
  w.bytes(byteArray(v.report_id_ma, 32, 'report_id_ma'));
  w.bytes(tcbBytes(tcbs.reported_tcb, turin));
  if (version >= 3) {
    w.bytes(new Uint8Array(cpuid as number[]));
    w.zeros(0x15);
  } else {
    w.zeros(0x18);
  }
  w.bytes(byteArray(v.chip_id, 64, 'chip_id'));
  w.bytes(tcbBytes(tcbs.committed_tcb, turin));
  w.bytes(firmwareVersion(v.current, 'current'));
  w.zeros(1);
  w.bytes(firmwareVersion(v.committed, 'committed'));
  w.zeros(1);
  w.bytes(tcbBytes(tcbs.launch_tcb, turin));
  if (version >= 5) {
    w.u64le(mit[0]!);
    w.u64le(mit[1]!);
  }
  w.zeros(SIGNED_SIZE - w.offset);
  w.bytes(byteArray(sig.r, 72, 'signature.r'));
  w.bytes(byteArray(sig.s, 72, 'signature.s'));
  w.zeros(REPORT_SIZE - w.offset);
  return w.buf;
}

/** `cert_chain`: serde of Vec<CertTableEntry {cert_type, data}>; the Empty terminator is skipped. */
export function certTableFromCocoJson(v: unknown): CertTableEntry[] {
  if (!Array.isArray(v)) fail('cert_chain must be null or a list of {cert_type, data}');
  if (v.length > 16) fail(`cert_chain has ${v.length} entries; at most 16 are accepted`);
  const out: CertTableEntry[] = [];
  for (const [i, e] of v.entries()) {
    const where = `cert_chain[${i}]`;
    if (!isObject(e)) fail(`${where} must be an object {cert_type, data}`);
    onlyFields(e, ['cert_type', 'data'], where);
    const t = e.cert_type;
    let guid: string;
    if (typeof t === 'string' && Object.hasOwn(CERT_TYPES, t)) guid = CERT_TYPES[t]!;
    else if (t === 'Empty') continue;
    else if (
      isObject(t) &&
      Object.keys(t).length === 1 &&
      typeof t.OTHER === 'string' &&
      UUID.test(t.OTHER.toLowerCase())
    ) {
      guid = t.OTHER.toLowerCase();
      if (guid === EMPTY_GUID) continue;
    } else {
      fail(
        `${where}.cert_type ${JSON.stringify(t)} is not one of ${Object.keys(CERT_TYPES).join(', ')}, Empty or {"OTHER": "<uuid>"}`,
      );
    }
    out.push({ guid, data: byteVec(e.data, `${where}.data`) });
  }
  return out;
}

/** guest-components' `{attestation_report, cert_chain}` → the binary report and its certificates. */
export function fromCocoSnpEvidence(v: unknown): CocoSnpEvidence {
  if (!isObject(v)) fail('evidence must be an object {attestation_report, cert_chain}');
  onlyFields(v, ['attestation_report', 'cert_chain'], 'evidence');
  const report = reportFromCocoJson(v.attestation_report);
  return optional(v.cert_chain) ? { report } : { report, certTable: certTableFromCocoJson(v.cert_chain) };
}

/**
 * The JSON guest-components' snp attester sends for a raw report and the certificates the host
 * returned with it: what sev's Decoder makes of the bytes, serialised by serde_json. The TCB layout
 * follows sev: from the CPUID fields in v3+ reports, from the CHIP_ID shape in v2 reports (Turin
 * chips use only its first 8 bytes). For tests and for agents that talk to a Trustee KBS.
 */
export function toCocoSnpEvidence(
  report: Uint8Array,
  certTable?: CertTableEntry[],
): {
  attestation_report: Record<string, unknown>;
  cert_chain: { cert_type: unknown; data: number[] }[] | null;
} {
  if (report.length !== REPORT_SIZE)
    throw new RangeError(`an SNP report is ${REPORT_SIZE} bytes, not ${report.length}`);
  const view = new DataView(report.buffer, report.byteOffset, report.byteLength);
  const u32 = (o: number) => view.getUint32(o, true);
  const u64 = (o: number) => {
    const n = view.getBigUint64(o, true);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 at 0x${o.toString(16)} exceeds 2^53`);
    return Number(n);
  };
  const arr = (o: number, n: number) => [...report.subarray(o, o + n)];
  const version = u32(0);
  const chipId = report.subarray(0x1a0, 0x1e0);
  const turin =
    version >= 3
      ? productFromCpuid(report[0x188]!, report[0x189]!) === 'Turin'
      : chipId.subarray(8).every((b) => b === 0) && chipId.subarray(0, 8).some((b) => b !== 0);
  const tcbAt = (o: number) =>
    turin
      ? {
          fmc: report[o]!,
          bootloader: report[o + 1]!,
          tee: report[o + 2]!,
          snp: report[o + 3]!,
          microcode: report[o + 7]!,
        }
      : {
          fmc: null,
          bootloader: report[o]!,
          tee: report[o + 1]!,
          snp: report[o + 6]!,
          microcode: report[o + 7]!,
        };
  const fw = (o: number) => ({ major: report[o + 2]!, minor: report[o + 1]!, build: report[o]! });
  const names = Object.fromEntries(Object.entries(CERT_TYPES).map(([k, g]) => [g, k]));
  return {
    attestation_report: {
      version,
      guest_svn: u32(4),
      policy: u64(8),
      family_id: arr(0x10, 16),
      image_id: arr(0x20, 16),
      vmpl: u32(0x30),
      sig_algo: u32(0x34),
      current_tcb: tcbAt(0x38),
      plat_info: u64(0x40),
      key_info: u32(0x48),
      report_data: arr(0x50, 64),
      measurement: arr(0x90, 48),
      host_data: arr(0xc0, 32),
      id_key_digest: arr(0xe0, 48),
      author_key_digest: arr(0x110, 48),
      report_id: arr(0x140, 32),
      report_id_ma: arr(0x160, 32),
      reported_tcb: tcbAt(0x180),
      cpuid_fam_id: version >= 3 ? report[0x188]! : null,
      cpuid_mod_id: version >= 3 ? report[0x189]! : null,
      cpuid_step: version >= 3 ? report[0x18a]! : null,
      chip_id: [...chipId],
      committed_tcb: tcbAt(0x1e0),
      current: fw(0x1e8),
      committed: fw(0x1ec),
      launch_tcb: tcbAt(0x1f0),
      launch_mit_vector: version >= 5 ? u64(0x1f8) : null,
      current_mit_vector: version >= 5 ? u64(0x200) : null,
      signature: { r: arr(SIGNED_SIZE, 72), s: arr(SIGNED_SIZE + 72, 72) },
    },
    cert_chain:
      certTable?.map((e) => ({ cert_type: names[e.guid] ?? { OTHER: e.guid }, data: [...e.data] })) ?? null,
  };
}
