/**
 * The llama forward pass of a frozen base with LoRA deltas, in jax-js: the llama trainer's math
 * (llama/model.ts, which matches llama.cpp's LLM_ARCH_LLAMA) with the base's own RMS epsilon and RoPE
 * frequency base, a tied or untied output head, and on each adapted projection
 *
 *     y = x W + scale · (x Aᵀ) Bᵀ,   scale = alpha / rank
 *
 * which is llama.cpp's `W x + scale · B (A x)` for an adapter loaded with scale 1. A is [rank][in] and
 * B [out][rank] in the adapter file (PEFT's and ggml's layout); here they are kept transposed, Aᵀ as
 * [in, rank] and Bᵀ as [rank, out], so both products are plain `x @ M` with no transposed operand in
 * the forward pass.
 *
 * Only the LoRA matrices are differentiated: the base arrays are jit arguments, not constants baked
 * into the compiled step, and get no gradient, no optimizer state and no update.
 *
 * jax-js arrays are reference counted: every op consumes its inputs, `.ref` keeps one alive. Each
 * function here consumes exactly the arrays it is given.
 */
import {
  type Array as JaxArray,
  jit,
  lax,
  nn,
  numpy as np,
  type OwnedFunction,
  valueAndGrad,
} from '@jax-js/jax';
import { Rng } from '../../util/index.js';
import { adamwUpdate, type OptimizerConfig } from '../adamw.js';
import { attention, rmsNorm, rope } from '../llama/model.js';
import { type BaseBlock, baseHeadDim, type LoraBase, type LoraBaseShape } from './base.js';
import type { LoraTarget } from './hyperparameters.js';

/** The GGUF tensor of each target in block `blk.<l>`. */
export const TARGET_TENSOR: Readonly<Record<LoraTarget, string>> = {
  q: 'attn_q',
  k: 'attn_k',
  v: 'attn_v',
  o: 'attn_output',
  gate: 'ffn_gate',
  up: 'ffn_up',
  down: 'ffn_down',
};

export interface LoraConfig {
  shape: LoraBaseShape;
  /** In LORA_TARGETS order. */
  targets: readonly LoraTarget[];
  rank: number;
  /** alpha / rank. */
  scale: number;
}

/** One adapted projection. */
export interface LoraSpec {
  layer: number;
  target: LoraTarget;
  /** The base tensor's GGUF name, e.g. `blk.0.attn_q.weight`. */
  tensor: string;
  inputs: number;
  outputs: number;
}

function projectionShape(s: LoraBaseShape, target: LoraTarget): [number, number] {
  const kv = s.kvHeads * baseHeadDim(s);
  switch (target) {
    case 'q':
    case 'o':
      return [s.dim, s.dim];
    case 'k':
    case 'v':
      return [s.dim, kv];
    case 'gate':
    case 'up':
      return [s.dim, s.ffn];
    case 'down':
      return [s.ffn, s.dim];
  }
}

/** The adapted projections, block by block, in target order: the order of every LoRA list here. */
export function loraSpecs(cfg: Pick<LoraConfig, 'shape' | 'targets'>): LoraSpec[] {
  const specs: LoraSpec[] = [];
  for (let layer = 0; layer < cfg.shape.layers; layer++) {
    for (const target of cfg.targets) {
      const [inputs, outputs] = projectionShape(cfg.shape, target);
      specs.push({ layer, target, tensor: `blk.${layer}.${TARGET_TENSOR[target]}.weight`, inputs, outputs });
    }
  }
  return specs;
}

/** The shapes of the LoRA arrays: Aᵀ [in, rank] then Bᵀ [rank, out] for each spec. */
export function loraShapes(cfg: LoraConfig): number[][] {
  return loraSpecs(cfg).flatMap((s) => [
    [s.inputs, cfg.rank],
    [cfg.rank, s.outputs],
  ]);
}

/**
 * Initial LoRA values, a pure function of the seed: Aᵀ uniform in ±1/√in (PEFT's kaiming-uniform with
 * a = √5), one PRNG stream per matrix; Bᵀ zero, so the adapter starts as the base exactly.
 */
export function initLora(cfg: LoraConfig, seed: number): Float32Array[] {
  return loraSpecs(cfg).flatMap((s, i) => {
    const at = new Float32Array(s.inputs * cfg.rank);
    const rng = new Rng(seed, 0x10a4, i);
    const bound = 1 / Math.sqrt(s.inputs);
    for (let j = 0; j < at.length; j++) at[j] = (2 * rng.uniform() - 1) * bound;
    return [at, new Float32Array(cfg.rank * s.outputs)];
  });
}

const BLOCK_ORDER = [
  'attnNorm',
  'q',
  'k',
  'v',
  'o',
  'ffnNorm',
  'gate',
  'up',
  'down',
] as const satisfies readonly (keyof BaseBlock)[];

