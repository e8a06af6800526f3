/**
 * GGUF v3 for this trainer's models: a writer (F32, what llama.cpp and `cloister serve` load; F16 on
 * request) and a reader for files the writer produced, so a job can continue training a model an
 * earlier job exported.
 *
 * GGUF lists a tensor's dimensions fastest-first (ggml's `ne`): a matrix used as `W·x` with
 * `in` inputs and `out` outputs is `ne = [in, out]`, stored as `out` rows of `in` floats. This
 * trainer keeps matrices as [in, out] arrays (for `x @ W`), so they are transposed on the way in and out.
 */
import {
  GGUF_DEFAULT_ALIGNMENT,
  GgmlType,
  GgufError,
  type GgufInfo,
  type GgufMetaValue,
  readGgufInfo,
  readTensorF32,
  writeGguf,
} from '../../wire/index.js';
import { LlamaError } from './errors.js';
import { elementCount, headDim, type LlamaShape, paramSpecs, RMS_EPS, ROPE_BASE } from './model.js';
import { BOS_ID, CHAT_TEMPLATE, EOS_ID, UNK_ID, VOCAB } from './tokenizer.js';

/** A model of this trainer: its shape, trained context length and weights in the trainer's layout. */
export interface LlamaModel {
  shape: LlamaShape;
  /** `llama.context_length`. */
  context: number;
  /** One array per `paramSpecs(shape)` entry, in that order and layout. */
  params: Float32Array[];
  /** `general.name`. */
  name: string;
}

/** A matrix of the trainer ([in, out], used as `x @ W`) in ggml's order: `out` rows of `in` values. */
export function toGgmlOrder(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  }
  return out;
}

/** The inverse of {@link toGgmlOrder}: ggml's `out` rows of `in` values → the trainer's [in, out]. */
export function fromGgmlOrder(flat: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(flat.length);
  for (let c = 0; c < cols; c++) {
    for (let r = 0; r < rows; r++) out[r * cols + c] = flat[c * rows + r]!;
  }
  return out;
}

export interface WriteOptions {
  /**
   * Type of the matrices: F32 (default, what the trainer exports: llama.cpp then computes the
   * trainer's logits) or F16 (half the size; norm weights stay F32, as in llama.cpp's own files).
   */
  type?: 'F32' | 'F16';
}

/** A GGUF file of the model: llama architecture, this trainer's vocabulary, ChatML template. */
export function writeLlamaGguf(model: LlamaModel, options: WriteOptions = {}): Uint8Array {
  const f16 = options.type === 'F16';
  const s = model.shape;
  const specs = paramSpecs(s);
  if (model.params.length !== specs.length) throw new RangeError('writeLlamaGguf: wrong number of tensors');
  const meta: [string, GgufMetaValue][] = [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: model.name }],
    ['general.alignment', { type: 'u32', value: GGUF_DEFAULT_ALIGNMENT }],
    ['general.file_type', { type: 'u32', value: f16 ? 1 : 0 }], // LLAMA_FTYPE_ALL_F32 or MOSTLY_F16
    ['llama.context_length', { type: 'u32', value: model.context }],
    ['llama.embedding_length', { type: 'u32', value: s.dim }],
    ['llama.block_count', { type: 'u32', value: s.layers }],
    ['llama.feed_forward_length', { type: 'u32', value: s.ffn }],
    ['llama.attention.head_count', { type: 'u32', value: s.heads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: s.kvHeads }],
    ['llama.rope.dimension_count', { type: 'u32', value: headDim(s) }],
    ['llama.rope.freq_base', { type: 'f32', value: ROPE_BASE }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: RMS_EPS }],
    ['llama.vocab_size', { type: 'u32', value: s.vocab }],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'string[]', value: VOCAB.tokens }],
    ['tokenizer.ggml.scores', { type: 'f32[]', value: VOCAB.scores }],
    ['tokenizer.ggml.token_type', { type: 'i32[]', value: VOCAB.types }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: BOS_ID }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: EOS_ID }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: UNK_ID }],
    // Training windows start anywhere in the corpus, never with <s>: a BOS the model never saw would
    // sit at position 0 of every prompt, where every later token attends to it.
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: false }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
    // The model was trained on the text as it is; a '▁' before the first character would be new to it.
    ['tokenizer.ggml.add_space_prefix', { type: 'bool', value: false }],
    ['tokenizer.chat_template', { type: 'string', value: CHAT_TEMPLATE }],
  ];
  const tensors = specs.map((spec, i) => {
    const values = model.params[i]!;
    if (values.length !== elementCount(spec.shape)) {
      throw new RangeError(`writeLlamaGguf: ${spec.name} has ${values.length} values`);
    }
    const [rows, cols] = spec.shape as [number, number];
    return {
      name: spec.name,
      dims: spec.transposed ? spec.shape : [...spec.shape].reverse(),
      // Norm weights stay F32, as in llama.cpp's own F16 files.
      type: f16 && spec.shape.length === 2 ? ('F16' as const) : ('F32' as const),
      data: spec.transposed ? toGgmlOrder(values, rows, cols) : values,
    };
  });
  return writeGguf(meta, tensors);
}

