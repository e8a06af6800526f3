/**
 * Hugging Face PEFT LoRA adapters (`adapter_model.safetensors` + `adapter_config.json`, as PEFT's
 * `save_pretrained` writes them) turned into the GGUF LoRA adapter llama.cpp serves on a GGUF llama
 * base: what `cloister lora convert` runs inside the TEE. Web-standard (bytes in, adapter out).
 *
 * Three things must be exactly right for llama.cpp to compute what PyTorch computed:
 * - names: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (optionally with the
 *   adapter name, `lora_A.default.weight`) adapts the base's `blk.N.attn_q.weight`;
 * - the q/k row order: Hugging Face llama rotates halves of each head (x[i], x[i + d/2]) while
 *   llama.cpp's LLM_ARCH_LLAMA rotates adjacent pairs (x[2i], x[2i+1]), so convert_hf_to_gguf.py
 *   permutes the output rows of q_proj and k_proj (`LlamaModel.permute`: per head, row j·d/2 + i
 *   becomes row 2i + j), and convert_lora_to_gguf.py applies the same permutation to lora_B of q
 *   and k (its rows are the weight's output rows; lora_A, indexed by inputs, is unchanged);
 * - the scale: PEFT adds (alpha/r)·B·A (alpha/√r with use_rslora; per-module r and alpha with
 *   rank_pattern/alpha_pattern), llama.cpp adds (adapter alpha / the pair's rank)·B·A. One alpha is
 *   written (lora_alpha, or lora_alpha·√r with rsLoRA, so that a uniform adapter is written as it
 *   is); a module whose PEFT scale differs from that carries the ratio in its B.
 *
 * Anything this cannot convert faithfully is refused in one line (`LoraError('bad-adapter', …)`).
 */
import {
  checkLoraAgainstBase,
  type GgufInfo,
  halfToFloat,
  type LoraAdapter,
  LoraAdapterError,
  type LoraPair,
} from '../../wire/index.js';
import { LoraError } from './errors.js';

const bad = (message: string) => new LoraError('bad-adapter', message);

/** PEFT module path (under the causal LM) → GGUF base tensor name suffix, for the llama family. */
const MODULES: Record<string, string> = {
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};
const MODULE_NAMES = new Set(Object.keys(MODULES).map((m) => m.split('.')[1]!));

// ---------------------------------------------------------------------------------------------------
// safetensors

