/**
 * A writer for tiny llama-architecture GGUF v3 models with deterministic random weights, for tests,
 * the demo and benchmarks that must not download a real model. Never used to serve: the production
 * side of GGUF is the header reader in wire/gguf.ts. Web-standard only: bytes out;
 * `gguf-node.ts` beside it streams a model to disk.
 */
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValueType } from '../../wire/index.js';

/** The two tensor types the writer produces, and their ggml type ids. */
export type GgufTensorType = 'F32' | 'F16';
const GGML_F32 = 0;
const GGML_F16 = 1;

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

// ---------------------------------------------------------------------------------------------------
// Vocabulary

const TOKEN_NORMAL = 1;
const TOKEN_UNKNOWN = 2;
const TOKEN_CONTROL = 3;
const TOKEN_BYTE = 6;

const SPECIAL_TOKENS = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>'] as const;
const UNK_ID = 0;
const BOS_ID = 1;
const EOS_ID = 2;

// Common English words; each enters the vocabulary as "▁word" with every prefix ("▁w", "▁wo", …),
// because llama.cpp's SentencePiece tokenizer builds a piece only by merging two pieces that are
// themselves in the vocabulary.
const WORDS = (
  'the of and to in is it that was for on are as with his they at be this from have or by one had not ' +
  'but what all were when we there can an your which their said if do will each about how up out them ' +
  'then she many some so these would other into has more her two like him see time could no make than ' +
  'first been its who now people my made over did down only way find use may water long little very ' +
  'after words called just where most know hello world model answer question yes you I a'
).split(' ');
const PUNCTUATION = '.,!?;:\'"()-';

interface Vocab {
  tokens: string[];
  scores: number[];
  types: number[];
}

/** Special tokens, the 256 byte-fallback tokens, printable ASCII, then "▁"-prefixed word pieces. */
function tinyVocab(): Vocab {
  const tokens: string[] = [...SPECIAL_TOKENS];
  const types: number[] = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TOKEN_BYTE);
  }
  const pieces = new Set<string>(['▁']);
  for (let ch = 0x21; ch < 0x7f; ch++) pieces.add(String.fromCharCode(ch));
  for (const p of PUNCTUATION) pieces.add(`▁${p}`);
  for (const w of WORDS) {
    for (let i = 1; i <= w.length; i++) pieces.add(`▁${w.slice(0, i)}`);
  }
  for (const p of pieces) {
    tokens.push(p);
    types.push(TOKEN_NORMAL);
  }
  // SentencePiece scores are log-probabilities; longer pieces score higher so that merges prefer them.
  const scores = tokens.map((t, i) => (types[i] === TOKEN_NORMAL ? -1000 + t.length : 0));
  return { tokens, scores, types };
}

// ChatML, which node-llama-cpp recognises as its ChatML wrapper.
const CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// ---------------------------------------------------------------------------------------------------
// Writer

export interface TinyLlamaOptions {
  /** Weights are a pure function of the seed and the shape. Default 1. */
  seed?: number;
  /** n_embd; a multiple of `heads`. Default 64. */
  embedding?: number;
  /** Transformer blocks. Default 2 (8 with `targetBytes`). */
  layers?: number;
  /** Attention heads. Default `embedding / 16` (`embedding / 64` with `targetBytes`). */
  heads?: number;
  /** Key/value heads (grouped-query attention); divides `heads`. Default `heads`. */
  kvHeads?: number;
  /** Feed-forward width. Default `2 * embedding`. */
  feedForward?: number;
  /** Trained context length written to the metadata. Default 512. */
  context?: number;
  /** Type of the matrices (norms are always F32). Default F32. */
  tensorType?: GgufTensorType;
  /**
   * Choose `embedding` (a multiple of 64, heads of 64, feed-forward 4 × embedding) so the file is at
   * least this many bytes; `embedding`, `heads` and `feedForward` must then be left out.
   */
  targetBytes?: number;
  /** `general.name`. Default "cloister-tiny-llama". */
  name?: string;
  /** `tokenizer.chat_template` (Jinja); `null` leaves it out. Default: ChatML. */
  chatTemplate?: string | null;
}

export interface TinyLlamaShape {
  embedding: number;
  layers: number;
  heads: number;
  kvHeads: number;
  feedForward: number;
  context: number;
  vocab: number;
  tensorType: GgufTensorType;
}

export interface TinyLlamaGguf {
  /** Exact file size in bytes. */
  size: number;
  shape: TinyLlamaShape;
  /** The file, in order, in chunks of at most 4 MiB; each call starts again from the beginning. */
  chunks(): Iterable<Uint8Array>;
  /** The whole file in one buffer: only for small models. */
  bytes(): Uint8Array;
}

const CHUNK_BYTES = 4 << 20;

