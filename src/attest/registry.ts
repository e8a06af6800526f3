/**
 * Which verifier handles which evidence. Verifiers are registered by kind (src/attest/index.ts lists
 * the defaults, and `createDefaultRegistry()` there is the one registry holding them all). There is no
 * process-wide registry: a mutable global would let any import change what every caller accepts, so
 * each caller builds or is handed its own; `detectKind` recognises evidence by its content so that
 * callers such as the CLI need no `--tee` flag for the common formats.
 *
 * A registry also holds the VerifierContext its verifiers remember chains and collateral in: a caller
 * that wants its own (a key broker with its own trust anchors, a test) passes
 * `{ context: createVerifierContext() }`; otherwise it shares the default context.
 */
import { utf8 } from '../util/index.js';
import { AttestationError, type KindVerifier, TEE_KINDS, type TeeKind } from './common/types.js';
import { defaultVerifierContext, type VerifierContext } from './context.js';

export interface RegistryOptions {
  /** Where the registered verifiers remember what they verified; default: the shared default context. */
  context?: VerifierContext;
}

export class VerifierRegistry {
  private readonly byKind = new Map<TeeKind, KindVerifier>();
  readonly context: VerifierContext;

  constructor(verifiers: Iterable<KindVerifier> = [], options: RegistryOptions = {}) {
    this.context = options.context ?? defaultVerifierContext;
    for (const v of verifiers) this.register(v);
  }

  /**
   * Adds a verifier; a second verifier for the same kind replaces the first. Calls through the registry
   * use the registry's context unless their options name another.
   */
  register(verifier: KindVerifier): void {
    const context = this.context;
    this.byKind.set(verifier.kind, {
      kind: verifier.kind,
      appraiseEvidence: (evidence, options) =>
        verifier.appraiseEvidence(evidence, options.context ? options : { ...options, context }),
    });
  }

  has(kind: TeeKind): boolean {
    return this.byKind.has(kind);
  }

  kinds(): TeeKind[] {
    return [...this.byKind.keys()];
  }

  /** The verifier for `kind`; an AttestationError (parse/unsupported-kind) when none is registered. */
  get(kind: TeeKind): KindVerifier {
    const v = this.byKind.get(kind);
    if (v === undefined) {
      const known = this.kinds();
      throw new AttestationError(
        'parse',
        'unsupported-kind',
        `no verifier registered for TEE kind "${kind}" (registered: ${known.length > 0 ? known.join(', ') : 'none'})`,
      );
    }
    return v;
  }
}

export { TEE_KINDS };

export function isTeeKind(s: string): s is TeeKind {
  return (TEE_KINDS as readonly string[]).includes(s);
}

const SNP_REPORT_SIZE = 1184;
const HCL_MAGIC = [0x48, 0x43, 0x4c, 0x41]; // "HCLA"
/** Azure HCL report: 32-byte header + 1184-byte hardware report, then the runtime-data header. */
const HCL_REPORT_TYPE_OFFSET = 32 + 1184 + 8;

function u16le(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function detectJson(bytes: Uint8Array): TeeKind | undefined {
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch {
    return undefined;
  }
  if (Array.isArray(json)) {
    // NVIDIA attestation SDK evidence: [{ arch, certificate, evidence, nonce }, …], one entry per GPU.
    const first = json[0] as Record<string, unknown> | undefined;
    return first !== undefined &&
      typeof first === 'object' &&
      first !== null &&
      'evidence' in first &&
      'arch' in first
      ? 'nvidia'
      : undefined;
  }
  if (typeof json !== 'object' || json === null) return undefined;
  const o = json as Record<string, unknown>;
  if (o.tee === 'sample') return 'sample';
  // Azure CVM evidence (Trustee's az-*-vtpm attesters): an HCL report and a vTPM quote, plus either the
  // TD quote (TDX) or the VCEK (SNP). The older SNP shape names them `report` and `quote`.
  const hasVtpm = ('hcl_report' in o || 'report' in o) && ('tpm_quote' in o || 'quote' in o);
  if (hasVtpm) return 'td_quote' in o ? 'az-tdx-vtpm' : 'az-snp-vtpm';
  if ('arch' in o && 'evidence' in o) return 'nvidia';
  return undefined;
}

/**
 * The TEE kind of `bytes` judged by content alone, or undefined when the format is not recognised.
 * This only routes evidence to a verifier; the verifier's parse stage decides whether it is valid.
 */
export function detectKind(bytes: Uint8Array): TeeKind | undefined {
  if (bytes.length >= 48) {
    // DCAP quote header: version u16, attestation key type u16 (2 = ECDSA P-256, 3 = P-384), TEE type
    // u32. The key type also tells a quote from an SNP report, whose version is a u32 (bytes 2..3 zero).
    const version = u16le(bytes, 0);
    const keyType = u16le(bytes, 2);
    const teeType = u32le(bytes, 4);
    if (keyType === 2 || keyType === 3) {
      if ((version === 4 || version === 5) && teeType === 0x81) return 'tdx';
      if (version === 3 && teeType === 0) return 'sgx';
    }
  }
  if (bytes.length === SNP_REPORT_SIZE) {
    const version = u32le(bytes, 0);
    if (version >= 2 && version <= 5) return 'snp';
  }
  if (bytes.length > HCL_REPORT_TYPE_OFFSET + 4 && HCL_MAGIC.every((m, i) => bytes[i] === m)) {
    const reportType = u32le(bytes, HCL_REPORT_TYPE_OFFSET);
    if (reportType === 2) return 'az-snp-vtpm';
    if (reportType === 4) return 'az-tdx-vtpm';
  }
  // SPDM 1.1/1.2 GET_MEASUREMENTS request (0x11 or 0x12, 0xE0) opens an NVIDIA attestation report.
  if (bytes.length >= 2 && (bytes[0] === 0x11 || bytes[0] === 0x12) && bytes[1] === 0xe0) return 'nvidia';
  const head = utf8Prefix(bytes);
  if (/^(?:11|12)e0[0-9a-f]{4}/i.test(head) && /^[0-9a-fA-F\s]*$/.test(head)) return 'nvidia';
  if (/^\s*[[{]/.test(head)) return detectJson(bytes);
  return undefined;
}

function utf8Prefix(bytes: Uint8Array): string {
  return new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, 64));
}
