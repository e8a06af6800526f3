/**
 * Azure confidential VM "HCL report": what the paravisor (HCL) stores in vTPM NV index 0x01400001.
 * Layout (IGVM attestation request, as used by Azure's guest attestation library):
 *   header      32 bytes  'HCLA', version, report_size, request_type, status, reserved[3]
 *   hw_report 1184 bytes  SEV-SNP ATTESTATION_REPORT, or a TDX TDREPORT (1024 bytes) + zero padding
 *   runtime data header   data_size, version, report_type (2 SNP, 4 TDX), hash_type, variable_data_size
 *   variable data         the runtime JSON: vTPM AK/EK public keys (JWK), vm-configuration, user-data
 * The hardware report's REPORT_DATA starts with hash(variable data), which is what ties the vTPM AK
 * to the hardware-attested VM.
 */
import { ByteReader, isAllZero, ParseError, utf8 } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';

const HCL_MAGIC = 0x414c4348; // "HCLA" little-endian
const HEADER_SIZE = 32;
const HW_REPORT_SIZE = 1184;
const TD_REPORT_SIZE = 1024;
const RUNTIME_HEADER_SIZE = 20;

export type HclReportType = 'snp' | 'tdx';
export type HclHash = 'SHA-256' | 'SHA-384' | 'SHA-512';

export interface RuntimeData {
  version: number;
  reportType: HclReportType;
  hash: HclHash;
  /** The exact bytes hashed into the hardware report. */
  raw: Uint8Array;
  json: Record<string, unknown>;
  /** The vTPM attestation key (kid "HCLAkPub"), RSA JWK. */
  akPub: JsonWebKey;
  vmConfiguration?: Record<string, unknown>;
  userData?: string;
}

export interface ParsedHclReport {
  version: number;
  reportSize: number;
  requestType: number;
  status: number;
  /** 1184 bytes for SNP; the 1024-byte TDREPORT for TDX. */
  hwReport: Uint8Array;
  runtime: RuntimeData;
}

function fail(code: AttestationErrorCode, message: string): never {
  throw new AttestationError('parse', code, `Azure HCL report: ${message}`);
}

export function parseHclReport(input: Uint8Array): ParsedHclReport {
  const r = new ByteReader(input, 'Azure HCL report');
  try {
    if (r.u32le('signature') !== HCL_MAGIC) fail('bad-magic', 'does not start with "HCLA"');
    const version = r.u32le('version');
    if (version !== 1 && version !== 2)
      fail('unsupported-version', `version ${version} is not supported (1, 2 are)`);
    const reportSize = r.u32le('report_size');
    const requestType = r.u32le('request_type');
    const status = r.u32le('status');
    if (!isAllZero(r.bytesOf(12, 'reserved'))) fail('reserved-nonzero', 'reserved header bytes must be zero');
    const hw = r.bytesOf(HW_REPORT_SIZE, 'hw_report');
    const dataSize = r.u32le('runtime.data_size');
    const rtVersion = r.u32le('runtime.version');
    const reportTypeCode = r.u32le('runtime.report_type');
    const hashCode = r.u32le('runtime.hash_type');
    const varSize = r.u32le('runtime.variable_data_size');
    if (dataSize !== RUNTIME_HEADER_SIZE + varSize) {
      fail(
        'bad-length',
        `runtime data_size ${dataSize} is not ${RUNTIME_HEADER_SIZE} + variable_data_size ${varSize}`,
      );
    }
    if (reportSize !== HEADER_SIZE + HW_REPORT_SIZE + dataSize) {
      fail(
        'bad-length',
        `report_size ${reportSize} does not match its parts (${HEADER_SIZE + HW_REPORT_SIZE + dataSize})`,
      );
    }
    if (rtVersion !== 1)
      fail('unsupported-version', `runtime data version ${rtVersion} is not supported (1 is)`);
    const raw = r.bytesOf(varSize, 'runtime.variable_data');
    // The NV index is larger than the report: what follows report_size is zero padding, nothing else.
    if (!isAllZero(r.bytesOf(r.remaining, 'padding')))
      fail('trailing-bytes', 'non-zero bytes after report_size');
    const reportType: HclReportType | undefined =
      reportTypeCode === 2 ? 'snp' : reportTypeCode === 4 ? 'tdx' : undefined;
    if (!reportType)
      fail('unsupported-report-type', `runtime report_type ${reportTypeCode} is neither SNP (2) nor TDX (4)`);
    const hash: HclHash | undefined =
      hashCode === 1 ? 'SHA-256' : hashCode === 2 ? 'SHA-384' : hashCode === 3 ? 'SHA-512' : undefined;
    if (!hash) fail('unsupported-hash', `runtime hash_type ${hashCode} is not SHA-256/384/512 (1/2/3)`);
    let hwReport = hw;
    if (reportType === 'tdx') {
      if (!isAllZero(hw.subarray(TD_REPORT_SIZE)))
        fail('reserved-nonzero', 'bytes after the TDREPORT must be zero');
      hwReport = hw.subarray(0, TD_REPORT_SIZE);
    }
    return {
      version,
      reportSize,
      requestType,
      status,
      hwReport: hwReport.slice(),
      runtime: { version: rtVersion, reportType, hash, raw: raw.slice(), ...runtimeJson(raw) },
    };
  } catch (e) {
    if (e instanceof ParseError) fail('truncated', e.message);
    throw e;
  }
}

function runtimeJson(raw: Uint8Array): Pick<RuntimeData, 'json' | 'akPub' | 'vmConfiguration' | 'userData'> {
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(raw));
  } catch (e) {
    fail('bad-runtime-data', `runtime data is not UTF-8 JSON: ${(e as Error).message}`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json))
    fail('bad-runtime-data', 'runtime data is not a JSON object');
  const obj = json as Record<string, unknown>;
  const keys = Array.isArray(obj['keys']) ? (obj['keys'] as unknown[]) : [];
  const ak = keys.find(
    (k): k is JsonWebKey & { kid: string } =>
      !!k && typeof k === 'object' && (k as { kid?: unknown }).kid === 'HCLAkPub',
  );
  if (ak?.kty !== 'RSA' || typeof ak.n !== 'string' || typeof ak.e !== 'string') {
    fail('bad-runtime-data', 'runtime data has no RSA key with kid "HCLAkPub"');
  }
  const vm = obj['vm-configuration'];
  const ud = obj['user-data'];
  return {
    json: obj,
    akPub: { kty: 'RSA', n: ak.n, e: ak.e },
    ...(vm && typeof vm === 'object' ? { vmConfiguration: vm as Record<string, unknown> } : {}),
    ...(typeof ud === 'string' ? { userData: ud.toLowerCase() } : {}),
  };
}

/** REPORT_DATA of a TDREPORT (REPORTMACSTRUCT offset 128) and MRTD (TDINFO offset 512 + 16). */
export function tdReportFields(td: Uint8Array): { reportData: Uint8Array; mrtd: Uint8Array } {
  if (td.length !== TD_REPORT_SIZE)
    fail('truncated', `TDREPORT is ${td.length} bytes, not ${TD_REPORT_SIZE}`);
  return { reportData: td.slice(128, 192), mrtd: td.slice(528, 576) };
}

/** The runtime-data hash as it must appear at the start of REPORT_DATA. */
export async function runtimeDataHash(rt: RuntimeData): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest(rt.hash, rt.raw.slice()));
}

export function hashLength(h: HclHash): number {
  return h === 'SHA-256' ? 32 : h === 'SHA-384' ? 48 : 64;
}
