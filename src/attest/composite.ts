/**
 * Composite evidence: one CPU TEE plus N confidential GPUs, verified as one attester.
 *
 * The GPUs are bound to the CPU through their SPDM nonces. The attester (inside the CPU TEE) first
 * fixes the CPU report data (e.g. a hash of the key-broker nonce and its ephemeral key), then asks
 * GPU i for evidence answering
 *
 *   gpu_nonce(i) = SHA-256( "cloister/gpu-nonce/v1" ‖ cpu_report_data (64 bytes, zero-padded) ‖ u32be(i) )
 *
 * The verifier recomputes each nonce from the *verified* CPU report data and hands it to the GPU
 * verifier as `expectedReportData`. A GPU report taken for another CPU attestation (a replay, or a GPU
 * in another machine spliced into this evidence) answers a different nonce and is refused with
 * `gpu-not-bound`. The index keeps two GPUs from swapping places and one report from being listed twice.
 */
import { concatBytes, fromBase64, fromHex, sha256, toBase64Url, toHex, utf8 } from '../util/index.js';
import {
  type Appraisal,
  AttestationError,
  type EarStatus,
  REPORT_DATA_SIZE,
  type TeeKind,
  type VerifyOptions,
  worseStatus,
} from './common/types.js';
import { detectKind, isTeeKind, type VerifierRegistry } from './registry.js';

export const GPU_NONCE_LABEL = 'cloister/gpu-nonce/v1';
export const COMPOSITE_FORMAT = 'cloister/composite-evidence/v1';

/** The 32-byte SPDM nonce GPU `index` must answer, derived from the CPU evidence's report data. */
export async function deriveGpuNonce(cpuReportData: Uint8Array, index: number): Promise<Uint8Array> {
  if (cpuReportData.length > REPORT_DATA_SIZE) {
    throw new RangeError(`CPU report data is ${cpuReportData.length} bytes; at most 64`);
  }
  if (!Number.isInteger(index) || index < 0 || index > 0xffffffff) {
    throw new RangeError(`GPU index ${index} is not a u32`);
  }
  const padded = new Uint8Array(REPORT_DATA_SIZE);
  padded.set(cpuReportData);
  const i = new Uint8Array(4);
  new DataView(i.buffer).setUint32(0, index, false);
  return sha256(concatBytes(utf8.encode(GPU_NONCE_LABEL), padded, i));
}

const SPDM_NONCE_SIZE = 32;

/** The base cut (or zero-padded) to an SPDM nonce, as Trustee's regularize_data does. */
function prefixNonce(base: Uint8Array): Uint8Array {
  const out = new Uint8Array(SPDM_NONCE_SIZE);
  out.set(base.subarray(0, SPDM_NONCE_SIZE));
  return out;
}

export interface EvidencePart {
  /** The TEE kind; detected from the content when absent. */
  kind?: TeeKind;
  evidence: Uint8Array;
}

export interface CompositeEvidence {
  cpu: EvidencePart;
  gpus: EvidencePart[];
}

export interface CompositeAppraisal {
  /** The worst status over all submodules. */
  status: EarStatus;
  /** `cpu0`, then `gpu0`, `gpu1`, … in evidence order; ready for `issueEar`. */
  submods: Record<string, Appraisal>;
}

function kindOf(part: EvidencePart, name: string): TeeKind {
  const kind = part.kind ?? detectKind(part.evidence);
  if (kind === undefined) {
    throw new AttestationError(
      'parse',
      'unknown-format',
      `${name}: the evidence format is not recognised; name its kind`,
    );
  }
  return kind;
}

function prefixed(e: unknown, name: string): never {
  if (e instanceof AttestationError) {
    throw new AttestationError(e.stage, e.code, `${name}: ${e.message}`, { cause: e });
  }
  throw e;
}

/**
 * Verifies the CPU evidence, then every GPU evidence against the nonce derived from the CPU's report
 * data. Any verification failure is thrown (an AttestationError naming the submodule); appraisal
 * results are combined, and the overall status is the worst of them.
 */
