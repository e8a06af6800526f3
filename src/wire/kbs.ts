/**
 * The Confidential Containers KBS protocol, version 0.4.0 (Trustee's kbs/docs/kbs_attestation_protocol.md
 * and the guest-components client are the specification; docs/kbs-protocol.md has the exact bytes).
 * Shared by the broker and the in-TEE client, so web-standard only.
 *
 *   POST /kbs/v0/auth      Request {version, tee, extra-params}   → Challenge {nonce, extra-params} + cookie
 *   POST /kbs/v0/attest    Attestation {runtime-data, tee-evidence, init-data?} → {token}
 *   GET  /kbs/v0/resource/<repository>/<type>/<tag>               → flattened JWE to the TEE's key
 *
 * Report-data binding: the primary evidence's report data is SHA-384 of the RFC 8785 canonical JSON
 * of {"tee-pubkey", "nonce", "additional-evidence"} (the last "" without devices), zero-padded to the
 * field. Device (GPU) evidence answers a nonce derived from SHA-384 of {"tee-pubkey", "nonce"} alone,
 * because the primary report data must cover the device evidence and so cannot exist before it.
 */

import type { CertTableEntry } from '../attest/index.js';
import { AttestationError, fromCocoSnpEvidence } from '../attest/index.js';
import { bs, canonicalizeBytes, fromBase64, fromHex, isObject, toBase64 } from '../util/index.js';

export const KBS_PROTOCOL_VERSION = '0.4.0';
export const SESSION_COOKIE = 'kbs-session-id';
export const RESOURCE_PATH =
  /^([A-Za-z0-9_-][A-Za-z0-9._-]*)\/([A-Za-z0-9_-][A-Za-z0-9._-]*)\/([A-Za-z0-9_-][A-Za-z0-9._-]*)$/;

/** The curves kbs_types' TeePubKey and Trustee's JWE code take, with their coordinate sizes in bytes. */
export const EC_CURVES = { 'P-256': 32, 'P-384': 48, 'P-521': 66 } as const;
export type EcCurve = keyof typeof EC_CURVES;
export type EcPublicJwk = { kty: 'EC'; crv: EcCurve; x: string; y: string; alg?: string };
/** Bits of a big-endian unsigned integer, from its first set bit. */
function bitLength(b: Uint8Array): number {
  const i = b.findIndex((x) => x !== 0);
  return i < 0 ? 0 : (b.length - i - 1) * 8 + (32 - Math.clz32(b[i]!));
}

export type RsaPublicJwk = { kty: 'RSA'; n: string; e: string; alg?: string };
export type TeePubkey = EcPublicJwk | RsaPublicJwk;

export interface KbsRequest {
  version: string;
  tee: string;
  'extra-params': unknown;
}

export interface KbsChallenge {
  nonce: string;
  'extra-params': unknown;
}

export interface KbsAttestation {
  'init-data'?: { format: string; body: string };
  'runtime-data': { nonce: string; 'tee-pubkey': TeePubkey };
  'tee-evidence': { primary_evidence: unknown; additional_evidence: string };
}

/**
 * What the KBS protocol's parsers refuse, by the problem `type` a client sees. No HTTP status here:
 * the broker's edge (src/kbs/server.ts) chooses it from one code → status table.
 */
export type ProtocolErrorCode =
  | 'malformed-request'
  | 'unsupported-version'
  | 'unsupported-tee'
  | 'malformed-attestation'
  | 'malformed-evidence'
  | 'unusable-key'
  | 'bad-resource-path';

/** A protocol violation by the client: becomes an RFC 7807 problem whose `type` is `code`. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const bad = (code: ProtocolErrorCode, msg: string) => new ProtocolError(code, msg);

function str(o: Record<string, unknown>, key: string, where: string): string {
  const v = o[key];
  if (typeof v !== 'string') throw bad('malformed-request', `${where}.${key} must be a string`);
  return v;
}

/**
 * Every name of kbs_types' `Tee` enum (kbs-types 0.18, as Trustee and guest-components use it),
 * spelled as serde writes it. A Request naming one of them is a well-formed Request; whether this
 * broker can verify that kind is a separate question (Broker.auth).
 */
