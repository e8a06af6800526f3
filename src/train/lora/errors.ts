/**
 * Errors of fine-tuning (the LoRA trainer, its dataset reader, the PEFT converter). The codes are a
 * subset of the job runner's TrainError codes, so the runner passes them on unchanged:
 * `bad-hyperparameter` (the message names `hyperparameters.<field>`), `bad-input` (a dataset line,
 * named by its number), `bad-model` (a base GGUF this trainer cannot run), `bad-adapter` (a LoRA or
 * PEFT adapter for another architecture or base, of rank 0, with unknown target modules or
 * non-finite weights), `checkpoint-state` (a saved state of another job or a damaged one).
 */
export type LoraErrorCode =
  | 'bad-hyperparameter'
  | 'bad-input'
  | 'bad-model'
  | 'bad-adapter'
  | 'checkpoint-state';

export class LoraError extends Error {
  override name = 'LoraError';
  constructor(
    readonly code: LoraErrorCode,
    message: string,
  ) {
    super(message);
  }
}
