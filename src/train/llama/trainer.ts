/**
 * The built-in "llama" trainer: a small llama-architecture language model trained on one UTF-8 text
 * corpus with this trainer's character vocabulary, exported as an F32 GGUF that llama.cpp (and so
 * `cloister serve`) runs with the same logits.
 *
 * Everything is a pure function of the seed, the hyperparameters, the corpus and the steps taken:
 * initial weights come from the trainer's own PRNG, each step's batch from (seed, data cursor), and
 * the engine runs single-threaded. A saved state (weights, Adam moments, step, cursor) therefore
 * resumes bit-identically.
 */
import { readFile } from 'node:fs/promises';
import { type Array as JaxArray, numpy as np } from '@jax-js/jax';
import { canonicalizeBytes, Rng, sha256, toHex } from '../../util/index.js';
import { initEngine } from '../engine.js';
import { checkStepAndCursor, decodeState, encodeState } from '../state.js';
import type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from '../trainer.js';
import { LlamaError } from './errors.js';
import { type LlamaModel, readLlamaGguf, writeLlamaGguf } from './gguf.js';
import {
  ADAM,
  type LlamaHyperparameters,
  learningRate,
  parseHyperparameters,
  shapeOf,
} from './hyperparameters.js';
import {
  elementCount,
  headDim,
  initParams,
  type LlamaShape,
  makeEvalNll,
  makeLogits,
  makeTrainStep,
  paramSpecs,
  ropeTables,
} from './model.js';
import { encodeCorpus } from './tokenizer.js';

/** The llama trainer, with a look inside for tests and tools. */
export interface LlamaTrainer extends BuiltinTrainer {
  readonly hyperparameters: Readonly<LlamaHyperparameters>;
  readonly shape: Readonly<LlamaShape>;
  /** Tokens of the corpus used for training and held out. */
  readonly corpusTokens: { train: number; heldOut: number };
  /** Logits [tokens.length × vocab] of one sequence (positions from 0), as llama.cpp would compute them. */
  logits(tokens: Int32Array): Float32Array;
  /** The current weights in the trainer's layout (copies). */
  weights(): Float32Array[];
}

const STATE_MAGIC = new TextEncoder().encode('CLSTLLMA'); // cloister llama state
const STATE_FORMAT = 1;
/** Held-out evaluation reads at most this many tokens (evenly spread windows), to bound its cost. */
const MAX_EVAL_TOKENS = 16_384;

interface StateHeader {
  trainer: 'llama';
  format: number;
  digest: string;
  shape: LlamaShape;
  step: number;
  cursor: number;
}

const utf8Fatal = new TextDecoder('utf-8', { fatal: true });

async function readCorpus(input: TrainerInput): Promise<Int32Array> {
  const first = input.inputs[0];
  if (first === undefined)
    throw new LlamaError('bad-input', 'the llama trainer needs a text corpus as inputs[0]');
  if (input.inputs.length > 1) {
    throw new LlamaError(
      'bad-input',
      `the llama trainer reads one text corpus; inputs[1] (${input.inputs[1]!.name}) is one too many`,
    );
  }
  const bytes = await readFile(first.path);
  let text: string;
  try {
    text = utf8Fatal.decode(bytes);
  } catch {
    throw new LlamaError('bad-input', `inputs[0] (${first.name}) is not UTF-8 text`);
  }
  if (text.length === 0) throw new LlamaError('bad-input', `inputs[0] (${first.name}) is empty`);
  return encodeCorpus(text);
}

async function readStartModel(input: TrainerInput): Promise<LlamaModel | undefined> {
  if (input.startModel === undefined) return undefined;
  let bytes: Uint8Array;
  try {
    bytes = await readFile(input.startModel.path);
  } catch (err) {
    throw new LlamaError(
      'bad-model',
      `the starting model ${input.startModel.name} cannot be read: ${(err as Error).message}`,
    );
  }
  return readLlamaGguf(bytes);
}

/** Checks everything, reads the corpus (and starting model), and builds the trainer. */
export async function createLlamaTrainer(input: TrainerInput): Promise<LlamaTrainer> {
  if (!Number.isSafeInteger(input.seed)) {
    throw new LlamaError('bad-hyperparameter', `seed must be an integer, got ${input.seed}`);
  }
  const start = await readStartModel(input);
  const hp = parseHyperparameters(input.hyperparameters, start?.shape);
  const tokens = await readCorpus(input);
  const heldCount = Math.floor(tokens.length * hp.heldOut);
  const train = tokens.subarray(0, tokens.length - heldCount);
  const held = tokens.subarray(tokens.length - heldCount);
  if (train.length < hp.seq + 1) {
    throw new LlamaError(
      'bad-input',
      `inputs[0] (${input.inputs[0]!.name}) has ${tokens.length} tokens, ${train.length} for training: ` +
        `fewer than hyperparameters.seq + 1 = ${hp.seq + 1}`,
    );
  }
  if (heldCount > 0 && held.length < hp.seq + 1) {
    throw new LlamaError(
      'bad-input',
      `inputs[0] (${input.inputs[0]!.name}) has ${tokens.length} tokens: hyperparameters.heldOut = ${hp.heldOut} ` +
        `holds out ${held.length}, fewer than hyperparameters.seq + 1 = ${hp.seq + 1} (use a longer corpus or heldOut 0)`,
    );
  }
  const digest = toHex(
    await sha256(
      canonicalizeBytes({ trainer: 'llama', format: STATE_FORMAT, hyperparameters: hp, seed: input.seed }),
    ),
  );
  await initEngine();
  return new Trainer(hp, input.seed, digest, train, held, start);
}