interface HeaderText {
  name: string;
  chatTemplate: string | null;
}

function headerText(opts: TinyLlamaOptions): HeaderText {
  return {
    name: opts.name ?? 'cloister-tiny-llama',
    chatTemplate: opts.chatTemplate === undefined ? CHAT_TEMPLATE : opts.chatTemplate,
  };
}

type Fill = 'ones' | 'random';
interface TensorPlan {
  name: string;
  dims: number[];
  type: GgufTensorType;
  fill: Fill;
  /** Rows (of `dims[0]` elements) left at zero: for `output.weight`, the tokens the model never emits. */
  zeroRows?: readonly number[];
  offset: number;
  byteLength: number;
}

function resolveShape(opts: TinyLlamaOptions): TinyLlamaShape {
  const tensorType = opts.tensorType ?? 'F32';
  if (tensorType !== 'F32' && tensorType !== 'F16') throw new RangeError(`tensorType must be F32 or F16`);
  const vocab = tinyVocab().tokens.length;
  const context = opts.context ?? 512;
  const positive = (name: string, v: number): number => {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new RangeError(`${name} must be a positive integer, got ${v}`);
    return v;
  };
  if (opts.targetBytes !== undefined) {
    if (opts.embedding !== undefined || opts.heads !== undefined || opts.feedForward !== undefined) {
      throw new RangeError('targetBytes chooses embedding, heads and feedForward; leave them out');
    }
    positive('targetBytes', opts.targetBytes);
    const layers = positive('layers', opts.layers ?? 8);
    for (let embedding = 64; ; embedding += 64) {
      const heads = embedding / 64;
      const shape: TinyLlamaShape = {
        embedding,
        layers,
        heads,
        kvHeads: heads,
        feedForward: 4 * embedding,
        context: positive('context', context),
        vocab,
        tensorType,
      };
      if (planTensors(shape, headerText(opts)).size >= opts.targetBytes) return shape;
    }
  }
  const embedding = positive('embedding', opts.embedding ?? 64);
  const heads = positive('heads', opts.heads ?? Math.max(1, Math.floor(embedding / 16)));
  const kvHeads = positive('kvHeads', opts.kvHeads ?? heads);
  if (embedding % heads !== 0)
    throw new RangeError(`embedding ${embedding} is not a multiple of heads ${heads}`);
  if (heads % kvHeads !== 0) throw new RangeError(`heads ${heads} is not a multiple of kvHeads ${kvHeads}`);
  if ((embedding / heads) % 2 !== 0)
    throw new RangeError('the head size (embedding / heads) must be even for RoPE');
  return {
    embedding,
    layers: positive('layers', opts.layers ?? 2),
    heads,
    kvHeads,
    feedForward: positive('feedForward', opts.feedForward ?? 2 * embedding),
    context: positive('context', context),
    vocab,
    tensorType,
  };
}

function planTensors(s: TinyLlamaShape, text: HeaderText): { tensors: TensorPlan[]; size: number } {
  const e = s.embedding;
  const kv = (e / s.heads) * s.kvHeads;
  const silent: number[] = [];
  const vocab = tinyVocab();
  vocab.types.forEach((t, i) => {
    if (t !== TOKEN_NORMAL && vocab.tokens[i] !== '<0x0A>') silent.push(i);
  });
  const specs: Omit<TensorPlan, 'offset' | 'byteLength'>[] = [
    { name: 'token_embd.weight', dims: [e, s.vocab], type: s.tensorType, fill: 'random' },
    { name: 'output_norm.weight', dims: [e], type: 'F32', fill: 'ones' },
    { name: 'output.weight', dims: [e, s.vocab], type: s.tensorType, fill: 'random', zeroRows: silent },
  ];
  for (let i = 0; i < s.layers; i++) {
    const b = `blk.${i}`;
    specs.push(
      { name: `${b}.attn_norm.weight`, dims: [e], type: 'F32', fill: 'ones' },
      { name: `${b}.attn_q.weight`, dims: [e, e], type: s.tensorType, fill: 'random' },
      { name: `${b}.attn_k.weight`, dims: [e, kv], type: s.tensorType, fill: 'random' },
      { name: `${b}.attn_v.weight`, dims: [e, kv], type: s.tensorType, fill: 'random' },
      { name: `${b}.attn_output.weight`, dims: [e, e], type: s.tensorType, fill: 'random' },
      { name: `${b}.ffn_norm.weight`, dims: [e], type: 'F32', fill: 'ones' },
      { name: `${b}.ffn_gate.weight`, dims: [e, s.feedForward], type: s.tensorType, fill: 'random' },
      { name: `${b}.ffn_up.weight`, dims: [e, s.feedForward], type: s.tensorType, fill: 'random' },
      { name: `${b}.ffn_down.weight`, dims: [s.feedForward, e], type: s.tensorType, fill: 'random' },
    );
  }
  let offset = 0;
  const tensors = specs.map((t) => {
    const elements = t.dims.reduce((a, b) => a * b, 1);
    const byteLength = elements * (t.type === 'F32' ? 4 : 2);
    const plan: TensorPlan = { ...t, offset, byteLength };
    offset = alignUp(offset + byteLength, GGUF_DEFAULT_ALIGNMENT);
    return plan;
  });
  const last = tensors[tensors.length - 1]!;
  const dataSize = last.offset + last.byteLength;
  return { tensors, size: headerBytes(s, tensors, text).length + dataSize };
}

