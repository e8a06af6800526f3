/**
 * Parse stage for an NVIDIA GPU attestation report: the SPDM 1.1 GET_MEASUREMENTS request the driver
 * sent (37 bytes, carrying the verifier's 32-byte nonce) followed by the GPU's MEASUREMENTS response,
 * whose last 96 bytes are an ECDSA P-384 signature (raw r‖s) over request ‖ response-before-signature.
 * Layouts: DMTF DSP0274 1.1 §10.11 (GET_MEASUREMENTS / MEASUREMENTS), §10.11.1 (measurement block,
 * DMTF measurement value), and NVIDIA's opaque-data TLV list as read by nvtrust and nvat.
 */

import { ByteReader, ParseError } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';
import { type GpuOpaqueData, parseOpaqueData } from './opaque.js';

export const SPDM_VERSION_1_1 = 0x11;
export const SPDM_GET_MEASUREMENTS = 0xe0;
export const SPDM_MEASUREMENTS = 0x60;
export const REQUEST_LENGTH = 37;
export const NONCE_LENGTH = 32;
/** ECDSA P-384 raw r‖s, the only signature NVIDIA Hopper and Blackwell GPUs produce. */
export const SIGNATURE_LENGTH = 96;
/** MeasurementSpecification bit 0: the DMTF measurement value format. */
const DMTF_MEASUREMENT_SPEC = 0x01;

export interface SpdmMeasurementRequest {
  version: number;
  /** Bit 0: the requester asked for a signed response. */
  param1: number;
  /** 0xff: all measurement blocks. */
  param2: number;
  nonce: Uint8Array;
  slotId: number;
}

export interface MeasurementBlock {
  /** SPDM measurement index, 1-based (RIM index = SPDM index − 1). */
  index: number;
  /** DMTFSpecMeasurementValueType: bits 0..6 the component class, bit 7 raw bit stream vs digest. */
  dmtfType: number;
  value: Uint8Array;
}

export interface SpdmMeasurementResponse {
  version: number;
  param1: number;
  param2: number;
  blocks: MeasurementBlock[];
  responderNonce: Uint8Array;
  opaqueData: GpuOpaqueData;
  signature: Uint8Array;
}

export interface ParsedGpuReport {
  request: SpdmMeasurementRequest;
  response: SpdmMeasurementResponse;
  /** The bytes the GPU signed: request ‖ response without its signature. */
  signedBytes: Uint8Array;
  raw: Uint8Array;
}

function parseFail(code: AttestationErrorCode, message: string, cause?: unknown): never {
  throw new AttestationError('parse', code, message, cause === undefined ? undefined : { cause });
}

/** Parses request ‖ response; every length is checked against the bytes and nothing may trail. */
export function parseGpuReport(bytes: Uint8Array): ParsedGpuReport {
  try {
    return parseUnchecked(bytes);
  } catch (e) {
    if (e instanceof AttestationError) throw e;
    if (e instanceof ParseError) {
      parseFail(
        e.field === 'trailing' ? 'trailing-bytes' : 'truncated',
        `GPU attestation report: ${e.message}`,
        e,
      );
    }
    throw e;
  }
}

