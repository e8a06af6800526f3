/**
 * GGUF LoRA adapters as llama.cpp loads them (`llama_adapter_lora_init`, checked against node-llama-cpp
 * 3.21.1): `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32: llama.cpp aborts on any other type),
 * `general.architecture` equal to the base model's; for each adapted base tensor `<name>` (e.g.
 * `blk.0.attn_q.weight`, ne = [in, out]) two tensors `<name>.lora_a` with ne = [in, r] and
 * `<name>.lora_b` with ne = [r, out]. llama.cpp adds scale · B(A x) to the base's W x, with
 * scale = s · alpha / r (s the scale the adapter is loaded with; alpha 0 means scale = s).
 *
 * In memory A is r rows of `in` values and B `out` rows of r values: exactly PEFT's `lora_A.weight`
 * [r, in] and `lora_B.weight` [out, r], and exactly ggml's order, so nothing is transposed.
 *
 * Web-standard: written by the fine-tuner and `cloister lora convert`, read (header, then values) by
 * `cloister serve --lora` before llama.cpp ever sees the file.
 */
import { GgufError, type GgufInfo, GgufValueType, readGgufInfo } from './gguf.js';
import { GgmlType, type GgufMetaValue, readTensorF32, writeGguf } from './gguf-tensors.js';

export type LoraAdapterCode =
  /** Not a GGUF file, or one llama.cpp would not read as a LoRA adapter. */
  | 'not-adapter'
  /** Tensors missing their pair, of the wrong rank, shaped inconsistently, or of rank 0. */
  | 'malformed'
  /** A weight that is NaN or infinite. */
  | 'not-finite'
  /** Made for another architecture or another base model (a tensor the base lacks, another shape). */
  | 'wrong-base';

export class LoraAdapterError extends Error {
  override name = 'LoraAdapterError';
  constructor(
    readonly code: LoraAdapterCode,
    message: string,
  ) {
    super(message);
  }
}

/** One adapted base tensor: delta W = scale · B A. */
export interface LoraPair {
  /** The base tensor's GGUF name, e.g. `blk.0.attn_q.weight`. */
  target: string;
  inputs: number;
  outputs: number;
  rank: number;
  /** [rank][inputs], row-major (PEFT's lora_A.weight). */
  a: Float32Array;
  /** [outputs][rank], row-major (PEFT's lora_B.weight). */
  b: Float32Array;
}

export interface LoraAdapter {
  /** The base model's `general.architecture` ("llama"). */
  architecture: string;
  alpha: number;
  /** `general.name`. */
  name: string;
  pairs: LoraPair[];
}

/** An adapter's header facts, without its values (what checking it against a base needs). */
export interface LoraAdapterShape {
  architecture: string;
  alpha: number;
  name: string;
  pairs: Omit<LoraPair, 'a' | 'b'>[];
}

export interface WriteLoraOptions {
  /** F32 (default) or F16 values. */
  type?: 'F32' | 'F16';
  /** Extra metadata (e.g. `general.base_model.*`, `cloister.*` provenance), written after the required keys. */
  metadata?: readonly (readonly [string, GgufMetaValue])[];
}

const A = '.lora_a';
const B = '.lora_b';

/** The GGUF bytes of an adapter. Refuses pairs whose sizes disagree, rank 0 and non-finite values. */
export function writeLoraAdapter(adapter: LoraAdapter, options: WriteLoraOptions = {}): Uint8Array {
  if (adapter.pairs.length === 0)
    throw new LoraAdapterError('malformed', 'a LoRA adapter needs at least one tensor pair');
  if (!Number.isFinite(adapter.alpha) || adapter.alpha < 0)
    throw new LoraAdapterError('malformed', `LoRA alpha must be a finite number ≥ 0, got ${adapter.alpha}`);
  const type = options.type ?? 'F32';
  const tensors = adapter.pairs.flatMap((p) => {
    if (p.rank < 1) throw new LoraAdapterError('malformed', `${p.target}: LoRA rank must be at least 1`);
    if (p.a.length !== p.rank * p.inputs || p.b.length !== p.outputs * p.rank)
      throw new LoraAdapterError('malformed', `${p.target}: A or B has the wrong number of values`);
    checkFinite(p.target, p.a, p.b);
    return [
      { name: `${p.target}${A}`, dims: [p.inputs, p.rank], type, data: p.a },
      { name: `${p.target}${B}`, dims: [p.rank, p.outputs], type, data: p.b },
    ];
  });
  return writeGguf(
    [
      ['general.architecture', { type: 'string', value: adapter.architecture }],
      ['general.type', { type: 'string', value: 'adapter' }],
      ['general.name', { type: 'string', value: adapter.name }],
      ['adapter.type', { type: 'string', value: 'lora' }],
      ['adapter.lora.alpha', { type: 'f32', value: adapter.alpha }],
      ...(options.metadata ?? []),
    ],
    tensors,
  );
}

