/**
 * A generator for tiny ONNX embedding model bundles, so that tests, demos and benchmarks can serve a
 * real ONNX model without downloading one. Web-standard only. The bundle has the shape of a Hugging
 * Face model directory exported for ONNX (as `optimum` and sentence-transformers write them):
 * `onnx/model.onnx`, `tokenizer.json`, `tokenizer_config.json`, `config.json`, and its graph has a
 * BERT export's interface (`input_ids`, `attention_mask`, `token_type_ids` → `last_hidden_state`).
 *
 * The model is not a transformer: each token's vector is `tanh((E[id] + T[type]) · W)`, with E, T and
 * W random but fixed by the seed. Tokens do not interact, so a vector depends only on which tokens are
 * averaged: exactly what a pooling test needs to catch padding that leaks into the mean.
 *
 * The ONNX file is protobuf (onnx.proto: ModelProto, GraphProto, NodeProto, TensorProto,
 * ValueInfoProto, TypeProto), written here by a minimal encoder; IR version 8, default opset 17.
 */
import { writeTar } from '../models/tar.js';

export interface TinyOnnxEmbeddingOptions {
  /** Fixes every weight; equal options give byte-identical bundles. Integer in [0, 2^32). Default 1. */
  seed?: number;
  /** Length of the output vectors (also the hidden size). Default 32. */
  dimensions?: number;
  /** WordPiece vocabulary size, from {@link TINY_VOCAB_MIN} to {@link TINY_VOCAB_MAX}. Default 512. */
  vocabSize?: number;
  /** `model_max_length` in tokenizer_config.json, special tokens included. Default 512. */
  contextLength?: number;
  /** Whether the graph takes `token_type_ids` (BERT does; many newer exports do not). Default true. */
  tokenTypeIds?: boolean;
  /**
   * `last_hidden_state` (default): one [batch, seq, dim] output, pooled by the server, as in optimum
   * exports. `sentence_embedding`: the graph pools itself (attention-masked mean) and declares
   * `token_embeddings` [batch, seq, dim] and `sentence_embedding` [batch, dim], as sentence-transformers
   * exports do.
   */
  output?: 'last_hidden_state' | 'sentence_embedding';
}

// --- protobuf ------------------------------------------------------------------------------------

const enc = new TextEncoder();

/** Builds one protobuf message; fields are appended in call order. */
class Message {
  private parts: Uint8Array[] = [];

  private varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`varint out of range: ${n}`);
    const out: number[] = [];
    while (n >= 0x80) {
      out.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    out.push(n);
    this.parts.push(Uint8Array.from(out));
  }

  private tag(field: number, wire: 0 | 2): void {
    this.varint(field * 8 + wire);
  }

  int(field: number, n: number): this {
    this.tag(field, 0);
    this.varint(n);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.tag(field, 2);
    this.varint(b.length);
    this.parts.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, enc.encode(s));
  }

  message(field: number, m: Message): this {
    return this.bytes(field, m.finish());
  }

  finish(): Uint8Array {
    let n = 0;
    for (const p of this.parts) n += p.length;
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

/** TensorProto.DataType */
const FLOAT = 1;
const INT64 = 7;
/** AttributeProto.AttributeType */
const ATTR_INT = 2;

type Dim = number | string;

/** TensorProto with little-endian raw_data (field 9). */
function tensor(name: string, dims: number[], type: typeof FLOAT | typeof INT64, raw: Uint8Array): Message {
  const t = new Message();
  for (const d of dims) t.int(1, d);
  return t.int(2, type).string(8, name).bytes(9, raw);
}

function floatTensor(name: string, dims: number[], values: Float32Array): Message {
  const raw = new Uint8Array(values.length * 4);
  const view = new DataView(raw.buffer);
  for (const [i, v] of values.entries()) view.setFloat32(i * 4, v, true);
  return tensor(name, dims, FLOAT, raw);
}

function int64Tensor(name: string, values: number[]): Message {
  const raw = new Uint8Array(values.length * 8);
  const view = new DataView(raw.buffer);
  for (const [i, v] of values.entries()) view.setBigInt64(i * 8, BigInt(v), true);
  return tensor(name, [values.length], INT64, raw);
}

/** ValueInfoProto { name, type: TypeProto { tensor_type: { elem_type, shape } } } */
function valueInfo(name: string, elemType: number, shape: Dim[]): Message {
  const dims = new Message();
  for (const d of shape) {
    const dim = new Message();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    dims.message(1, dim);
  }
  const tensorType = new Message().int(1, elemType).message(2, dims);
  return new Message().string(1, name).message(2, new Message().message(1, tensorType));
}

function node(op: string, inputs: string[], outputs: string[], attrs: Record<string, number> = {}): Message {
  const n = new Message();
  for (const i of inputs) n.string(1, i);
  for (const o of outputs) n.string(2, o);
  n.string(3, `${op}_${outputs[0]}`).string(4, op);
  for (const [name, value] of Object.entries(attrs)) {
    n.message(5, new Message().string(1, name).int(20, ATTR_INT).int(3, value));
  }
  return n;
}

// --- weights -------------------------------------------------------------------------------------

/** A 32-bit Weyl sequence through an avalanching mix: tiny, deterministic, good enough for weights. */
function uniform(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    z ^= z >>> 15;
    return (z >>> 0) / 2 ** 32;
  };
}

