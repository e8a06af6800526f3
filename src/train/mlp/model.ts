/**
 * The MLP on jax-js: dense layers with ReLU or GELU between them, softmax cross-entropy (classify) or
 * mean squared error (regress), and AdamW, as one jit-compiled step.
 *
 * Parameters live in the engine as a flat list [w0, b0, w1, b1, …] with w_i of shape [in, out]
 * (x · w + b). jax-js arrays are reference counted and every op consumes its inputs, so arrays that
 * must outlive a call are passed as `.ref` (or `tree.ref`). The step takes the learning rate and
 * Adam's bias corrections as arrays, not numbers: a number would be baked into the trace and force a
 * retrace (a recompile) at every step.
 */
import { type Array as JaxArray, jit, nn, numpy as np, tree, valueAndGrad } from '@jax-js/jax';
import type { Activation, Task } from './hyperparameters.js';
import type { Rng } from './rng.js';

const BETA1 = 0.9;
const BETA2 = 0.999;
const EPS = 1e-8;
/** Rows per forward call in evaluation and prediction; inputs are padded to it so jit traces once. */
export const CHUNK = 256;

/** GELU, tanh approximation, written out so the ONNX export can spell the same formula. */
export const GELU_C = Math.sqrt(2 / Math.PI);
export const GELU_K = 0.044715;

function gelu(x: JaxArray): JaxArray {
  // x · 0.5 · (1 + tanh(c · x · (1 + k · x²)))
  return x.ref.mul(0.5).mul(np.tanh(x.ref.mul(x.ref.mul(x).mul(GELU_K).add(1)).mul(GELU_C)).add(1));
}

/** Layer sizes: [inputs, ...hidden, outputs]. */
export function shapes(sizes: readonly number[]): number[][] {
  const out: number[][] = [];
  for (let i = 0; i + 1 < sizes.length; i++) out.push([sizes[i]!, sizes[i + 1]!], [sizes[i + 1]!]);
  return out;
}

/**
 * Initial parameters: He-uniform for layers followed by an activation, Glorot-uniform for the output
 * layer, zero biases. Drawn from the trainer's own generator so they depend on the seed alone.
 */
export function initialParameters(sizes: readonly number[], rng: Rng): Float32Array[] {
  const out: Float32Array[] = [];
  for (let i = 0; i + 1 < sizes.length; i++) {
    const fanIn = sizes[i]!;
    const fanOut = sizes[i + 1]!;
    const last = i + 2 === sizes.length;
    const limit = last ? Math.sqrt(6 / (fanIn + fanOut)) : Math.sqrt(6 / fanIn);
    const w = new Float32Array(fanIn * fanOut);
    for (let k = 0; k < w.length; k++) w[k] = (rng.float() * 2 - 1) * limit;
    out.push(w, new Float32Array(fanOut));
  }
  return out;
}

export interface ModelConfig {
  sizes: number[];
  activation: Activation;
  task: Task;
  weightDecay: number;
}

/** The model and its optimizer state, in the engine. */
export class MlpModel {
  private params: JaxArray[];
  private m: JaxArray[];
  private v: JaxArray[];
  private readonly shapes: number[][];
  private readonly trainStep;
  private readonly forwardJit;

