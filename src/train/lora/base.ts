/**
 * The frozen base model of a LoRA job: a llama-architecture GGUF read into float32 arrays in the
 * trainer's layout, and the merged model written back as a GGUF llama.cpp loads.
 *
 * Tensor types: F32, F16 and BF16 are read exactly; Q8_0 and Q4_0 are dequantised (value = block
 * scale × quant, as ggml does), so the trainer then runs the dequantised weights in float32 — close to
 * what llama.cpp computes on the quantised file, not bit for bit. Any other type (the K-quants, IQ*,
 * Q4_1, Q5_*) is refused with one line naming the tensor and its type.
 *
 * Layout: matrices used as `x @ W` are [in, out] (ggml stores `out` rows of `in` values, so they are
 * transposed on the way in); the embedding is [vocab, dim] for np.take; the output head is
 * [dim, vocab], from `output.weight` or, when the file has none, from `token_embd.weight` (llama.cpp
 * then ties the output to the embedding).
 */
import {
  GgmlType,
  GgufError,
  type GgufInfo,
  type GgufTensorInfo,
  GgufValueType,
  READABLE_TYPES,
  readGgufInfo,
  readTensorF32,
} from '../../wire/index.js';
import { fromGgmlOrder } from '../llama/gguf.js';
import { LoraError } from './errors.js';

export interface LoraBaseShape {
  vocab: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  /** `llama.attention.layer_norm_rms_epsilon`, as the float32 llama.cpp uses. */
  rmsEps: number;
  /** `llama.rope.freq_base` (10000 when absent). */
  ropeBase: number;
  /** No `output.weight`: the output head is the token embedding. */
  tied: boolean;
}

/** One block's frozen weights; matrices [in, out]. */
export interface BaseBlock {
  attnNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  ffnNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

export interface LoraBase {
  shape: LoraBaseShape;
  /** `general.name` (empty when absent). */
  name: string;
  /** The whole file and its parsed header: the merged export copies the metadata from them. */
  bytes: Uint8Array;
  info: GgufInfo;
  /** [vocab, dim]. */
  embedding: Float32Array;
  blocks: BaseBlock[];
  outputNorm: Float32Array;
  /** [vocab, dim] (the embedding itself when tied). */
  output: Float32Array;
}

export function baseHeadDim(s: LoraBaseShape): number {
  return s.dim / s.heads;
}

/** Names of ggml types this reader refuses, for the refusal's one line. */
const TYPE_NAMES: ReadonlyMap<number, string> = new Map([
  [3, 'Q4_1'],
  [6, 'Q5_0'],
  [7, 'Q5_1'],
  [10, 'Q2_K'],
  [11, 'Q3_K'],
  [12, 'Q4_K'],
  [13, 'Q5_K'],
  [14, 'Q6_K'],
  [20, 'IQ4_NL'],
  [23, 'IQ4_XS'],
]);

function bad(message: string): LoraError {
  return new LoraError('bad-model', `the base model ${message}`);
}

/** The block tensors of the llama architecture this trainer runs, by suffix. */
const BLOCK_TENSORS = [
  'attn_norm',
  'attn_q',
  'attn_k',
  'attn_v',
  'attn_output',
  'ffn_norm',
  'ffn_gate',
  'ffn_up',
  'ffn_down',
] as const;

/**
 * Reads a llama-architecture base model from the bytes of its GGUF file. Refuses, with `bad-model`
 * and one line, another architecture, RoPE scaling or partial rotation, experts, a tensor this
 * trainer does not run (biases, rope_freqs), a misshapen tensor and an unreadable tensor type.
 */
export function readLoraBase(bytes: Uint8Array): LoraBase {
  let info: GgufInfo;
  try {
    info = readGgufInfo(bytes);
  } catch (err) {
    if (err instanceof GgufError) throw bad(`is not a readable GGUF file: ${err.message}`);
    throw err;
  }
  if (!info.complete) throw bad(`is truncated: ${info.fileSize} bytes of ${info.requiredSize}`);
  const meta = info.metadata;
  if (info.architecture !== 'llama')
    throw bad(`has architecture "${info.architecture}"; the LoRA trainer runs "llama"`);
  const num = (key: string, fallback?: number): number => {
    const v = meta.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v === 'number') return v;
    throw bad(v === undefined ? `has no ${key}` : `has a ${key} that is not a number`);
  };
  /** A count: a whole number, at most `max` (what the file's tensors can back). */
  const count = (key: string, max: number, fallback?: number): number => {
    const v = num(key, fallback);
    if (!Number.isSafeInteger(v) || v < 1 || v > max)
      throw bad(`has ${key} ${v}, not a count from 1 to ${max}`);
    return v;
  };
  for (const key of meta.keys()) {
    if (key.startsWith('llama.expert')) {
      if (num(key) !== 0) throw bad(`uses ${key} (mixture of experts), which the LoRA trainer does not run`);
    } else if (key.startsWith('llama.rope.scaling.')) {
      const v = meta.get(key);
      const inert =
        key === 'llama.rope.scaling.type' ? v === 'none' : key.endsWith('.factor') && (v === 1 || v === 0);
      if (!inert) throw bad(`uses ${key} = ${String(v)} (RoPE scaling), which the LoRA trainer does not run`);
    }
  }
  const byName = new Map(info.tensors.map((t) => [t.name, t]));
  const embd = byName.get('token_embd.weight');
  if (embd === undefined || embd.dims.length !== 2) throw bad('has no token_embd.weight matrix');
  const [dim, vocab] = embd.dims as [number, number];
  const heads = count('llama.attention.head_count', dim);
  const kvHeads = count('llama.attention.head_count_kv', heads, heads);
  if (num('llama.embedding_length') !== dim)
    throw bad(`has llama.embedding_length ${num('llama.embedding_length')}, token_embd.weight has ${dim}`);
  if (heads < 1 || kvHeads < 1 || dim % heads !== 0 || heads % kvHeads !== 0 || (dim / heads) % 2 !== 0)
    throw bad(`has inconsistent head counts (dim ${dim}, heads ${heads}, kv heads ${kvHeads})`);
  const hd = dim / heads;
  for (const key of [
    'llama.rope.dimension_count',
    'llama.attention.key_length',
    'llama.attention.value_length',
  ]) {
    if (meta.has(key) && num(key) !== hd)
      throw bad(`has ${key} ${num(key)}; the LoRA trainer needs the head size ${hd} (dim / heads)`);
  }
  const shape: LoraBaseShape = {
    vocab,
    dim,
    // Nine tensors a block: a larger count than the file's tensors can back is a lie (and would make
    // the loop below allocate without bound).
    layers: count('llama.block_count', Math.max(1, Math.floor((info.tensors.length - 2) / 9))),
    heads,
    kvHeads,
    ffn: count('llama.feed_forward_length', 1 << 20),
    rmsEps: Math.fround(num('llama.attention.layer_norm_rms_epsilon')),
    ropeBase: Math.fround(num('llama.rope.freq_base', 10000)),
    tied: !byName.has('output.weight'),
  };
  if (!(shape.rmsEps > 0)) throw bad('has a llama.attention.layer_norm_rms_epsilon that is not positive');
  if (!(shape.ropeBase > 0)) throw bad('has a llama.rope.freq_base that is not positive');