// ---------------------------------------------------------------------------------------------------
// Reader

function bad(message: string): LlamaError {
  return new LlamaError('bad-model', `the starting model ${message}`);
}

/**
 * The model in a GGUF this trainer wrote (or the same model converted to F16). Anything else (another
 * architecture, vocabulary, RoPE or norm setting, a missing or misshapen tensor, a quantised type) is
 * refused with `bad-model`, since training it here would not continue the same model.
 */
export function readLlamaGguf(bytes: Uint8Array): LlamaModel {
  // The header is read by the same reader that guards llama.cpp (src/wire/gguf.ts).
  let info: GgufInfo;
  try {
    info = readGgufInfo(bytes);
  } catch (err) {
    if (err instanceof GgufError) throw bad(`is not a readable GGUF file: ${err.message}`);
    throw err;
  }
  const meta = info.metadata;
  const tensors = new Map(info.tensors.map((t) => [t.name, t]));
  const num = (key: string): number => {
    const v = meta.get(key);
    if (typeof v === 'number') return v;
    if (typeof v === 'bigint') return Number(v);
    throw bad(`has no ${key}`);
  };
  const arch = meta.get('general.architecture');
  if (arch !== 'llama') throw bad(`has architecture ${JSON.stringify(arch)}, not "llama"`);
  if (meta.get('tokenizer.ggml.model') !== 'llama')
    throw bad('does not use the SentencePiece ("llama") tokenizer');
  const tokens = meta.get('tokenizer.ggml.tokens');
  if (
    !Array.isArray(tokens) ||
    tokens.length !== VOCAB.tokens.length ||
    tokens.some((t, i) => t !== VOCAB.tokens[i])
  ) {
    throw bad("has another vocabulary than this trainer's character vocabulary");
  }
  const shape: LlamaShape = {
    vocab: VOCAB.tokens.length,
    dim: num('llama.embedding_length'),
    layers: num('llama.block_count'),
    heads: num('llama.attention.head_count'),
    kvHeads: meta.has('llama.attention.head_count_kv')
      ? num('llama.attention.head_count_kv')
      : num('llama.attention.head_count'),
    ffn: num('llama.feed_forward_length'),
  };
  if (
    shape.heads < 1 ||
    shape.kvHeads < 1 ||
    shape.dim % shape.heads !== 0 ||
    shape.heads % shape.kvHeads !== 0
  ) {
    throw bad('has inconsistent head counts');
  }
  if (meta.has('llama.rope.dimension_count') && num('llama.rope.dimension_count') !== headDim(shape)) {
    throw bad('rotates part of each head (llama.rope.dimension_count); this trainer rotates all of it');
  }
  if (meta.has('llama.rope.freq_base') && num('llama.rope.freq_base') !== ROPE_BASE) {
    throw bad(`has llama.rope.freq_base ${num('llama.rope.freq_base')}; this trainer uses ${ROPE_BASE}`);
  }
  if (Math.fround(num('llama.attention.layer_norm_rms_epsilon')) !== Math.fround(RMS_EPS)) {
    throw bad(`has an RMS norm epsilon other than ${RMS_EPS}`);
  }
  for (const key of meta.keys()) {
    if (key.startsWith('llama.rope.scaling') || key.startsWith('llama.expert')) {
      throw bad(`uses ${key}, which this trainer does not implement`);
    }
  }

  const specs = paramSpecs(shape);
  if (tensors.size !== specs.length)
    throw bad(`has ${tensors.size} tensors; its shape needs ${specs.length}`);
  const params = specs.map((spec) => {
    const t = tensors.get(spec.name);
    if (t === undefined) throw bad(`has no tensor ${spec.name}`);
    const ne = spec.transposed ? spec.shape : [...spec.shape].reverse();
    if (t.dims.length !== ne.length || t.dims.some((d, i) => d !== ne[i])) {
      throw bad(`tensor ${spec.name} is [${t.dims}], expected [${ne}]`);
    }
    if (t.ggmlType !== GgmlType.F32 && t.ggmlType !== GgmlType.F16)
      throw bad(`tensor ${spec.name} has ggml type ${t.ggmlType}; only F32 and F16 are read`);
    let flat: Float32Array;
    try {
      flat = readTensorF32(bytes, info, spec.name);
    } catch (err) {
      if (err instanceof GgufError) throw bad(`is truncated in tensor ${spec.name}`);
      throw err;
    }
    if (!spec.transposed) return flat;
    const [rows, cols] = spec.shape as [number, number];
    return fromGgmlOrder(flat, rows, cols);
  });
  const name = meta.get('general.name');
  return {
    shape,
    context: num('llama.context_length'),
    params,
    name: typeof name === 'string' ? name : 'llama',
  };
}