function randomMatrix(next: () => number, rows: number, cols: number, scale: number): Float32Array {
  const m = new Float32Array(rows * cols);
  for (let i = 0; i < m.length; i++) m[i] = (next() * 2 - 1) * scale;
  return m;
}

// --- tokenizer -----------------------------------------------------------------------------------

const SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;
const LETTERS = 'abcdefghijklmnopqrstuvwxyz0123456789';
const PUNCTUATION = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const WORDS = (
  'the of and to in is it that for on with as was be by at this are from or an have not but they his ' +
  'her she he we you all one can there their what so up out if about who which when will more no time ' +
  'my than been would like into has two how our may its only new some could these other way then now ' +
  'hello world model sealed secret key data cat dog sun moon red blue green text embed vector token'
).split(' ');

function baseVocab(): string[] {
  return [...SPECIALS, ...LETTERS, ...PUNCTUATION, ...[...LETTERS].map((c) => `##${c}`)];
}

function bigrams(): string[] {
  const out: string[] = [];
  for (const a of LETTERS.slice(0, 26)) for (const b of LETTERS.slice(0, 26)) out.push(a + b);
  return [...out, ...out.map((s) => `##${s}`)];
}

/** Every token the generator can use, in id order: base tokens, {@link WORDS}, letter pairs (unique). */
const ALL_TOKENS = [...new Set([...baseVocab(), ...WORDS, ...bigrams()])];

/** Smallest vocabulary: special tokens, single characters and their `##` continuations. */
export const TINY_VOCAB_MIN = baseVocab().length;
/** Largest vocabulary: the above, a list of common words, and lower-case letter pairs with and without `##`. */
export const TINY_VOCAB_MAX = ALL_TOKENS.length;

function tokenizerJson(vocab: string[]): unknown {
  const id = (t: string) => vocab.indexOf(t);
  const special = (t: string) => ({ id: t, type_id: 0 });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content) => ({
      id: id(content),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: 'BertNormalizer',
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: true,
    },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [
        { SpecialToken: special('[CLS]') },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: special('[SEP]') },
      ],
      pair: [
        { SpecialToken: special('[CLS]') },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: special('[SEP]') },
        { Sequence: { id: 'B', type_id: 1 } },
        { SpecialToken: { id: '[SEP]', type_id: 1 } },
      ],
      special_tokens: Object.fromEntries(
        ['[CLS]', '[SEP]'].map((t) => [t, { id: t, ids: [id(t)], tokens: [t] }]),
      ),
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: {
      type: 'WordPiece',
      unk_token: '[UNK]',
      continuing_subword_prefix: '##',
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(vocab.map((t, i) => [t, i])),
    },
  };
}

function tokenizerConfig(contextLength: number): unknown {
  return {
    tokenizer_class: 'BertTokenizer',
    do_lower_case: true,
    tokenize_chinese_chars: true,
    strip_accents: null,
    clean_up_tokenization_spaces: true,
    model_max_length: contextLength,
    pad_token: '[PAD]',
    unk_token: '[UNK]',
    cls_token: '[CLS]',
    sep_token: '[SEP]',
    mask_token: '[MASK]',
  };
}

// --- model ---------------------------------------------------------------------------------------