  // Every tensor the file has must be one this trainer runs: anything else would change the model.
  const expected = new Map<string, number[]>([
    ['token_embd.weight', [dim, vocab]],
    ['output_norm.weight', [dim]],
  ]);
  if (!shape.tied) expected.set('output.weight', [dim, vocab]);
  const kv = kvHeads * hd;
  for (let l = 0; l < shape.layers; l++) {
    const dims: Record<(typeof BLOCK_TENSORS)[number], number[]> = {
      attn_norm: [dim],
      attn_q: [dim, dim],
      attn_k: [dim, kv],
      attn_v: [dim, kv],
      attn_output: [dim, dim],
      ffn_norm: [dim],
      ffn_gate: [dim, shape.ffn],
      ffn_up: [dim, shape.ffn],
      ffn_down: [shape.ffn, dim],
    };
    for (const t of BLOCK_TENSORS) expected.set(`blk.${l}.${t}.weight`, dims[t]);
  }
  for (const t of info.tensors) {
    if (!expected.has(t.name)) throw bad(`has a tensor ${t.name}, which the LoRA trainer does not run`);
  }
  const read = (name: string): Float32Array => {
    const t = byName.get(name);
    const ne = expected.get(name)!;
    if (t === undefined) throw bad(`has no tensor ${name}`);
    if (t.dims.length !== ne.length || t.dims.some((d, i) => d !== ne[i]))
      throw bad(`tensor ${name} is [${t.dims}], expected [${ne}]`);
    checkType(t);
    return readTensorF32(bytes, info, name);
  };
  /** A matrix of ne [in, out] as the trainer's [in, out] (ggml holds `out` rows of `in`). */
  const matrix = (name: string): Float32Array => {
    const [inputs, outputs] = expected.get(name)! as [number, number];
    return fromGgmlOrder(read(name), inputs, outputs);
  };
  const embedding = read('token_embd.weight'); // ggml's vocab rows of dim: already [vocab, dim]
  const blocks: BaseBlock[] = [];
  for (let l = 0; l < shape.layers; l++) {
    const b = `blk.${l}`;
    blocks.push({
      attnNorm: read(`${b}.attn_norm.weight`),
      q: matrix(`${b}.attn_q.weight`),
      k: matrix(`${b}.attn_k.weight`),
      v: matrix(`${b}.attn_v.weight`),
      o: matrix(`${b}.attn_output.weight`),
      ffnNorm: read(`${b}.ffn_norm.weight`),
      gate: matrix(`${b}.ffn_gate.weight`),
      up: matrix(`${b}.ffn_up.weight`),
      down: matrix(`${b}.ffn_down.weight`),
    });
  }
  const output = shape.tied ? embedding : read('output.weight');
  const name = meta.get('general.name');
  return {
    shape,
    name: typeof name === 'string' ? name : '',
    bytes,
    info,
    embedding,
    blocks,
    outputNorm: read('output_norm.weight'),
    output,
  };
}

