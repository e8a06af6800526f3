/**
 * The llama architecture in jax-js, computed the way llama.cpp computes LLM_ARCH_LLAMA so that the
 * exported GGUF gives the same logits: token embedding; per block RMSNorm → attention (RoPE of type
 * NORM, i.e. rotating adjacent pairs (x[2i], x[2i+1]); grouped-query attention where query head h
 * reads key/value head floor(h / (heads / kvHeads)); causal mask; scale 1/√headDim) → residual,
 * RMSNorm → SwiGLU feed-forward → residual; final RMSNorm; untied output head.
 *
 * Parameters are a flat list in a fixed order (see `paramSpecs`). Matrices are stored [in, out] so a
 * layer is `x @ W`; the GGUF writer transposes them into ggml's [out][in] rows.
 *
 * jax-js arrays are reference counted: every op consumes its inputs, `.ref` keeps one alive. Each
 * function here consumes exactly the arrays it is given.
 */
import { type Array as JaxArray, jit, nn, numpy as np, type OwnedFunction, valueAndGrad } from '@jax-js/jax';
import { Rng } from '../../util/index.js';
import { adamwUpdate, type OptimizerConfig } from '../adamw.js';

/** llama.cpp reads these from the GGUF; the trainer always writes these values. */
export const RMS_EPS = 1e-5;
export const ROPE_BASE = 10000;

export interface LlamaShape {
  vocab: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
}

export interface ParamSpec {
  /** The GGUF tensor name. */
  name: string;
  /** Shape as stored here ([in, out] for matrices, [vocab, dim] for the embedding). */
  shape: number[];
  /** The GGUF data is the transpose of this array (matrices used as `x @ W`). */
  transposed: boolean;
  /** Initial values: ones (norm weights) or normal with this standard deviation. */
  init: 'ones' | number;
  /** AdamW's decoupled weight decay applies (matrices, not norm weights). */
  decay: boolean;
}

export function headDim(s: LlamaShape): number {
  return s.dim / s.heads;
}