class HeaderWriter {
  private parts: Uint8Array[] = [];
  private length = 0;
  private readonly enc = new TextEncoder();

  private push(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  private num(bytes: number, set: (v: DataView) => void): void {
    const b = new Uint8Array(bytes);
    set(new DataView(b.buffer));
    this.push(b);
  }
  u32(v: number): void {
    this.num(4, (d) => d.setUint32(0, v, true));
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
    this.push(b);
  }
  kvU32(key: string, v: number): void {
    this.str(key);
    this.u32(GgufValueType.UINT32);
    this.u32(v);
  }
  kvF32(key: string, v: number): void {
    this.str(key);
    this.u32(GgufValueType.FLOAT32);
    this.f32(v);
  }
  kvStr(key: string, v: string): void {
    this.str(key);
    this.u32(GgufValueType.STRING);
    this.str(v);
  }
  kvBool(key: string, v: boolean): void {
    this.str(key);
    this.u32(GgufValueType.BOOL);
    this.push(Uint8Array.of(v ? 1 : 0));
  }
  kvArray(key: string, type: number, items: readonly (string | number)[]): void {
    this.str(key);
    this.u32(GgufValueType.ARRAY);
    this.u32(type);
    this.u64(items.length);
    for (const it of items) {
      if (type === GgufValueType.STRING) this.str(it as string);
      else if (type === GgufValueType.FLOAT32) this.f32(it as number);
      else this.u32(it as number); // INT32 token types: non-negative, so u32 bytes are the same
    }
  }
  padTo(alignment: number): void {
    const pad = alignUp(this.length, alignment) - this.length;
    if (pad > 0) this.push(new Uint8Array(pad));
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

function headerBytes(s: TinyLlamaShape, tensors: readonly TensorPlan[], text: HeaderText): Uint8Array {
  const vocab = tinyVocab();
  const w = new HeaderWriter();
  const kv: ((w: HeaderWriter) => void)[] = [
    (w) => w.kvStr('general.architecture', 'llama'),
    (w) => w.kvStr('general.name', text.name),
    (w) => w.kvU32('general.alignment', GGUF_DEFAULT_ALIGNMENT),
    (w) => w.kvU32('general.file_type', s.tensorType === 'F32' ? 0 : 1),
    (w) => w.kvU32('llama.context_length', s.context),
    (w) => w.kvU32('llama.embedding_length', s.embedding),
    (w) => w.kvU32('llama.block_count', s.layers),
    (w) => w.kvU32('llama.feed_forward_length', s.feedForward),
    (w) => w.kvU32('llama.attention.head_count', s.heads),
    (w) => w.kvU32('llama.attention.head_count_kv', s.kvHeads),
    (w) => w.kvU32('llama.rope.dimension_count', s.embedding / s.heads),
    (w) => w.kvF32('llama.rope.freq_base', 10000),
    (w) => w.kvF32('llama.attention.layer_norm_rms_epsilon', 1e-5),
    (w) => w.kvU32('llama.vocab_size', s.vocab),
    (w) => w.kvStr('tokenizer.ggml.model', 'llama'),
    (w) => w.kvArray('tokenizer.ggml.tokens', GgufValueType.STRING, vocab.tokens),
    (w) => w.kvArray('tokenizer.ggml.scores', GgufValueType.FLOAT32, vocab.scores),
    (w) => w.kvArray('tokenizer.ggml.token_type', GgufValueType.INT32, vocab.types),
    (w) => w.kvU32('tokenizer.ggml.bos_token_id', BOS_ID),
    (w) => w.kvU32('tokenizer.ggml.eos_token_id', EOS_ID),
    (w) => w.kvU32('tokenizer.ggml.unknown_token_id', UNK_ID),
    (w) => w.kvBool('tokenizer.ggml.add_bos_token', true),
    (w) => w.kvBool('tokenizer.ggml.add_eos_token', false),
    ...(text.chatTemplate === null
      ? []
      : [(w: HeaderWriter) => w.kvStr('tokenizer.chat_template', text.chatTemplate as string)]),
  ];
  w.u32(GGUF_MAGIC);
  w.u32(3);
  w.u64(tensors.length);
  w.u64(kv.length);
  for (const k of kv) k(w);
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type === 'F32' ? GGML_F32 : GGML_F16);
    w.u64(t.offset);
  }
  w.padTo(GGUF_DEFAULT_ALIGNMENT);
  return w.finish();
}

/** A murmur3-style finaliser: turns (seed, tensor index) into a well-mixed, non-zero xorshift32 state. */
function mixSeed(seed: number, stream: number): number {
  let z = (Math.imul(seed | 0, 0x9e3779b9) + Math.imul(stream + 1, 0x85ebca6b)) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  z ^= z >>> 15;
  return z === 0 ? 0x6d2b79f5 : z; // xorshift32 must not start at 0
}

/**
 * Fill `out` (u32 words) with random weights. Each xorshift32 word becomes two f16 values built
 * directly from bits, sign random, exponent 2^-8..2^-5, mantissa random, so |w| is in [0.004, 0.0625):
 * small enough to keep activations tame, and no float arithmetic on the hot path (1 GiB in seconds).
 * For F32 the same halves are widened exactly, so F16 and F32 models with one seed are the same model.
 */
function fillRandom(out: Uint32Array, type: GgufTensorType, state: number): number {
  let x = state;
  if (type === 'F16') {
    for (let i = 0; i < out.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = (x & 0x83ff83ff) | ((((x >>> 10) & 0x00030003) + 0x00070007) << 10);
    }
  } else {
    for (let i = 0; i < out.length; i += 2) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const h = (x & 0x83ff83ff) | ((((x >>> 10) & 0x00030003) + 0x00070007) << 10);
      out[i] = half2float(h & 0xffff);
      if (i + 1 < out.length) out[i + 1] = half2float(h >>> 16);
    }
  }
  return x;
}