function checkFinite(target: string, ...arrays: Float32Array[]): void {
  for (const x of arrays) {
    for (let i = 0; i < x.length; i++) {
      if (!Number.isFinite(x[i]!))
        throw new LoraAdapterError('not-finite', `${target}: the adapter has a weight that is ${x[i]}`);
    }
  }
}

/** The adapter's facts from its parsed header; refuses what llama.cpp would not load as a LoRA. */
export function loraAdapterShape(info: GgufInfo): LoraAdapterShape {
  const m = info.metadata;
  if (m.get('general.type') !== 'adapter' || m.get('adapter.type') !== 'lora')
    throw new LoraAdapterError(
      'not-adapter',
      'not a LoRA adapter (a GGUF LoRA adapter says general.type "adapter" and adapter.type "lora")',
    );
  // llama.cpp reads these with gguf_get_val_str / gguf_get_val_f32, which GGML_ASSERT the stored
  // type: any other type (a u32 alpha, say) aborts the whole process, plaintext left behind.
  for (const [key, want] of LLAMA_TYPED_KEYS) {
    const got = info.metadataTypes.get(key);
    // A missing key is refused below by its value (alpha) or was already (the strings).
    if (got !== undefined && got !== want)
      throw new LoraAdapterError(
        'not-adapter',
        `the adapter's ${key} has GGUF type ${typeName(got)}; llama.cpp reads it only as ${typeName(want)}`,
      );
  }
  const alpha = m.get('adapter.lora.alpha');
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha < 0)
    throw new LoraAdapterError('not-adapter', 'the adapter has no finite adapter.lora.alpha ≥ 0');
  const byName = new Map(info.tensors.map((t) => [t.name, t]));
  const pairs: LoraAdapterShape['pairs'] = [];
  for (const t of info.tensors) {
    if (t.name.endsWith(B)) {
      if (!byName.has(t.name.slice(0, -B.length) + A))
        throw new LoraAdapterError('malformed', `${t.name} has no ${A} beside it`);
      continue;
    }
    if (!t.name.endsWith(A))
      throw new LoraAdapterError('malformed', `${t.name} is neither a .lora_a nor a .lora_b tensor`);
    const target = t.name.slice(0, -A.length);
    const b = byName.get(target + B);
    if (!b) throw new LoraAdapterError('malformed', `${t.name} has no ${B} beside it`);
    if (t.dims.length !== 2 || b.dims.length !== 2)
      throw new LoraAdapterError('malformed', `${target}: LoRA tensors must be matrices`);
    const [inputs, rank] = t.dims as [number, number];
    const [rankB, outputs] = b.dims as [number, number];
    if (rankB !== rank)
      throw new LoraAdapterError(
        'malformed',
        `${target}: lora_a has rank ${rank} (ne [${t.dims}]) but lora_b has ${rankB} (ne [${b.dims}])`,
      );
    for (const x of [t, b]) {
      if (x.ggmlType !== GgmlType.F32 && x.ggmlType !== GgmlType.F16 && x.ggmlType !== GgmlType.BF16)
        throw new LoraAdapterError(
          'malformed',
          `${x.name} has ggml type ${x.ggmlType}; adapters here are F32, F16 or BF16`,
        );
    }
    pairs.push({ target, inputs, outputs, rank });
  }
  if (pairs.length === 0) throw new LoraAdapterError('malformed', 'the adapter has no LoRA tensors');
  const name = m.get('general.name');
  return { architecture: info.architecture, alpha, name: typeof name === 'string' ? name : '', pairs };
}

