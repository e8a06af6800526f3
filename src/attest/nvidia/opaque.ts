/**
 * NVIDIA's opaque data in the SPDM MEASUREMENTS response: a list of [type u16le | size u16le | value]
 * entries. Type numbers and value encodings follow nvtrust's OpaqueData parser and nvat's
 * GpuOpaqueDataParser; unlike them, an unknown or repeated type is refused instead of overwritten,
 * because two different driver versions in one signed report have no honest meaning.
 */

import { ByteReader, toHex } from '../../util/index.js';
import { AttestationError } from '../common/types.js';

export const OPAQUE_FIELD = {
  CERT_ISSUER_NAME: 1,
  CERT_AUTHORITY_KEY_IDENTIFIER: 2,
  DRIVER_VERSION: 3,
  GPU_INFO: 4,
  SKU: 5,
  VBIOS_VERSION: 6,
  MANUFACTURER_ID: 7,
  TAMPER_DETECTION: 8,
  SMC: 9,
  VPR: 10,
  NVDEC0_STATUS: 11,
  MSRSCNT: 12,
  CPRINFO: 13,
  BOARD_ID: 14,
  CHIP_SKU: 15,
  CHIP_SKU_MOD: 16,
  PROJECT: 17,
  PROJECT_SKU: 18,
  PROJECT_SKU_MOD: 19,
  FWID: 20,
  PROTECTED_PCIE_STATUS: 21,
  SWITCH_PDI: 22,
  FLOORSWEPT_PORTS: 23,
  POSITION_ID: 24,
  LOCK_SWITCH_STATUS: 25,
  GPU_LINK_CONN: 32,
  SYS_ENABLE_STATUS: 33,
  OPAQUE_DATA_VERSION: 34,
  CHIP_INFO: 35,
  FEATURE_FLAG: 36,
} as const;

const NAME_OF = new Map<number, string>(Object.entries(OPAQUE_FIELD).map(([k, v]) => [v, k.toLowerCase()]));

/** Highest opaque-data layout version understood (nvat: MAX_OPAQUE_DATA_VERSION). */
export const MAX_OPAQUE_DATA_VERSION = 1;
export const NVDEC0_ENABLED = 0xaa;
export const NVDEC0_DISABLED = 0x55;

/** The confidential-computing mode the GPU firmware reports (opaque data version ≥ 1). */
export type GpuCcFeature = 'spt' | 'mpt' | 'ppcie';
const FEATURE_FLAGS: Record<number, GpuCcFeature> = { 0: 'spt', 1: 'mpt', 2: 'ppcie' };

export interface GpuOpaqueData {
  /** Every entry by type number, raw. */
  fields: Map<number, Uint8Array>;
  driverVersion?: string;
  /** As NVIDIA formats it: `96.00.5E.00.01`. */
  vbiosVersion?: string;
  project?: string;
  projectSku?: string;
  chipSku?: string;
  chipInfo?: string;
  fwid?: Uint8Array;
  nvdec0Status?: number;
  measurementCounts?: number[];
  switchPdis?: Uint8Array[];
  opaqueDataVersion: number;
  /** Raw FEATURE_FLAG value and its name when known. */
  featureFlag?: { value: number; name: GpuCcFeature | undefined };
}

function fail(message: string): never {
  throw new AttestationError('parse', 'bad-opaque-data', message);
}