/** Exact widening of the normal f16 values `fillRandom` produces (no zeros, subnormals or NaNs). */
function half2float(h: number): number {
  return (((h & 0x8000) << 16) | ((((h >>> 10) & 0x1f) + 112) << 23) | ((h & 0x3ff) << 13)) >>> 0;
}

function* tensorChunks(t: TensorPlan, seed: number, index: number): Generator<Uint8Array> {
  const width = t.type === 'F32' ? 4 : 2;
  let state = mixSeed(seed, index);
  const rowBytes = t.dims[0]! * width;
  const zero = t.zeroRows ? new Set(t.zeroRows) : undefined;
  for (let start = 0; start < t.byteLength; start += CHUNK_BYTES) {
    const len = Math.min(CHUNK_BYTES, t.byteLength - start);
    // Chunks hold whole u32 words (CHUNK_BYTES is a multiple of 4); an odd F16 tail is cut off below.
    const words = new Uint32Array(Math.ceil(len / 4));
    if (t.fill === 'ones') {
      (t.type === 'F32' ? new Float32Array(words.buffer) : new Uint16Array(words.buffer)).fill(
        t.type === 'F32' ? 1 : 0x3c00,
      );
    } else {
      state = fillRandom(words, t.type, state);
    }
    const chunk = new Uint8Array(words.buffer, 0, len);
    if (zero) {
      // A silent row may span two chunks: clear the part of it inside this one.
      for (const row of zero) {
        const a = Math.max(row * rowBytes, start);
        const b = Math.min((row + 1) * rowBytes, start + len);
        if (a < b) chunk.fill(0, a - start, b - start);
      }
    }
    yield chunk;
  }
}

/**
 * A llama-architecture GGUF v3 model with random weights (deterministic in `seed` and the shape), a
 * byte-fallback SentencePiece vocabulary (any text tokenizes) and a ChatML chat template. The model
 * never emits control tokens or non-ASCII bytes (their output rows are zero), so greedy output is
 * printable ASCII and generation runs to `maxTokens` unless a stop string ends it.
 */
export function tinyLlamaGguf(opts: TinyLlamaOptions = {}): TinyLlamaGguf {
  const shape = resolveShape(opts);
  const seed = opts.seed ?? 1;
  if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
  const text = headerText(opts);
  const { tensors, size } = planTensors(shape, text);
  const header = headerBytes(shape, tensors, text);
  const dataStart = header.length;
  function* chunks(): Generator<Uint8Array> {
    yield header;
    let written = 0;
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      if (t.offset > written) {
        yield new Uint8Array(t.offset - written);
        written = t.offset;
      }
      for (const c of tensorChunks(t, seed, i)) {
        yield c;
        written += c.length;
      }
    }
    if (dataStart + written !== size) throw new Error('tiny GGUF writer: size mismatch (a bug)');
  }
  return {
    size,
    shape,
    chunks,
    bytes() {
      const out = new Uint8Array(size);
      let o = 0;
      for (const c of chunks()) {
        out.set(c, o);
        o += c.length;
      }
      return out;
    },
  };
}