function intOption(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer from ${min} to ${max}, not ${value}`);
  }
  return value;
}

function onnxModel(o: Required<TinyOnnxEmbeddingOptions>): Uint8Array {
  const next = uniform(o.seed);
  const h = o.dimensions;
  const batch = 'batch_size';
  const seq = 'sequence_length';
  const graph = new Message();
  const nodes: Message[] = [];
  const initializers: Message[] = [
    floatTensor('word_embeddings', [o.vocabSize, h], randomMatrix(next, o.vocabSize, h, 1)),
  ];
  const inputs = [
    valueInfo('input_ids', INT64, [batch, seq]),
    valueInfo('attention_mask', INT64, [batch, seq]),
  ];
  let embedded = 'word_vectors';
  nodes.push(node('Gather', ['word_embeddings', 'input_ids'], [embedded]));
  if (o.tokenTypeIds) {
    inputs.push(valueInfo('token_type_ids', INT64, [batch, seq]));
    initializers.push(floatTensor('token_type_embeddings', [2, h], randomMatrix(next, 2, h, 0.5)));
    nodes.push(node('Gather', ['token_type_embeddings', 'token_type_ids'], ['type_vectors']));
    nodes.push(node('Add', ['word_vectors', 'type_vectors'], ['embeddings']));
    embedded = 'embeddings';
  }
  // Scaled so that tanh stays mostly in its linear range and vectors keep their spread.
  initializers.push(floatTensor('dense_weight', [h, h], randomMatrix(next, h, h, 1 / Math.sqrt(h))));
  nodes.push(node('MatMul', [embedded, 'dense_weight'], ['projected']));
  const outputs: Message[] = [];
  if (o.output === 'last_hidden_state') {
    nodes.push(node('Tanh', ['projected'], ['last_hidden_state']));
    outputs.push(valueInfo('last_hidden_state', FLOAT, [batch, seq, h]));
  } else {
    nodes.push(node('Tanh', ['projected'], ['token_embeddings']));
    initializers.push(int64Tensor('last_axis', [-1]), int64Tensor('sequence_axis', [1]));
    nodes.push(
      node('Cast', ['attention_mask'], ['mask_float'], { to: FLOAT }),
      node('Unsqueeze', ['mask_float', 'last_axis'], ['mask']),
      node('Mul', ['token_embeddings', 'mask'], ['masked']),
      node('ReduceSum', ['masked', 'sequence_axis'], ['summed'], { keepdims: 0 }),
      node('ReduceSum', ['mask', 'sequence_axis'], ['counted'], { keepdims: 0 }),
      node('Div', ['summed', 'counted'], ['sentence_embedding']),
    );
    outputs.push(
      valueInfo('token_embeddings', FLOAT, [batch, seq, h]),
      valueInfo('sentence_embedding', FLOAT, [batch, h]),
    );
  }
  for (const n of nodes) graph.message(1, n);
  graph.string(2, 'tiny_embedding');
  for (const t of initializers) graph.message(5, t);
  for (const i of inputs) graph.message(11, i);
  for (const out of outputs) graph.message(12, out);
  return new Message()
    .int(1, 8)
    .string(2, 'cloister')
    .string(3, '0.1.0')
    .message(7, graph)
    .message(8, new Message().string(1, '').int(2, 17))
    .finish();
}

function json(value: unknown): Uint8Array {
  return enc.encode(`${JSON.stringify(value, null, 2)}\n`);
}

/** The files of a tiny embedding model directory, path → bytes, in the layout the bundle uses. */
export function tinyOnnxEmbeddingFiles(options: TinyOnnxEmbeddingOptions = {}): Map<string, Uint8Array> {
  const o: Required<TinyOnnxEmbeddingOptions> = {
    seed: intOption('seed', options.seed ?? 1, 0, 2 ** 32 - 1),
    dimensions: intOption('dimensions', options.dimensions ?? 32, 1, 4096),
    vocabSize: intOption('vocabSize', options.vocabSize ?? 512, TINY_VOCAB_MIN, TINY_VOCAB_MAX),
    contextLength: intOption('contextLength', options.contextLength ?? 512, 3, 1 << 20),
    tokenTypeIds: options.tokenTypeIds ?? true,
    output: options.output ?? 'last_hidden_state',
  };
  const vocab = ALL_TOKENS.slice(0, o.vocabSize);
  return new Map([
    ['onnx/model.onnx', onnxModel(o)],
    ['tokenizer.json', json(tokenizerJson(vocab))],
    ['tokenizer_config.json', json(tokenizerConfig(o.contextLength))],
    [
      'config.json',
      json({
        architectures: ['BertModel'],
        model_type: 'bert',
        hidden_size: o.dimensions,
        vocab_size: o.vocabSize,
        max_position_embeddings: o.contextLength,
        type_vocab_size: o.tokenTypeIds ? 2 : 0,
      }),
    ],
  ]);
}

/** A tiny embedding model bundle: the tar of {@link tinyOnnxEmbeddingFiles}, ready to seal or serve. */
export function tinyOnnxEmbeddingBundle(options: TinyOnnxEmbeddingOptions = {}): Uint8Array {
  return writeTar(tinyOnnxEmbeddingFiles(options));
}
