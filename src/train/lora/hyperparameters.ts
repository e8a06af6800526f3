/**
 * The LoRA trainer's hyperparameters: checked one by one, each refusal naming
 * `hyperparameters.<field>`, defaults filled in, unknown fields refused (a typo such as "targetModules"
 * must not silently train the default projections).
 */
import { fieldReaders } from '../fields.js';
import type { LrSchedule } from '../llama/hyperparameters.js';
import { LoraError } from './errors.js';

/** The projections a LoRA can adapt, by their short names. */
export const LORA_TARGETS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export interface LoraHyperparameters {
  /** Optimizer steps of the job. Required. */
  steps: number;
  /** Examples (rows) per step. Default 4. */
  batch: number;
  /** Tokens per row; longer examples are cut to seq + 1 tokens by the dataset reader. Default 64. */
  seq: number;
  /** LoRA rank r. Default 8. */
  rank: number;
  /** LoRA alpha: the delta is scaled by alpha / rank. Default 16. */
  alpha: number;
  /** Adapted projections, in LORA_TARGETS order. Default ["q", "v"]. */
  targets: LoraTarget[];
  /** Peak learning rate. Default 1e-3. */
  lr: number;
  /** Cosine decay to lr/10 after the warmup, or constant. Default cosine. */
  schedule: LrSchedule;
  /** Linear warmup steps. Default min(100, steps/10) for cosine, 0 for constant. */
  warmup: number;
  /** AdamW decoupled weight decay on the LoRA matrices. Default 0. */
  weightDecay: number;
  /** Global gradient-norm clip; 0 turns it off. Default 1. */
  clip: number;
  /** Fraction of the examples held out for evaluation, 0 to 0.5. Default 0.1. */
  heldOut: number;
}

export const LORA_ADAM = { beta1: 0.9, beta2: 0.999, eps: 1e-8 } as const;

const KNOWN = [
  'steps',
  'batch',
  'seq',
  'rank',
  'alpha',
  'targets',
  'lr',
  'schedule',
  'warmup',
  'weightDecay',
  'clip',
  'heldOut',
] as const satisfies readonly (keyof LoraHyperparameters)[];

function fail(field: string, message: string): LoraError {
  return new LoraError('bad-hyperparameter', `hyperparameters.${field} ${message}`);
}

const { int, real, schedule: scheduleOf } = fieldReaders(fail);

function targetsOf(raw: Record<string, unknown>): LoraTarget[] {
  const v = raw.targets;
  if (v === undefined) return ['q', 'v'];
  if (!Array.isArray(v) || v.length === 0)
    throw fail('targets', `must be a non-empty list of ${LORA_TARGETS.join(', ')}`);
  for (const t of v) {
    if (typeof t !== 'string' || !(LORA_TARGETS as readonly string[]).includes(t))
      throw fail('targets', `has ${JSON.stringify(t)}, not a projection (known: ${LORA_TARGETS.join(', ')})`);
  }
  if (new Set(v).size !== v.length) throw fail('targets', `names a projection twice: ${JSON.stringify(v)}`);
  return LORA_TARGETS.filter((t) => v.includes(t));
}

/** Checks and completes the hyperparameters. */
export function parseLoraHyperparameters(raw: Record<string, unknown>): LoraHyperparameters {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new LoraError('bad-hyperparameter', 'hyperparameters must be a JSON object');
  }
  for (const key of Object.keys(raw)) {
    if (!(KNOWN as readonly string[]).includes(key)) {
      throw fail(key, `is not a LoRA trainer hyperparameter (known: ${KNOWN.join(', ')})`);
    }
  }
  const steps = int(raw, 'steps', 1, 100_000_000);
  const batch = int(raw, 'batch', 1, 1024, 4);
  const seq = int(raw, 'seq', 2, 8192, 64);
  const rank = int(raw, 'rank', 1, 1024, 8);
  const alpha = real(raw, 'alpha', 0, 1e6, 16, true);
  const targets = targetsOf(raw);
  const lr = real(raw, 'lr', 0, 1, 1e-3, true);
  const { schedule, warmup } = scheduleOf(raw, steps);
  const weightDecay = real(raw, 'weightDecay', 0, 1, 0);
  const clip = real(raw, 'clip', 0, 1e6, 1);
  const heldOut = real(raw, 'heldOut', 0, 0.5, 0.1);
  return { steps, batch, seq, rank, alpha, targets, lr, schedule, warmup, weightDecay, clip, heldOut };
}
