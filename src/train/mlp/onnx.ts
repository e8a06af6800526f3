/**
 * The trained MLP as an ONNX model, so it can be served by ONNX Runtime without this code. The graph
 * takes the encoded but unstandardised inputs (numeric features as they are, one 0/1 column per
 * category, in the order of the `inputs` metadata entry) and does the rest itself:
 *
 *   input ─Sub(mean)─Div(std)─Gemm─Relu|GELU─…─Gemm─┬─Softmax ──▶ probabilities [N, classes]
 *                                                   └─Mul(std)─Add(mean) ──▶ value [N, 1] (regress)
 *
 * GELU is spelt out in elementary ops (the tanh form the trainer uses) to stay within opset 17.
 * The protobuf (onnx.proto: ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto) is written
 * by the minimal encoder below; IR version 8.
 */
import { GELU_C, GELU_K } from './model.js';

const enc = new TextEncoder();

/** One protobuf message; fields are appended in call order. */
class Message {
  private readonly parts: Uint8Array[] = [];

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

  int(field: number, n: number): this {
    this.varint(field * 8);
    this.varint(n);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.varint(field * 8 + 2);
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
    const out = new Uint8Array(this.parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

/** TensorProto.DataType FLOAT */
const FLOAT = 1;
/** AttributeProto.AttributeType INT */
const ATTR_INT = 2;

function floatTensor(name: string, dims: number[], values: Float32Array): Message {
  const raw = new Uint8Array(values.length * 4);
  const view = new DataView(raw.buffer);
  for (const [i, v] of values.entries()) view.setFloat32(i * 4, v, true);
  const t = new Message();
  for (const d of dims) t.int(1, d);
  return t.int(2, FLOAT).string(8, name).bytes(9, raw);
}

function valueInfo(name: string, shape: (number | string)[]): Message {
  const dims = new Message();
  for (const d of shape) {
    const dim = new Message();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    dims.message(1, dim);
  }
  const tensorType = new Message().int(1, FLOAT).message(2, dims);
  return new Message().string(1, name).message(2, new Message().message(1, tensorType));
}

export interface OnnxMlp {
  /** Parameters [w0, b0, w1, b1, …], w_i row-major [in, out]. */
  params: Float32Array[];
  sizes: number[];
  activation: 'relu' | 'gelu';
  mean: Float32Array;
  std: Float32Array;
  /** classify → Softmax output "probabilities"; regress → destandardised output "value". */
  task: 'classify' | 'regress';
  target?: { mean: number; std: number };
  /** ModelProto.metadata_props. */
  metadata: Record<string, string>;
}

/** Transposes a row-major [rows, cols] matrix. */
export function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c]!;
  return out;
}

export function writeOnnx(m: OnnxMlp): Uint8Array {
  const graph = new Message();
  const nodes: Message[] = [];
  const inits: Message[] = [];
  const node = (op: string, inputs: string[], output: string, attrs: Record<string, number> = {}) => {
    const n = new Message();
    for (const i of inputs) n.string(1, i);
    n.string(2, output).string(3, output).string(4, op);
    for (const [name, value] of Object.entries(attrs)) {
      n.message(5, new Message().string(1, name).int(20, ATTR_INT).int(3, value));
    }
    nodes.push(n);
    return output;
  };
  const constant = (name: string, dims: number[], values: Float32Array) => {
    inits.push(floatTensor(name, dims, values));
    return name;
  };

  const width = m.sizes[0]!;
  let h = node('Sub', ['input', constant('input_mean', [width], m.mean)], 'centred');
  h = node('Div', [h, constant('input_std', [width], m.std)], 'standardised');
  if (m.activation === 'gelu') {
    constant('gelu_half', [], Float32Array.of(0.5));
    constant('gelu_one', [], Float32Array.of(1));
    constant('gelu_k', [], Float32Array.of(GELU_K));
    constant('gelu_c', [], Float32Array.of(GELU_C));
  }
  const layers = m.sizes.length - 1;
  for (let i = 0; i < layers; i++) {
    const inN = m.sizes[i]!;
    const outN = m.sizes[i + 1]!;
    // Stored as [out, in] (the nn.Linear convention of the safetensors export), hence transB.
    const w = constant(`layers.${i}.weight`, [outN, inN], transpose(m.params[2 * i]!, inN, outN));
    const b = constant(`layers.${i}.bias`, [outN], m.params[2 * i + 1]!);
    h = node('Gemm', [h, w, b], `linear_${i}`, { transB: 1 });
    if (i + 1 < layers) {
      if (m.activation === 'relu') h = node('Relu', [h], `relu_${i}`);
      else {
        // x · 0.5 · (1 + tanh(c · x · (1 + k · x²))), in the order the trainer computes it.
        const p = `gelu_${i}`;
        const half = node('Mul', [h, 'gelu_half'], `${p}_half`);
        const x2 = node('Mul', [h, h], `${p}_x2`);
        const kx2 = node('Mul', [x2, 'gelu_k'], `${p}_kx2`);
        const inner = node('Add', [kx2, 'gelu_one'], `${p}_inner`);
        const xi = node('Mul', [h, inner], `${p}_xi`);
        const arg = node('Mul', [xi, 'gelu_c'], `${p}_arg`);
        const t = node('Tanh', [arg], `${p}_tanh`);
        const t1 = node('Add', [t, 'gelu_one'], `${p}_t1`);
        h = node('Mul', [half, t1], p);
      }
    }
  }
  const outputs = m.sizes[layers]!;
  let output: string;
  if (m.task === 'classify') {
    output = node('Softmax', [h], 'probabilities', { axis: 1 });
  } else {
    const t = m.target!;
    const scaled = node('Mul', [h, constant('target_std', [], Float32Array.of(t.std))], 'scaled');
    output = node('Add', [scaled, constant('target_mean', [], Float32Array.of(t.mean))], 'value');
  }

  for (const n of nodes) graph.message(1, n);
  graph.string(2, 'cloister_mlp');
  for (const t of inits) graph.message(5, t);
  graph.message(11, valueInfo('input', ['N', width]));
  graph.message(12, valueInfo(output, ['N', outputs]));

  const model = new Message()
    .int(1, 8) // ir_version
    .string(2, 'cloister')
    .string(3, '1')
    .message(7, graph)
    .message(8, new Message().string(1, '').int(2, 17)); // opset_import: ai.onnx 17
  for (const [key, value] of Object.entries(m.metadata)) {
    model.message(14, new Message().string(1, key).string(2, value));
  }
  return model.finish();
}
