/**
 * The MLP trainer's hyperparameters, checked before any data is read: each refusal names
 * `hyperparameters.<field>` and says what would be accepted. Unknown fields are refused too, so a
 * typo ("hiden") fails the job instead of training a default model.
 */
import { MlpError } from './errors.js';

export type Task = 'classify' | 'regress';
export type Activation = 'relu' | 'gelu';

export interface MlpHyperparameters {
  /** Optimizer steps of the whole job. Required. */
  steps: number;
  /** Rows per minibatch. Default 32. */
  batch: number;
  /** AdamW learning rate. Default 1e-3. */
  lr: number;
  /** Widths of the hidden layers; [] is a linear model. Default [64]. */
  hidden: number[];
  /** Hidden-layer activation. Default "relu". */
  activation: Activation;
  /** "classify" (softmax cross-entropy over the label's distinct values) or "regress" (MSE). Required. */
  task: Task;
  /** The label column. Required. */
  label: string;
  /** Feature columns; default every column but the label. */
  features?: string[];
  /** Fraction of rows held out for evaluation, in (0, 1). Default 0.2. */
  heldOut: number;
  /** AdamW decoupled weight decay (weights only, not biases). Default 0.01. */
  weightDecay: number;
}

const KNOWN = [
  'steps',
  'batch',
  'lr',
  'hidden',
  'activation',
  'task',
  'label',
  'features',
  'heldOut',
  'weightDecay',
] as const;

const MAX_STEPS = 100_000_000;
const MAX_BATCH = 65_536;
const MAX_LAYERS = 16;
const MAX_WIDTH = 16_384;

function bad(field: string, message: string): MlpError {
  return new MlpError('bad-hyperparameter', `hyperparameters.${field}: ${message}`);
}

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 60)}…` : s;
}

function integer(h: Record<string, unknown>, field: string, min: number, max: number, dflt?: number): number {
  const v = h[field] ?? dflt;
  if (v === undefined) throw bad(field, `required: a whole number from ${min} to ${max}`);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw bad(field, `must be a whole number from ${min} to ${max}, got ${show(v)}`);
  }
  return v;
}

function real(
  h: Record<string, unknown>,
  field: string,
  ok: (x: number) => boolean,
  range: string,
  dflt: number,
): number {
  const v = h[field] ?? dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v))
    throw bad(field, `must be ${range}, got ${show(v)}`);
  return v;
}

/** Checks the manifest's hyperparameters and fills in the defaults. */
export function checkHyperparameters(h: Record<string, unknown>): MlpHyperparameters {
  for (const field of Object.keys(h)) {
    if (!(KNOWN as readonly string[]).includes(field)) {
      throw new MlpError(
        'bad-hyperparameter',
        `hyperparameters.${field}: not a hyperparameter of the mlp trainer (known: ${KNOWN.join(', ')})`,
      );
    }
  }
  const steps = integer(h, 'steps', 1, MAX_STEPS);
  const batch = integer(h, 'batch', 1, MAX_BATCH, 32);
  const lr = real(h, 'lr', (x) => x > 0 && x <= 1, 'a number in (0, 1]', 1e-3);
  const weightDecay = real(h, 'weightDecay', (x) => x >= 0 && x <= 1, 'a number in [0, 1]', 0.01);
  const heldOut = real(h, 'heldOut', (x) => x > 0 && x < 1, 'a fraction in (0, 1)', 0.2);

  const hiddenRaw = h.hidden ?? [64];
  if (
    !Array.isArray(hiddenRaw) ||
    hiddenRaw.length > MAX_LAYERS ||
    !hiddenRaw.every((w) => typeof w === 'number' && Number.isInteger(w) && w >= 1 && w <= MAX_WIDTH)
  ) {
    throw bad(
      'hidden',
      `must be a list of at most ${MAX_LAYERS} layer widths, each a whole number from 1 to ${MAX_WIDTH} ([] for a linear model), got ${show(hiddenRaw)}`,
    );
  }
  const hidden = [...(hiddenRaw as number[])];

  const activation = h.activation ?? 'relu';
  if (activation !== 'relu' && activation !== 'gelu') {
    throw bad('activation', `must be "relu" or "gelu", got ${show(activation)}`);
  }
  const task = h.task;
  if (task !== 'classify' && task !== 'regress') {
    throw bad(
      'task',
      task === undefined
        ? 'required: "classify" or "regress"'
        : `must be "classify" or "regress", got ${show(task)}`,
    );
  }
  const label = h.label;
  if (typeof label !== 'string' || label === '') {
    throw bad(
      'label',
      label === undefined
        ? 'required: the name of the label column'
        : `must be a column name, got ${show(label)}`,
    );
  }
  let features: string[] | undefined;
  if (h.features !== undefined) {
    const f = h.features;
    if (!Array.isArray(f) || f.length === 0 || !f.every((x) => typeof x === 'string' && x !== '')) {
      throw bad('features', `must be a non-empty list of column names, got ${show(f)}`);
    }
    const names = f as string[];
    const dup = names.find((x, i) => names.indexOf(x) !== i);
    if (dup !== undefined) throw bad('features', `column ${show(dup)} is listed twice`);
    if (names.includes(label)) throw bad('features', `lists the label column ${show(label)}`);
    features = [...names];
  }
  const out: MlpHyperparameters = { steps, batch, lr, hidden, activation, task, label, heldOut, weightDecay };
  if (features !== undefined) out.features = features;
  return out;
}