/** The adapter keys llama.cpp reads with a typed getter, and the one GGUF type each must have. */
const LLAMA_TYPED_KEYS: readonly (readonly [string, number])[] = [
  ['general.type', GgufValueType.STRING],
  ['general.architecture', GgufValueType.STRING],
  ['adapter.type', GgufValueType.STRING],
  ['adapter.lora.alpha', GgufValueType.FLOAT32],
];

function typeName(t: number): string {
  return (
    Object.entries(GgufValueType)
      .find(([, v]) => v === t)?.[0]
      .toLowerCase() ?? String(t)
  );
}

/** Reads and checks a whole adapter file: header, pairs, and every value finite. */
export function readLoraAdapter(bytes: Uint8Array): LoraAdapter {
  let info: GgufInfo;
  try {
    info = readGgufInfo(bytes);
  } catch (e) {
    if (e instanceof GgufError)
      throw new LoraAdapterError('not-adapter', `not a readable GGUF file: ${e.message}`);
    throw e;
  }
  if (!info.complete) throw new LoraAdapterError('not-adapter', 'the adapter file is truncated');
  const shape = loraAdapterShape(info);
  const pairs = shape.pairs.map((p) => {
    const a = readTensorF32(bytes, info, p.target + A);
    const b = readTensorF32(bytes, info, p.target + B);
    checkFinite(p.target, a, b);
    return { ...p, a, b };
  });
  return { ...shape, pairs };
}

/**
 * Refuses an adapter made for another architecture or another base: every adapted tensor must exist
 * in the base with ne = [inputs, outputs] (what llama.cpp checks, said before it loads anything).
 */
export function checkLoraAgainstBase(adapter: LoraAdapterShape, base: GgufInfo): void {
  if (adapter.architecture !== base.architecture)
    throw new LoraAdapterError(
      'wrong-base',
      `the adapter is for architecture "${adapter.architecture}", the base model is "${base.architecture}"`,
    );
  const tensors = new Map(base.tensors.map((t) => [t.name, t]));
  for (const p of adapter.pairs) {
    const t = tensors.get(p.target);
    if (!t)
      throw new LoraAdapterError(
        'wrong-base',
        `the adapter adapts ${p.target}, which the base model does not have`,
      );
    if (t.dims.length !== 2 || t.dims[0] !== p.inputs || t.dims[1] !== p.outputs)
      throw new LoraAdapterError(
        'wrong-base',
        `the adapter's ${p.target} is [${p.inputs}, ${p.outputs}], the base model's is [${t.dims}]: made for another base`,
      );
  }
}

/** llama.cpp's scale for an adapter loaded with scale `s`: s · alpha / rank, or s when alpha is 0. */
export function loraScale(alpha: number, rank: number, s = 1): number {
  return alpha === 0 ? s : (s * alpha) / rank;
}

/**
 * The scales an adapter may be loaded with. node-llama-cpp hands llama.cpp a float32, so a double
 * outside it would silently become 0 (1e-300) or infinity (1e300); the range keeps every accepted
 * scale finite and non-zero as a float32, and far from both.
 */
export const LORA_SCALE_MIN = 1e-3;
export const LORA_SCALE_MAX = 1e3;
/** How refusals name the range. */
export const LORA_SCALE_RANGE = `a number from ${LORA_SCALE_MIN} to ${LORA_SCALE_MAX}`;

/** Whether `scale` is one an adapter may be loaded with (and attested under). */
export function isLoraScale(scale: number): boolean {
  const f = Math.fround(scale);
  return (
    Number.isFinite(scale) &&
    Number.isFinite(f) &&
    f !== 0 &&
    scale >= LORA_SCALE_MIN &&
    scale <= LORA_SCALE_MAX
  );
}