/**
 * The output head's rows: the vocabulary rounded up to a multiple of 16, with zero rows the forward
 * pass slices off. jax-js 0.1.25's wasm matmul is 10–20× slower when a dimension is odd (a 607-token
 * vocabulary: 40 ms against 2.4 ms for 608 on [256, 128] × [128, vocab]). The head is kept as
 * [rows, dim] and used transposed (`h @ Eᵀ`, ggml's own layout): measured, the backward product
 * through it is then 2 ms instead of 43 ms with a [dim, rows] array.
 */
export function paddedVocab(s: LoraBaseShape): number {
  return Math.ceil(s.vocab / 16) * 16;
}

/**
 * The base as the flat list `forward` reads: embedding [vocab, dim], block weights, output norm,
 * output head [paddedVocab, dim].
 */
export function baseArrays(base: LoraBase): JaxArray[] {
  const s = base.shape;
  const head = new Float32Array(paddedVocab(s) * s.dim);
  head.set(base.output);
  const out: JaxArray[] = [np.array(base.embedding).reshape([s.vocab, s.dim])];
  for (const b of base.blocks) {
    for (const key of BLOCK_ORDER) {
      const a = np.array(b[key]);
      out.push(key === 'attnNorm' || key === 'ffnNorm' ? a : a.reshape(projectionShape(s, key)));
    }
  }
  out.push(np.array(base.outputNorm), np.array(head).reshape([paddedVocab(s), s.dim]));
  return out;
}

/**
 * Logits [batch·seq, vocab] of `tokens` (int32, `batch` rows of `seq` flat; seq = cos.shape[0]), with
 * the adapter when `lora` is given and of the base alone when it is null. Consumes every argument.
 */
export function forward(
  cfg: LoraConfig,
  base: JaxArray[],
  lora: JaxArray[] | null,
  tokens: JaxArray,
  cos: JaxArray,
  sin: JaxArray,
): JaxArray {
  const s = cfg.shape;
  const logits = paddedLogits(cfg, base, lora, tokens, cos, sin);
  return paddedVocab(s) === s.vocab ? logits : logits.slice([], [0, s.vocab]);
}

/** `forward` before the padding columns are cut off: [batch·seq, paddedVocab]. */
function paddedLogits(
  cfg: LoraConfig,
  base: JaxArray[],
  lora: JaxArray[] | null,
  tokens: JaxArray,
  cos: JaxArray,
  sin: JaxArray,
): JaxArray {
  const s = cfg.shape;
  const t = cos.shape[0]!;
  const b = tokens.shape[0]! / t;
  const hd = baseHeadDim(s);
  let bi = 0;
  const next = (): JaxArray => base[bi++]!;
  const adapted = new Set(cfg.targets);
  let li = 0;
  /** x @ W, plus scale · (x @ Aᵀ) @ Bᵀ on an adapted projection. Consumes x and W. */
  const project = (x: JaxArray, w: JaxArray, target: LoraTarget): JaxArray => {
    if (lora === null || !adapted.has(target)) return np.matmul(x, w);
    const at = lora[li++]!;
    const bt = lora[li++]!;
    return np.matmul(x.ref, w).add(np.matmul(np.matmul(x, at).mul(cfg.scale), bt));
  };
  let x = np.take(next(), tokens, 0);
  for (let l = 0; l < s.layers; l++) {
    const h = rmsNorm(x.ref, next(), s.rmsEps);
    const q = rope(project(h.ref, next(), 'q').reshape([b, t, s.heads, hd]), cos.ref, sin.ref);
    const k = rope(project(h.ref, next(), 'k').reshape([b, t, s.kvHeads, hd]), cos.ref, sin.ref);
    const v = project(h, next(), 'v').reshape([b, t, s.kvHeads, hd]);
    x = x.add(project(attention(s, q, k, v).reshape([b * t, s.dim]), next(), 'o'));
    const f = rmsNorm(x.ref, next(), s.rmsEps);
    const gate = nn.silu(project(f.ref, next(), 'gate'));
    const up = project(f, next(), 'up');
    x = x.add(project(gate.mul(up), next(), 'down'));
  }
  cos.dispose();
  sin.dispose();
  return np.matmul(rmsNorm(x, next(), s.rmsEps), next().transpose([1, 0]));
}

/**
 * `x` [n, …] computed into its own buffer: jax-js's jit materializes the inputs of a concatenation,
 * and nothing else a program can ask for does so (a pad or a stop-gradient stays fused), so `x` is
 * concatenated with its first row and that row cut off again.
 */
function materialized(x: JaxArray): JaxArray {
  const n = x.shape[0]!;
  return np.concatenate([x.ref, x.slice([0, 1])], 0).slice([0, n]);
}

/** Weighted summed negative log-likelihood of the targets, a scalar. Consumes its arguments. */
function weightedNll(cfg: LoraConfig, logits: JaxArray, targets: JaxArray, weights: JaxArray): JaxArray {
  const logp = nn.logSoftmax(logits, -1);
  return logp.mul(nn.oneHot(targets, cfg.shape.vocab)).sum(-1).neg().mul(weights).sum();
}