export function parseOpaqueData(bytes: Uint8Array): GpuOpaqueData {
  const r = new ByteReader(bytes, 'opaque data');
  const fields = new Map<number, Uint8Array>();
  while (r.remaining > 0) {
    const type = r.u16le('opaque.DataType');
    const size = r.u16le('opaque.DataSize');
    const value = r.bytesOf(size, `opaque[${type}].Data`);
    if (!NAME_OF.has(type)) fail(`opaque data has an unknown field type ${type}`);
    if (fields.has(type)) fail(`opaque data field ${NAME_OF.get(type)} (${type}) appears twice`);
    fields.set(type, value);
  }
  const out: GpuOpaqueData = { fields, opaqueDataVersion: 0 };
  const version = fields.get(OPAQUE_FIELD.OPAQUE_DATA_VERSION);
  if (version) {
    out.opaqueDataVersion = littleEndian(version, 'opaque_data_version');
    if (out.opaqueDataVersion > MAX_OPAQUE_DATA_VERSION) {
      throw new AttestationError(
        'parse',
        'unsupported-opaque-version',
        `opaque data version ${out.opaqueDataVersion} is newer than the supported ${MAX_OPAQUE_DATA_VERSION}; update Cloister for this GPU firmware`,
      );
    }
  }
  const text = (t: number): string | undefined => {
    const v = fields.get(t);
    return v ? asciiz(v, NAME_OF.get(t)!) : undefined;
  };
  out.driverVersion = text(OPAQUE_FIELD.DRIVER_VERSION);
  out.project = text(OPAQUE_FIELD.PROJECT);
  out.projectSku = text(OPAQUE_FIELD.PROJECT_SKU);
  out.chipSku = text(OPAQUE_FIELD.CHIP_SKU);
  out.chipInfo = text(OPAQUE_FIELD.CHIP_INFO);
  const vbios = fields.get(OPAQUE_FIELD.VBIOS_VERSION);
  if (vbios) out.vbiosVersion = formatVbiosVersion(vbios);
  const fwid = fields.get(OPAQUE_FIELD.FWID);
  if (fwid) out.fwid = fwid;
  const nvdec = fields.get(OPAQUE_FIELD.NVDEC0_STATUS);
  if (nvdec) {
    if (nvdec.length !== 1) fail(`nvdec0_status is ${nvdec.length} bytes, expected 1`);
    out.nvdec0Status = nvdec[0]!;
  }
  const counts = fields.get(OPAQUE_FIELD.MSRSCNT);
  if (counts) {
    if (counts.length % 4 !== 0) fail(`msrscnt is ${counts.length} bytes, not a multiple of 4`);
    const c = new ByteReader(counts, 'msrscnt');
    out.measurementCounts = Array.from({ length: counts.length / 4 }, (_, i) => c.u32le(`msrscnt[${i}]`));
  }
  const pdis = fields.get(OPAQUE_FIELD.SWITCH_PDI);
  if (pdis) {
    if (pdis.length % 8 !== 0) fail(`switch_pdi is ${pdis.length} bytes, not a multiple of 8`);
    out.switchPdis = Array.from({ length: pdis.length / 8 }, (_, i) => pdis.subarray(8 * i, 8 * i + 8));
  }
  const flag = fields.get(OPAQUE_FIELD.FEATURE_FLAG);
  if (flag) {
    const value = littleEndian(flag, 'feature_flag');
    out.featureFlag = { value, name: FEATURE_FLAGS[value] };
  }
  return out;
}

/**
 * NVIDIA prints the 8-byte little-endian VBIOS version as the upper four bytes followed by the byte
 * just below them (nvtrust format_vbios_version): bytes 00 5e 00 96 01 00 00 00 → 96.00.5E.00.01.
 */
export function formatVbiosVersion(raw: Uint8Array): string {
  if (raw.length !== 8) fail(`vbios_version is ${raw.length} bytes, expected 8`);
  const be = toHex(raw.slice().reverse());
  const digits = be.slice(8) + be.slice(6, 8);
  return (digits.match(/../g) ?? []).join('.').toUpperCase();
}

function littleEndian(b: Uint8Array, what: string): number {
  if (b.length === 0 || b.length > 6) fail(`${what} is ${b.length} bytes, expected 1..6`);
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

/** A NUL-padded printable-ASCII string (driver versions, project and SKU ids). */
function asciiz(b: Uint8Array, what: string): string {
  let end = b.length;
  while (end > 0 && b[end - 1] === 0) end--;
  let s = '';
  for (let i = 0; i < end; i++) {
    const c = b[i]!;
    if (c < 0x20 || c > 0x7e) fail(`${what} is not printable ASCII`);
    s += String.fromCharCode(c);
  }
  return s;
}

export function opaqueFieldName(type: number): string {
  return NAME_OF.get(type) ?? `type_${type}`;
}
