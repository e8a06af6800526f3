/**
 * The built-in MLP trainer: a classifier or regressor on one table (CSV, JSON Lines or Parquet),
 * trained with AdamW on jax-js, exported as safetensors and ONNX.
 *
 * Everything random comes from the job's seed through the trainer's own generator: the held-out
 * split, the initial weights, and the minibatch of every step (a function of the seed and the step
 * number alone, so a resumed job needs no data cursor). Two runs of the same manifest are
 * bit-identical, and so is a run that is stopped, saved and resumed.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { canonicalize } from '../../util/index.js';
import { initEngine } from '../engine.js';
import { parseTable, type Table, TabularError, tabularFormat } from '../tabular.js';
import type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from '../trainer.js';
import { MlpError } from './errors.js';
import { encodeRows, encodeTable, fitLayout, type Layout, type Row, splitRows } from './features.js';
import { checkHyperparameters, type MlpHyperparameters } from './hyperparameters.js';
import { initialParameters, MlpModel, shapes } from './model.js';
import { transpose, writeOnnx } from './onnx.js';
import { permutation, Rng } from './rng.js';
import { writeSafetensors } from './safetensors.js';
import { decodeState, encodeState } from './state.js';

export { type MlpCode, MlpError } from './errors.js';
export type { FeatureSpec, Layout, Row } from './features.js';
export type { Activation, MlpHyperparameters, Task } from './hyperparameters.js';

/** Largest model the trainer builds (parameters), so a typo in `hidden` cannot exhaust memory. */
const MAX_PARAMETERS = 50_000_000;

export type MlpPrediction = { label: string; probabilities: number[] } | { value: number };

export interface MlpTrainer extends BuiltinTrainer {
  /** The checked hyperparameters, defaults filled in. */
  readonly hyperparameters: MlpHyperparameters;
  /** How rows become inputs and outputs become labels. */
  readonly layout: Layout;
  /** Rows in the training and held-out splits. */
  readonly rows: { train: number; heldOut: number };
  /** Predictions of the current model: class probabilities (classify) or a value (regress). */
  predict(rows: readonly Row[]): MlpPrediction[];
}

async function loadTable(input: TrainerInput): Promise<Table> {
  if (input.inputs.length !== 1) {
    throw new MlpError(
      'bad-input',
      `the mlp trainer reads one table (inputs[0]); the manifest names ${input.inputs.length} inputs`,
    );
  }
  if (input.startModel !== undefined) {
    throw new MlpError('bad-input', 'the mlp trainer starts from fresh weights; it takes no starting model');
  }
  const { name, path: file } = input.inputs[0]!;
  const format = tabularFormat(file) ?? tabularFormat(name);
  if (format === undefined) {
    throw new MlpError(
      'bad-input',
      `inputs[0] ${name}: not a table by its name (use .csv, .jsonl or .parquet)`,
    );
  }
  try {
    return await parseTable(await readFile(file), path.basename(file), format);
  } catch (e) {
    if (e instanceof TabularError) throw new MlpError('bad-input', e.message, { cause: e });
    throw new MlpError('bad-input', `inputs[0] ${name}: cannot read: ${(e as Error).message}`, { cause: e });
  }
}

function layoutJson(layout: Layout) {
  return {
    task: layout.task,
    label: layout.label,
    features: layout.features,
    inputs: layout.inputs,
    ...(layout.classes !== undefined ? { classes: layout.classes } : {}),
    ...(layout.target !== undefined ? { target: layout.target } : {}),
  };
}