class Trainer implements LlamaTrainer {
  readonly name = 'llama';
  readonly shape: LlamaShape;
  readonly totalSteps: number;
  readonly corpusTokens: { train: number; heldOut: number };
  private readonly specs;
  private params: JaxArray[];
  private m: JaxArray[];
  private v: JaxArray[];
  private step_ = 0;
  private cursor = 0;
  private readonly cos: JaxArray;
  private readonly sin: JaxArray;
  private readonly trainStep;
  private readonly evalNll;
  private logitsFn: ReturnType<typeof makeLogits> | undefined;
  private disposed = false;

  constructor(
    readonly hyperparameters: LlamaHyperparameters,
    private readonly seed: number,
    private readonly digest: string,
    private readonly train: Int32Array,
    private readonly held: Int32Array,
    start: LlamaModel | undefined,
  ) {
    const hp = hyperparameters;
    this.shape = shapeOf(hp);
    this.totalSteps = hp.steps;
    this.corpusTokens = { train: train.length, heldOut: held.length };
    this.specs = paramSpecs(this.shape);
    const initial = start?.params ?? initParams(this.shape, seed);
    this.params = initial.map((a, i) => np.array(a).reshape(this.specs[i]!.shape));
    this.m = this.specs.map((s) => np.zeros(s.shape));
    this.v = this.specs.map((s) => np.zeros(s.shape));
    const hd = headDim(this.shape);
    const rope = ropeTables(hp.seq, hd);
    this.cos = np.array(rope.cos).reshape([hp.seq, 1, hd]);
    this.sin = np.array(rope.sin).reshape([hp.seq, 1, hd]);
    this.trainStep = makeTrainStep(this.shape, { ...ADAM, weightDecay: hp.weightDecay, clip: hp.clip });
    this.evalNll = makeEvalNll(this.shape);
  }

  get completedSteps(): number {
    return this.step_;
  }

  private live(): void {
    if (this.disposed) throw new Error('the llama trainer was disposed');
  }

  /** Inputs and next-token targets of `rows` windows starting at `starts`, flat. */
  private windows(
    source: Int32Array,
    starts: readonly number[],
  ): { tokens: Int32Array; targets: Int32Array } {
    const seq = this.hyperparameters.seq;
    const tokens = new Int32Array(starts.length * seq);
    const targets = new Int32Array(starts.length * seq);
    starts.forEach((off, r) => {
      tokens.set(source.subarray(off, off + seq), r * seq);
      targets.set(source.subarray(off + 1, off + seq + 1), r * seq);
    });
    return { tokens, targets };
  }

  async step(): Promise<StepReport> {
    this.live();
    const hp = this.hyperparameters;
    // Window g of the job starts at a position drawn from (seed, g) alone: the batch of a step depends
    // only on the cursor, which the state carries.
    const starts: number[] = [];
    for (let r = 0; r < hp.batch; r++) {
      starts.push(new Rng(this.seed, 0xda7a, this.cursor + r).below(this.train.length - hp.seq));
    }
    const { tokens, targets } = this.windows(this.train, starts);
    const t = this.step_ + 1;
    const out = this.trainStep(
      this.params,
      this.m,
      this.v,
      np.array(tokens, { dtype: np.int32 }),
      np.array(targets, { dtype: np.int32 }),
      this.cos.ref,
      this.sin.ref,
      np.array(learningRate(hp, t)),
      np.array(1 - ADAM.beta1 ** t),
      np.array(1 - ADAM.beta2 ** t),
    );
    this.params = out.params;
    this.m = out.m;
    this.v = out.v;
    const loss = (await out.loss.data())[0]!;
    this.step_ = t;
    this.cursor += hp.batch;
    return { step: t, loss, examples: hp.batch, tokens: hp.batch * hp.seq };
  }