function parseUnchecked(bytes: Uint8Array): ParsedGpuReport {
  if (bytes.length <= REQUEST_LENGTH + SIGNATURE_LENGTH) {
    parseFail(
      'truncated',
      `GPU attestation report is ${bytes.length} bytes, too short for an SPDM request and signed response`,
    );
  }
  const r = new ByteReader(bytes, 'GPU attestation report');
  const request: SpdmMeasurementRequest = {
    version: r.u8('request.SPDMVersion'),
    param1: 0,
    param2: 0,
    nonce: new Uint8Array(),
    slotId: 0,
  };
  checkVersion(request.version, 'request');
  const reqCode = r.u8('request.RequestResponseCode');
  if (reqCode !== SPDM_GET_MEASUREMENTS) {
    parseFail('bad-spdm-code', `SPDM request code is 0x${hex8(reqCode)}, expected GET_MEASUREMENTS (0xe0)`);
  }
  request.param1 = r.u8('request.Param1');
  request.param2 = r.u8('request.Param2');
  request.nonce = r.bytesOf(NONCE_LENGTH, 'request.Nonce');
  request.slotId = r.u8('request.SlotIDParam');
  if ((request.param1 & 1) !== 1) {
    parseFail(
      'unsigned-request',
      'the GET_MEASUREMENTS request did not ask for a signature (Param1 bit 0 clear)',
    );
  }
  if (request.param2 !== 0xff) {
    parseFail(
      'partial-measurements',
      `the GET_MEASUREMENTS request asked for block ${request.param2}, not all blocks (0xff); the GPU state cannot be judged`,
    );
  }

  const version = r.u8('response.SPDMVersion');
  checkVersion(version, 'response');
  const respCode = r.u8('response.RequestResponseCode');
  if (respCode !== SPDM_MEASUREMENTS) {
    parseFail('bad-spdm-code', `SPDM response code is 0x${hex8(respCode)}, expected MEASUREMENTS (0x60)`);
  }
  const param1 = r.u8('response.Param1');
  const param2 = r.u8('response.Param2');
  const numberOfBlocks = r.u8('response.NumberOfBlocks');
  if (numberOfBlocks === 0)
    parseFail('no-measurements', 'the MEASUREMENTS response has no measurement blocks');
  const recordLength =
    r.u8('response.MeasurementRecordLength') | (r.u16le('response.MeasurementRecordLength') << 8);
  const record = r.bytesOf(recordLength, 'response.MeasurementRecord');
  const blocks = parseMeasurementRecord(record, numberOfBlocks);
  const responderNonce = r.bytesOf(NONCE_LENGTH, 'response.Nonce');
  const opaqueLength = r.u16le('response.OpaqueLength');
  if (opaqueLength === 0)
    parseFail('no-opaque-data', 'the MEASUREMENTS response has no opaque data (driver/VBIOS versions)');
  const opaqueData = parseOpaqueData(r.bytesOf(opaqueLength, 'response.OpaqueData'));
  const signedEnd = r.offset;
  const signature = r.bytesOf(SIGNATURE_LENGTH, 'response.Signature');
  r.end();
  if ((param2 & 0x0f) !== (request.slotId & 0x0f)) {
    parseFail(
      'slot-mismatch',
      `response slot ${param2 & 0x0f} differs from the requested slot ${request.slotId & 0x0f}`,
    );
  }
  return {
    request,
    response: { version, param1, param2, blocks, responderNonce, opaqueData, signature },
    signedBytes: bytes.subarray(0, signedEnd),
    raw: bytes,
  };
}

function checkVersion(v: number, which: string): void {
  // SPDM 1.2 signs a prefixed transcript hash, not the raw messages; accepting it here would verify
  // the wrong bytes, so only the 1.1 format NVIDIA GPUs emit is accepted.
  if (v !== SPDM_VERSION_1_1) {
    parseFail(
      'unsupported-spdm-version',
      `SPDM ${which} version is 0x${hex8(v)}; only SPDM 1.1 (0x11) reports are supported`,
    );
  }
}

function parseMeasurementRecord(record: Uint8Array, count: number): MeasurementBlock[] {
  const r = new ByteReader(record, 'measurement record');
  const blocks: MeasurementBlock[] = [];
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    const index = r.u8(`block[${i}].Index`);
    if (index === 0)
      parseFail('bad-measurement-block', `measurement block ${i} has index 0 (indices start at 1)`);
    if (seen.has(index)) parseFail('bad-measurement-block', `measurement index ${index} appears twice`);
    seen.add(index);
    const spec = r.u8(`block[${i}].MeasurementSpecification`);
    if (spec !== DMTF_MEASUREMENT_SPEC) {
      parseFail(
        'bad-measurement-block',
        `measurement block ${index} is not in the DMTF format (specification 0x${hex8(spec)})`,
      );
    }
    const size = r.u16le(`block[${i}].MeasurementSize`);
    const m = new ByteReader(r.bytesOf(size, `block[${i}].Measurement`), `measurement block ${index}`);
    const dmtfType = m.u8('DMTFSpecMeasurementValueType');
    const valueSize = m.u16le('DMTFSpecMeasurementValueSize');
    const value = m.bytesOf(valueSize, 'DMTFSpecMeasurementValue');
    m.end();
    blocks.push({ index, dmtfType, value });
  }
  r.end();
  return blocks;
}

function hex8(n: number): string {
  return n.toString(16).padStart(2, '0');
}