export async function appraiseComposite(
  evidence: CompositeEvidence,
  options: VerifyOptions,
  /** The verifiers to use: `createDefaultRegistry()` for every shipped kind, or a narrower one. */
  registry: VerifierRegistry,
  binding: {
    gpuNonceBase?: Uint8Array;
    gpuTrustAnchors?: Uint8Array[];
    /**
     * `derived` (default): GPU i answers deriveGpuNonce(base, i). `prefix`: every GPU answers the
     * base's first 32 bytes, as guest-components' nvidia attester and Trustee's verifier do; the
     * primary report data then covers the GPU list, which fixes the GPUs' order and number.
     */
    gpuNonce?: 'derived' | 'prefix';
  } = {},
): Promise<CompositeAppraisal> {
  const cpuKind = kindOf(evidence.cpu, 'cpu0');
  if (cpuKind === 'nvidia') {
    throw new AttestationError(
      'parse',
      'composite-bad-kind',
      'cpu0: GPU evidence cannot anchor composite evidence',
    );
  }
  const cpu = await registry
    .get(cpuKind)
    .appraiseEvidence(evidence.cpu.evidence, options)
    .catch((e: unknown) => prefixed(e, 'cpu0'));
  const rd = cpu.claims.report_data;
  if (typeof rd !== 'string' || !/^(?:[0-9a-f]{2}){1,64}$/.test(rd)) {
    throw new AttestationError(
      'appraise',
      'composite-no-report-data',
      `cpu0: the ${cpuKind} verifier exposes no "report_data" claim (lower-case hex), so GPU evidence cannot be bound to it`,
    );
  }
  // The key broker binds GPUs to a base fixed before the CPU evidence (its report data must cover the
  // GPU evidence, so it cannot exist before it); standalone composite evidence uses the report data.
  const nonceBase = binding.gpuNonceBase ?? fromHex(rd);

  const submods: Record<string, Appraisal> = { cpu0: cpu };
  let status = cpu.status;
  for (const [i, part] of evidence.gpus.entries()) {
    const name = `gpu${i}`;
    const kind = kindOf(part, name);
    if (kind !== 'nvidia') {
      throw new AttestationError(
        'parse',
        'composite-bad-kind',
        `${name}: ${kind} evidence is not GPU evidence`,
      );
    }
    const verifier = registry.get(kind);
    const nonce = binding.gpuNonce === 'prefix' ? prefixNonce(nonceBase) : await deriveGpuNonce(nonceBase, i);
    // GPUs chain to another vendor's roots than the CPU: anchors replaced for the CPU do not apply.
    const { trustAnchors: _cpuAnchors, ...shared } = options;
    const gpuOptions: VerifyOptions = {
      ...shared,
      ...(binding.gpuTrustAnchors ? { trustAnchors: binding.gpuTrustAnchors } : {}),
    };
    let gpu: Appraisal;
    try {
      gpu = await verifier.appraiseEvidence(part.evidence, { ...gpuOptions, expectedReportData: nonce });
    } catch (e) {
      // Tell "genuine GPU evidence, but for another attestation" (splicing, replay) apart from "bad GPU
      // evidence" by checking once more without the binding; only the first is reported as unbound.
      const unbound = await verifier
        .appraiseEvidence(part.evidence, { ...gpuOptions, expectedReportData: undefined })
        .then(
          () => true,
          () => false,
        );
      if (unbound) {
        throw new AttestationError(
          'verify',
          'gpu-not-bound',
          `${name}: the GPU evidence is genuine but not bound to this CPU evidence: it must answer nonce ` +
            `${toHex(nonce)} (${
              binding.gpuNonce === 'prefix'
                ? 'the first 32 bytes of the binding base'
                : `SHA-256 of "${GPU_NONCE_LABEL}", the binding base and index ${i}`
            }); it was taken for another attestation (spliced or replayed)`,
          { cause: e },
        );
      }
      prefixed(e, name);
    }
    submods[name] = {
      ...gpu,
      claims: { ...gpu.claims, 'cloister.gpu_nonce': toHex(nonce) },
      findings: [
        ...gpu.findings,
        { check: 'cpu-binding', status: 'affirming', message: `bound to cpu0 through nonce ${toHex(nonce)}` },
      ],
    };
    status = worseStatus(status, gpu.status);
  }
  return { status, submods };
}

/**
 * The file form of composite evidence:
 *   { "format": "cloister/composite-evidence/v1",
 *     "cpu": { "tee": kind, "evidence": b64url }, "gpus": [ { "tee": "nvidia", "evidence": b64url }, … ] }
 */
export function encodeCompositeEvidence(c: CompositeEvidence): Uint8Array {
  const part = (p: EvidencePart) => ({
    ...(p.kind ? { tee: p.kind } : {}),
    evidence: toBase64Url(p.evidence),
  });
  return utf8.encode(JSON.stringify({ format: COMPOSITE_FORMAT, cpu: part(c.cpu), gpus: c.gpus.map(part) }));
}

/** Whether `bytes` look like the file form of composite evidence (cheap check before parsing). */
export function isCompositeEvidence(bytes: Uint8Array): boolean {
  const head = new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, 256));
  return /^\s*\{/.test(head) && bytes.length < 64 * 1024 * 1024 && head.includes(COMPOSITE_FORMAT);
}

export function decodeCompositeEvidence(bytes: Uint8Array): CompositeEvidence {
  const fail = (m: string): never => {
    throw new AttestationError('parse', 'bad-composite', `composite evidence: ${m}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    fail(`not UTF-8 JSON (${(e as Error).message})`);
  }
  const o = json as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || o.format !== COMPOSITE_FORMAT)
    fail(`format must be "${COMPOSITE_FORMAT}"`);
  const part = (p: unknown, name: string): EvidencePart => {
    const q = p as Record<string, unknown>;
    if (typeof q !== 'object' || q === null || typeof q.evidence !== 'string')
      fail(`${name}.evidence must be base64url`);
    let evidence: Uint8Array;
    try {
      evidence = fromBase64(q.evidence as string);
    } catch {
      return fail(`${name}.evidence must be base64url`);
    }
    if (q.tee === undefined) return { evidence };
    if (typeof q.tee !== 'string' || !isTeeKind(q.tee))
      fail(`${name}.tee ${JSON.stringify(q.tee)} is not a TEE kind`);
    return { kind: q.tee as TeeKind, evidence };
  };
  if (!Array.isArray(o.gpus)) fail('gpus must be a list');
  return { cpu: part(o.cpu, 'cpu'), gpus: (o.gpus as unknown[]).map((g, i) => part(g, `gpus[${i}]`)) };
}