export const TRUSTEE_TEES = [
  'az-snp-vtpm',
  'az-tdx-vtpm',
  'nvidia',
  'sgx',
  'snp',
  'tdx',
  'cca',
  'csv',
  'se',
  'hygondcu',
  'tpm',
  'sample',
  'sampledevice',
  'nvidia-dpu',
] as const;

/**
 * Trustee requires `=0.4.0` (semver: build metadata is ignored, a pre-release or another patch is
 * not): a 0.4.1 client would be refused there, so it is here too rather than half-understood.
 */
const VERSION = /^0\.4\.0(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$/;

export function parseRequest(body: unknown): KbsRequest {
  if (!isObject(body)) throw bad('malformed-request', 'Request must be a JSON object');
  const version = str(body, 'version', 'Request');
  if (!VERSION.test(version)) {
    throw bad(
      'unsupported-version',
      `protocol version ${version} is not supported; this broker speaks exactly ${KBS_PROTOCOL_VERSION}`,
    );
  }
  const tee = str(body, 'tee', 'Request');
  if (!(TRUSTEE_TEES as readonly string[]).includes(tee))
    throw bad(
      'unsupported-tee',
      `"${tee}" is not a KBS protocol TEE name (one of ${TRUSTEE_TEES.join(', ')})`,
    );
  return { version, tee, 'extra-params': body['extra-params'] ?? '' };
}

export function parseAttestation(body: unknown): KbsAttestation {
  if (!isObject(body)) throw bad('malformed-attestation', 'Attestation must be a JSON object');
  const rd = body['runtime-data'];
  if (!isObject(rd)) throw bad('malformed-attestation', 'Attestation.runtime-data must be an object');
  const nonce = str(rd, 'nonce', 'runtime-data');
  const teePubkey = parseTeePubkey(rd['tee-pubkey']);
  const te = body['tee-evidence'];
  if (!isObject(te)) throw bad('malformed-attestation', 'Attestation.tee-evidence must be an object');
  if (te.primary_evidence === undefined || te.primary_evidence === null) {
    throw bad('malformed-attestation', 'tee-evidence.primary_evidence is missing');
  }
  const additional = te.additional_evidence ?? '';
  if (typeof additional !== 'string') {
    throw bad(
      'malformed-attestation',
      'tee-evidence.additional_evidence must be a JSON string ("" without devices)',
    );
  }
  const out: KbsAttestation = {
    'runtime-data': { nonce, 'tee-pubkey': teePubkey },
    'tee-evidence': { primary_evidence: te.primary_evidence, additional_evidence: additional },
  };
  const init = body['init-data'];
  if (init !== undefined && init !== null) {
    if (!isObject(init)) throw bad('malformed-attestation', 'init-data must be an object {format, body}');
    out['init-data'] = { format: str(init, 'format', 'init-data'), body: str(init, 'body', 'init-data') };
  }
  return out;
}

const B64URL = /^[A-Za-z0-9_-]+$/;

/**
 * The TEE's ephemeral key must be one the broker can encrypt to: EC P-256, P-384 or P-521
 * (ECDH-ES+A256KW) or RSA of at least 2048 bits (RSA-OAEP-256) — kbs_types' TeePubKey minus Trustee's
 * deprecated RSA1_5. Anything else is refused at attestation, before evidence is verified.
 */
export function parseTeePubkey(v: unknown): TeePubkey {
  if (!isObject(v)) throw bad('unusable-key', 'runtime-data.tee-pubkey must be a JWK object');
  if (['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth'].some((f) => f in v)) {
    throw bad('unusable-key', 'tee-pubkey contains private key material');
  }
  const bytesOf = (s: string, field: string): Uint8Array => {
    try {
      return fromBase64(s);
    } catch {
      throw bad('unusable-key', `tee-pubkey ${field} is not base64url`);
    }
  };
  const alg = typeof v.alg === 'string' ? v.alg : undefined;
  if (v.kty === 'EC') {
    const crv = v.crv;
    if (typeof crv !== 'string' || !Object.hasOwn(EC_CURVES, crv))
      throw bad(
        'unusable-key',
        `tee-pubkey curve ${String(crv)} is not supported (use ${Object.keys(EC_CURVES).join(', ')})`,
      );
    const size = EC_CURVES[crv as EcCurve];
    const x = str(v, 'x', 'tee-pubkey');
    const y = str(v, 'y', 'tee-pubkey');
    if (
      !B64URL.test(x) ||
      !B64URL.test(y) ||
      bytesOf(x, 'x').length !== size ||
      bytesOf(y, 'y').length !== size
    ) {
      throw bad('unusable-key', `tee-pubkey x and y must be ${size}-byte base64url coordinates for ${crv}`);
    }
    if (alg !== undefined && alg !== 'ECDH-ES+A256KW' && alg !== 'ECDH-ES') {
      throw bad('unusable-key', `tee-pubkey alg ${alg} is not supported for EC keys (use ECDH-ES+A256KW)`);
    }
    return { kty: 'EC', crv: crv as EcCurve, x, y, ...(alg ? { alg } : {}) };
  }
  if (v.kty === 'RSA') {
    const n = str(v, 'n', 'tee-pubkey');
    const e = str(v, 'e', 'tee-pubkey');
    if (!B64URL.test(n) || !B64URL.test(e)) throw bad('unusable-key', 'tee-pubkey n and e must be base64url');
    // Counted from the first set bit: leading zero bytes would otherwise pass a 1024-bit modulus.
    const bits = bitLength(bytesOf(n, 'n'));
    if (bits < 2048)
      throw bad('unusable-key', `tee-pubkey RSA modulus is ${bits} bits; at least 2048 are required`);
    // An odd exponent of at least 3 (RFC 8017 §3.1); 1 would leave the key wrapping in the clear.
    const exponent = bytesOf(e, 'e');
    if (bitLength(exponent) < 2 || (exponent.at(-1)! & 1) === 0)
      throw bad('unusable-key', 'tee-pubkey RSA exponent e must be odd and at least 3');
    if (alg !== undefined && alg !== 'RSA-OAEP-256') {
      throw bad('unusable-key', `tee-pubkey alg ${alg} is not supported for RSA keys (use RSA-OAEP-256)`);
    }
    return { kty: 'RSA', n, e, ...(alg ? { alg } : {}) };
  }
  throw bad('unusable-key', `tee-pubkey kty ${String(v.kty)} is not supported (use EC or RSA)`);
}

async function sha384(b: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-384', bs(b)));
}

/** SHA-384 over the canonical JSON the primary evidence's report data must carry. */
export function primaryRuntimeDataHash(
  teePubkey: TeePubkey,
  nonce: string,
  additionalEvidence: string,
): Promise<Uint8Array> {
  return sha384(
    canonicalizeBytes({ 'tee-pubkey': teePubkey, nonce, 'additional-evidence': additionalEvidence }),
  );
}

/** SHA-384 over the canonical JSON that device (GPU) evidence is bound to. */
export function deviceRuntimeDataHash(teePubkey: TeePubkey, nonce: string): Promise<Uint8Array> {
  return sha384(canonicalizeBytes({ 'tee-pubkey': teePubkey, nonce }));
}

/** A report-data field holding `hash`, zero-padded (TDX, SGX, SNP and sample fields are 64 bytes). */
export function reportDataField(hash: Uint8Array, size = 64): Uint8Array {
  const out = new Uint8Array(size);
  out.set(hash.subarray(0, size));
  return out;
}

/**
 * The report data that binds the TEE's ephemeral key and the broker's nonce (and the device evidence,
 * "" without devices) into the primary evidence: what the TEE asks its hardware to sign and what the
 * broker expects to find. Both sides call this one function, so they cannot drift apart.
 */
export async function bindingReportData(
  teePubkey: TeePubkey,
  nonce: string,
  additionalEvidence: string,
): Promise<Uint8Array> {
  return reportDataField(await primaryRuntimeDataHash(teePubkey, nonce, additionalEvidence));
}

export function parseResourcePath(path: string): { repository: string; type: string; tag: string } {
  const m = RESOURCE_PATH.exec(path);
  if (!m) throw bad('bad-resource-path', `"${path}" is not <repository>/<type>/<tag>`);
  return { repository: m[1]!, type: m[2]!, tag: m[3]! };
}

/**
 * Evidence bytes for a verifier from the JSON the client sent. TDX and SGX follow guest-components
 * (`{"quote": base64, "cc_eventlog"?: base64 | null}`); SEV-SNP is guest-components'
 * `{"attestation_report": <sev's JSON of the report>, "cert_chain": [{cert_type, data}] | null}` or
 * Cloister's `{"report": base64, "vcek"?: base64 DER, "vlek"?: base64 DER}`; sample and Azure evidence
 * are JSON documents passed through; anything else may be a base64 string of the raw evidence.
 * Certificates sent with the evidence come back as `extra` (collateral file names) or `certTable`.
 */
export function primaryEvidenceBytes(
  tee: string,
  v: unknown,
): { evidence: Uint8Array; extra: Record<string, Uint8Array>; certTable?: CertTableEntry[] } {
  const b64 = (s: unknown, field: string): Uint8Array => {
    if (typeof s !== 'string')
      throw bad('malformed-evidence', `${tee} evidence: ${field} must be a base64 string`);
    try {
      return fromBase64(s);
    } catch {
      throw bad('malformed-evidence', `${tee} evidence: ${field} is not base64`);
    }
  };
  if (typeof v === 'string') return { evidence: b64(v, 'evidence'), extra: {} };
  if (!isObject(v)) throw bad('malformed-evidence', `${tee} evidence must be an object or a base64 string`);
  if (tee === 'tdx' || tee === 'sgx') {
    // guest-components' TDX attester adds the CC event log (CCEL, with its own AA events appended);
    // older releases sent the AA event log apart. Neither is replayed here (policies read the RTMRs),
    // but what is sent must be what Trustee would accept: null or base64.
    for (const log of ['cc_eventlog', 'aa_eventlog'] as const) {
      if (v[log] !== undefined && v[log] !== null) b64(v[log], log);
    }
    return { evidence: b64(v.quote, 'quote'), extra: {} };
  }
  if (tee === 'snp') {
    if ('attestation_report' in v) {
      try {
        const { report, certTable } = fromCocoSnpEvidence(v);
        return { evidence: report, extra: {}, ...(certTable ? { certTable } : {}) };
      } catch (e) {
        if (e instanceof AttestationError) throw bad('malformed-evidence', e.message);
        throw e;
      }
    }
    if (!('report' in v)) {
      throw bad(
        'malformed-evidence',
        'snp evidence must be guest-components\' {"attestation_report", "cert_chain"} or {"report": base64, "vcek"?, "vlek"?}',
      );
    }
    const extra: Record<string, Uint8Array> = {};
    if (v.vcek !== undefined) extra['vcek.der'] = b64(v.vcek, 'vcek');
    if (v.vlek !== undefined) extra['vlek.der'] = b64(v.vlek, 'vlek');
    return { evidence: b64(v.report, 'report'), extra };
  }
  return { evidence: new TextEncoder().encode(JSON.stringify(v)), extra: {} };
}

/**
 * How device evidence is bound to the session. `cloister`: GPU i answers
 * `deriveGpuNonce(device_base, i)` (src/attest/composite.ts). `coco`: every device answers the first
 * 32 bytes of device_base, as guest-components' nvidia attester takes its nonce and Trustee's
 * verifier expects it (regularize_data to the SPDM nonce size).
 */
export type DeviceNonceForm = 'cloister' | 'coco';

export interface DeviceEvidence {
  kind: 'nvidia';
  evidence: Uint8Array;
  nonce: DeviceNonceForm;
}

const HEX = /^(?:[0-9a-fA-F]{2})+$/;

/**
 * One entry of guest-components' `device_evidence_list` ({arch, uuid, evidence, certificate}, serde of
 * its NvDeviceReportAndCert) as the NVIDIA evidence the verifier reads. Like Trustee, `evidence` is
 * hex when it decodes as hex (older attesters) and base64 otherwise; `uuid` is the attester's label,
 * not signed, and is dropped.
 */
function cocoGpu(g: unknown, i: number): Uint8Array {
  const where = `nvidia device_evidence_list[${i}]`;
  if (!isObject(g))
    throw bad('malformed-evidence', `${where} must be an object {arch, uuid, evidence, certificate}`);
  const extra = Object.keys(g).filter((k) => !['arch', 'uuid', 'evidence', 'certificate'].includes(k));
  if (extra.length > 0) throw bad('malformed-evidence', `${where} has unknown fields ${extra.join(', ')}`);
  const arch = g.arch;
  if (typeof arch !== 'string' || !['HOPPER', 'BLACKWELL', 'LS10'].includes(arch.toUpperCase())) {
    throw bad('malformed-evidence', `${where}.arch must be HOPPER, BLACKWELL or LS10`);
  }
  if (arch.toUpperCase() === 'LS10') {
    throw bad(
      'unsupported-tee',
      `${where} is NVSwitch (LS10) evidence; this broker verifies GPUs (HOPPER, BLACKWELL) only`,
    );
  }
  if (g.uuid !== undefined && typeof g.uuid !== 'string')
    throw bad('malformed-evidence', `${where}.uuid must be a string`);
  if (typeof g.evidence !== 'string' || g.evidence === '')
    throw bad('malformed-evidence', `${where}.evidence must be a hex or base64 string`);
  if (typeof g.certificate !== 'string' || g.certificate === '')
    throw bad('malformed-evidence', `${where}.certificate must be base64 of the PEM chain`);
  let report: Uint8Array;
  try {
    report = HEX.test(g.evidence) ? fromHex(g.evidence) : fromBase64(g.evidence);
  } catch {
    throw bad('malformed-evidence', `${where}.evidence is neither hex nor base64`);
  }
  return new TextEncoder().encode(
    JSON.stringify({ arch: arch.toUpperCase(), evidence: toBase64(report), certificate: g.certificate }),
  );
}

/**
 * Device evidence from `additional_evidence`: a JSON string mapping a device TEE (kbs_types' name) to
 * its evidence. guest-components sends {"nvidia": {"device_evidence_list": [{arch, uuid, evidence,
 * certificate}, …]}} (one nonce for all devices); Cloister's agent {"nvidia": {"gpus": [evidence, …]}},
 * one entry per GPU in index order, each answering its own derived nonce.
 */
export function deviceEvidence(additional: string): DeviceEvidence[] {
  if (additional === '') return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(additional);
  } catch {
    throw bad('malformed-evidence', 'additional_evidence is not a JSON string');
  }
  if (!isObject(parsed))
    throw bad('malformed-evidence', 'additional_evidence must map device kinds to evidence');
  const out: DeviceEvidence[] = [];
  for (const [kind, value] of Object.entries(parsed)) {
    if (kind !== 'nvidia')
      throw bad('unsupported-tee', `device evidence kind "${kind}" is not supported (nvidia)`);
    if (isObject(value) && 'device_evidence_list' in value) {
      const list = value.device_evidence_list;
      if (!Array.isArray(list) || list.length === 0 || Object.keys(value).length !== 1)
        throw bad(
          'malformed-evidence',
          'nvidia evidence must be {"device_evidence_list": [ … ]} with at least one device',
        );
      const seen = new Set<string>();
      for (const [i, g] of list.entries()) {
        const evidence = cocoGpu(g, i);
        // The same report listed twice would count one GPU as two.
        const key = new TextDecoder().decode(evidence);
        if (seen.has(key))
          throw bad(
            'malformed-evidence',
            `nvidia device_evidence_list[${i}] repeats an earlier device's report`,
          );
        seen.add(key);
        out.push({ kind: 'nvidia', evidence, nonce: 'coco' });
      }
      continue;
    }
    const gpus = isObject(value) ? value.gpus : undefined;
    if (!Array.isArray(gpus) || gpus.length === 0)
      throw bad(
        'malformed-evidence',
        'nvidia evidence must be {"device_evidence_list": [ … ]} or {"gpus": [ … ]}',
      );
    for (const g of gpus) {
      out.push({
        kind: 'nvidia',
        evidence:
          typeof g === 'string' ? new TextEncoder().encode(g) : new TextEncoder().encode(JSON.stringify(g)),
        nonce: 'cloister',
      });
    }
  }
  return out;
}