/** Checks the hyperparameters and the table, and builds the model: everything before step 1. */
export async function createMlpTrainer(input: TrainerInput): Promise<MlpTrainer> {
  const hp = checkHyperparameters(input.hyperparameters);
  const seed = input.seed;
  if (!Number.isSafeInteger(seed))
    throw new MlpError('bad-input', `seed must be a whole number, got ${seed}`);
  const table = await loadTable(input);
  const split = splitRows(table.rowCount, hp.heldOut, seed);
  let layout: Layout;
  let train: ReturnType<typeof encodeTable>;
  let held: ReturnType<typeof encodeTable>;
  try {
    layout = fitLayout(table, hp, split.train);
    train = encodeTable(table, layout, split.train);
    held = encodeTable(table, layout, split.held);
  } catch (e) {
    if (e instanceof TabularError) throw new MlpError('bad-input', e.message, { cause: e });
    throw e;
  }
  const outputs = layout.classes?.length ?? 1;
  const sizes = [layout.inputs.length, ...hp.hidden, outputs];
  const parameterCount = shapes(sizes).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
  if (parameterCount > MAX_PARAMETERS) {
    throw new MlpError(
      'bad-hyperparameter',
      `hyperparameters.hidden: ${parameterCount.toLocaleString('en-US')} parameters with ${layout.inputs.length} inputs; at most ${MAX_PARAMETERS.toLocaleString('en-US')}`,
    );
  }
  // What a saved state is valid with: a state from another job, hyperparameters or table is refused.
  const digest = createHash('sha256')
    .update(
      canonicalize({
        trainer: 'mlp',
        hyperparameters: { ...hp },
        seed,
        layout: { ...layoutJson(layout), mean: [...layout.mean], std: [...layout.std] },
        rows: { train: train.rows, heldOut: held.rows },
      }),
    )
    .digest('hex');

  await initEngine();
  const model = new MlpModel(
    { sizes, activation: hp.activation, task: hp.task, weightDecay: hp.weightDecay },
    initialParameters(sizes, new Rng(seed, 'init')),
  );
  return new Trainer(hp, seed, layout, sizes, model, train, held, digest);
}

class Trainer implements MlpTrainer {
  readonly name = 'mlp';
  readonly totalSteps: number;
  readonly rows: { train: number; heldOut: number };
  private done = 0;
  private epoch: { index: number; order: Uint32Array } | undefined;
  private disposed = false;

  constructor(
    readonly hyperparameters: MlpHyperparameters,
    private readonly seed: number,
    readonly layout: Layout,
    private readonly sizes: number[],
    private readonly model: MlpModel,
    private readonly train: ReturnType<typeof encodeTable>,
    private readonly held: ReturnType<typeof encodeTable>,
    private readonly digest: string,
  ) {
    this.totalSteps = hyperparameters.steps;
    this.rows = { train: train.rows, heldOut: held.rows };
  }

  get completedSteps(): number {
    return this.done;
  }

  private live(): void {
    if (this.disposed) throw new Error('mlp trainer: used after dispose()');
  }

  /** Training row at global position p: epochs are permutations drawn from (seed, epoch number). */
  private rowAt(p: number): number {
    const n = this.train.rows;
    const index = Math.floor(p / n);
    if (this.epoch?.index !== index) {
      this.epoch = { index, order: permutation(n, new Rng(this.seed, `epoch:${index}`)) };
    }
    return this.epoch.order[p - index * n]!;
  }

  /** The batch of step t (1-based): positions (t−1)·batch … t·batch−1 of the epoch sequence. */
  private batch(t: number): { x: Float32Array; y: Float32Array } {
    const b = this.hyperparameters.batch;
    const width = this.sizes[0]!;
    const outputs = this.model.outputs;
    const x = new Float32Array(b * width);
    const y = new Float32Array(b * outputs);
    for (let j = 0; j < b; j++) {
      const r = this.rowAt((t - 1) * b + j);
      x.set(this.train.x.subarray(r * width, (r + 1) * width), j * width);
      if (this.layout.classes !== undefined) y[j * outputs + this.train.y[r]!] = 1;
      else y[j] = this.train.y[r]!;
    }
    return { x, y };
  }

  async step(): Promise<StepReport> {
    this.live();
    const t = this.done + 1;
    const { x, y } = this.batch(t);
    const b = this.hyperparameters.batch;
    const loss = this.model.step(x, y, b, this.hyperparameters.lr, t);
    this.done = t;
    return { step: t, loss, examples: b };
  }