interface SafeTensor {
  name: string;
  dtype: string;
  shape: number[];
  values: Float32Array;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

/**
 * The tensors of a safetensors file: an 8-byte little-endian header length, a JSON header naming
 * each tensor's dtype, shape and [begin, end) byte range in the data that follows, values little-endian.
 */
export function readSafetensors(bytes: Uint8Array): SafeTensor[] {
  const where = 'adapter_model.safetensors';
  if (bytes.length < 8)
    throw bad(`${where} is not a safetensors file (shorter than its 8-byte header length)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(bytes.length - 8))
    throw bad(`${where} is not a safetensors file (its header length ${headerLength} exceeds the file)`);
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch {
    throw bad(`${where} is not a safetensors file (its header is not JSON)`);
  }
  if (!isRecord(header)) throw bad(`${where}: the header is not a JSON object`);
  const dataLength = bytes.length - dataStart;
  const out: SafeTensor[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (!isRecord(entry) || typeof entry.dtype !== 'string' || !Array.isArray(entry.shape))
      throw bad(`${where}: tensor ${name} has no dtype and shape`);
    const size = DTYPE_BYTES[entry.dtype];
    if (size === undefined)
      throw bad(`${where}: tensor ${name} is ${entry.dtype}; adapters are read in F32, F16 or BF16`);
    const shape = entry.shape as unknown[];
    if (!shape.every((d): d is number => Number.isSafeInteger(d) && (d as number) >= 0))
      throw bad(`${where}: tensor ${name} has shape ${JSON.stringify(shape)}`);
    const offsets = entry.data_offsets;
    const count = shape.reduce((a, b) => a * b, 1);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o)) ||
      offsets[0] < 0 ||
      offsets[1] > dataLength ||
      offsets[1] - offsets[0] !== count * size
    )
      throw bad(`${where}: tensor ${name}'s data_offsets do not fit its shape or the file`);
    const at = dataStart + (offsets[0] as number);
    const values = new Float32Array(count);
    if (entry.dtype === 'F32') for (let i = 0; i < count; i++) values[i] = view.getFloat32(at + i * 4, true);
    else if (entry.dtype === 'F16')
      for (let i = 0; i < count; i++) values[i] = halfToFloat(view.getUint16(at + i * 2, true));
    else {
      const bits = new Uint32Array(values.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(at + i * 2, true) << 16;
    }
    out.push({ name, dtype: entry.dtype, shape, values });
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------------
// adapter_config.json

interface PeftConfig {
  r: number;
  alpha: number;
  rslora: boolean;
  rankPattern: [RegExp, number][];
  alphaPattern: [RegExp, number][];
}

/** Fields PEFT writes that change what the adapter computes, refused unless at their neutral value. */
const REFUSED: [field: string, neutral: (v: unknown) => boolean, why: string][] = [
  [
    'use_dora',
    (v) => v === false,
    'DoRA adapters (use_dora) have a magnitude vector llama.cpp does not apply',
  ],
  [
    'fan_in_fan_out',
    (v) => v === false,
    'fan_in_fan_out (Conv1D-style transposed weights) is not a llama layout',
  ],
  ['bias', (v) => v === 'none', 'bias must be "none": llama.cpp adapters carry no bias'],
  ['lora_bias', (v) => v === false, 'lora_bias adds a bias to lora_B that llama.cpp adapters cannot carry'],
  [
    'modules_to_save',
    (v) => v === null || (Array.isArray(v) && v.length === 0),
    'modules_to_save are full trained copies of base modules, not a LoRA',
  ],
  ['layer_replication', (v) => v === null, 'layer_replication changes the base model’s layers'],
  [
    'target_parameters',
    (v) => v === null || (Array.isArray(v) && v.length === 0),
    'target_parameters (LoRA on raw parameters) is not supported',
  ],
  ['trainable_token_indices', (v) => v === null, 'trainable_token_indices changes token embeddings'],
  ['use_qalora', (v) => v === false, 'QA-LoRA (use_qalora) pools inputs llama.cpp does not pool'],
  ['alora_invocation_tokens', (v) => v === null, 'activated LoRA (alora_invocation_tokens) is not supported'],
  ['megatron_config', (v) => v === null, 'Megatron-parallel adapters are not supported'],
];

function parseConfig(bytes: Uint8Array): PeftConfig {
  const where = 'adapter_config.json';
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw bad(`${where} is not JSON`);
  }
  if (!isRecord(doc)) throw bad(`${where} must be a JSON object`);
  if (doc.peft_type !== 'LORA')
    throw bad(`${where}: peft_type is ${shown(doc.peft_type)}; only "LORA" adapters convert`);
  for (const [field, neutral, why] of REFUSED) {
    if (doc[field] !== undefined && !neutral(doc[field]))
      throw bad(`${where}: ${field} is ${shown(doc[field])}: ${why}`);
  }
  const rank = (v: unknown, field: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
      throw bad(`${where}: ${field} is ${shown(v)}; a LoRA rank is a whole number ≥ 1`);
    return v;
  };
  const alpha = (v: unknown, field: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      throw bad(`${where}: ${field} is ${shown(v)}; it must be a number > 0`);
    return v;
  };
  const r = rank(doc.r, 'r');
  const lora_alpha = doc.lora_alpha === undefined ? 8 : alpha(doc.lora_alpha, 'lora_alpha'); // PEFT's default
  const rslora = doc.use_rslora ?? false;
  if (typeof rslora !== 'boolean') throw bad(`${where}: use_rslora must be true or false`);
  const pattern = (field: 'rank_pattern' | 'alpha_pattern'): [RegExp, number][] => {
    const v = doc[field] ?? {};
    if (!isRecord(v)) throw bad(`${where}: ${field} must be an object of module pattern → number`);
    return Object.entries(v).map(([key, n]) => {
      // PEFT's get_pattern_key matches rf"(^|.*\.){key}$" as a regular expression; module names need
      // no more than letters, digits, _ and '.', and anything more could be a pattern that never ends.
      if (!/^[A-Za-z0-9_.]{1,200}$/.test(key))
        throw bad(`${where}: a ${field} key is not a module name (letters, digits, _ and . only)`);
      const re = new RegExp(`^(?:^|.*\\.)${key}$`);
      return [re, field === 'rank_pattern' ? rank(n, `${field}.${key}`) : alpha(n, `${field}.${key}`)];
    });
  };
  const targets = doc.target_modules;
  if (Array.isArray(targets)) {
    for (const t of targets) {
      if (typeof t !== 'string') throw bad(`${where}: target_modules must be names`);
      const last = t.split('.').at(-1)!;
      if (!MODULE_NAMES.has(last))
        throw bad(
          `${where}: unknown target module ${t} (known: ${[...MODULE_NAMES].join(', ')}, as in llama models)`,
        );
    }
  } else if (targets !== undefined && targets !== null && typeof targets !== 'string')
    throw bad(`${where}: target_modules must be a list of names or a pattern`);
  return {
    r,
    alpha: lora_alpha,
    rslora,
    rankPattern: pattern('rank_pattern'),
    alphaPattern: pattern('alpha_pattern'),
  };
}

/** A config value as a refusal may show it: numbers and flags as they are, never a string's text. */
function shown(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  if (typeof v === 'string') return 'a string other than the accepted ones';
  return Array.isArray(v) ? 'a list' : v === undefined ? 'missing' : 'an object';
}

function lookup(pattern: [RegExp, number][], module: string): number | undefined {
  return pattern.find(([re]) => re.test(module))?.[1];
}

// ---------------------------------------------------------------------------------------------------
// Conversion

const PREFIX = 'base_model.model.';
/** `<module>.lora_A.weight` or, from PEFT versions that keep the adapter name, `<module>.lora_A.<name>.weight`. */
const LORA_NAME = /^(.+)\.lora_(A|B)(?:\.([A-Za-z0-9_-]+))?\.weight$/;
const LAYER_MODULE = /^model\.layers\.(0|[1-9]\d{0,5})\.(.+)$/;

interface Half {
  name: string;
  shape: number[];
  values: Float32Array;
}

/**
 * The GGUF LoRA adapter of a PEFT LoRA adapter for the llama base `base` (its parsed GGUF header:
 * head counts and tensor shapes). Refuses, one line each with `LoraError('bad-adapter')`, anything it
 * cannot convert exactly (see the module comment and docs/finetuning.md).
 */
export function peftToLoraAdapter(
  safetensors: Uint8Array,
  config: Uint8Array,
  base: { info: GgufInfo },
): LoraAdapter {
  const info = base.info;
  if (info.architecture !== 'llama')
    throw bad(
      `the base model is architecture "${info.architecture}"; PEFT adapters convert for "llama" bases (whose q/k layout this converter knows)`,
    );
  const cfg = parseConfig(config);
  const heads = metaNumber(info, 'llama.attention.head_count');
  const kvHeads = info.metadata.has('llama.attention.head_count_kv')
    ? metaNumber(info, 'llama.attention.head_count_kv')
    : heads;
  const baseTensors = new Map(info.tensors.map((t) => [t.name, t]));

  // Pair lora_A and lora_B by their module.
  const modules = new Map<string, { a?: Half; b?: Half }>();
  let adapterName: string | undefined;
  for (const t of readSafetensors(safetensors)) {
    if (!t.name.startsWith(PREFIX))
      throw bad(`tensor ${t.name} is not a PEFT adapter tensor (PEFT names start with "${PREFIX}")`);
    if (t.name.includes('lora_magnitude_vector'))
      throw bad(`tensor ${t.name} is a DoRA magnitude vector, which llama.cpp does not apply`);
    if (t.name.includes('modules_to_save'))
      throw bad(`tensor ${t.name} is a full copy of a base module (modules_to_save), not a LoRA`);
    if (t.name.includes('lora_embedding_'))
      throw bad(`tensor ${t.name} adapts the token embeddings, which this converter does not map`);
    const m = LORA_NAME.exec(t.name.slice(PREFIX.length));
    if (!m) throw bad(`tensor ${t.name} is neither a lora_A nor a lora_B weight`);
    const [, module, which, infix] = m as unknown as [string, string, 'A' | 'B', string | undefined];
    if (adapterName !== undefined && (infix ?? '') !== adapterName)
      throw bad(
        `the file mixes adapters (${adapterName || 'unnamed'} and ${infix ?? 'unnamed'}); convert one at a time`,
      );
    adapterName = infix ?? '';
    const entry = modules.get(module) ?? {};
    entry[which === 'A' ? 'a' : 'b'] = { name: t.name, shape: t.shape, values: t.values };
    modules.set(module, entry);
  }
  if (modules.size === 0) throw bad('adapter_model.safetensors holds no LoRA tensors');

  const pairs: LoraPair[] = [];
  for (const [module, { a, b }] of modules) {
    const named = (which: 'A' | 'B') =>
      `${PREFIX}${module}.lora_${which}${adapterName ? `.${adapterName}` : ''}.weight`;
    if (!a) throw bad(`${named('B')} has no ${named('A')} beside it`);
    if (!b) throw bad(`${named('A')} has no ${named('B')} beside it`);
    const layer = LAYER_MODULE.exec(module);
    const suffix = layer ? MODULES[layer[2]!] : undefined;
    if (!layer || suffix === undefined)
      throw bad(
        `unknown target module ${layer ? layer[2] : module} (${a.name}); llama adapters adapt ${Object.keys(MODULES).join(', ')}`,
      );
    const target = `blk.${Number(layer[1])}.${suffix}.weight`;
    if (pairs.some((p) => p.target === target)) throw bad(`${module}: adapted twice (${target})`);
    if (a.shape.length !== 2 || b.shape.length !== 2)
      throw bad(`${module}: lora_A and lora_B must be matrices, got [${a.shape}] and [${b.shape}]`);
    const [rank, inputs] = a.shape as [number, number];
    const [outputs, rankB] = b.shape as [number, number];
    if (rank === 0) throw bad(`${module}: LoRA rank 0 (lora_A is [${a.shape}])`);
    if (rankB !== rank)
      throw bad(`${module}: lora_A is [${a.shape}] but lora_B is [${b.shape}]: ranks differ`);
    const expectedRank = lookup(cfg.rankPattern, module) ?? cfg.r;
    if (rank !== expectedRank)
      throw bad(`${module}: lora_A has rank ${rank} but adapter_config.json says ${expectedRank}`);
    const t = baseTensors.get(target);
    if (!t)
      throw bad(`${module} adapts ${target}, which the base model does not have: made for another base`);
    if (t.dims.length !== 2 || t.dims[0] !== inputs || t.dims[1] !== outputs)
      throw bad(
        `${module} is ${outputs}×${inputs} (out×in), the base's ${target} is ${t.dims[1]}×${t.dims[0]}: made for another base`,
      );
    for (const h of [a, b]) {
      const i = h.values.findIndex((x) => !Number.isFinite(x));
      if (i >= 0) throw bad(`${h.name} has a weight that is ${h.values[i]} (element ${i})`);
    }
    const bValues =
      suffix === 'attn_q'
        ? permuteRows(b.values, outputs, rank, heads, module)
        : suffix === 'attn_k'
          ? permuteRows(b.values, outputs, rank, kvHeads, module)
          : Float32Array.from(b.values);
    // llama.cpp scales by (written alpha)/rank; PEFT by this module's alpha/r (or /√r).
    const alpha = lookup(cfg.alphaPattern, module) ?? cfg.alpha;
    const peftScale = cfg.rslora ? alpha / Math.sqrt(rank) : alpha / rank;
    const ratio = (peftScale * rank) / writtenAlpha(cfg);
    if (Math.abs(ratio - 1) > 1e-9) for (let i = 0; i < bValues.length; i++) bValues[i]! *= ratio;
    pairs.push({ target, inputs, outputs, rank, a: Float32Array.from(a.values), b: bValues });
  }
  // The base's tensor order, so the same adapter always gives the same bytes.
  const order = new Map(info.tensors.map((t, i) => [t.name, i]));
  pairs.sort((x, y) => order.get(x.target)! - order.get(y.target)!);
  const adapter: LoraAdapter = {
    architecture: info.architecture,
    alpha: writtenAlpha(cfg),
    name: 'PEFT LoRA adapter',
    pairs,
  };
  try {
    checkLoraAgainstBase(adapter, info);
  } catch (e) {
    if (e instanceof LoraAdapterError) throw bad(e.message);
    throw e;
  }
  return adapter;
}

/** The adapter's alpha: PEFT's scale alpha/√r for rsLoRA is llama.cpp's (alpha·√r)/r. */
function writtenAlpha(cfg: PeftConfig): number {
  return cfg.rslora ? cfg.alpha * Math.sqrt(cfg.r) : cfg.alpha;
}

function metaNumber(info: GgufInfo, key: string): number {
  const v = info.metadata.get(key);
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1)
    throw new LoraError('bad-model', `the base model has no ${key}`);
  return n;
}

/**
 * convert_hf_to_gguf.py's `LlamaModel.permute` on the rows of a [rows][cols] matrix:
 * `reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)`, i.e. within each head of d rows, GGUF row
 * 2i + j is Hugging Face row j·d/2 + i (rotate-half pairs (i, i + d/2) become adjacent pairs).
 */
export function permuteRows(
  values: Float32Array,
  rows: number,
  cols: number,
  heads: number,
  module: string,
): Float32Array {
  const d = rows / heads;
  if (!Number.isInteger(d) || d % 2 !== 0)
    throw bad(`${module} has ${rows} outputs, which the base's ${heads} heads do not split into even halves`);
  const out = new Float32Array(values.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * d + j * (d / 2) + i) * cols;
        out.set(values.subarray(from, from + cols), (h * d + 2 * i + j) * cols);
      }
    }
  }
  return out;
}