/** The hashes CoCo init-data may name (Trustee's initdata specification 0.1.0), as Web Crypto names them. */
export const INIT_DATA_HASHES = ['SHA-256', 'SHA-384', 'SHA-512'] as const;

/**
 * Where each TEE kind's evidence carries the init-data digest (a claim of its appraisal), and how long
 * that field is: the digest is cut or zero-padded to it. The broker checks init-data against it; a
 * receipt verifier checks the job's init-data against it.
 */
export const INIT_DATA_FIELDS: Readonly<Partial<Record<string, { claim: string; bytes: number }>>> = {
  tdx: { claim: 'mr_config_id', bytes: 48 },
  snp: { claim: 'host_data', bytes: 32 },
  // Set by `--init-data` with `--tee sample`: the sample "host" is the agent itself, so this binds
  // nothing real; it lets an operator try init-data policies before hardware (dev mode only).
  sample: { claim: 'host_data', bytes: 32 },
};
export type InitDataHash = (typeof INIT_DATA_HASHES)[number];

const INIT_DATA_ALGORITHMS: Readonly<Record<string, InitDataHash>> = {
  // The spec's names and IANA's textual names for the same hashes.
  sha256: 'SHA-256',
  'sha-256': 'SHA-256',
  sha384: 'SHA-384',
  'sha-384': 'SHA-384',
  sha512: 'SHA-512',
  'sha-512': 'SHA-512',
};

