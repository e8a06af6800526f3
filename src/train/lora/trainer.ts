/**
 * The built-in "lora" trainer: a LoRA adapter trained over a frozen llama-architecture GGUF base on
 * chat examples tokenized with the base's own tokenizer (dataset.ts), the loss masked to the
 * completion tokens; exported as a GGUF LoRA adapter llama.cpp loads beside the base and, when the
 * job asks, as the base with the adapter merged in.
 *
 * Everything is a pure function of the seed, the hyperparameters, the base, the examples and the steps
 * taken: A's initial values and the held-out split come from the trainer's own PRNG, each step's rows
 * from (seed, data cursor), and the engine runs single-threaded. A saved state (LoRA matrices, Adam
 * moments, step, cursor) therefore resumes bit-identically, and carries a digest of the
 * hyperparameters, seed and base so that another job's state is refused.
 */
import { readFile } from 'node:fs/promises';
import { type Array as JaxArray, numpy as np } from '@jax-js/jax';
import { canonicalizeBytes, Rng, sha256, toHex } from '../../util/index.js';
import { type LoraAdapter, readTensorF32, writeLoraAdapter } from '../../wire/index.js';
import { initEngine } from '../engine.js';
import { toGgmlOrder } from '../llama/gguf.js';
import { learningRate } from '../llama/hyperparameters.js';
import { ropeTables } from '../llama/model.js';
import { checkStepAndCursor, decodeState, encodeState } from '../state.js';
import type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from '../trainer.js';
import { baseHeadDim, type LoraBase, type LoraBaseShape, readLoraBase, writeMergedGguf } from './base.js';
import { type ChatExample, loadChatDataset } from './dataset.js';
import { LoraError } from './errors.js';
import { LORA_ADAM, type LoraHyperparameters, parseLoraHyperparameters } from './hyperparameters.js';
import {
  baseArrays,
  initLora,
  type LoraConfig,
  loraShapes,
  loraSpecs,
  makeEvalNll,
  makeLogits,
  makeTrainStep,
} from './model.js';

/** The LoRA trainer, with a look inside for tests and tools. */
export interface LoraTrainer extends BuiltinTrainer {
  readonly hyperparameters: Readonly<LoraHyperparameters>;
  readonly shape: Readonly<LoraBaseShape>;
  /** Examples used for training and held out. */
  readonly examples: { train: number; heldOut: number };
  /**
   * Logits [tokens.length × vocab] of one sequence (positions from 0) as llama.cpp computes them: with
   * the adapter (default) or of the base alone (`adapter: false`).
   */
  logits(tokens: Int32Array, options?: { adapter?: boolean }): Float32Array;
  /** The adapter as it would be exported (A [rank][in], B [out][rank]). */
  adapter(): LoraAdapter;
}

export interface LoraTrainerOptions {
  /** Also export the base with the adapter merged (`outputs.merged`). */
  merged?: boolean;
}

const STATE_MAGIC = new TextEncoder().encode('CLSTLORA'); // cloister LoRA state
const STATE_FORMAT = 1;
/** Held-out evaluation reads at most this many examples, to bound its cost. */
const MAX_EVAL_EXAMPLES = 512;

interface StateHeader {
  trainer: 'lora';
  format: number;
  digest: string;
  step: number;
  cursor: number;
}

