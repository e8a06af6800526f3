/**
 * What a built-in trainer offers the job runner (job.ts): one optimizer step at a time, held-out
 * evaluation, a state that resumes bit-identically, and the files it exports. The runner owns
 * everything around it (keys, sealing, checkpoints, receipts, progress), so a trainer never sees a
 * key or a sealed byte and can be tested on plaintext alone.
 */

/** What one optimizer step reports. */
export interface StepReport {
  /** The step just completed, counted from 1. */
  step: number;
  /** Training loss of this step's batch. */
  loss: number;
  /** Examples (rows, sequences) in the batch. */
  examples: number;
  /** Tokens in the batch (language models). */
  tokens?: number;
}

/** An exported file of the trained model, written by the runner into the private directory and sealed. */
export interface ModelFile {
  /** File name, no folders (e.g. "model.gguf"). */
  name: string;
  bytes: Uint8Array;
  /**
   * The file holds the base model's weights (a LoRA merged into its base, `outputs.merged`): the
   * runner seals it to the base's owners as well as to the job's recipients.
   */
  withBase?: boolean;
}

export interface BuiltinTrainer {
  /** The trainer's registry name ("mlp", "llama"). */
  readonly name: string;
  /** Steps of the whole job (from the hyperparameters). */
  readonly totalSteps: number;
  /** Steps completed so far (0 before the first; restored by loadState). */
  readonly completedSteps: number;
  /** One optimizer step; deterministic given the seed and the state. */
  step(): Promise<StepReport>;
  /** Metrics on held-out data (e.g. `heldout_loss`, `accuracy`); does not change the state. */
  evaluate(): Promise<Record<string, number>>;
  /** Everything needed to resume bit-identically: parameters, optimizer moments, step, data cursor. */
  saveState(): Uint8Array;
  /** Restores a state saved by the same trainer with the same hyperparameters; refuses another. */
  loadState(state: Uint8Array): void;
  /** The trained model as files. */
  exportModel(): Promise<ModelFile[]>;
  /** Frees engine memory. */
  dispose(): void;
}

/** What the runner hands a trainer's factory: plaintext paths inside the private directory. */
export interface TrainerInput {
  /** Unsealed inputs, in manifest order, with their manifest names. */
  inputs: { name: string; path: string }[];
  /** The unsealed starting model, when the manifest names one. */
  startModel?: { name: string; path: string };
  /** The unsealed frozen base model (GGUF) of a fine-tuning job: read, never exported as it is. */
  base?: { name: string; path: string };
  /** `outputs.merged`: also export the base with the adapter merged into it (a ModelFile `withBase`). */
  merged?: boolean;
  /** The manifest's hyperparameters, not yet checked: the factory checks and names bad fields. */
  hyperparameters: Record<string, unknown>;
  seed: number;
}