// A type alias, not an interface: jax-js's JsTree only accepts object types with an index signature.
export type StepOutput = {
  loss: JaxArray;
  lora: JaxArray[];
  m: JaxArray[];
  v: JaxArray[];
};

type TrainStep = (
  lora: JaxArray[],
  m: JaxArray[],
  v: JaxArray[],
  base: JaxArray[],
  tokens: JaxArray,
  targets: JaxArray,
  weights: JaxArray,
  cos: JaxArray,
  sin: JaxArray,
  lr: JaxArray,
  bc1: JaxArray,
  bc2: JaxArray,
) => StepOutput;

/**
 * One jit-compiled AdamW step on the LoRA matrices. The loss is the masked mean: Σ w·NLL / Σ w over
 * the batch's targets (w = 1 on completion tokens, 0 on prompt and padding). The learning rate and
 * the bias corrections are arrays, so the step is traced once.
 */
export function makeTrainStep(cfg: LoraConfig, opt: OptimizerConfig): OwnedFunction<TrainStep> {
  // The gradient of the masked mean NLL with respect to the logits is w·(softmax − onehot) / Σw.
  // Left to autodiff, jax-js fuses that expression (with its exp) into the backward matmul through
  // the output head and recomputes it for every multiply-add: 75 ms of a ~100 ms step at vocab 607.
  // So the step differentiates a surrogate, Σ stop(G) · logits, whose gradient is exactly G, with G
  // computed once and materialized (see `materialized`); the loss itself is returned beside it.
  const lossOf = (
    lora: JaxArray[],
    base: JaxArray[],
    tokens: JaxArray,
    targets: JaxArray,
    weights: JaxArray,
    cos: JaxArray,
    sin: JaxArray,
  ): [JaxArray, JaxArray] => {
    const n = tokens.shape[0]!;
    const { vocab } = cfg.shape;
    const width = paddedVocab(cfg.shape);
    const count = np.maximum(weights.ref.sum(), 1);
    let padded = paddedLogits(cfg, base, lora, tokens, cos, sin);
    // G is computed at the padded width (its rows then have an even stride; an odd one, 607, is as
    // slow as an odd dimension): the padding columns get a −1e9 logit, whose exp is exactly 0.
    if (width !== vocab) padded = np.where(np.arange(width).less(vocab), padded, -1e9);
    const logp = nn.logSoftmax(padded.ref, -1);
    const onehot = nn.oneHot(targets, width);
    const w = weights.div(count).reshape([n, 1]);
    const loss = logp.ref.mul(onehot.ref).sum(-1, { keepdims: true }).neg().mul(w.ref).sum();
    const g = np.exp(logp).sub(onehot).mul(w);
    return [padded.mul(lax.stopGradient(materialized(g))).sum(), lax.stopGradient(loss)];
  };
  return jit(((lora, m, v, base, tokens, targets, weights, cos, sin, lr, bc1, bc2) => {
    const [[, loss], grads0] = valueAndGrad(lossOf, { hasAux: true })(
      lora.map((p) => p.ref),
      base,
      tokens,
      targets,
      weights,
      cos,
      sin,
    );
    const next = adamwUpdate(opt, lora, m, v, grads0, lr, bc1, bc2);
    return { loss, lora: next.params, m: next.m, v: next.v };
  }) as TrainStep);
}

/**
 * Σ w·NLL over a batch (held-out evaluation), with the adapter or (withLora false) of the base alone:
 * (lora, base, tokens, targets, weights, cos, sin) → scalar. The base-alone function ignores `lora`.
 */
export function makeEvalNll(
  cfg: LoraConfig,
  withLora: boolean,
): OwnedFunction<
  (
    lora: JaxArray[],
    base: JaxArray[],
    tokens: JaxArray,
    targets: JaxArray,
    weights: JaxArray,
    cos: JaxArray,
    sin: JaxArray,
  ) => JaxArray
> {
  return jit(
    (
      lora: JaxArray[],
      base: JaxArray[],
      tokens: JaxArray,
      targets: JaxArray,
      weights: JaxArray,
      cos: JaxArray,
      sin: JaxArray,
    ) => {
      if (!withLora) for (const a of lora) a.dispose();
      return weightedNll(cfg, forward(cfg, base, withLora ? lora : null, tokens, cos, sin), targets, weights);
    },
  );
}

/** Logits of token rows: (lora, base, tokens, cos, sin) → [rows·seq, vocab]; withLora false ignores lora. */
export function makeLogits(
  cfg: LoraConfig,
  withLora: boolean,
): OwnedFunction<
  (lora: JaxArray[], base: JaxArray[], tokens: JaxArray, cos: JaxArray, sin: JaxArray) => JaxArray
> {
  return jit((lora: JaxArray[], base: JaxArray[], tokens: JaxArray, cos: JaxArray, sin: JaxArray) => {
    if (!withLora) for (const a of lora) a.dispose();
    return forward(cfg, base, withLora ? lora : null, tokens, cos, sin);
  });
}