/** The parameters in the order every list here uses: embedding, blocks, output norm, output. */
export function paramSpecs(s: LlamaShape): ParamSpec[] {
  const hd = headDim(s);
  const std = 0.02;
  // GPT-2's scaled init for the projections that write into the residual stream.
  const residual = std / Math.sqrt(2 * s.layers);
  const mat = (name: string, rows: number, cols: number, sd = std): ParamSpec => ({
    name,
    shape: [rows, cols],
    transposed: true,
    init: sd,
    decay: true,
  });
  const norm = (name: string): ParamSpec => ({
    name,
    shape: [s.dim],
    transposed: false,
    init: 'ones',
    decay: false,
  });
  const specs: ParamSpec[] = [
    { name: 'token_embd.weight', shape: [s.vocab, s.dim], transposed: false, init: std, decay: true },
  ];
  for (let i = 0; i < s.layers; i++) {
    const b = `blk.${i}`;
    specs.push(
      norm(`${b}.attn_norm.weight`),
      mat(`${b}.attn_q.weight`, s.dim, s.heads * hd),
      mat(`${b}.attn_k.weight`, s.dim, s.kvHeads * hd),
      mat(`${b}.attn_v.weight`, s.dim, s.kvHeads * hd),
      mat(`${b}.attn_output.weight`, s.heads * hd, s.dim, residual),
      norm(`${b}.ffn_norm.weight`),
      mat(`${b}.ffn_gate.weight`, s.dim, s.ffn),
      mat(`${b}.ffn_up.weight`, s.dim, s.ffn),
      mat(`${b}.ffn_down.weight`, s.ffn, s.dim, residual),
    );
  }
  specs.push(norm('output_norm.weight'), mat('output.weight', s.dim, s.vocab));
  return specs;
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Initial weights: a pure function of the seed and the shape (one PRNG stream per tensor). */
export function initParams(s: LlamaShape, seed: number): Float32Array[] {
  return paramSpecs(s).map((spec, index) => {
    const out = new Float32Array(elementCount(spec.shape));
    if (spec.init === 'ones') out.fill(1);
    else {
      const rng = new Rng(seed, 0x1417, index);
      for (let i = 0; i < out.length; i++) out[i] = rng.normal() * spec.init;
    }
    return out;
  });
}

/**
 * RoPE tables for positions 0..seq-1, shaped [seq, 1, headDim] to broadcast over [batch, seq, heads,
 * headDim]: cos(pos·θ_i) at both 2i and 2i+1, and the sine signed for the pair rotation
 * (−sin at 2i, +sin at 2i+1), with θ_i = base^(−2i/headDim) as in ggml's rope (mode NORM). `base` is
 * `llama.rope.freq_base` (the LoRA trainer passes its base model's).
 */
export function ropeTables(
  seq: number,
  hd: number,
  base: number = ROPE_BASE,
): { cos: Float32Array; sin: Float32Array } {
  const cos = new Float32Array(seq * hd);
  const sin = new Float32Array(seq * hd);
  for (let p = 0; p < seq; p++) {
    for (let i = 0; i < hd / 2; i++) {
      const theta = p * base ** (-(2 * i) / hd);
      const c = Math.cos(theta);
      const sn = Math.sin(theta);
      cos[p * hd + 2 * i] = c;
      cos[p * hd + 2 * i + 1] = c;
      sin[p * hd + 2 * i] = -sn;
      sin[p * hd + 2 * i + 1] = sn;
    }
  }
  return { cos, sin };
}

/** RMSNorm over the last axis with `eps` (`llama.attention.layer_norm_rms_epsilon`). */
export function rmsNorm(x: JaxArray, weight: JaxArray, eps: number = RMS_EPS): JaxArray {
  const scale = np.sqrt(np.mean(np.square(x.ref), -1, { keepdims: true }).add(eps));
  return x.div(scale).mul(weight);
}

/** Rotates adjacent pairs: x·cos + swap(x)·sin, where swap exchanges x[2i] and x[2i+1]. */
export function rope(x: JaxArray, cos: JaxArray, sin: JaxArray): JaxArray {
  const [b, t, h, d] = x.shape as [number, number, number, number];
  const swapped = np.flip(x.ref.reshape([b, t, h, d / 2, 2]), -1).reshape([b, t, h, d]);
  return x.mul(cos).add(swapped.mul(sin));
}

/**
 * Causal grouped-query attention of q [b, t, heads, hd] over k, v [b, t, kvHeads, hd] → [b, t, dim].
 * Written with matmul rather than nn.dotProductAttention, whose einsum needs iterator helpers that
 * Node 20 lacks. `np.repeat` gives query head h the key/value head floor(h / group), as ggml does.
 */
export function attention(
  s: Pick<LlamaShape, 'heads' | 'kvHeads'>,
  q: JaxArray,
  k: JaxArray,
  v: JaxArray,
): JaxArray {
  const [b, t, h, hd] = q.shape as [number, number, number, number];
  const group = s.heads / s.kvHeads;
  if (group > 1) {
    k = np.repeat(k, group, 2);
    v = np.repeat(v, group, 2);
  }
  const scores = np.matmul(q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 3, 1])).mul(1 / Math.sqrt(hd));
  const masked = np.where(np.tri(t, t, 0, { dtype: np.bool }), scores, -Infinity);
  const probs = nn.softmax(masked, -1);
  return np
    .matmul(probs, v.transpose([0, 2, 1, 3]))
    .transpose([0, 2, 1, 3])
    .reshape([b, t, h * hd]);
}

/**
 * Logits [batch·seq, vocab] of `tokens`, the int32 ids of `batch` rows of `seq` tokens, flat: a jit
 * argument handed straight to np.take, because jax-js 0.1.25's jit refuses the scatter of take's
 * gradient when its indices are a view (a reshape) of an argument. Consumes every argument.
 */
export function forward(
  s: LlamaShape,
  params: JaxArray[],
  tokens: JaxArray,
  cos: JaxArray,
  sin: JaxArray,
): JaxArray {
  const t = cos.shape[0]!;
  const b = tokens.shape[0]! / t;
  const hd = headDim(s);
  let i = 0;
  const next = (): JaxArray => params[i++]!;
  // The residual stream stays [b·t, dim]: the gradient of np.take must reach the scatter as a
  // computed array, not as a reshape of one (the same jit limitation as above).
  let x = np.take(next(), tokens, 0);
  for (let l = 0; l < s.layers; l++) {
    const h = rmsNorm(x.ref, next());
    const q = rope(np.matmul(h.ref, next()).reshape([b, t, s.heads, hd]), cos.ref, sin.ref);
    const k = rope(np.matmul(h.ref, next()).reshape([b, t, s.kvHeads, hd]), cos.ref, sin.ref);
    const v = np.matmul(h, next()).reshape([b, t, s.kvHeads, hd]);
    x = x.add(np.matmul(attention(s, q, k, v).reshape([b * t, s.heads * hd]), next()));
    const f = rmsNorm(x.ref, next());
    const gate = nn.silu(np.matmul(f.ref, next()));
    const up = np.matmul(f, next());
    x = x.add(np.matmul(gate.mul(up), next()));
  }
  cos.dispose();
  sin.dispose();
  return np.matmul(rmsNorm(x, next()), next());
}

