/** PEFT-layout adapters written from TypeScript, and a tiny llama base, for the converter's tests. */
import { writeLlamaGguf } from '../../src/train/llama/index.js';
import { initParams, type LlamaShape } from '../../src/train/llama/model.js';
import { Rng } from '../../src/util/prng.js';
import { floatToHalf, type GgufInfo, readGgufInfo } from '../../src/wire/index.js';

export const SHAPE: LlamaShape = { vocab: 356, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 48 };

export interface SafeTensorIn {
  name: string;
  shape: number[];
  values: Float32Array;
  /** F32 (default), F16, BF16, or another dtype name written as raw bytes (1 byte per value). */
  dtype?: string;
}

/** A safetensors file as the `safetensors` library writes it: u64 header length, JSON header, data. */
export function writeSafetensors(tensors: SafeTensorIn[], metadata = { format: 'pt' }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const dtype = t.dtype ?? 'F32';
    let bytes: Uint8Array;
    if (dtype === 'F32') bytes = new Uint8Array(Float32Array.from(t.values).buffer);
    else if (dtype === 'F16' || dtype === 'BF16') {
      const u = new Uint16Array(t.values.length);
      const f = new Float32Array(1);
      const bits = new Uint32Array(f.buffer);
      t.values.forEach((x, i) => {
        f[0] = x;
        u[i] = dtype === 'F16' ? floatToHalf(x) : bits[0]! >>> 16;
      });
      bytes = new Uint8Array(u.buffer);
    } else bytes = new Uint8Array(t.values.length);
    header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  // The library pads the header with spaces to a multiple of 8 bytes.
  while ((json.length + 8) % 8 !== 0) json += ' ';
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** adapter_config.json as PEFT 0.1x writes it for a LoRA of rank `r` on `targets`. */
export function peftConfig(overrides: Record<string, unknown> = {}): Uint8Array {
  const config = {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: 'tiny-llama',
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 16,
    lora_dropout: 0.05,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: 4,
    rank_pattern: {},
    revision: null,
    target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'down_proj'],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
    ...overrides,
  };
  return new TextEncoder().encode(JSON.stringify(config, null, 2));
}

/** The HF module, its GGUF target and (out, in) for the tiny shape. */
export const HF_MODULES: Record<
  string,
  [target: string, out: (s: LlamaShape) => number, inp: (s: LlamaShape) => number]
> = {
  'self_attn.q_proj': ['attn_q', (s) => s.dim, (s) => s.dim],
  'self_attn.k_proj': ['attn_k', (s) => (s.dim / s.heads) * s.kvHeads, (s) => s.dim],
  'self_attn.v_proj': ['attn_v', (s) => (s.dim / s.heads) * s.kvHeads, (s) => s.dim],
  'self_attn.o_proj': ['attn_output', (s) => s.dim, (s) => s.dim],
  'mlp.gate_proj': ['ffn_gate', (s) => s.ffn, (s) => s.dim],
  'mlp.up_proj': ['ffn_up', (s) => s.ffn, (s) => s.dim],
  'mlp.down_proj': ['ffn_down', (s) => s.dim, (s) => s.ffn],
};

/** Random lora_A/lora_B for `modules` in every layer, named as PEFT saves them. */
export function peftTensors(
  options: { modules?: string[]; r?: number; seed?: number; infix?: string; shape?: LlamaShape } = {},
): SafeTensorIn[] {
  const s = options.shape ?? SHAPE;
  const r = options.r ?? 4;
  const rng = new Rng(options.seed ?? 1);
  const rand = (n: number) => Float32Array.from({ length: n }, () => 0.1 * rng.normal());
  const infix = options.infix ? `.${options.infix}` : '';
  const out: SafeTensorIn[] = [];
  for (let l = 0; l < s.layers; l++) {
    for (const m of options.modules ?? [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.o_proj',
      'mlp.down_proj',
    ]) {
      const [, outs, ins] = HF_MODULES[m]!;
      const base = `base_model.model.model.layers.${l}.${m}`;
      out.push({ name: `${base}.lora_A${infix}.weight`, shape: [r, ins(s)], values: rand(r * ins(s)) });
      out.push({ name: `${base}.lora_B${infix}.weight`, shape: [outs(s), r], values: rand(outs(s) * r) });
    }
  }
  return out;
}

/** The tiny base's GGUF bytes and parsed header (llama trainer's writer, seeded weights). */
export function tinyBase(shape: LlamaShape = SHAPE, seed = 3): { bytes: Uint8Array; info: GgufInfo } {
  const bytes = writeLlamaGguf({ shape, context: 256, params: initParams(shape, seed), name: 'tiny base' });
  return { bytes, info: readGgufInfo(bytes) };
}
