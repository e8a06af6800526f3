/**
 * The evidence bytes a GPU attester hands over: JSON in the shape of the NVIDIA attestation SDK's
 * serialized GPU evidence, so that SDK output is accepted as it is and Cloister's detectKind routes it
 * by its `arch` and `evidence` fields:
 *
 *   { "arch": "HOPPER" | "BLACKWELL",        optional; must agree with the certificate chain
 *     "nonce": "<hex>",                        optional; must equal the report's requester nonce
 *     "evidence": "<base64 SPDM request ‖ response>",
 *     "certificate": "<base64 of the PEM chain, leaf first>",
 *     // Cloister additions, all optional:
 *     "ccMode": "on" | "devtools" | "off",     what NVML told the agent (unsigned: it can only make the
 *                                             verdict worse)
 *     "driverRim": "<RIM XML>", "vbiosRim": "<RIM XML>",
 *     "ocsp": ["<base64 DER OCSPResponse>", …] }
 *
 * or the SDK's list form holding exactly one such entry. A bare SPDM report (binary or hex) is refused
 * with a clear message: without its certificate chain it cannot be verified.
 */

import { fromBase64, fromHex, toHex, utf8 } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';

export type ReportedCcMode = 'on' | 'devtools' | 'off';

export interface NvidiaEvidence {
  report: Uint8Array;
  /** PEM text of the chain, leaf first. */
  certChain: Uint8Array;
  nonce?: Uint8Array;
  arch?: 'HOPPER' | 'BLACKWELL';
  ccMode?: ReportedCcMode;
  driverRim?: string;
  vbiosRim?: string;
  /** Stapled OCSP responses (DER) for the GPU and RIM chains. */
  ocsp?: Uint8Array[];
}

const FIELDS = new Set([
  'arch',
  'nonce',
  'evidence',
  'certificate',
  'ccMode',
  'driverRim',
  'vbiosRim',
  'ocsp',
]);

function fail(message: string, code: AttestationErrorCode = 'bad-evidence', cause?: unknown): never {
  throw new AttestationError('parse', code, message, cause === undefined ? undefined : { cause });
}

export function parseNvidiaEvidence(bytes: Uint8Array): NvidiaEvidence {
  const head = new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, 8)).trim();
  if (((bytes[0] === 0x11 || bytes[0] === 0x12) && bytes[1] === 0xe0) || /^1[12]e0/i.test(head)) {
    fail(
      'a bare SPDM report cannot be verified without its certificate chain: send NVIDIA SDK evidence JSON ({arch, nonce, evidence, certificate})',
      'missing-certificate-chain',
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    fail(
      'NVIDIA GPU evidence must be JSON: {arch, nonce, evidence, certificate, …} or a one-entry list of it',
      'bad-evidence',
      e,
    );
  }
  if (Array.isArray(json)) {
    if (json.length !== 1) fail(`NVIDIA SDK evidence lists ${json.length} GPUs; submit one GPU per evidence`);
    json = json[0];
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    fail('NVIDIA GPU evidence is not a JSON object');
  const e = json as Record<string, unknown>;
  const extra = Object.keys(e).filter((k) => !FIELDS.has(k));
  if (extra.length > 0) fail(`NVIDIA GPU evidence has unknown fields: ${extra.join(', ')}`);

  const out: NvidiaEvidence = {
    report: decode(() => fromBase64(str(e, 'evidence')), 'evidence (base64)'),
    certChain: decode(() => fromBase64(str(e, 'certificate')), 'certificate (base64 of PEM)'),
  };
  if (e['arch'] !== undefined) {
    const arch = str(e, 'arch').toUpperCase();
    if (arch !== 'HOPPER' && arch !== 'BLACKWELL') fail(`arch "${arch}" is not HOPPER or BLACKWELL`);
    out.arch = arch;
  }
  if (e['nonce'] !== undefined) out.nonce = decode(() => fromHex(str(e, 'nonce')), 'nonce (hex)');
  if (e['ccMode'] !== undefined) {
    const m = str(e, 'ccMode');
    if (m !== 'on' && m !== 'devtools' && m !== 'off') fail(`ccMode "${m}" is not on, devtools or off`);
    out.ccMode = m;
  }
  if (e['driverRim'] !== undefined) out.driverRim = str(e, 'driverRim');
  if (e['vbiosRim'] !== undefined) out.vbiosRim = str(e, 'vbiosRim');
  if (e['ocsp'] !== undefined) {
    const list = e['ocsp'];
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) {
      fail('evidence field "ocsp" is not a list of base64 strings');
    }
    out.ocsp = list.map((x, i) => decode(() => fromBase64(x as string), `ocsp[${i}] (base64)`));
  }
  return out;
}

/** Serializes evidence in the form parseNvidiaEvidence reads (what the agent sends). */
export function encodeNvidiaEvidence(e: NvidiaEvidence): Uint8Array {
  // Standard padded base64, as the NVIDIA SDK writes it.
  const b64 = (b: Uint8Array) => {
    let s = '';
    for (const x of b) s += String.fromCharCode(x);
    return btoa(s);
  };
  return utf8.encode(
    JSON.stringify({
      ...(e.arch ? { arch: e.arch } : {}),
      ...(e.nonce ? { nonce: toHex(e.nonce) } : {}),
      evidence: b64(e.report),
      certificate: b64(e.certChain),
      ...(e.ccMode ? { ccMode: e.ccMode } : {}),
      ...(e.driverRim ? { driverRim: e.driverRim } : {}),
      ...(e.vbiosRim ? { vbiosRim: e.vbiosRim } : {}),
      ...(e.ocsp ? { ocsp: e.ocsp.map(b64) } : {}),
    }),
  );
}

function str(o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (typeof v !== 'string') fail(`evidence field "${key}" is missing or not a string`);
  return v;
}

function decode(f: () => Uint8Array, what: string): Uint8Array {
  try {
    return f();
  } catch (e) {
    return fail(`evidence field ${what} is malformed`, 'bad-evidence', e);
  }
}