  async evaluate(): Promise<Record<string, number>> {
    this.live();
    const { x, y, rows } = this.held;
    const out = this.model.forward(x, rows);
    if (this.layout.classes !== undefined) {
      const k = this.layout.classes.length;
      let loss = 0;
      let correct = 0;
      for (let r = 0; r < rows; r++) {
        const logits = out.subarray(r * k, (r + 1) * k);
        let max = -Infinity;
        let arg = 0;
        for (let c = 0; c < k; c++) {
          if (logits[c]! > max) {
            max = logits[c]!;
            arg = c;
          }
        }
        let sum = 0;
        for (let c = 0; c < k; c++) sum += Math.exp(logits[c]! - max);
        loss += Math.log(sum) + max - logits[y[r]!]!;
        if (arg === y[r]) correct++;
      }
      return { heldout_loss: loss / rows, accuracy: correct / rows };
    }
    const t = this.layout.target!;
    let se = 0;
    let seOriginal = 0;
    for (let r = 0; r < rows; r++) {
      const d = out[r]! - y[r]!;
      se += d * d;
      seOriginal += (d * t.std) ** 2;
    }
    return { heldout_loss: se / rows, rmse: Math.sqrt(seOriginal / rows) };
  }

  predict(rows: readonly Row[]): MlpPrediction[] {
    this.live();
    const out = this.model.forward(encodeRows(rows, this.layout), rows.length);
    const classes = this.layout.classes;
    if (classes === undefined) {
      const t = this.layout.target!;
      return Array.from({ length: rows.length }, (_, r) => ({ value: out[r]! * t.std + t.mean }));
    }
    const k = classes.length;
    return Array.from({ length: rows.length }, (_, r) => {
      const logits = Array.from(out.subarray(r * k, (r + 1) * k));
      const max = Math.max(...logits);
      const e = logits.map((l) => Math.exp(l - max));
      const sum = e.reduce((a, b) => a + b, 0);
      const probabilities = e.map((v) => v / sum);
      return { label: classes[probabilities.indexOf(Math.max(...probabilities))]!, probabilities };
    });
  }

  saveState(): Uint8Array {
    this.live();
    return encodeState(
      { step: this.done, shapes: this.model.parameterShapes, digest: this.digest },
      this.model.download(),
    );
  }

  loadState(state: Uint8Array): void {
    this.live();
    const { step, tensors } = decodeState(state, {
      digest: this.digest,
      shapes: this.model.parameterShapes,
      totalSteps: this.totalSteps,
    });
    this.model.restore(tensors);
    this.done = step;
  }

  async exportModel(): Promise<ModelFile[]> {
    this.live();
    const { params } = this.model.download();
    const layout = this.layout;
    const metadata: Record<string, string> = {
      format: 'cloister-mlp',
      version: '1',
      task: layout.task,
      label: layout.label,
      activation: this.hyperparameters.activation,
      hidden: JSON.stringify(this.hyperparameters.hidden),
      inputs: JSON.stringify(layout.inputs),
      features: JSON.stringify(layout.features),
      ...(layout.classes !== undefined ? { classes: JSON.stringify(layout.classes) } : {}),
      ...(layout.target !== undefined ? { target: JSON.stringify(layout.target) } : {}),
      steps: String(this.done),
    };
    const tensors = [
      { name: 'input.mean', shape: [layout.inputs.length], data: layout.mean },
      { name: 'input.std', shape: [layout.inputs.length], data: layout.std },
    ];
    for (let i = 0; i + 1 < this.sizes.length; i++) {
      const inN = this.sizes[i]!;
      const outN = this.sizes[i + 1]!;
      // nn.Linear's convention, [out, in], so the file loads into PyTorch as it is.
      tensors.push({
        name: `layers.${i}.weight`,
        shape: [outN, inN],
        data: transpose(params[2 * i]!, inN, outN),
      });
      tensors.push({ name: `layers.${i}.bias`, shape: [outN], data: params[2 * i + 1]! });
    }
    if (layout.target !== undefined) {
      tensors.push({ name: 'target.mean', shape: [1], data: Float32Array.of(layout.target.mean) });
      tensors.push({ name: 'target.std', shape: [1], data: Float32Array.of(layout.target.std) });
    }
    const onnx = writeOnnx({
      params,
      sizes: this.sizes,
      activation: this.hyperparameters.activation,
      mean: layout.mean,
      std: layout.std,
      task: layout.task,
      ...(layout.target !== undefined ? { target: layout.target } : {}),
      metadata,
    });
    return [
      { name: 'model.safetensors', bytes: writeSafetensors(tensors, metadata) },
      { name: 'model.onnx', bytes: onnx },
    ];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.model.dispose();
  }
}