/** The hash an init-data document's `algorithm` names, or undefined for anything else. */
export function initDataHash(algorithm: unknown): InitDataHash | undefined {
  return typeof algorithm === 'string' ? INIT_DATA_ALGORITHMS[algorithm.toLowerCase()] : undefined;
}

/** The init-data `data` key that names the training job (the manifest's SHA-256) a TEE was launched for. */
export const INIT_DATA_JOB = 'cloister.train.manifest';
/** The init-data `data` key naming the trainer's digest, so key policies can approve a trainer. */
export const INIT_DATA_TRAINER = 'cloister.train.trainer';
/**
 * The init-data `data` key naming, as a JSON array of kbs:/// URIs, whom the job's outputs and
 * checkpoints are sealed to, so a key policy can refuse a job that would seal its result to others.
 */
export const INIT_DATA_RECIPIENTS = 'cloister.train.recipients';

/**
 * The init-data `data` key naming, for a fine-tuning job, the SHA-256 of the sealed frozen base model,
 * so the base's owner can approve the job for this base.
 */
export const INIT_DATA_BASE = 'cloister.train.base';
/**
 * The init-data `data` key saying, for a job with a frozen base, what leaves the TEE: `adapter` (the
 * built-in fine-tuners: an adapter, never the base), `adapter,merged` (also the base with the adapter
 * merged in, sealed to the base's owner too) or `files` (a command trainer: whatever it writes). The
 * base's owner's policy approves one of these, e.g. `== "adapter"`.
 */
export const INIT_DATA_OUTPUTS = 'cloister.train.outputs';

/** What a job with a frozen base lets out of the TEE (see INIT_DATA_OUTPUTS). */
export type BaseOutputs = 'adapter' | 'adapter,merged' | 'files';

/**
 * The CoCo init-data (JSON) a training TEE launches with: its digest goes into TDX mr_config_id /
 * SNP host_data, so the evidence names the job, the trainer and the recipients (and, fine-tuning,
 * the base and what leaves). One fixed serialisation without a trailing newline, because the digest
 * covers the exact bytes: `cloister train --print-init-data` prints the same text for the host.
 */
export function trainInitData(
  job: string,
  trainerDigest: string,
  recipients: readonly string[],
  base?: { sha256: string; outputs: BaseOutputs },
): string {
  return JSON.stringify({
    version: '0.1.0',
    algorithm: 'sha256',
    data: {
      [INIT_DATA_JOB]: job,
      [INIT_DATA_TRAINER]: trainerDigest,
      [INIT_DATA_RECIPIENTS]: JSON.stringify(recipients),
      ...(base ? { [INIT_DATA_BASE]: base.sha256, [INIT_DATA_OUTPUTS]: base.outputs } : {}),
    },
  });
}
