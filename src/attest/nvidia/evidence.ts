/**
 * The evidence bytes a GPU attester hands over. Two JSON forms are accepted:
 *
 * 1. Cloister's envelope (what the agent produces):
 *    { "report": "<hex of SPDM request ‖ response>", "certChain": "<PEM, leaf first>",
 *      "nonce"?: "<hex>", "ccMode"?: "on" | "devtools" | "off",
 *      "driverRim"?: "<RIM XML>", "vbiosRim"?: "<RIM XML>", "ocsp"?: ["<base64 DER OCSPResponse>", …] }
 *    `ccMode` is what NVML told the agent (unsigned): it can only make the verdict worse.
 * 2. The NVIDIA attestation SDK's serialized evidence: a one-element array
 *    [{ "arch", "nonce" (hex), "evidence" (base64 report), "certificate" (base64 of the PEM chain) }].
 *
 * A bare report is not accepted: without its certificate chain it cannot be verified.
 */

import { fromBase64, fromHex, utf8 } from '../../util/bytes.js';
import { AttestationError } from '../common/types.js';

export type ReportedCcMode = 'on' | 'devtools' | 'off';

export interface NvidiaEvidence {
  report: Uint8Array;
  certChain: Uint8Array;
  nonce?: Uint8Array;
  arch?: string;
  ccMode?: ReportedCcMode;
  driverRim?: string;
  vbiosRim?: string;
  /** Stapled OCSP responses (DER) for the GPU and RIM chains. */
  ocsp?: Uint8Array[];
}

function fail(message: string, cause?: unknown): never {
  throw new AttestationError('parse', 'bad-evidence', message, cause === undefined ? undefined : { cause });
}

export function parseNvidiaEvidence(bytes: Uint8Array): NvidiaEvidence {
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    fail(
      'NVIDIA GPU evidence must be a JSON envelope { report, certChain, … } or NVIDIA SDK evidence JSON',
      e,
    );
  }
  if (Array.isArray(json)) {
    if (json.length !== 1) fail(`NVIDIA SDK evidence lists ${json.length} GPUs; submit one GPU per evidence`);
    const e = record(json[0], 'NVIDIA SDK evidence entry');
    return {
      report: decode(() => fromBase64(str(e, 'evidence')), 'evidence (base64)'),
      certChain: decode(() => fromBase64(str(e, 'certificate')), 'certificate (base64)'),
      nonce: decode(() => fromHex(str(e, 'nonce')), 'nonce (hex)'),
      arch: str(e, 'arch'),
    };
  }
  const e = record(json, 'NVIDIA evidence envelope');
  const out: NvidiaEvidence = {
    report: decode(() => fromHex(str(e, 'report')), 'report (hex)'),
    certChain: utf8.encode(str(e, 'certChain')),
  };
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
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string'))
      fail('evidence field "ocsp" is not a list of base64 strings');
    out.ocsp = list.map((x, i) => decode(() => fromBase64(x as string), `ocsp[${i}] (base64)`));
  }
  const known = new Set(['report', 'certChain', 'nonce', 'ccMode', 'driverRim', 'vbiosRim', 'ocsp']);
  const extra = Object.keys(e).filter((k) => !known.has(k));
  if (extra.length > 0) fail(`NVIDIA evidence envelope has unknown fields: ${extra.join(', ')}`);
  return out;
}

function record(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
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
    return fail(`evidence field ${what} is malformed`, e);
  }
}