/** Checks the input, reads the base and the chat dataset, and builds the trainer. */
export async function createLoraTrainer(input: TrainerInput): Promise<LoraTrainer> {
  if (!Number.isSafeInteger(input.seed)) {
    throw new LoraError('bad-hyperparameter', `seed must be an integer, got ${input.seed}`);
  }
  const hp = parseLoraHyperparameters(input.hyperparameters);
  if (input.base === undefined)
    throw new LoraError('bad-input', 'the LoRA trainer needs a base model (the manifest\'s "base")');
  const data = input.inputs[0];
  if (data === undefined)
    throw new LoraError('bad-input', 'the LoRA trainer needs a chat dataset as inputs[0]');
  if (input.inputs.length > 1) {
    throw new LoraError(
      'bad-input',
      `the LoRA trainer reads one chat dataset; inputs[1] (${input.inputs[1]!.name}) is one too many`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = await readFile(input.base.path);
  } catch (err) {
    throw new LoraError(
      'bad-model',
      `the base model ${input.base.name} cannot be read: ${(err as Error).message}`,
    );
  }
  const base = readLoraBase(bytes);
  const dataset = await loadChatDataset(data.path, input.base.path, { maxTokens: hp.seq + 1 });
  if (dataset.vocabSize !== base.shape.vocab) {
    throw new LoraError(
      'bad-model',
      `the base model's tokenizer has ${dataset.vocabSize} tokens but its token_embd.weight has ${base.shape.vocab} rows`,
    );
  }
  return createLoraTrainerFrom(base, dataset.examples, input.hyperparameters, input.seed, {
    merged: input.merged === true,
  });
}

/**
 * The trainer over a base already read and examples already tokenized (what createLoraTrainer does
 * after reading its files): splits the held-out examples off, checks the token ids, and starts.
 */
export async function createLoraTrainerFrom(
  base: LoraBase,
  examples: readonly ChatExample[],
  hyperparameters: Record<string, unknown>,
  seed: number,
  options: LoraTrainerOptions = {},
): Promise<LoraTrainer> {
  if (!Number.isSafeInteger(seed))
    throw new LoraError('bad-hyperparameter', `seed must be an integer, got ${seed}`);
  const hp = parseLoraHyperparameters(hyperparameters);
  const vocab = base.shape.vocab;
  examples.forEach((ex, n) => {
    if (ex.tokens.length !== ex.completion.length)
      throw new LoraError(
        'bad-input',
        `example ${n + 1} has ${ex.tokens.length} tokens but ${ex.completion.length} mask entries`,
      );
    for (const t of ex.tokens) {
      if (t < 0 || t >= vocab)
        throw new LoraError(
          'bad-input',
          `example ${n + 1} has token id ${t}, outside the base's vocabulary of ${vocab}`,
        );
    }
  });
  // Only examples with a completion token within the first seq + 1 tokens teach anything.
  const usable = examples.filter((ex) => ex.completion.subarray(1, hp.seq + 1).some((c) => c !== 0));
  if (usable.length === 0)
    throw new LoraError('bad-input', 'the dataset has no example with a completion token to learn from');
  // The held-out examples are a seeded draw, not the file's last lines (often one topic).
  const order = usable.map((_, i) => i);
  const rng = new Rng(seed, 0x4e1d);
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const heldCount = hp.heldOut > 0 ? Math.max(1, Math.floor(usable.length * hp.heldOut)) : 0;
  if (usable.length - heldCount < 1) {
    throw new LoraError(
      'bad-input',
      `the dataset has ${usable.length} usable example(s); hyperparameters.heldOut = ${hp.heldOut} leaves none for training`,
    );
  }
  const held = order.slice(0, heldCount).map((i) => usable[i]!);
  const train = order.slice(heldCount).map((i) => usable[i]!);
  const baseSha256 = toHex(await sha256(base.bytes));
  const digest = toHex(
    await sha256(
      canonicalizeBytes({
        trainer: 'lora',
        format: STATE_FORMAT,
        hyperparameters: hp,
        seed,
        base: baseSha256,
      }),
    ),
  );
  await initEngine();
  return new Trainer(hp, seed, digest, baseSha256, base, train, held, options.merged === true);
}

interface Rows {
  tokens: Int32Array;
  targets: Int32Array;
  weights: Float32Array;
  /** Input positions holding a real token (not padding). */
  real: number;
}

class Trainer implements LoraTrainer {
  readonly name = 'lora';
  readonly shape: LoraBaseShape;
  readonly totalSteps: number;
  readonly examples: { train: number; heldOut: number };
  private readonly cfg: LoraConfig;
  private readonly shapes: number[][];
  private readonly baseParams: JaxArray[];
  private lora: JaxArray[];
  private m: JaxArray[];
  private v: JaxArray[];
  private step_ = 0;
  private cursor = 0;
  private readonly cos: JaxArray;
  private readonly sin: JaxArray;
  private readonly trainStep;
  private evalFns: { adapter?: ReturnType<typeof makeEvalNll>; base?: ReturnType<typeof makeEvalNll> } = {};
  private logitsFns: { adapter?: ReturnType<typeof makeLogits>; base?: ReturnType<typeof makeLogits> } = {};
  /** The base's own held-out figures: they never change, so they are computed once. */
  private baseFigures: Record<string, number> | undefined;
  private disposed = false;

  constructor(
    readonly hyperparameters: LoraHyperparameters,
    private readonly seed: number,
    private readonly digest: string,
    private readonly baseSha256: string,
    private readonly base: LoraBase,
    private readonly train: ChatExample[],
    private readonly held: ChatExample[],
    private readonly merged: boolean,
  ) {
    const hp = hyperparameters;
    this.shape = base.shape;
    this.totalSteps = hp.steps;
    this.examples = { train: train.length, heldOut: held.length };
    this.cfg = { shape: base.shape, targets: hp.targets, rank: hp.rank, scale: hp.alpha / hp.rank };
    this.shapes = loraShapes(this.cfg);
    this.baseParams = baseArrays(base);
    this.lora = initLora(this.cfg, seed).map((a, i) => np.array(a).reshape(this.shapes[i]!));
    this.m = this.shapes.map((s) => np.zeros(s));
    this.v = this.shapes.map((s) => np.zeros(s));
    [this.cos, this.sin] = this.rope(hp.seq);
    this.trainStep = makeTrainStep(this.cfg, {
      ...LORA_ADAM,
      weightDecay: hp.weightDecay,
      clip: hp.clip,
    });
  }

  get completedSteps(): number {
    return this.step_;
  }

  private live(): void {
    if (this.disposed) throw new Error('the LoRA trainer was disposed');
  }

  private rope(seq: number): [JaxArray, JaxArray] {
    const hd = baseHeadDim(this.shape);
    const r = ropeTables(seq, hd, this.shape.ropeBase);
    return [np.array(r.cos).reshape([seq, 1, hd]), np.array(r.sin).reshape([seq, 1, hd])];
  }

  /** One example per row, padded to seq with weight 0: inputs, next-token targets and their weights. */
  private rows(examples: readonly ChatExample[]): Rows {
    const { seq, batch } = this.hyperparameters;
    const tokens = new Int32Array(batch * seq);
    const targets = new Int32Array(batch * seq);
    const weights = new Float32Array(batch * seq);
    let real = 0;
    examples.forEach((ex, r) => {
      const n = Math.min(ex.tokens.length, seq + 1);
      tokens.set(ex.tokens.subarray(0, Math.min(n, seq)), r * seq);
      real += Math.min(n, seq);
      for (let i = 0; i + 1 < n; i++) {
        targets[r * seq + i] = ex.tokens[i + 1]!;
        weights[r * seq + i] = ex.completion[i + 1]!;
      }
    });
    return { tokens, targets, weights, real };
  }

  async step(): Promise<StepReport> {
    this.live();
    const hp = this.hyperparameters;
    // Row g of the job is the example drawn from (seed, g) alone: a step's batch depends only on the
    // cursor, which the state carries.
    const picked: ChatExample[] = [];
    for (let r = 0; r < hp.batch; r++) {
      picked.push(this.train[new Rng(this.seed, 0xda7a, this.cursor + r).below(this.train.length)]!);
    }
    const { tokens, targets, weights, real } = this.rows(picked);
    const t = this.step_ + 1;
    const out = this.trainStep(
      this.lora,
      this.m,
      this.v,
      this.baseParams.map((p) => p.ref),
      np.array(tokens, { dtype: np.int32 }),
      np.array(targets, { dtype: np.int32 }),
      np.array(weights),
      this.cos.ref,
      this.sin.ref,
      np.array(learningRate(hp, t)),
      np.array(1 - LORA_ADAM.beta1 ** t),
      np.array(1 - LORA_ADAM.beta2 ** t),
    );
    this.lora = out.lora;
    this.m = out.m;
    this.v = out.v;
    const loss = (await out.loss.data())[0]!;
    this.step_ = t;
    this.cursor += hp.batch;
    return { step: t, loss, examples: hp.batch, tokens: real };
  }

  /** Mean completion NLL of the held-out examples, with the adapter or of the base alone. */
  private async heldOutLoss(adapter: boolean): Promise<number> {
    const key = adapter ? 'adapter' : 'base';
    this.evalFns[key] ??= makeEvalNll(this.cfg, adapter);
    const fn = this.evalFns[key];
    const { batch } = this.hyperparameters;
    const examples = this.held.slice(0, MAX_EVAL_EXAMPLES);
    let nll = 0;
    let count = 0;
    for (let i = 0; i < examples.length; i += batch) {
      const { tokens, targets, weights } = this.rows(examples.slice(i, i + batch));
      for (const w of weights) count += w;
      const out = fn(
        adapter ? this.lora.map((p) => p.ref) : [],
        this.baseParams.map((p) => p.ref),
        np.array(tokens, { dtype: np.int32 }),
        np.array(targets, { dtype: np.int32 }),
        np.array(weights),
        this.cos.ref,
        this.sin.ref,
      );
      nll += (await out.data())[0]!;
    }
    return nll / count;
  }

  async evaluate(): Promise<Record<string, number>> {
    this.live();
    if (this.held.length === 0) return {};
    if (this.baseFigures === undefined) {
      const loss = await this.heldOutLoss(false);
      this.baseFigures = { base_heldout_loss: loss, base_heldout_ppl: Math.exp(loss) };
    }
    const loss = await this.heldOutLoss(true);
    return { heldout_loss: loss, heldout_ppl: Math.exp(loss), ...this.baseFigures };
  }

  logits(tokens: Int32Array, options: { adapter?: boolean } = {}): Float32Array {
    this.live();
    const adapter = options.adapter !== false;
    const key = adapter ? 'adapter' : 'base';
    this.logitsFns[key] ??= makeLogits(this.cfg, adapter);
    const fn = this.logitsFns[key];
    const [cos, sin] = this.rope(tokens.length);
    const out = fn(
      adapter ? this.lora.map((p) => p.ref) : [],
      this.baseParams.map((p) => p.ref),
      np.array(tokens, { dtype: np.int32 }),
      cos,
      sin,
    );
    return Float32Array.from(out.dataSync() as Float32Array);
  }

  adapter(): LoraAdapter {
    this.live();
    const { rank } = this.cfg;
    const pairs = loraSpecs(this.cfg).map((s, i) => {
      const at = this.lora[2 * i]!.ref.dataSync() as Float32Array;
      const bt = this.lora[2 * i + 1]!.ref.dataSync() as Float32Array;
      return {
        target: s.tensor,
        inputs: s.inputs,
        outputs: s.outputs,
        rank,
        a: toGgmlOrder(at, s.inputs, rank), // Aᵀ [in, rank] → A [rank][in]
        b: toGgmlOrder(bt, rank, s.outputs), // Bᵀ [rank, out] → B [out][rank]
      };
    });
    return {
      architecture: this.base.info.architecture,
      alpha: this.hyperparameters.alpha,
      name: `${this.base.name || 'base'}-lora`,
      pairs,
    };
  }

  saveState(): Uint8Array {
    this.live();
    const header: StateHeader = {
      trainer: 'lora',
      format: STATE_FORMAT,
      digest: this.digest,
      step: this.step_,
      cursor: this.cursor,
    };
    const arrays = function* (groups: JaxArray[][]) {
      for (const group of groups) for (const a of group) yield a.ref.dataSync() as Float32Array;
    };
    return encodeState(STATE_MAGIC, header, this.floatCount(), arrays([this.lora, this.m, this.v]));
  }

  private floatCount(): number {
    return 3 * this.shapes.reduce((n, s) => n + s[0]! * s[1]!, 0);
  }

  loadState(state: Uint8Array): void {
    this.live();
    const refuse = (why: string): LoraError =>
      new LoraError('checkpoint-state', `the saved state cannot resume this LoRA job: ${why}`);
    const decoded = decodeState<StateHeader>(state, STATE_MAGIC, refuse, 'it is not a LoRA trainer state');
    const header = decoded.header;
    if (header.format !== STATE_FORMAT) throw refuse(`it has format ${header.format}, not ${STATE_FORMAT}`);
    if (header.digest !== this.digest) {
      throw refuse('it was saved under other hyperparameters, another seed or another base model');
    }
    checkStepAndCursor(header.step, header.cursor, refuse);
    const sizes = this.shapes.map((s) => s[0]! * s[1]!);
    const floats = decoded.floats(
      [...sizes, ...sizes, ...sizes],
      (bytes, needed) => `it has ${bytes} bytes; this job's state has ${needed}`,
    );
    const groups = [0, 1, 2].map((g) =>
      this.shapes.map((s, i) => np.array(floats[g * this.shapes.length + i]!).reshape(s)),
    );
    for (const a of [...this.lora, ...this.m, ...this.v]) a.dispose();
    [this.lora, this.m, this.v] = groups as [JaxArray[], JaxArray[], JaxArray[]];
    this.step_ = header.step;
    this.cursor = header.cursor;
  }

  async exportModel(): Promise<ModelFile[]> {
    this.live();
    const adapter = this.adapter();
    const files: ModelFile[] = [
      {
        name: 'adapter.gguf',
        bytes: writeLoraAdapter(adapter, {
          metadata: [['cloister.lora.base_sha256', { type: 'string', value: this.baseSha256 }]],
        }),
      },
    ];
    if (this.merged)
      files.push({ name: 'model-merged.gguf', bytes: this.mergedModel(adapter), withBase: true });
    return files;
  }

  /** The base with W + scale·B·A in every adapted matrix (ggml order: `out` rows of `in`). */
  private mergedModel(adapter: LoraAdapter): Uint8Array {
    const scale = this.cfg.scale;
    const merged = new Map<string, Float32Array>();
    for (const p of adapter.pairs) {
      const w = readTensorF32(this.base.bytes, this.base.info, p.target);
      for (let o = 0; o < p.outputs; o++) {
        for (let i = 0; i < p.inputs; i++) {
          let d = 0;
          for (let r = 0; r < p.rank; r++) d += p.b[o * p.rank + r]! * p.a[r * p.inputs + i]!;
          w[o * p.inputs + i] = w[o * p.inputs + i]! + scale * d;
        }
      }
      merged.set(p.target, w);
    }
    return writeMergedGguf(this.base, merged);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const a of [...this.baseParams, ...this.lora, ...this.m, ...this.v, this.cos, this.sin]) a.dispose();
    this.trainStep.dispose();
    for (const f of [this.evalFns.adapter, this.evalFns.base, this.logitsFns.adapter, this.logitsFns.base])
      f?.dispose();
  }
}