  constructor(
    private readonly config: ModelConfig,
    initial: Float32Array[],
  ) {
    this.shapes = shapes(config.sizes);
    this.params = this.upload(initial);
    this.m = this.shapes.map((s) => np.zeros(s));
    this.v = this.shapes.map((s) => np.zeros(s));

    const layers = this.shapes.length / 2;
    const act = config.activation === 'gelu' ? gelu : (x: JaxArray) => nn.relu(x);
    const forward = (p: JaxArray[], x: JaxArray): JaxArray => {
      let h = x;
      for (let i = 0; i < layers; i++) {
        h = np.matmul(h, p[2 * i]!).add(p[2 * i + 1]!);
        if (i + 1 < layers) h = act(h);
      }
      return h;
    };
    const loss =
      config.task === 'classify'
        ? (p: JaxArray[], x: JaxArray, y: JaxArray): JaxArray =>
            // y is one-hot [batch, classes]: mean over the batch of −Σ y · log softmax(logits).
            np.mean(np.sum(y.mul(nn.logSoftmax(forward(p, x), -1)), -1)).mul(-1)
        : (p: JaxArray[], x: JaxArray, y: JaxArray): JaxArray => np.mean(np.square(forward(p, x).sub(y)));
    const wd = config.weightDecay;

    this.trainStep = jit(
      (
        p: JaxArray[],
        m: JaxArray[],
        v: JaxArray[],
        x: JaxArray,
        y: JaxArray,
        lr: JaxArray,
        bc1: JaxArray,
        bc2: JaxArray,
      ): [JaxArray[], JaxArray[], JaxArray[], JaxArray] => {
        const [value, grads] = valueAndGrad(loss)(tree.ref(p), x, y);
        const g = grads as JaxArray[];
        const np1: JaxArray[] = [];
        const nm: JaxArray[] = [];
        const nv: JaxArray[] = [];
        for (let i = 0; i < p.length; i++) {
          const gi = g[i]!;
          const mi = m[i]!.mul(BETA1).add(gi.ref.mul(1 - BETA1));
          const vi = v[i]!.mul(BETA2).add(gi.ref.mul(gi).mul(1 - BETA2));
          let update = mi.ref.div(bc1.ref).div(np.sqrt(vi.ref.div(bc2.ref)).add(EPS));
          const pi = p[i]!;
          // Decoupled weight decay (AdamW) on weights only: decaying biases only shifts the outputs.
          if (i % 2 === 0 && wd > 0) update = update.add(pi.ref.mul(wd));
          np1.push(pi.sub(update.mul(lr.ref)));
          nm.push(mi);
          nv.push(vi);
        }
        lr.dispose();
        bc1.dispose();
        bc2.dispose();
        return [np1, nm, nv, value];
      },
    );
    this.forwardJit = jit((p: JaxArray[], x: JaxArray): JaxArray => forward(p, x));
  }

  private upload(arrays: Float32Array[]): JaxArray[] {
    return arrays.map((a, i) => np.array(a).reshape(this.shapes[i]!));
  }

  /** Width of the output layer. */
  get outputs(): number {
    return this.config.sizes[this.config.sizes.length - 1]!;
  }

  /**
   * One AdamW step on a batch: x [batch × inputs], y [batch × outputs] (one-hot classes or targets).
   * `t` is the 1-based step number (Adam's bias correction). Returns the batch loss.
   */
  step(x: Float32Array, y: Float32Array, batch: number, lr: number, t: number): number {
    const inputs = this.config.sizes[0]!;
    const scalar = (s: number) => np.array(new Float32Array([s]));
    const [p, m, v, loss] = this.trainStep(
      this.params,
      this.m,
      this.v,
      np.array(x).reshape([batch, inputs]),
      np.array(y).reshape([batch, this.outputs]),
      scalar(lr),
      scalar(1 - BETA1 ** t),
      scalar(1 - BETA2 ** t),
    );
    this.params = p;
    this.m = m;
    this.v = v;
    return (loss.dataSync() as Float32Array)[0]!;
  }

  /** The raw outputs (logits or standardised values) for n rows of x [n × inputs]. */
  forward(x: Float32Array, n: number): Float32Array {
    const inputs = this.config.sizes[0]!;
    const out = new Float32Array(n * this.outputs);
    for (let start = 0; start < n; start += CHUNK) {
      const rows = Math.min(CHUNK, n - start);
      const chunk = new Float32Array(CHUNK * inputs); // zero padding past `rows`
      chunk.set(x.subarray(start * inputs, (start + rows) * inputs));
      const y = this.forwardJit(tree.ref(this.params), np.array(chunk).reshape([CHUNK, inputs]));
      const data = y.dataSync() as Float32Array;
      out.set(data.subarray(0, rows * this.outputs), start * this.outputs);
    }
    return out;
  }

  /** Copies of [params, m, v] on the host, in the order of {@link shapes}. */
  download(): { params: Float32Array[]; m: Float32Array[]; v: Float32Array[] } {
    const get = (list: JaxArray[]) => list.map((a) => Float32Array.from(a.ref.dataSync() as Float32Array));
    return { params: get(this.params), m: get(this.m), v: get(this.v) };
  }

  /** Replaces parameters and moments (a restored state). */
  restore(state: { params: Float32Array[]; m: Float32Array[]; v: Float32Array[] }): void {
    const next = { params: this.upload(state.params), m: this.upload(state.m), v: this.upload(state.v) };
    tree.dispose([this.params, this.m, this.v]);
    this.params = next.params;
    this.m = next.m;
    this.v = next.v;
  }

  /** Shapes of the parameter list [w0, b0, …]. */
  get parameterShapes(): number[][] {
    return this.shapes.map((s) => [...s]);
  }

  dispose(): void {
    tree.dispose([this.params, this.m, this.v]);
    this.params = [];
    this.m = [];
    this.v = [];
    this.trainStep.dispose();
    this.forwardJit.dispose();
  }
}