/** Negative log-likelihood of each target, [batch·seq]. Consumes its arguments. */
function tokenNll(s: LlamaShape, logits: JaxArray, targets: JaxArray): JaxArray {
  const logp = nn.logSoftmax(logits, -1);
  return logp.mul(nn.oneHot(targets, s.vocab)).sum(-1).neg();
}

function meanLoss(
  s: LlamaShape,
  params: JaxArray[],
  tokens: JaxArray,
  targets: JaxArray,
  cos: JaxArray,
  sin: JaxArray,
): JaxArray {
  return tokenNll(s, forward(s, params, tokens, cos, sin), targets).mean();
}

// A type alias, not an interface: jax-js's JsTree only accepts object types with an index signature.
export type StepOutput = {
  loss: JaxArray;
  params: JaxArray[];
  m: JaxArray[];
  v: JaxArray[];
};

/**
 * One jit-compiled AdamW step: (params, m, v, tokens, targets, cos, sin, lr, bc1, bc2) → new state and
 * the batch loss. The learning rate and the bias corrections 1−β^t are arrays, not constants, so the
 * compiled step is traced once and reused for every step.
 */
export function makeTrainStep(
  s: LlamaShape,
  opt: OptimizerConfig,
): OwnedFunction<
  (
    params: JaxArray[],
    m: JaxArray[],
    v: JaxArray[],
    tokens: JaxArray,
    targets: JaxArray,
    cos: JaxArray,
    sin: JaxArray,
    lr: JaxArray,
    bc1: JaxArray,
    bc2: JaxArray,
  ) => StepOutput
> {
  const decay = paramSpecs(s).map((p) => p.decay);
  const lossOf = (
    p: JaxArray[],
    tokens: JaxArray,
    targets: JaxArray,
    cos: JaxArray,
    sin: JaxArray,
  ): JaxArray => meanLoss(s, p, tokens, targets, cos, sin);
  return jit(
    (
      params: JaxArray[],
      m: JaxArray[],
      v: JaxArray[],
      tokens: JaxArray,
      targets: JaxArray,
      cos: JaxArray,
      sin: JaxArray,
      lr: JaxArray,
      bc1: JaxArray,
      bc2: JaxArray,
    ): StepOutput => {
      const [loss, grads0] = valueAndGrad(lossOf)(
        params.map((p) => p.ref),
        tokens,
        targets,
        cos,
        sin,
      );
      const next = adamwUpdate(opt, params, m, v, grads0, lr, bc1, bc2, decay);
      return { loss, params: next.params, m: next.m, v: next.v };
    },
  );
}

/**
 * Summed negative log-likelihood of the targets whose weight is 1 (padding rows weigh 0), for
 * held-out evaluation: (params, tokens, targets, weights, cos, sin) → scalar. Does not consume params
 * when called with `.ref`s.
 */
export function makeEvalNll(
  s: LlamaShape,
): OwnedFunction<
  (
    params: JaxArray[],
    tokens: JaxArray,
    targets: JaxArray,
    weights: JaxArray,
    cos: JaxArray,
    sin: JaxArray,
  ) => JaxArray
> {
  return jit(
    (
      params: JaxArray[],
      tokens: JaxArray,
      targets: JaxArray,
      weights: JaxArray,
      cos: JaxArray,
      sin: JaxArray,
    ) =>
      tokenNll(s, forward(s, params, tokens, cos, sin), targets)
        .mul(weights)
        .sum(),
  );
}

/** Logits of a batch of token rows: (params, tokens, cos, sin) → [batch·seq, vocab]. */
export function makeLogits(
  s: LlamaShape,
): OwnedFunction<(params: JaxArray[], tokens: JaxArray, cos: JaxArray, sin: JaxArray) => JaxArray> {
  return jit((params: JaxArray[], tokens: JaxArray, cos: JaxArray, sin: JaxArray) =>
    forward(s, params, tokens, cos, sin),
  );
}
