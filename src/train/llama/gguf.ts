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
  GGUF_MAGIC,
  GgufError,
  type GgufInfo,
  GgufValueType,
  readGgufInfo,
} from '../../wire/index.js';
import { LlamaError } from './errors.js';
import { elementCount, headDim, type LlamaShape, paramSpecs, RMS_EPS, ROPE_BASE } from './model.js';
import { BOS_ID, CHAT_TEMPLATE, EOS_ID, UNK_ID, VOCAB } from './tokenizer.js';

const GGUF_VERSION = 3;
const ALIGNMENT = GGUF_DEFAULT_ALIGNMENT;
const GGML_F32 = 0;
const GGML_F16 = 1;
const T = GgufValueType;

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

// ---------------------------------------------------------------------------------------------------
// Writer

class Out {
  private parts: Uint8Array[] = [];
  length = 0;
  private readonly enc = new TextEncoder();

  bytes(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  private num(n: number, set: (d: DataView) => void): void {
    const b = new Uint8Array(n);
    set(new DataView(b.buffer));
    this.bytes(b);
  }
  u32(v: number): void {
    this.num(4, (d) => d.setUint32(0, v, true));
  }
  i32(v: number): void {
    this.num(4, (d) => d.setInt32(0, v, true));
  }
  u64(v: number): void {
    this.num(8, (d) => d.setBigUint64(0, BigInt(v), true));
  }
  f32(v: number): void {
    this.num(4, (d) => d.setFloat32(0, v, true));
  }
  str(s: string): void {
    const b = this.enc.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n > 0) this.bytes(new Uint8Array(n));
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

type Kv = (o: Out) => void;
const kvU32 =
  (key: string, v: number): Kv =>
  (o) => {
    o.str(key);
    o.u32(T.UINT32);
    o.u32(v);
  };
const kvF32 =
  (key: string, v: number): Kv =>
  (o) => {
    o.str(key);
    o.u32(T.FLOAT32);
    o.f32(v);
  };
const kvStr =
  (key: string, v: string): Kv =>
  (o) => {
    o.str(key);
    o.u32(T.STRING);
    o.str(v);
  };
const kvBool =
  (key: string, v: boolean): Kv =>
  (o) => {
    o.str(key);
    o.u32(T.BOOL);
    o.bytes(Uint8Array.of(v ? 1 : 0));
  };
const kvArray =
  (
    key: string,
    type: typeof T.STRING | typeof T.FLOAT32 | typeof T.INT32,
    items: readonly (string | number)[],
  ): Kv =>
  (o) => {
    o.str(key);
    o.u32(T.ARRAY);
    o.u32(type);
    o.u64(items.length);
    for (const it of items) {
      if (type === T.STRING) o.str(it as string);
      else if (type === T.FLOAT32) o.f32(it as number);
      else o.i32(it as number);
    }
  };

/** The tensor's bytes in GGUF order (transposed back to [out][in] rows for matrices). */
function tensorData(
  values: Float32Array,
  shape: readonly number[],
  transposed: boolean,
  f16: boolean,
): Uint8Array {
  const out = new Float32Array(values.length);
  if (transposed) {
    const [rows, cols] = shape as [number, number]; // [in, out] here
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
    }
  } else out.set(values);
  const b = new Uint8Array(out.length * (f16 ? 2 : 4));
  const d = new DataView(b.buffer);
  for (let i = 0; i < out.length; i++) {
    if (f16) d.setUint16(i * 2, floatToHalf(out[i]!), true);
    else d.setFloat32(i * 4, out[i]!, true);
  }
  return b;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of a float, rounded to nearest even (overflow to infinity, subnormals kept). */
export function floatToHalf(f: number): number {
  f32Scratch[0] = f;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
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
  const kvs: Kv[] = [
    kvStr('general.architecture', 'llama'),
    kvStr('general.name', model.name),
    kvU32('general.alignment', ALIGNMENT),
    kvU32('general.file_type', f16 ? 1 : 0), // LLAMA_FTYPE_ALL_F32 or MOSTLY_F16
    kvU32('llama.context_length', model.context),
    kvU32('llama.embedding_length', s.dim),
    kvU32('llama.block_count', s.layers),
    kvU32('llama.feed_forward_length', s.ffn),
    kvU32('llama.attention.head_count', s.heads),
    kvU32('llama.attention.head_count_kv', s.kvHeads),
    kvU32('llama.rope.dimension_count', headDim(s)),
    kvF32('llama.rope.freq_base', ROPE_BASE),
    kvF32('llama.attention.layer_norm_rms_epsilon', RMS_EPS),
    kvU32('llama.vocab_size', s.vocab),
    kvStr('tokenizer.ggml.model', 'llama'),
    kvArray('tokenizer.ggml.tokens', T.STRING, VOCAB.tokens),
    kvArray('tokenizer.ggml.scores', T.FLOAT32, VOCAB.scores),
    kvArray('tokenizer.ggml.token_type', T.INT32, VOCAB.types),
    kvU32('tokenizer.ggml.bos_token_id', BOS_ID),
    kvU32('tokenizer.ggml.eos_token_id', EOS_ID),
    kvU32('tokenizer.ggml.unknown_token_id', UNK_ID),
    // Training windows start anywhere in the corpus, never with <s>: a BOS the model never saw would
    // sit at position 0 of every prompt, where every later token attends to it.
    kvBool('tokenizer.ggml.add_bos_token', false),
    kvBool('tokenizer.ggml.add_eos_token', false),
    // The model was trained on the text as it is; a '▁' before the first character would be new to it.
    kvBool('tokenizer.ggml.add_space_prefix', false),
    kvStr('tokenizer.chat_template', CHAT_TEMPLATE),
  ];
  const o = new Out();
  o.u32(GGUF_MAGIC);
  o.u32(GGUF_VERSION);
  o.u64(specs.length);
  o.u64(kvs.length);
  for (const kv of kvs) kv(o);
  let offset = 0;
  const data: Uint8Array[] = [];
  specs.forEach((spec, i) => {
    const values = model.params[i]!;
    if (values.length !== elementCount(spec.shape)) {
      throw new RangeError(`writeLlamaGguf: ${spec.name} has ${values.length} values`);
    }
    o.str(spec.name);
    const ne = spec.transposed ? spec.shape : [...spec.shape].reverse();
    o.u32(ne.length);
    for (const d of ne) o.u64(d);
    const half = f16 && spec.shape.length === 2;
    o.u32(half ? GGML_F16 : GGML_F32);
    o.u64(offset);
    const bytes = tensorData(values, spec.shape, spec.transposed, half);
    data.push(bytes);
    const padded = Math.ceil(bytes.length / ALIGNMENT) * ALIGNMENT;
    if (padded > bytes.length) data.push(new Uint8Array(padded - bytes.length));
    offset += padded;
  });
  o.pad(ALIGNMENT);
  for (const d of data) o.bytes(d);
  return o.finish();
}

// ---------------------------------------------------------------------------------------------------
// Reader

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

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
  const dataStart = info.dataOffset;
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
    const n = elementCount(spec.shape);
    const width = t.ggmlType === GGML_F32 ? 4 : t.ggmlType === GGML_F16 ? 2 : 0;
    if (width === 0) throw bad(`tensor ${spec.name} has ggml type ${t.ggmlType}; only F32 and F16 are read`);
    const start = dataStart + t.offset;
    if (start + n * width > bytes.length) throw bad(`is truncated in tensor ${spec.name}`);
    const view = new DataView(bytes.buffer, bytes.byteOffset + start, n * width);
    const flat = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      flat[i] = width === 4 ? view.getFloat32(i * 4, true) : halfToFloat(view.getUint16(i * 2, true));
    }
    if (!spec.transposed) return flat;
    const [rows, cols] = spec.shape as [number, number];
    const out = new Float32Array(n);
    for (let c = 0; c < cols; c++) {
      for (let rr = 0; rr < rows; rr++) out[rr * cols + c] = flat[c * rows + rr]!;
    }
    return out;
  });
  const name = meta.get('general.name');
  return {
    shape,
    context: num('llama.context_length'),
    params,
    name: typeof name === 'string' ? name : 'llama',
  };
}
