/**
 * A client's policy for confidential inference servers: what it must see verified before it sends a
 * single prompt. Written as JSON (`cloister chat --policy FILE`) or built in code. Web-standard.
 */
import type { EarStatus } from '../attest/types.js';
import { isLoraScale, LORA_SCALE_RANGE } from '../wire/index.js';

export interface ClientPolicy {
  /** CPU TEE kinds accepted. `sample` (software only, never secure) must be named to be accepted. */
  tees: string[];
  /** The worst appraisal accepted: `affirming` (default) or `warning` (needed for `sample`). */
  minStatus: 'affirming' | 'warning';
  /** Expected claims, e.g. `{"mr_td": ["ab12…"], "rtmr1": [...]}`: the CPU appraisal must hold one of the values. */
  measurements: Record<string, string[]>;
  /** Allowed `sha256:<hex>` digests of sealed models; a request may name only a model with one of these. Empty: any. */
  models: string[];
  /**
   * The LoRA adapters the model must carry, each `sha256:<hex>` of the sealed adapter (loaded at
   * scale 1) or `sha256:<hex>@<scale>` (at that scale; compared as the float32 llama.cpp is given):
   * exactly these, each once, in any order; `[]`: the bare model, no adapter. Absent: not pinned —
   * then a model that carries adapters is refused when `models` pins digests (an adapter changes the
   * weights the pin was meant to fix), and accepted with a warning when `models` is empty (any model).
   */
  adapters?: string[];
  /** Allowed Cloister versions and code digests; empty: any. */
  software: { versions: string[]; digests: string[] };
  /** Ask for fresh evidence over a random nonce instead of the server's startup evidence. */
  fresh: boolean;
  /** Require at least one attested confidential GPU. */
  requireGpu: boolean;
  /**
   * Sources of shared serving keys accepted (`kbs:///repo/type/tag`): replicas that share keys hold
   * them because that broker resource's release policy let them, so naming it is trusting that policy.
   * Empty (default): only keys made inside the attested TEE.
   */
  sharedKeys: string[];
}

export const DEFAULT_CLIENT_POLICY: ClientPolicy = {
  tees: ['tdx', 'snp', 'sgx'],
  minStatus: 'affirming',
  measurements: {},
  models: [],
  software: { versions: [], digests: [] },
  fresh: true,
  requireGpu: false,
  sharedKeys: [],
};

export class PolicyFileError extends Error {
  override name = 'PolicyFileError';
}

const KNOWN = new Set([
  'tees',
  'minStatus',
  'measurements',
  'models',
  'adapters',
  'software',
  'fresh',
  'requireGpu',
  'sharedKeys',
]);

function stringList(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
    throw new PolicyFileError(`${what} must be a list of strings`);
  return v as string[];
}

/** Reads a policy document (JSON text or value); unknown keys are refused so a typo never loosens a policy. */
export function parseClientPolicy(input: string | unknown): ClientPolicy {
  let v: unknown = input;
  if (typeof input === 'string') {
    try {
      v = JSON.parse(input);
    } catch (e) {
      throw new PolicyFileError(`the policy is not JSON: ${(e as Error).message}`);
    }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new PolicyFileError('the policy must be a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!KNOWN.has(k)) throw new PolicyFileError(`unknown policy key '${k}'`);
  const p: ClientPolicy = structuredClone(DEFAULT_CLIENT_POLICY);
  if (o.tees !== undefined) p.tees = stringList(o.tees, 'tees');
  if (o.minStatus !== undefined) {
    if (o.minStatus !== 'affirming' && o.minStatus !== 'warning')
      throw new PolicyFileError('minStatus must be affirming or warning');
    p.minStatus = o.minStatus;
  }
  if (o.measurements !== undefined) {
    if (typeof o.measurements !== 'object' || o.measurements === null || Array.isArray(o.measurements))
      throw new PolicyFileError('measurements must be an object of claim → list of values');
    for (const [k, list] of Object.entries(o.measurements))
      p.measurements[k] = stringList(list, `measurements.${k}`);
  }
  if (o.models !== undefined) p.models = stringList(o.models, 'models');
  if (o.adapters !== undefined) {
    p.adapters = stringList(o.adapters, 'adapters');
    for (const pin of p.adapters) parseAdapterPin(pin);
  }
  if (o.sharedKeys !== undefined) p.sharedKeys = stringList(o.sharedKeys, 'sharedKeys');
  if (o.software !== undefined) {
    const s = o.software as Record<string, unknown>;
    if (typeof s !== 'object' || s === null) throw new PolicyFileError('software must be an object');
    if (s.versions !== undefined) p.software.versions = stringList(s.versions, 'software.versions');
    if (s.digests !== undefined) p.software.digests = stringList(s.digests, 'software.digests');
  }
  for (const k of ['fresh', 'requireGpu'] as const) {
    if (o[k] !== undefined) {
      if (typeof o[k] !== 'boolean') throw new PolicyFileError(`${k} must be true or false`);
      p[k] = o[k];
    }
  }
  return p;
}

/** A pinned adapter: its sealed digest and the scale it must be loaded with. */
export interface AdapterPin {
  digest: string;
  scale: number;
}

/**
 * `sha256:<64 hex>` (scale 1) or `sha256:<64 hex>@<scale>`, the scale a plain decimal number in the
 * range `cloister serve --lora` accepts. Throws PolicyFileError naming the entry.
 */
export function parseAdapterPin(pin: string): AdapterPin {
  const m = /^(sha256:[0-9a-f]{64})(?:@((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?$/.exec(pin);
  if (!m)
    throw new PolicyFileError(
      `adapters: "${pin}" is not sha256:<64 lowercase hex> or sha256:<64 lowercase hex>@<scale>`,
    );
  const scale = m[2] === undefined ? 1 : Number(m[2]);
  if (!isLoraScale(scale))
    throw new PolicyFileError(`adapters: "${pin}" has scale ${m[2]}; a scale is ${LORA_SCALE_RANGE}`);
  return { digest: m[1]!, scale };
}

export function statusAccepted(status: EarStatus, policy: ClientPolicy): boolean {
  return status === 'affirming' || (status === 'warning' && policy.minStatus === 'warning');
}