  async evaluate(): Promise<Record<string, number>> {
    this.live();
    const { seq, batch } = this.hyperparameters;
    if (this.held.length < seq + 1) return {};
    // Non-overlapping windows over the held-out tokens; beyond MAX_EVAL_TOKENS, evenly spread ones.
    const available = Math.floor((this.held.length - 1) / seq);
    const count = Math.min(available, Math.max(1, Math.floor(MAX_EVAL_TOKENS / seq)));
    const last = this.held.length - seq - 1;
    const starts: number[] = [];
    for (let k = 0; k < count; k++) {
      starts.push(count === available ? k * seq : count === 1 ? 0 : Math.floor((k * last) / (count - 1)));
    }
    let total = 0;
    for (let b = 0; b < starts.length; b += batch) {
      const rows = starts.slice(b, b + batch);
      const real = rows.length;
      while (rows.length < batch) rows.push(rows[0]!); // padding rows, weighted 0
      const { tokens, targets } = this.windows(this.held, rows);
      const weights = new Float32Array(batch * seq);
      weights.fill(1, 0, real * seq);
      const nll = this.evalNll(
        this.params.map((p) => p.ref),
        np.array(tokens, { dtype: np.int32 }),
        np.array(targets, { dtype: np.int32 }),
        np.array(weights),
        this.cos.ref,
        this.sin.ref,
      );
      total += (await nll.data())[0]!;
    }
    return { heldout_loss: total / (starts.length * seq) };
  }

  logits(tokens: Int32Array): Float32Array {
    this.live();
    this.logitsFn ??= makeLogits(this.shape);
    const hd = headDim(this.shape);
    const rope = ropeTables(tokens.length, hd);
    const out = this.logitsFn(
      this.params.map((p) => p.ref),
      np.array(tokens, { dtype: np.int32 }),
      np.array(rope.cos).reshape([tokens.length, 1, hd]),
      np.array(rope.sin).reshape([tokens.length, 1, hd]),
    );
    return Float32Array.from(out.dataSync() as Float32Array);
  }

  weights(): Float32Array[] {
    this.live();
    return this.params.map((p) => Float32Array.from(p.ref.dataSync() as Float32Array));
  }

  saveState(): Uint8Array {
    this.live();
    const header: StateHeader = {
      trainer: 'llama',
      format: STATE_FORMAT,
      digest: this.digest,
      shape: this.shape,
      step: this.step_,
      cursor: this.cursor,
    };
    const arrays = function* (groups: JaxArray[][]) {
      for (const group of groups) for (const a of group) yield a.ref.dataSync() as Float32Array;
    };
    return encodeState(STATE_MAGIC, header, this.floatCount(), arrays([this.params, this.m, this.v]));
  }

  private floatCount(): number {
    return 3 * this.specs.reduce((n, s) => n + elementCount(s.shape), 0);
  }

  loadState(state: Uint8Array): void {
    this.live();
    const refuse = (why: string): LlamaError =>
      new LlamaError('checkpoint-state', `the saved state cannot resume this llama job: ${why}`);
    const decoded = decodeState<StateHeader>(state, STATE_MAGIC, refuse, 'it is not a llama trainer state');
    const header = decoded.header;
    if (header.trainer !== 'llama')
      throw refuse(`it belongs to the ${JSON.stringify(header.trainer)} trainer`);
    if (header.format !== STATE_FORMAT) throw refuse(`it has format ${header.format}, not ${STATE_FORMAT}`);
    const shape = header.shape;
    const ours = this.shape;
    if (
      typeof shape !== 'object' ||
      shape === null ||
      (Object.keys(ours) as (keyof LlamaShape)[]).some((k) => shape[k] !== ours[k])
    ) {
      throw refuse(`its model shape ${JSON.stringify(shape)} is not this job's ${JSON.stringify(ours)}`);
    }
    if (header.digest !== this.digest) {
      throw refuse('it was saved under other hyperparameters or another seed');
    }
    checkStepAndCursor(header.step, header.cursor, refuse);
    const sizes = this.specs.map((s) => elementCount(s.shape));
    const floats = decoded.floats(
      [...sizes, ...sizes, ...sizes],
      (bytes, needed) => `it has ${bytes} bytes; this shape needs ${needed}`,
    );
    const groups = [0, 1, 2].map((g) =>
      this.specs.map((s, i) => np.array(floats[g * this.specs.length + i]!).reshape(s.shape)),
    );
    for (const a of [...this.params, ...this.m, ...this.v]) a.dispose();
    [this.params, this.m, this.v] = groups as [JaxArray[], JaxArray[], JaxArray[]];
    this.step_ = header.step;
    this.cursor = header.cursor;
  }

  async exportModel(): Promise<ModelFile[]> {
    this.live();
    const bytes = writeLlamaGguf({
      shape: this.shape,
      context: this.hyperparameters.context,
      params: this.weights(),
      name: 'cloister-llama',
    });
    return [{ name: 'model.gguf', bytes }];
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const a of [...this.params, ...this.m, ...this.v, this.cos, this.sin]) a.dispose();
    this.trainStep.dispose();
    this.evalNll.dispose();
    this.logitsFn?.dispose();
  }
}
