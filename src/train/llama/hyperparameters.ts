/**
 * The llama trainer's hyperparameters: checked one by one, each refusal naming
 * `hyperparameters.<field>`, defaults filled in, and unknown fields refused (a typo such as
 * "learningRate" must not silently train with the default).
 */
import { fieldReaders } from '../fields.js';
import { LlamaError } from './errors.js';
import type { LlamaShape } from './model.js';
import { VOCAB_SIZE } from './tokenizer.js';

export type LrSchedule = 'cosine' | 'constant';

export interface LlamaHyperparameters {
  /** Optimizer steps of the job. Required. */
  steps: number;
  /** Sequences per step. Default 4. */
  batch: number;
  /** Tokens per sequence (characters, mostly). Default 64. */
  seq: number;
  /** Embedding width. Default 128 (or the starting model's). */
  dim: number;
  /** Transformer blocks. Default 2 (or the starting model's). */
  layers: number;
  /** Attention heads; divides dim, with an even head size. Default 4 (or the starting model's). */
  heads: number;
  /** Key/value heads (grouped-query attention); divides heads. Default heads (or the starting model's). */
  kvHeads: number;
  /** SwiGLU hidden width. Default 2 × dim (or the starting model's). */
  ffn: number;
  /** Peak learning rate. Default 3e-3. */
  lr: number;
  /** Cosine decay to lr/10 after the warmup, or constant. Default cosine. */
  schedule: LrSchedule;
  /** Linear warmup steps. Default min(100, steps/10) for cosine, 0 for constant. */
  warmup: number;
  /** AdamW decoupled weight decay on matrices. Default 0.01. */
  weightDecay: number;
  /** Global gradient-norm clip; 0 turns it off. Default 1. */
  clip: number;
  /** Fraction of the corpus (its last tokens) held out for evaluation, 0 to 0.5. Default 0.1. */
  heldOut: number;
  /** `llama.context_length` written to the GGUF, at least seq. Default max(seq, 512). */
  context: number;
}

export const ADAM = { beta1: 0.9, beta2: 0.95, eps: 1e-8 } as const;

const KNOWN = [
  'steps',
  'batch',
  'seq',
  'dim',
  'layers',
  'heads',
  'kvHeads',
  'ffn',
  'lr',
  'schedule',
  'warmup',
  'weightDecay',
  'clip',
  'heldOut',
  'context',
] as const satisfies readonly (keyof LlamaHyperparameters)[];

function fail(field: string, message: string): LlamaError {
  return new LlamaError('bad-hyperparameter', `hyperparameters.${field} ${message}`);
}

const { int, real, schedule: scheduleOf } = fieldReaders(fail);

/**
 * Checks and completes the hyperparameters. With a starting model, the shape comes from the model; a
 * shape field that is given must agree with it.
 */
export function parseHyperparameters(raw: Record<string, unknown>, start?: LlamaShape): LlamaHyperparameters {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new LlamaError('bad-hyperparameter', 'hyperparameters must be a JSON object');
  }
  for (const key of Object.keys(raw)) {
    if (!(KNOWN as readonly string[]).includes(key)) {
      throw fail(key, `is not a llama trainer hyperparameter (known: ${KNOWN.join(', ')})`);
    }
  }
  const steps = int(raw, 'steps', 1, 100_000_000);
  const batch = int(raw, 'batch', 1, 1024, 4);
  const seq = int(raw, 'seq', 2, 8192, 64);
  const shapeField = (field: keyof LlamaShape, min: number, max: number, fallback: number): number => {
    const v = int(raw, field, min, max, start ? start[field] : fallback);
    if (start && v !== start[field]) throw fail(field, `is ${v}, but the starting model has ${start[field]}`);
    return v;
  };
  const dim = shapeField('dim', 2, 8192, 128);
  const layers = shapeField('layers', 1, 128, 2);
  const heads = shapeField('heads', 1, 256, start ? start.heads : Math.min(4, dim / 2));
  if (dim % heads !== 0) throw fail('heads', `(${heads}) must divide hyperparameters.dim (${dim})`);
  if ((dim / heads) % 2 !== 0)
    throw fail('heads', `must leave an even head size for RoPE; dim ${dim} / heads ${heads} is odd`);
  const kvHeads = shapeField('kvHeads', 1, heads, heads);
  if (heads % kvHeads !== 0)
    throw fail('kvHeads', `(${kvHeads}) must divide hyperparameters.heads (${heads})`);
  const ffn = shapeField('ffn', 1, 65536, 2 * dim);
  const lr = real(raw, 'lr', 0, 1, 3e-3, true);
  const { schedule, warmup } = scheduleOf(raw, steps);
  const weightDecay = real(raw, 'weightDecay', 0, 1, 0.01);
  const clip = real(raw, 'clip', 0, 1e6, 1);
  const heldOut = real(raw, 'heldOut', 0, 0.5, 0.1);
  const context = int(raw, 'context', seq, 1 << 20, Math.max(seq, 512));
  return {
    steps,
    batch,
    seq,
    dim,
    layers,
    heads,
    kvHeads,
    ffn,
    lr,
    schedule,
    warmup,
    weightDecay,
    clip,
    heldOut,
    context,
  };
}

export function shapeOf(hp: LlamaHyperparameters): LlamaShape {
  return {
    vocab: VOCAB_SIZE,
    dim: hp.dim,
    layers: hp.layers,
    heads: hp.heads,
    kvHeads: hp.kvHeads,
    ffn: hp.ffn,
  };
}

/** Learning rate of step `t` (counted from 1): linear warmup, then cosine to lr/10 or constant. */
export function learningRate(
  hp: Pick<LlamaHyperparameters, 'lr' | 'warmup' | 'schedule' | 'steps'>,
  t: number,
): number {
  if (hp.warmup > 0 && t <= hp.warmup) return (hp.lr * t) / hp.warmup;
  if (hp.schedule === 'constant') return hp.lr;
  const progress = Math.min(1, (t - hp.warmup) / Math.max(1, hp.steps - hp.warmup));
  const min = hp.lr / 10;
  return min + (hp.lr - min) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