function checkType(t: GgufTensorInfo): void {
  if (READABLE_TYPES.has(t.ggmlType)) return;
  const type = TYPE_NAMES.get(t.ggmlType) ?? `ggml type ${t.ggmlType}`;
  throw bad(
    `tensor ${t.name} is ${type}; the LoRA trainer reads ${[...READABLE_TYPES.values()].join(', ')} (Q8_0 and Q4_0 dequantised)`,
  );
}

// ---------------------------------------------------------------------------------------------------
// The merged model

/** A tensor of a GGUF written from raw bytes: ggml order, any ggml type. */
export interface RawTensor {
  name: string;
  dims: readonly number[];
  ggmlType: number;
  data: Uint8Array;
}

/** Bytes from the start of the file to the end of the metadata: magic, version, counts, key/values. */
export function metadataSection(bytes: Uint8Array, info: GgufInfo): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let o = 24; // magic, version, tensor count (u64), metadata count (u64)
  const T = GgufValueType;
  const size = (type: number): number =>
    type === T.UINT8 || type === T.INT8 || type === T.BOOL
      ? 1
      : type === T.UINT16 || type === T.INT16
        ? 2
        : type === T.UINT32 || type === T.INT32 || type === T.FLOAT32
          ? 4
          : 8;
  const skip = (type: number): void => {
    if (type === T.STRING) o += 8 + Number(view.getBigUint64(o, true));
    else if (type === T.ARRAY) {
      const item = view.getUint32(o, true);
      const count = Number(view.getBigUint64(o + 4, true));
      o += 12;
      if (item !== T.STRING && item !== T.ARRAY) o += count * size(item);
      else for (let i = 0; i < count; i++) skip(item);
    } else o += size(type);
  };
  // readGgufInfo has checked the whole header, so these reads stay inside it.
  for (let i = 0; i < info.metadata.size; i++) {
    skip(T.STRING); // the key
    const type = view.getUint32(o, true);
    o += 4;
    skip(type);
  }
  return bytes.subarray(0, o);
}

/**
 * A GGUF v3 file with the metadata section of another file copied byte for byte (every key, its
 * exact type, the vocabulary and chat template) and these tensors, aligned to `alignment`. The
 * tensor count in the copied header is rewritten.
 */
export function writeGgufWithMetadata(
  metadata: Uint8Array,
  alignment: number,
  tensors: readonly RawTensor[],
): Uint8Array {
  const enc = new TextEncoder();
  const infos: Uint8Array[] = [];
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const name = enc.encode(t.name);
    const b = new Uint8Array(8 + name.length + 4 + 8 * t.dims.length + 4 + 8);
    const d = new DataView(b.buffer);
    d.setBigUint64(0, BigInt(name.length), true);
    b.set(name, 8);
    let o = 8 + name.length;
    d.setUint32(o, t.dims.length, true);
    o += 4;
    for (const n of t.dims) {
      d.setBigUint64(o, BigInt(n), true);
      o += 8;
    }
    d.setUint32(o, t.ggmlType, true);
    d.setBigUint64(o + 4, BigInt(offset), true);
    infos.push(b);
    offsets.push(offset);
    offset = alignUp(offset + t.data.length, alignment);
  }
  const headerLength = metadata.length + infos.reduce((n, b) => n + b.length, 0);
  const dataOffset = alignUp(headerLength, alignment);
  const out = new Uint8Array(dataOffset + offset);
  out.set(metadata, 0);
  new DataView(out.buffer).setBigUint64(8, BigInt(tensors.length), true);
  let o = metadata.length;
  for (const b of infos) {
    out.set(b, o);
    o += b.length;
  }
  tensors.forEach((t, i) => {
    out.set(t.data, dataOffset + offsets[i]!);
  });
  return out;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * The base with some matrices replaced (W + scale·B·A, given in ggml order as float32): those are
 * written F32, every other tensor keeps its bytes and type, and the metadata (architecture, shape,
 * vocabulary, chat template) is the base's, byte for byte.
 */
export function writeMergedGguf(base: LoraBase, merged: ReadonlyMap<string, Float32Array>): Uint8Array {
  const tensors = base.info.tensors.map((t): RawTensor => {
    const values = merged.get(t.name);
    if (values === undefined) {
      const start = base.info.dataOffset + t.offset;
      return {
        name: t.name,
        dims: t.dims,
        ggmlType: t.ggmlType,
        data: base.bytes.subarray(start, start + t.byteLength),
      };
    }
    const data = new Uint8Array(values.length * 4);
    const view = new DataView(data.buffer);
    for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i]!, true);
    return { name: t.name, dims: t.dims, ggmlType: GgmlType.F32, data };
  });
  return writeGgufWithMetadata(metadataSection(base.bytes, base.info), base.info.alignment, tensors);
}
